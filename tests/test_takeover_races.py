"""Races of a new owner's start-up recovery (several daemons, docs/scale-out.md), each held open on purpose:
an account runner started the way the lease keeper starts one (``host.start_account`` with a
``before_startup`` hook), in-process against the fake WeChat, its store left as a previous owner left it.

- The previous owner's ``kfsession/create`` had succeeded and the session has ended since, but the pushes
  saying so (``kf_create_session``, ``kf_close_session``) reach the new owner only while its recovery is
  running — kept by other daemons, or delayed by a busy host. Recovery read the store before they came:
  it must not route that customer a second time (created twice; and the stale create push then frees the
  agent's place while that second create is in flight: over capacity). Held open by applying the pushes
  right before ``getsession`` answers.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest import CB_TOKEN, FakeControl, config_dict, recorder, wait_until

from kfrouter.router.config import Config
from kfrouter.router.core.model import CustomerState
from kfrouter.router.daemon import AccountRunner, DaemonOptions
from kfrouter.router.edges.store import Store, WaitingRow
from kfrouter.router.host import Host
from kfrouter.router.wechat.push import parse_push
from kfrouter.sim.fake_options import FakeOptions
from kfrouter.sim.fake_push import render_push
from kfrouter.sim.fake_server import FakeWeChat, running_fake

APPID = "wx_takeover_app"
SECRET = "takeover_secret"
AGENT = "a1@test"


@pytest.fixture
async def fake() -> AsyncIterator[FakeWeChat]:
    opts = FakeOptions()
    opts.update({"check_openid": False})
    async with running_fake(APPID, SECRET, token=CB_TOKEN, options=opts) as f, aiohttp.ClientSession() as http:
        await FakeControl(f.base_url, http).agents(AGENT)
        yield f


def account_config(fake: FakeWeChat, tmp_path: Path) -> Config:
    return Config.from_dict(
        config_dict(
            api_base=fake.base_url,
            store=tmp_path / "kfrouter.db",
            appid=APPID,
            secret=SECRET,
            groups=[{"name": "general", "agents": [AGENT]}],
        ),
        env={},
    )


async def test_a_session_that_came_and_went_during_recovery_is_not_routed_again(
    fake: FakeWeChat, tmp_path: Path
) -> None:
    cfg = account_config(fake, tmp_path)
    now = fake.clock.now()
    with Store(tmp_path / "kfrouter.db", appid=APPID) as old:  # as the previous owner left it
        old.add_waiting(WaitingRow(openid="o1", group="general", priority=0, arrived_at=now - 60))
        old.add_reservation("o1", AGENT, created_at=now - 50)  # its create: sent, outcome not stored
    model = fake.model
    model.create_session(AGENT, "o1", now - 49, via="agent")  # it had succeeded...
    model.close_session(AGENT, "o1", now - 20, via="agent")  # ...and the agent closed it since
    late = [render_push(model, p) for p in model.drain_outbox()]  # those pushes are still on their way
    assert [parse_push(raw).event for raw in late] == ["kf_create_session", "kf_close_session"]  # type: ignore[union-attr]
    asked: list[str] = []
    seen: list[dict[str, Any]] = []  # every event and command of the runner
    caught_up: list[str] = []

    async def prepare(runner: AccountRunner) -> None:
        """Before recovery reads the store: the pushes will arrive right before getsession answers."""
        assert runner.client is not None
        caught_up.append(runner.appid)
        if getattr(runner.client.get_session, "held", False):
            return  # awaited again before the outcomes are decided: nothing has come yet
        runner.observers.append(recorder(seen))
        real = runner.client.get_session

        async def get_session(openid: str) -> Any:
            if not asked:
                for raw in late:  # what a pickup of the shared inbox does with a kept push
                    await runner.intake.on_push(parse_push(raw), raw)
            asked.append(openid)
            return await real(openid)

        get_session.held = True  # type: ignore[attr-defined]
        runner.client.get_session = get_session  # type: ignore[method-assign]

    host = Host(cfg, start=(), options=DaemonOptions(create_timeout_s=1.0, self_check=False))
    task = asyncio.create_task(host.run())
    try:
        await asyncio.wait_for(host.listening.wait(), 10)
        runner = await host.start_account(APPID, before_startup=prepare)
        await asyncio.wait_for(runner.started.wait(), 15)
        assert asked == ["o1"]
        assert caught_up == [APPID, APPID]  # before reading the store, and before deciding the create
        await wait_until(lambda: runner.inbox_length() == 0 and runner.executor is not None, timeout=10)
        await wait_until(lambda: runner.engine.state("o1") is CustomerState.GONE, timeout=10, message="o1 gone")
        routed = [x for x in seen if x["kind"] == "command" and x["type"] == "CreateSession"]
        assert routed == []  # not routed again (a create sent before the stale pushes: a second session)
        assert [c for c in model.create_log if c["openid"] == "o1"] == []
        assert "o1" not in model.sessions
        view = runner.engine.agent(AGENT)
        assert view is not None and (view.sessions, view.reserved) == (0, 0)
        with Store(tmp_path / "kfrouter.db", appid=APPID) as s:
            state = s.load_state()
            assert state.waiting == [] and state.reservations == []
    finally:
        host.stop()
        await asyncio.wait_for(task, 15)
