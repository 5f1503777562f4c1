"""A stored waiting customer handed to the engine again (``WaitingRow.request``, the one rule the OA
start-up, the OA re-check and the WeCom start-up use): every stored field carries over, a preferred agent
the engine no longer knows is dropped, and at start-up a group no longer configured becomes the default."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from conftest import config_dict

from kfrouter.policies.registry import load_policies
from kfrouter.router.config import Config
from kfrouter.router.core import events as ev
from kfrouter.router.core.engine import Engine
from kfrouter.router.core.model import AgentRow
from kfrouter.router.edges.store import Store, WaitingRow
from kfrouter.router.pollers import Recovery

ROW = WaitingRow(
    openid="o_alice",
    group="sales",
    priority=2,
    arrived_at=1_000.5,
    text="转人工 please",
    preferred="gone@test",
    tags=("vip", "returning"),
)


def test_a_stored_request_keeps_every_field_and_drops_an_agent_the_engine_does_not_know() -> None:
    again = ROW.request("recheck", {"a1@test"})
    assert again == ev.CustomerRequested(
        openid="o_alice",
        group="sales",
        priority=2,
        text="转人工 please",
        source="recheck",
        preferred_agent=None,
        tags=frozenset({"vip", "returning"}),
        arrived_at=1_000.5,
    )
    assert ROW.request("restore", {"gone@test"}).preferred_agent == "gone@test"
    assert WaitingRow("o_bob", None, 0, 5.0).request("recovery", {"a1@test"}).preferred_agent is None


def test_start_up_restores_a_customer_of_a_removed_group_into_the_default_group(tmp_path: Path) -> None:
    doc = config_dict(
        api_base="http://127.0.0.1:9",
        store=tmp_path / "k.db",
        groups=({"name": "general", "agents": ["a1@test"]}, {"name": "support", "agents": ["a2@test"]}),
        routing={"default_group": "support"},
    )
    cfg = Config.from_dict(doc, env={})
    engine = Engine(cfg.engine_config(), load_policies(sorted(cfg.policy_names())))
    applied: list[Any] = []

    def apply(event: ev.Event) -> None:
        applied.append(event)
        engine.handle(event, 2_000.0)

    for e in cfg.agent_events():
        apply(e)
    apply(ev.AgentsSeen(rows=(AgentRow(kf_account="a1@test", status=1),)))  # type: ignore[arg-type]
    kept = WaitingRow("o_carol", "general", 0, 1_500.0, preferred="a1@test")
    store = Store(tmp_path / "k.db")
    for row in (ROW, kept):
        assert store.add_waiting(row)
    recovery = Recovery(
        engine=engine,
        client=None,  # type: ignore[arg-type]  # waiting() asks WeChat nothing
        store=store,
        config=cfg,
        clock=lambda: 2_000.0,
        apply=apply,
        create_timeout_s=5.0,
    )
    assert recovery.waiting() == 2
    restored = {e.openid: e for e in applied if isinstance(e, ev.CustomerRequested)}
    assert restored["o_alice"].group == "support" and restored["o_alice"].source == "restore"
    assert restored["o_alice"].arrived_at == 1_000.5 and restored["o_alice"].preferred_agent is None
    assert restored["o_carol"].group == "general" and restored["o_carol"].preferred_agent == "a1@test"
    assert recovery.waiting() == 0  # the engine knows them now: nobody is asked twice
    store.close()
