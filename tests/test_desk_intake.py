"""The Desk's intake rules (router/core/intake.py) as units: what a message means for a customer in each
state, the agent list kept for its time and a number in the answer naming an agent."""

from __future__ import annotations

from kfrouter.policies.registry import load_all
from kfrouter.router.core import events as ev
from kfrouter.router.core.desk import Desk, IntakeSettings
from kfrouter.router.core.engine import Engine, EngineConfig
from kfrouter.router.core.intake import Forward, Ignore, Leave, Reply, Request
from kfrouter.router.core.model import AgentRow
from kfrouter.router.core.notify import NotifyConfig
from kfrouter.router.core.rules import Inbound, RoutingConfig

ROUTING = RoutingConfig(
    mode="keywords", keywords=("人工",), cancel_keywords=("取消",), choose_agent_keywords=("指定客服",)
)


def desk(*online: str) -> Desk:
    d = Desk(
        Engine(EngineConfig(default_capacity=1), load_all()),
        intake=IntakeSettings(routing=ROUTING, texts=NotifyConfig(language="zh"), choice_ttl_s=60.0),
    )
    for kf in ("a1@x", "a2@x"):
        d.handle(ev.AgentConfigured(kf_account=kf), 0.0)
    rows = [AgentRow(kf_account=kf, status=1, accepted_case=0, auto_accept=1) for kf in online]
    d.handle(ev.AgentsSeen(rows=rows, complete=True), 0.0)  # type: ignore[arg-type]
    return d


def text(openid: str, words: str) -> Inbound:
    return Inbound(openid=openid, msg_type="text", text=words)


def test_a_request_then_a_repeat_then_a_cancel() -> None:
    d = desk()  # nobody online: the customer waits
    first = d.consider(text("c1", "转人工"), 1.0)
    assert isinstance(first, Request) and first.event.openid == "c1" and first.event.arrived_at == 1.0
    d.handle(first.event, 1.0)
    assert isinstance(d.consider(text("c1", "人工"), 2.0), Ignore)  # already waiting
    leave = d.consider(text("c1", "取消"), 3.0)
    assert isinstance(leave, Leave) and leave.matched and leave.reply  # confirmed by a passive reply
    assert isinstance(d.consider(text("c2", "取消"), 3.0), Forward)  # not waiting: not ours


def test_a_customer_in_a_session_is_forwarded() -> None:
    d = desk("a1@x")
    request = d.consider(text("c1", "人工"), 1.0)
    assert isinstance(request, Request)
    d.handle(request.event, 1.0)
    d.handle(ev.SessionCreated(openid="c1", kf_account="a1@x", source="api"), 1.0)
    answer = d.consider(text("c1", "人工"), 2.0)
    assert isinstance(answer, Forward) and "a1@x" in answer.reason


def test_the_agent_list_is_kept_for_its_time_and_a_number_names_an_agent() -> None:
    d = desk("a1@x", "a2@x")
    listing = d.consider(text("c1", "指定客服"), 1.0)
    assert isinstance(listing, Reply) and listing.why == "listed"
    assert "1." in listing.text and "2." in listing.text
    chosen = d.consider(text("c1", "2"), 2.0)  # the second agent of the list
    assert isinstance(chosen, Request) and chosen.event.preferred_agent is not None
    again = d.consider(text("c3", "指定客服"), 1.0)
    assert isinstance(again, Reply)
    d.tick(100.0)  # past choice_ttl_s: the list is forgotten
    assert d.intake is not None and "c3" not in d.intake.offers
    assert isinstance(d.consider(text("c3", "2"), 101.0), Forward)  # a bare number means nothing now
