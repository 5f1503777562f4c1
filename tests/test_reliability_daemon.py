"""Reliability findings of the soak (bench/soak.py), each reduced to one scenario: the daemon in-process
against the fake WeChat (real HTTP both ways on 127.0.0.1), a fault injected at the fake, and the outcome
read from the fake's create log — the customer is served, exactly once.

- A ``kfsession/create`` answered 65414 ("another agent serves the customer") while nobody does: the
  daemon asks ``getsession``, hears "nobody", and must route the customer again instead of dropping them
  (the soak saw such customers stay in the store's wait list while the engine had forgotten them).
- A create held in the executor (a 45009 rate-limit pause) past the engine's reservation timeout: the
  engine has routed the customer to another agent meanwhile, so the held create must not be sent — sent
  late, it opened a second session for a customer whose first session had already ended.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest import CB_TOKEN, FakeControl, config_dict, successful_creates, wait_until

from kfrouter.router.app import build_daemon
from kfrouter.router.config import Config
from kfrouter.router.core.model import CustomerState
from kfrouter.router.daemon import DaemonOptions
from kfrouter.router.host import Host
from kfrouter.sim.fake_options import FakeOptions
from kfrouter.sim.fake_server import FakeWeChat, running_fake

APPID = "wx_rel_app"
SECRET = "rel_secret"


class Env:
    def __init__(self, fake: FakeWeChat, host: Host, http: aiohttp.ClientSession) -> None:
        self.fake = fake
        self.host = host
        self.daemon = host.runner
        self.ctl = FakeControl(fake.base_url, http)

    def errcodes(self) -> list[int]:
        """Every kfsession/create answer in order (injected faults are logged without an openid)."""
        return [int(c["errcode"]) for c in self.fake.model.create_log]

    def settled(self) -> bool:
        h = self.daemon.health()
        return bool(h["inbox"] == 0 and h["commands_pending"] == 0 and h["reservations"] == 0)


EnvFactory = Callable[..., Awaitable[Env]]


@pytest.fixture
async def make_env(tmp_path: Path) -> AsyncIterator[EnvFactory]:
    stack: list[tuple[Any, asyncio.Task[None], Host, aiohttp.ClientSession]] = []

    async def factory(*, agents: tuple[str, ...], options: DaemonOptions, **config: Any) -> Env:
        opts = FakeOptions()
        opts.update({"check_openid": False})
        cm = running_fake(APPID, SECRET, token=CB_TOKEN, options=opts)
        fake = await cm.__aenter__()
        http = aiohttp.ClientSession()
        await FakeControl(fake.base_url, http).agents(*agents)
        cfg = Config.from_dict(
            config_dict(
                api_base=fake.base_url,
                store=tmp_path / "kfrouter.db",
                appid=APPID,
                secret=SECRET,
                groups=[{"name": "general", "agents": list(agents)}],
                **config,
            ),
            env={},
        )
        daemon = build_daemon(cfg, options=options)
        task = asyncio.create_task(daemon.run())
        stack.append((cm, task, daemon, http))
        await asyncio.wait_for(daemon.listening.wait(), 10)
        fake.pusher.webhook = f"http://127.0.0.1:{daemon.port}/wechat"
        await asyncio.wait_for(daemon.started.wait(), 15)
        return Env(fake, daemon, http)

    yield factory
    for cm, task, daemon, http in reversed(stack):
        daemon.stop()
        try:
            await asyncio.wait_for(task, 15)
        finally:
            await http.close()
            await cm.__aexit__(None, None, None)


async def test_a_65414_nobody_confirms_routes_the_customer_again(make_env: EnvFactory) -> None:
    env = await make_env(
        agents=("a1@test", "a2@test"), options=DaemonOptions(create_timeout_s=2.0, api_timeout_s=2.0)
    )
    await env.ctl.fault("kfsession/create", errcode=65414, times=1)
    await env.ctl.say("c1", "human please")

    async def served() -> bool:
        return "c1" in await env.ctl.sessions() and env.settled()

    await wait_until(served, timeout=10, message="c1 served after a 65414 nobody confirmed")
    assert env.errcodes() == [65414, 0]
    assert env.daemon.engine.state("c1") is CustomerState.IN_SESSION
    assert env.fake.model.calls["customservice/kfsession/getsession"] >= 1  # the daemon did ask


async def test_a_create_held_past_its_reservation_is_not_sent(make_env: EnvFactory) -> None:
    # One create worker. The first create answers 45009: the executor pauses creates (5 s). The
    # customer's next reservation expires during the pause (reservation_timeout_s 3 s) and the engine
    # routes them to a third agent, so two creates wait behind the pause; only the current one may go.
    env = await make_env(
        agents=("a1@test", "a2@test", "a3@test"),
        options=DaemonOptions(create_timeout_s=1.0, api_timeout_s=1.0, create_concurrency=1),
        engine={"reservation_timeout_s": 3.0, "avoid_s": 0.5},
    )
    await env.ctl.fault("kfsession/create", errcode=45009, times=1)
    await env.ctl.say("c1", "human please")
    await wait_until(lambda: env.errcodes() == [45009], timeout=5, message="the 45009")
    await env.ctl.fault("kfsession/create", delay_s=0.6)  # every later create lands 0.6 s after sending

    # As soon as c1 has an agent, that agent ends the session (a short chat).
    kf = await wait_until(
        lambda: env.fake.model.sessions.get("c1"), timeout=20, interval=0.01, message="c1 served"
    )
    await env.ctl.close("c1")
    await wait_until(env.settled, timeout=10, message="the daemon settled")
    await env.ctl.clear_faults()
    ok = successful_creates({"create_log": env.fake.model.create_log}).get("c1", [])
    assert ok == [kf.kf_account], f"c1 got {len(ok)} sessions: {ok}"
    assert "c1" not in await env.ctl.sessions()


def test_the_engine_forgets_history_older_than_the_sticky_window() -> None:
    # The long soak's RSS crept up with every distinct customer: the engine kept "last agent" history
    # forever, although sticky routing only looks back sticky_window_s. A daemon running for months
    # must not grow with every customer it has ever seen.
    from kfrouter.policies.registry import load_all
    from kfrouter.router.core import events as ev
    from kfrouter.router.core.engine import Engine, EngineConfig
    from kfrouter.router.core.model import AgentRow

    window = 1000.0
    engine = Engine(EngineConfig(default_capacity=3, sticky_window_s=window), load_all())
    engine.handle(ev.AgentConfigured(kf_account="a1@test"), 0.0)
    engine.handle(ev.AgentsSeen(rows=(AgentRow(kf_account="a1@test", status=1, accepted_case=0),)), 0.0)  # type: ignore[arg-type]
    customers = [f"o{i}" for i in range(5000)]
    for i, openid in enumerate(customers):  # one customer a second, each served for half a second
        t = float(i)
        assert engine.handle(ev.CustomerRequested(openid=openid), t)  # a CreateSession for a1
        engine.handle(ev.SessionCreated(openid=openid, kf_account="a1@test", source="api"), t)
        engine.handle(ev.SessionClosed(openid=openid, kf_account="a1@test"), t + 0.5)
        engine.tick(t + 0.5)
    remembered = [o for o in customers if engine.history(o) is not None]
    assert len(remembered) <= window + 2, len(remembered)
    assert engine.history(customers[-1]) == ("a1@test", 4999.5)  # recent history is kept


def test_the_wait_estimator_does_not_grow_with_every_customer() -> None:
    # The soak's RSS kept creeping after the history fix: the estimator appended every arrival to a
    # per-group order (for the head-of-line predictor) and pruned it only while computing an estimate,
    # which a daemon without notifications never does.
    import tracemalloc

    from kfrouter.router.core.estimate import WaitEstimator
    from kfrouter.router.core.facts import Assigned, Left, Queued, SessionEnded

    est = WaitEstimator()

    def day(first: int, n: int) -> None:
        for i in range(first, first + n):
            t = float(i)
            openid = f"o{i}"
            est.observe_fact(Queued(openid, "general", 0, t), t)
            est.observe_fact(Assigned(openid, "a1@test", "general", 0.2, True, None), t + 0.2)
            est.observe_fact(SessionEnded(openid, "a1@test", "general", 0.3), t + 0.5)
            est.observe_fact(Left(openid, "served", "general", False, 0.0, "a1@test"), t + 0.5)

    day(0, 2000)  # windows and samples fill up
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        day(2000, 20_000)
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    only = [tracemalloc.Filter(True, "*router/core/estimate.py")]
    grown = sum(
        s.size_diff for s in after.filter_traces(only).compare_to(before.filter_traces(only), "filename")
    )
    assert grown < 64 * 1024, f"the estimator grew {grown} bytes over 20,000 customers"


async def test_the_engine_task_ticks_every_sweep_even_under_constant_traffic() -> None:
    # DaemonOptions.sweep_s promises an engine tick "at least this often" (the periodic sweep, and
    # forgetting history older than the sticky window); drive() only ticked when the inbox stayed quiet
    # for sweep_s or a deadline passed, so a steady stream of pushes postponed it indefinitely.
    from kfrouter.router.inbox import Inbox, Item, drive

    clock = [0.0]
    ticks: list[float] = []
    done = asyncio.Event()
    inbox = Inbox()
    n = 40

    def step(item: Item, now: float) -> None:
        clock[0] += 1.0  # each input takes a second of (fake) time: a busy inbox, never quiet
        if item.payload == n - 1:
            done.set()

    for i in range(n):
        inbox.put(i)
    task = asyncio.create_task(
        drive(
            inbox,
            step=step,
            tick=ticks.append,
            next_deadline=lambda: float("inf"),
            now=lambda: clock[0],
            on_error=lambda item, exc: None,
            sweep_s=5.0,
        )
    )
    try:
        await asyncio.wait_for(done.wait(), 10)
    finally:
        task.cancel()
    assert len(ticks) >= n // 5 - 1, ticks
    assert all(b - a <= 5.0 + 1.0 for a, b in zip([0.0, *ticks], ticks, strict=False)), ticks
