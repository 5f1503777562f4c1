"""The intake's agent names (router/core/intake.py) are built once per roster, not per push: whatever
sequence of roster changes and pushes the Desk sees, the kept names equal a fresh build from the engine's
agents, and a push that finds the roster unchanged uses the names already built."""

from __future__ import annotations

from types import MappingProxyType

from hypothesis import given, settings
from hypothesis import strategies as st

from kfrouter.policies.registry import load_all
from kfrouter.router.core import events as ev
from kfrouter.router.core.desk import Desk, IntakeSettings
from kfrouter.router.core.engine import Engine, EngineConfig
from kfrouter.router.core.intake import Request
from kfrouter.router.core.model import AgentRow
from kfrouter.router.core.notify import NotifyConfig
from kfrouter.router.core.rules import Inbound, RoutingConfig, make_directory

ROUTING = RoutingConfig(
    mode="keywords",
    keywords=("人工",),
    choose_agent_keywords=("指定客服",),
    aliases=MappingProxyType({"boss": "a1@x"}),
)
ACCOUNTS = ("a1@x", "a2@x", "b1@y", "a1@y")  # "a1" is the prefix of two agents: ambiguous
NICKNAMES = ("", "小王", "小李", "Bob", "a2")


def new_desk() -> Desk:
    return Desk(
        Engine(EngineConfig(default_capacity=2), load_all()),
        intake=IntakeSettings(routing=ROUTING, texts=NotifyConfig(language="zh"), choice_ttl_s=60.0),
    )


def fresh(desk: Desk) -> dict[str, str]:
    views = desk.engine.agents()
    names = {a.nickname: a.kf_account for a in views if a.nickname}
    return make_directory(ROUTING, [a.kf_account for a in views], names)


configured = st.builds(
    ev.AgentConfigured, kf_account=st.sampled_from(ACCOUNTS), nickname=st.sampled_from((None, *NICKNAMES))
)
seen = st.builds(
    lambda rows, complete: ev.AgentsSeen(rows=rows, complete=complete),
    st.lists(
        st.builds(
            AgentRow,
            kf_account=st.sampled_from(ACCOUNTS),
            status=st.sampled_from((0, 1)),
            nickname=st.sampled_from(NICKNAMES),
        ),
        max_size=4,
    ),
    st.booleans(),
)
removed = st.builds(ev.AgentRemoved, kf_account=st.sampled_from(ACCOUNTS))
push = st.builds(
    lambda n, words: Inbound(openid=f"c{n}", msg_type="text", text=words),
    st.integers(0, 5),
    st.sampled_from(("人工", "指定客服", "指定客服 小王", "指定客服 Bob", "指定客服 boss", "1", "hello")),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(configured, seen, removed, push), max_size=30))
def test_the_kept_names_equal_a_fresh_build_after_every_step(steps: list[object]) -> None:
    desk = new_desk()
    assert desk.intake is not None
    now = 0.0
    for step in steps:
        now += 1.0
        if isinstance(step, Inbound):
            answer = desk.consider(step, now)
            if isinstance(answer, Request):
                desk.handle(answer.event, now)
        elif isinstance(step, ev.AgentRemoved) and step.kf_account not in desk.engine.pool:
            continue  # the engine refuses to remove an agent it does not know
        else:
            desk.handle(step, now)  # type: ignore[arg-type]
        assert dict(desk.intake.directory()) == fresh(desk)


def test_pushes_share_the_names_until_the_roster_changes() -> None:
    desk = new_desk()
    assert desk.intake is not None
    desk.handle(ev.AgentConfigured(kf_account="a1@x", nickname="小王"), 0.0)
    first = desk.intake.directory()
    for n in range(3):
        desk.consider(Inbound(openid=f"c{n}", msg_type="text", text="人工"), 1.0)
    assert desk.intake.directory() is first  # not built again for each push
    desk.handle(ev.AgentConfigured(kf_account="a1@x", nickname="小张"), 2.0)
    assert desk.intake.directory() is not first
    desk.handle(ev.AgentsSeen(rows=[AgentRow(kf_account="a1@x", status=1)], complete=True), 2.0)  # type: ignore[arg-type]
    answer = desk.consider(Inbound(openid="c9", msg_type="text", text="指定客服 小张"), 3.0)
    assert isinstance(answer, Request) and answer.event.preferred_agent == "a1@x"
