"""End to end: ``kfrouter run`` and ``kfrouter fake-wechat`` as separate processes talking HTTP on
127.0.0.1. Customers write through the fake's control API; the fake pushes (signed, or AES-encrypted) to
the daemon, which assigns them through ``kfsession/create``. Every wait is a bounded poll of the fake's
``/_fake/state`` or the daemon's ``/healthz``."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from conftest import (
    AES_KEY,
    CB_TOKEN,
    FakeControl,
    Proc,
    Processes,
    config_dict,
    free_port,
    successful_creates,
    toml_text,
    wait_until,
)

from kfrouter.router.wechat import replies, signature
from kfrouter.router.wechat.push import UserMessage, parse_push

pytestmark = pytest.mark.slow


class System:
    """One fake WeChat process and one daemon process (restartable on the same port and store)."""

    def __init__(self, procs: Processes, http: aiohttp.ClientSession, tmp: Path) -> None:
        self.procs = procs
        self.http = http
        self.tmp = tmp
        self.port = free_port()
        self.config_path = tmp / "kfrouter.toml"
        self.fake: Proc | None = None
        self.daemon: Proc | None = None
        self.ctl: FakeControl | None = None
        self.daemon_args: tuple[str, ...] = ()

    async def start_fake(self, **kw: Any) -> FakeControl:
        self.fake = await self.procs.fake(webhook=f"http://127.0.0.1:{self.port}/wechat", **kw)
        self.ctl = FakeControl(self.fake.url, self.http)
        return self.ctl

    async def start_daemon(self, *args: str, **config: Any) -> None:
        assert self.fake is not None
        if config or not self.config_path.exists():
            data = config_dict(
                api_base=self.fake.url, store=self.tmp / "kfrouter.db", port=self.port, **config
            )
            self.config_path.write_text(toml_text(data))
        self.daemon_args = args or self.daemon_args
        self.daemon = await self.procs.daemon(self.config_path, *self.daemon_args)
        await wait_until(self.running, timeout=30, message=f"daemon routing\n{self.daemon.log_tail()}")

    async def health(self) -> dict[str, Any]:
        try:
            async with self.http.get(f"http://127.0.0.1:{self.port}/healthz") as resp:
                data: dict[str, Any] = await resp.json()
                return data
        except aiohttp.ClientError:
            return {}

    async def running(self) -> bool:
        return (await self.health()).get("status") == "running"

    async def settled(self) -> bool:
        """The daemon has nothing in flight: no reservation, no command, nothing in its inbox."""
        h = await self.health()
        return h.get("reservations") == 0 and h.get("commands_pending") == 0 and h.get("inbox") == 0

    async def assigned(self, openid: str, *, to: str | None = None, timeout: float = 15.0) -> str:
        assert self.ctl is not None
        ctl = self.ctl

        async def check() -> str | None:
            kf = (await ctl.sessions()).get(openid)
            if kf is None or (to is not None and kf != to) or not await self.settled():
                return None
            return kf

        kf: str = await wait_until(check, timeout=timeout, message=f"{openid} assigned")
        return kf


@pytest.fixture
async def system(processes: Processes, http: aiohttp.ClientSession, tmp_path: Path) -> AsyncIterator[System]:
    s = System(processes, http, tmp_path)
    try:
        yield s
    except BaseException:
        if s.daemon is not None:
            print(s.daemon.log_tail(120))
        raise


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[list[bytes], str]]:
    """The developer's old handler: replies to every text with 'echo: <text>' (plain mode)."""
    seen: list[bytes] = []

    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        seen.append(body)
        push = parse_push(body)
        assert isinstance(push, UserMessage)
        return web.Response(
            text=replies.text_reply(push.openid, push.to_user, push.create_time, f"echo: {push.content}"),
            content_type="application/xml",
        )

    app = web.Application()
    app.router.add_post("/old", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield seen, f"http://127.0.0.1:{port}/old"
    await runner.cleanup()


GROUPS = [
    {"name": "general", "agents": ["g1@test", "g2@test"], "capacity": {"g1@test": 2, "g2@test": 2}},
    {"name": "billing", "agents": ["b1@test"]},
    {"name": "vip", "policy": "sticky", "agents": ["v1@test", "v2@test"]},
]
ROUTING = {
    "rules": [{"keywords": ["invoice"], "group": "billing"}, {"keywords": ["vip"], "group": "vip"}],
}


async def test_routing_groups_least_load_sticky_drain_and_upstream(
    system: System, upstream: tuple[list[bytes], str]
) -> None:
    seen, upstream_url = upstream
    ctl = await system.start_fake()
    await ctl.agents("g1@test", "g2@test", "b1@test", "v1@test", "v2@test")
    await system.start_daemon(groups=GROUPS, routing=ROUTING, upstream_url=upstream_url)

    # least-load spreads the general customers over both agents, the billing one goes to billing
    await ctl.say("c1", "human please")
    a = await system.assigned("c1")
    await ctl.say("c2", "human please")
    b = await system.assigned("c2")
    assert {a, b} == {"g1@test", "g2@test"}
    await ctl.say("i1", "human: my invoice is wrong")
    assert await system.assigned("i1") == "b1@test"

    # both general agents full (capacity 2): c5 then c6 wait, in that order
    for openid in ("c3", "c4"):
        await ctl.say(openid, "human")
        await system.assigned(openid)
    for openid in ("c5", "c6"):
        await ctl.say(openid, "human")
    await wait_until(lambda: _queue(system, 2), message="two customers waiting")
    sessions = await ctl.sessions()
    assert "c5" not in sessions and "c6" not in sessions

    # the agent of c1 closes that session: the oldest waiting customer (c5) gets that agent
    await ctl.close("c1")
    assert await system.assigned("c5", to=a) == a
    assert "c6" not in await ctl.sessions()
    assert (await system.health())["queue"] == 1

    # sticky: x returns to their last agent even though the other one is less loaded now
    await ctl.say("x", "vip human")
    first = await system.assigned("x")
    await ctl.say("y", "vip human")
    other = await system.assigned("y")
    assert other != first
    await ctl.say("z", "vip human")
    assert await system.assigned("z") == first  # equal load, longest idle first: least-load's choice
    await ctl.close("x")
    await wait_until(lambda: _absent(ctl, "x"), message="x closed")
    # now first serves z (1), other serves y (1), and first was assigned more recently: least-load
    # would pick `other`; sticky sends x back to `first`
    await ctl.say("x", "vip human again")
    assert await system.assigned("x") == first

    # a message that is not for kfrouter goes to the old handler, and its reply to the customer
    await ctl.say("n1", "what time do you open?")
    assert any(b"what time do you open?" in body for body in seen)
    sent = (await ctl.state())["sent"]["n1"]
    assert sent[-1]["via"] == "passive_reply" and sent[-1]["content"] == "echo: what time do you open?"

    creates = successful_creates(await ctl.state())
    assert {o: len(v) for o, v in creates.items() if len(v) > 1} == {"x": 2}  # x was served twice
    assert creates["x"] == [first, first]
    assert system.daemon is not None and await system.daemon.terminate() == 0


async def _queue(system: System, n: int) -> bool:
    return (await system.health()).get("queue") == n


async def _absent(ctl: FakeControl, openid: str) -> bool:
    return openid not in await ctl.sessions()


async def test_safe_mode_pushes_are_decrypted_and_customers_assigned(system: System) -> None:
    ctl = await system.start_fake(aes_key=AES_KEY)
    await ctl.agents("g1@test", "g2@test")
    await system.start_daemon(
        groups=[{"name": "general", "agents": ["g1@test", "g2@test"]}], aes_key=AES_KEY, encoding="safe"
    )
    for openid in ("s1", "s2", "s3"):
        await ctl.say(openid, "human")
    for openid in ("s1", "s2", "s3"):
        await system.assigned(openid)
    state = await ctl.state()
    deliveries = [d for d in state["deliveries"] if d.get("push", {}).get("msg_type") == "text"]
    assert len(deliveries) == 3 and all(d["outcome"] == "handled" for d in deliveries)
    assert all(len(v) == 1 for v in successful_creates(state).values())
    # safe mode: a plaintext push is refused even with a valid signature
    ts, nonce = str(int(time.time())), "4242"
    query = {"signature": signature.sign(CB_TOKEN, ts, nonce), "timestamp": ts, "nonce": nonce}
    xml = replies.build_text_message("gh_x", "plain1", int(ts), "human", 5)
    async with system.http.post(f"http://127.0.0.1:{system.port}/wechat", params=query, data=xml) as resp:
        assert resp.status == 403


async def test_kill_9_with_reservations_in_flight_then_restart_serves_everyone_once(system: System) -> None:
    ctl = await system.start_fake()
    agents = ("g1@test", "g2@test", "g3@test")
    await ctl.agents(*agents)
    await system.start_daemon(
        "--create-timeout",
        "3",
        groups=[{"name": "general", "agents": list(agents)}],
        engine={"default_capacity": 2},
    )
    customers = [f"k{i}" for i in range(9)]
    await ctl.fault("kfsession/create", delay_s=1.5)  # creates stay in flight for 1.5 s
    for openid in customers:
        await ctl.say(openid, "human")

    async def in_flight() -> bool:
        h = await system.health()
        return h.get("reservations") == 6 and h.get("queue") == 3

    await wait_until(in_flight, message="6 reservations in flight and 3 customers waiting")
    assert system.daemon is not None
    await system.daemon.kill9()
    await ctl.clear_faults()

    await system.start_daemon()  # same port, same store
    all_in = set(customers)

    # capacity is 6: six are served; three sessions close, and the three waiting get them
    async def six_served() -> bool:
        return len(set(await ctl.sessions()) & all_in) == 6 and await system.settled()

    await wait_until(six_served, timeout=20, message="six customers in session after the restart")
    closed = sorted(set(await ctl.sessions()) & all_in)[:3]
    for openid in closed:
        await ctl.close(openid)

    async def rest_served() -> bool:
        return set(await ctl.sessions()) & all_in == all_in - set(closed) and await system.settled()

    await wait_until(rest_served, timeout=20, message="the waiting customers served after closes")
    creates = successful_creates(await ctl.state())
    assert set(creates) == all_in  # nobody lost
    assert {o: v for o, v in creates.items() if len(v) != 1} == {}  # nobody created twice
    assert (await system.health())["queue"] == 0


async def test_twenty_percent_of_creates_failing_still_serves_everyone_once(system: System) -> None:
    ctl = await system.start_fake(seed=7)
    agents = ("g1@test", "g2@test", "g3@test", "g4@test")
    await ctl.agents(*agents)
    await system.start_daemon(
        "--create-timeout",
        "1.5",
        groups=[{"name": "general", "agents": list(agents)}],
        engine={"default_capacity": 10, "avoid_s": 2.0},
    )
    customers: list[str] = []
    for kind, rule in (
        ("busy", {"errcode": -1, "rate": 0.2}),
        ("offline", {"errcode": 65415, "rate": 0.2}),
        ("timeout", {"delay_s": 2.5, "rate": 0.2}),
    ):
        await ctl.fault("kfsession/create", **rule)
        batch = [f"{kind}{i}" for i in range(10)]
        customers += batch
        for openid in batch:
            await ctl.say(openid, "human")

        async def batch_served(batch: list[str] = batch) -> bool:
            return set(batch) <= set(await ctl.sessions()) and await system.settled()

        await wait_until(batch_served, timeout=30, message=f"the {kind} batch served")
    await ctl.clear_faults()
    state = await ctl.state()
    assert set(customers) <= {s["openid"] for s in state["sessions"]}
    creates = successful_creates(state)
    assert {o: v for o, v in creates.items() if len(v) != 1} == {}
    errcodes = Counter(c["errcode"] for c in state["create_log"])
    assert errcodes[-1] >= 1 and errcodes[65415] >= 1, errcodes  # the faults were exercised
    assert sum(state["calls"].get(k, 0) for k in state["calls"] if k.endswith("kfsession/create")) > 30
