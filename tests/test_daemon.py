"""The daemon in-process against the fake WeChat (real HTTP both ways, 127.0.0.1, port 0): the webhook
intake (persisted before the answer, cancel, choose-agent, upstream forwarding), API outcomes as engine
events, unknown agents, WeChat's wait list, start-up recovery from the store, shutdown, ``/healthz``."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from conftest import AES_KEY, CB_TOKEN, FakeControl, config_dict, recorder, successful_creates, wait_until

from kfrouter.router.app import build_daemon
from kfrouter.router.config import Config
from kfrouter.router.core import events as ev
from kfrouter.router.core.model import AgentRow, CustomerState
from kfrouter.router.daemon import DaemonOptions
from kfrouter.router.edges.store import Store, WaitingRow
from kfrouter.router.host import Host
from kfrouter.router.pollers import AgentPoller
from kfrouter.router.wechat import replies, signature
from kfrouter.router.wechat.crypto import SafeModeCrypto
from kfrouter.router.wechat.push import UserMessage, parse_push
from kfrouter.sim.fake_options import FakeOptions
from kfrouter.sim.fake_server import FakeWeChat, running_fake

APPID = "wx_test_app"
SECRET = "test_secret"


class Env:
    """One fake WeChat and one daemon, both in this process, talking HTTP to each other."""

    def __init__(
        self, fake: FakeWeChat, host: Host, http: aiohttp.ClientSession, task: asyncio.Task[None]
    ) -> None:
        self.fake = fake
        self.host = host
        self.daemon = host.runner
        self.http = http
        self.task = task
        self.ctl = FakeControl(fake.base_url, http)
        self.events: list[dict[str, Any]] = []
        self.daemon.observers.append(recorder(self.events))

    @property
    def webhook(self) -> str:
        return f"http://127.0.0.1:{self.host.port}{self.daemon.config.wechat.callback_path}"

    async def assigned(self, openid: str, timeout: float = 10.0, *, to: str | None = None) -> str:
        """Wait until the fake has ``openid`` in a session (with ``to``, if given) and the daemon has
        applied it."""

        async def check() -> str | None:
            kf = (await self.ctl.sessions()).get(openid)
            ok = kf is not None and kf == (to or kf) and self.daemon.engine.with_agent(openid) == kf
            return kf if ok and not self.daemon.engine.reservations() else None

        result: str = await wait_until(check, timeout=timeout, message=f"{openid} assigned")
        return result

    def of_type(self, kind: str, type_name: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["kind"] == kind and e.get("type") == type_name]


EnvFactory = Callable[..., Awaitable[Env]]


@pytest.fixture
async def make_env(tmp_path: Path) -> AsyncIterator[EnvFactory]:
    stack: list[tuple[Any, Env]] = []

    async def factory(
        *,
        agents: tuple[str, ...] = ("a1@test", "a2@test"),
        fake_options: dict[str, Any] | None = None,
        aes_key: str | None = None,
        options: DaemonOptions | None = None,
        store: Store | None = None,
        before_start: Callable[[FakeWeChat], Awaitable[None]] | None = None,
        **config: Any,
    ) -> Env:
        opts = FakeOptions()
        opts.update({"check_openid": False, **(fake_options or {})})
        cm = running_fake(APPID, SECRET, token=CB_TOKEN, aes_key=aes_key, options=opts)
        fake = await cm.__aenter__()
        http = aiohttp.ClientSession()
        ctl = FakeControl(fake.base_url, http)
        if agents:
            await ctl.agents(*agents)
        if before_start is not None:
            await before_start(fake)
        if aes_key is not None:
            config.setdefault("aes_key", aes_key)
            config.setdefault("encoding", "safe")
        cfg = Config.from_dict(
            config_dict(api_base=fake.base_url, store=tmp_path / "kfrouter.db", **config), env={}
        )
        daemon = build_daemon(
            cfg,
            options=options or DaemonOptions(create_timeout_s=2.0, api_timeout_s=2.0),
            stores=None if store is None else {APPID: store},
        )
        task = asyncio.create_task(daemon.run())
        await asyncio.wait_for(daemon.listening.wait(), 10)
        fake.pusher.webhook = f"http://127.0.0.1:{daemon.port}/wechat"
        await asyncio.wait_for(daemon.started.wait(), 15)
        env = Env(fake, daemon, http, task)
        stack.append((cm, env))
        return env

    yield factory
    for cm, env in reversed(stack):
        env.host.stop()
        try:
            await asyncio.wait_for(env.task, 15)
        finally:
            await env.http.close()
            await cm.__aexit__(None, None, None)


def signed_push(xml: str, *, openid: str) -> dict[str, str]:
    ts = str(int(time.time()))
    nonce = "12345"
    return {
        "signature": signature.sign(CB_TOKEN, ts, nonce),
        "timestamp": ts,
        "nonce": nonce,
        "openid": openid,
    }


# ------------------------------------------------------------------------------------------ intake


async def test_request_is_committed_before_the_webhook_answers(make_env: EnvFactory) -> None:
    env = await make_env(agents=())  # nobody online: the customer stays waiting
    xml = replies.build_text_message("gh_x", "o_first", int(time.time()), "human please", 42)
    async with env.http.post(env.webhook, params=signed_push(xml, openid="o_first"), data=xml) as resp:
        assert resp.status == 200
        assert await resp.text() == "success"
    # Read straight after the answer, from a second connection to the same file.
    with Store(env.daemon.config.store.path) as other:
        cases = other.session_log()
        assert [(c.openid, c.group, c.outcome) for c in cases] == [("o_first", "general", None)]
        assert [w.openid for w in other.load_state().waiting] == ["o_first"]
        assert [e[2] for e in other.events()].count("customer_requested") == 1
    await wait_until(lambda: env.daemon.engine.state("o_first") is CustomerState.WAITING, message="queued")
    # WeChat's retry of the same MsgId changes nothing.
    async with env.http.post(env.webhook, params=signed_push(xml, openid="o_first"), data=xml) as resp:
        assert await resp.text() == "success"
    with Store(env.daemon.config.store.path) as other:
        assert len(other.session_log()) == 1


async def test_customers_are_assigned_by_group_and_least_load(make_env: EnvFactory) -> None:
    env = await make_env(
        agents=("a1@test", "a2@test", "b1@test"),
        groups=[
            {"name": "general", "agents": ["a1@test", "a2@test"]},
            {"name": "billing", "agents": ["b1@test"]},
        ],
        routing={"rules": [{"keywords": ["invoice"], "group": "billing"}]},
    )
    await env.ctl.say("c1", "human please")
    first = await env.assigned("c1")
    await env.ctl.say("c2", "human please")
    second = await env.assigned("c2")
    assert {first, second} == {"a1@test", "a2@test"}  # spread, not stacked
    await env.ctl.say("c3", "I need an invoice")
    assert await env.assigned("c3") == "b1@test"
    state = await env.ctl.state()
    assert all(len(v) == 1 for v in successful_creates(state).values())
    assigned = env.of_type("event", "SessionCreated")
    assert {e["openid"] for e in assigned if e["source"] == "api"} == {"c1", "c2", "c3"}


async def test_cancel_takes_a_waiting_customer_out_and_replies(make_env: EnvFactory) -> None:
    env = await make_env(agents=(), notify={"enabled": True, "language": "en"})
    await env.ctl.say("w1", "human")
    await wait_until(lambda: env.daemon.engine.state("w1") is CustomerState.WAITING, message="w1 waiting")
    await env.ctl.say("w1", "cancel")
    await wait_until(lambda: env.daemon.engine.state("w1") is CustomerState.GONE, message="w1 gone")
    assert env.daemon.engine.gone_reason("w1") == "left:cancelled"
    sent = (await env.ctl.state())["sent"]["w1"]
    assert sent[-1]["via"] == "passive_reply" and "cancelled" in sent[-1]["content"]
    with Store(env.daemon.config.store.path) as other:
        assert [c.outcome for c in other.session_log()] == ["cancelled"]
        assert other.load_state().waiting == []
    # "cancel" from someone who is not waiting is just a message (no upstream configured: success)
    await env.ctl.say("w2", "cancel")
    assert env.daemon.engine.state("w2") is CustomerState.UNKNOWN


async def test_waiting_customers_are_told_their_place_and_their_agent(make_env: EnvFactory) -> None:
    env = await make_env(agents=(), notify={"enabled": True, "language": "en"})
    await env.ctl.say("n1", "human")
    await env.ctl.say("n2", "human")

    async def texts(openid: str) -> list[dict[str, Any]]:
        return [m for m in (await env.ctl.state())["sent"].get(openid, []) if m["via"] == "custom_send"]

    await wait_until(lambda: texts("n2"), message="n2 told their place")
    assert "number 2 in the queue" in (await texts("n2"))[0]["content"]
    assert "number 1 in the queue" in (await texts("n1"))[0]["content"]
    await env.ctl.agents("a1@test")  # an agent logs in; the next poll sees them
    assert await env.assigned("n1") == "a1@test"
    await wait_until(lambda: _has_text(texts("n1"), "is now serving you"), message="n1 told their agent")
    told = (await texts("n1"))[-1]
    assert told["kf_account"] == "a1@test"


async def _has_text(messages: Awaitable[list[dict[str, Any]]], fragment: str) -> bool:
    return any(fragment in m["content"] for m in await messages)


async def test_choose_agent_lists_agents_then_takes_the_choice(make_env: EnvFactory) -> None:
    env = await make_env(
        agents=("a1@test", "a2@test"),
        routing={"choose_agent_keywords": ["choose agent"]},
        notify={"language": "en"},
    )
    await env.ctl.say("p1", "choose agent")
    sent = (await env.ctl.state())["sent"]["p1"]
    assert "a1" in sent[-1]["content"] and "a2" in sent[-1]["content"]
    await env.ctl.say("p1", "a2")  # the answer names an agent: a request pinned to a2
    assert await env.assigned("p1") == "a2@test"


# ------------------------------------------------------------------------------------------ upstream


class Upstream:
    """A small WeChat handler standing in for the developer's existing one."""

    def __init__(self, crypto: SafeModeCrypto | None = None) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.crypto = crypto
        self.mode = "reply"  # reply | hang | transfer
        self.release = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.requests.append((dict(request.query), body))
        if self.mode == "hang":
            await self.release.wait()
            return web.Response(text="success")
        q = request.query
        assert signature.verify(q["signature"], CB_TOKEN, q["timestamp"], q["nonce"])
        if self.crypto is not None:
            xml = self.crypto.decrypt_push(body, q["msg_signature"], q["timestamp"], q["nonce"])
        else:
            xml = body.decode()
        push = parse_push(xml)
        assert isinstance(push, UserMessage)
        if self.mode == "transfer":
            reply = replies.transfer_customer_service(push.openid, push.to_user, push.create_time)
        else:
            reply = replies.text_reply(push.openid, push.to_user, push.create_time, f"bot: {push.content}")
        if self.crypto is not None:
            reply = self.crypto.encrypt_reply(reply, q["timestamp"], q["nonce"], b"0123456789abcdef")
        return web.Response(text=reply, content_type="application/xml")


@pytest.fixture
async def upstream_server() -> AsyncIterator[Callable[..., Awaitable[tuple[Upstream, str]]]]:
    runners: list[web.AppRunner] = []

    async def start(crypto: SafeModeCrypto | None = None) -> tuple[Upstream, str]:
        up = Upstream(crypto)
        app = web.Application()
        app.router.add_post("/legacy", up.handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return up, f"http://127.0.0.1:{port}/legacy"

    yield start
    for r in runners:
        await r.cleanup()


async def test_other_messages_reach_the_upstream_and_its_reply_comes_back(
    make_env: EnvFactory, upstream_server: Callable[..., Awaitable[tuple[Upstream, str]]]
) -> None:
    up, url = await upstream_server()
    env = await make_env(upstream_url=url)
    await env.ctl.say("u1", "what are your opening hours?")
    query, body = up.requests[-1]
    assert query["openid"] == "u1" and {"signature", "timestamp", "nonce"} <= set(query)
    assert b"what are your opening hours?" in body
    sent = (await env.ctl.state())["sent"]["u1"]
    assert sent[-1] == {**sent[-1], "via": "passive_reply", "content": "bot: what are your opening hours?"}
    assert env.daemon.engine.state("u1") is CustomerState.UNKNOWN  # never queued


async def test_upstream_in_safe_mode_gets_a_verifiable_encrypted_push(
    make_env: EnvFactory, upstream_server: Callable[..., Awaitable[tuple[Upstream, str]]]
) -> None:
    up, url = await upstream_server(SafeModeCrypto(CB_TOKEN, AES_KEY, APPID))
    env = await make_env(upstream_url=url, aes_key=AES_KEY)
    await env.ctl.say("u2", "hello")
    query, body = up.requests[-1]
    assert query["encrypt_type"] == "aes" and b"<Encrypt>" in body and b"hello" not in body
    sent = (await env.ctl.state())["sent"]["u2"]
    assert sent[-1]["content"] == "bot: hello"
    failures = [d for d in (await env.ctl.state())["deliveries"] if d["outcome"] != "reply"]
    assert failures == []


async def test_a_slow_upstream_is_answered_success_within_the_deadline(
    make_env: EnvFactory, upstream_server: Callable[..., Awaitable[tuple[Upstream, str]]]
) -> None:
    up, url = await upstream_server()
    up.mode = "hang"
    env = await make_env(upstream_url=url, upstream_timeout_s=0.3)
    xml = replies.build_text_message("gh_x", "slow1", int(time.time()), "hi", 7)
    started = time.monotonic()
    async with env.http.post(env.webhook, params=signed_push(xml, openid="slow1"), data=xml) as resp:
        assert (resp.status, await resp.text()) == (200, "success")
    assert time.monotonic() - started < 2.0
    up.release.set()
    assert env.daemon.upstream is not None and env.daemon.upstream.stats.get("timeout") == 1


async def test_an_unreachable_upstream_is_answered_success(make_env: EnvFactory) -> None:
    env = await make_env(upstream_url="http://127.0.0.1:9/closed")  # discard port: refused
    xml = replies.build_text_message("gh_x", "down1", int(time.time()), "hi", 8)
    async with env.http.post(env.webhook, params=signed_push(xml, openid="down1"), data=xml) as resp:
        assert (resp.status, await resp.text()) == (200, "success")
    assert env.daemon.upstream is not None and env.daemon.upstream.stats.get("error") == 1


async def test_wechat_wait_list_customers_are_picked_up(
    make_env: EnvFactory, upstream_server: Callable[..., Awaitable[tuple[Upstream, str]]]
) -> None:
    up, url = await upstream_server()
    up.mode = "transfer"  # the legacy handler sends people to WeChat's own queue
    env = await make_env(upstream_url=url)
    await env.ctl.say("q1", "hello")
    assert [w["openid"] for w in (await env.ctl.state())["waiting"]] == ["q1"]
    assert await env.assigned("q1") in ("a1@test", "a2@test")
    requested = env.of_type("event", "CustomerRequested")
    assert [(e["openid"], e["source"]) for e in requested] == [("q1", "waitlist")]


async def test_a_cancel_is_final_even_while_wechat_still_lists_the_customer(
    make_env: EnvFactory, upstream_server: Callable[..., Awaitable[tuple[Upstream, str]]]
) -> None:
    up, url = await upstream_server()
    up.mode = "transfer"
    env = await make_env(agents=(), upstream_url=url)
    await env.ctl.say("q2", "hello")  # the old handler puts q2 in WeChat's queue; nobody is online
    await wait_until(lambda: env.daemon.engine.state("q2") is CustomerState.WAITING, message="q2 picked up")
    await env.ctl.say("q2", "取消")
    await wait_until(lambda: env.daemon.engine.state("q2") is CustomerState.GONE, message="q2 cancelled")
    assert [w["openid"] for w in (await env.ctl.state())["waiting"]] == ["q2"]  # WeChat still lists q2
    poller = env.daemon.waitlist_poller
    assert poller is not None
    polls = poller.polls
    await wait_until(lambda: poller.polls >= polls + 2, message="two more wait-list polls")
    assert env.daemon.engine.state("q2") is CustomerState.GONE
    requested = [e["source"] for e in env.of_type("event", "CustomerRequested") if e["openid"] == "q2"]
    assert requested == ["waitlist"]


# ------------------------------------------------------------------------------------------ outcomes


async def test_create_failures_become_events_and_the_customer_is_routed_again(make_env: EnvFactory) -> None:
    env = await make_env()
    await env.ctl.fault("kfsession/create", errcode=65415, times=1)
    await env.ctl.say("f1", "human")
    kf = await env.assigned("f1")
    failed = env.of_type("event", "CreateFailed")
    assert [(e["openid"], e["errcode"]) for e in failed] == [("f1", 65415)]
    assert failed[0]["kf_account"] != kf  # re-routed to the other agent


async def test_a_create_that_timed_out_but_landed_later_is_adopted_not_repeated(make_env: EnvFactory) -> None:
    env = await make_env(agents=("a1@test",), groups=[{"name": "general", "agents": ["a1@test"]}])
    await env.ctl.fault("kfsession/create", delay_s=3.0, times=1)  # the client gives up after 2 s
    await env.ctl.say("late1", "human")
    await wait_until(lambda: env.of_type("event", "CreateFailed"), message="the timeout reported")
    assert env.of_type("event", "CreateFailed")[0]["errcode"] == -2
    assert env.daemon.engine.state("late1") is CustomerState.WAITING  # a1 is avoided for a while
    # WeChat processed the call after all (the fake drops a request whose client left, so play it):
    env.fake.model.create_session("a1@test", "late1", time.time())
    env.fake.flush(env.fake.model)  # ... and pushes kf_create_session
    assert await env.assigned("late1") == "a1@test"
    assert successful_creates(await env.ctl.state()) == {"late1": ["a1@test"]}


async def test_an_event_naming_an_unknown_agent_polls_and_retries(make_env: EnvFactory) -> None:
    env = await make_env(
        agents=(), polling={"online_fast_s": 60.0, "online_slow_s": 60.0, "max_backoff_s": 60.0}
    )
    await env.ctl.agents("late@test")  # WeChat has it; kfrouter polls only once a minute
    assert env.daemon.engine.agent("late@test") is None
    commands = await env.daemon.submit(ev.SessionCreated(openid="s1", kf_account="late@test", source="push"))
    assert commands == []
    assert env.daemon.engine.with_agent("s1") == "late@test"
    # still unknown after the poll: the event is refused once, loudly, and routing goes on
    with pytest.raises(Exception, match="ghost@test"):
        await env.daemon.submit(ev.SessionClosed(openid="s9", kf_account="ghost@test"))
    assert env.daemon.health()["status"] == "running"


async def test_a_session_moved_by_kfrouter_is_closed_once_and_counted_once(make_env: EnvFactory) -> None:
    env = await make_env()
    await env.ctl.say("m1", "human")
    first = await env.assigned("m1")
    other = "a2@test" if first == "a1@test" else "a1@test"
    await env.ctl.fault("kfsession/create", delay_s=0.5, times=1)  # keep the move observable
    await env.daemon.submit(ev.ReassignRequested(openid="m1", to_account=other))
    await wait_until(
        lambda: env.daemon.engine.state("m1") is CustomerState.RESERVED, message="m1 re-reserved"
    )
    with Store(env.daemon.config.store.path) as mid:  # a crash now would not lose m1
        # the create is sent once its reservation is durable (the store's next group commit)
        state = await wait_until(lambda: (st := mid.load_state()).reservations and st, message="stored")
        assert [(w.openid, w.group) for w in state.waiting] == [("m1", "general")]
        assert [(r.openid, r.kf_account) for r in state.reservations] == [("m1", other)]
    assert await env.assigned("m1", to=other) == other

    async def counts_agree() -> bool:
        wechat = {a["kf_account"]: a["accepted_case"] for a in (await env.ctl.state())["agents"]}
        mine = {a.kf_account: a.sessions for a in env.daemon.engine.agents()}
        return wechat == mine == {first: 0, other: 1}

    await wait_until(counts_agree, message="session counts of kfrouter and WeChat agree")
    with Store(env.daemon.config.store.path) as other_store:
        in_session = other_store.load_state().in_session
        assert list(in_session) == ["m1"] and in_session["m1"][0] == other


# ------------------------------------------------------------------------------------------ restart


async def test_start_up_recovers_waiting_customers_and_reservations(
    make_env: EnvFactory, tmp_path: Path
) -> None:
    t0 = time.time() - 300
    with Store(tmp_path / "kfrouter.db") as store:
        for i, openid in enumerate(["w1", "w2", "r_done", "r_lost"]):
            store.add_waiting(WaitingRow(openid, "general", 0, t0 + i))
        store.add_reservation("r_done", "a1@test", t0 + 10)  # the create had landed before the crash
        store.add_reservation("r_lost", "a2@test", t0 + 11)  # it had not
        store.add_waiting(WaitingRow("gone", "general", 0, t0))
        store.record_session_start("gone", "a2@test", t0 + 1)  # closed while kfrouter was down

    async def wechat_side(fake: FakeWeChat) -> None:
        fake.model.create_session("a1@test", "r_done", time.time())
        fake.model.create_log.clear()

    env = await make_env(before_start=wechat_side)
    assert env.daemon.engine.with_agent("r_done") == "a1@test"  # adopted at start-up, no new create
    for openid in ("w1", "w2", "r_lost"):
        await env.assigned(openid)
    state = await env.ctl.state()
    creates = successful_creates(state)
    assert sorted(creates) == ["r_lost", "w1", "w2"]
    assert all(len(v) == 1 for v in creates.values())
    with Store(tmp_path / "kfrouter.db") as store:
        outcomes = {c.openid: c.outcome for c in store.session_log()}
        assert outcomes["gone"] == "served"
        assert store.load_state().reservations == []


# ------------------------------------------------------------------------------------------ lifecycle


async def test_healthz_reports_the_engine(make_env: EnvFactory) -> None:
    env = await make_env()
    async with env.http.get(f"http://127.0.0.1:{env.host.port}/healthz") as resp:
        body = await resp.json()
    assert resp.status == 200
    assert body["status"] == "running" and body["agents_online"] == 2 and body["last_poll_ok"] is True
    assert {"queue", "inbox", "reservations", "sessions"} <= set(body)


async def test_shutdown_refuses_new_pushes_and_keeps_calls_in_flight_for_next_start(
    make_env: EnvFactory, tmp_path: Path
) -> None:
    env = await make_env(options=DaemonOptions(create_timeout_s=5.0, shutdown_timeout_s=0.5))
    await env.ctl.fault("kfsession/create", delay_s=2.0)
    await env.ctl.say("z1", "human")
    await wait_until(lambda: env.daemon.health()["commands_pending"], message="a create in flight")
    env.host.stop()
    await wait_until(lambda: env.daemon.stopping, message="stopping")
    xml = replies.build_text_message("gh_x", "z2", int(time.time()), "human", 99)
    async with env.http.post(env.webhook, params=signed_push(xml, openid="z2"), data=xml) as resp:
        assert resp.status == 503
    await asyncio.wait_for(env.task, 10)
    assert env.daemon.stopped.is_set()
    with Store(tmp_path / "kfrouter.db") as store:
        state = store.load_state()
        assert [r.openid for r in state.reservations] == ["z1"]  # resolved by the next start
        assert [w.openid for w in state.waiting] == ["z1"]


async def test_submit_returns_the_commands_and_observers_see_them(make_env: EnvFactory) -> None:
    env = await make_env(agents=())
    await env.daemon.submit(ev.AgentsSeen(rows=[], complete=True))
    commands = await env.daemon.submit(ev.CustomerRequested(openid="x1", group="general"))
    assert commands == []  # nobody online
    seen = [e for e in env.events if e["kind"] == "event" and e["type"] == "CustomerRequested"]
    assert seen and seen[-1]["openid"] == "x1" and seen[-1]["tags"] == frozenset()


# ------------------------------------------------------------------------------ agents polls


async def polled_by_hand(make_env: EnvFactory) -> tuple[Env, AgentPoller]:
    """A daemon whose agents are polled when the test asks (the background pollers wait a minute), and
    its agents poller."""
    env = await make_env(polling={"online_fast_s": 60.0, "online_slow_s": 60.0, "max_backoff_s": 60.0})
    poller = env.daemon.agent_poller
    assert poller is not None
    return env, poller


async def test_an_agents_poll_repeating_the_last_one_is_a_success_but_not_applied_again(
    make_env: EnvFactory,
) -> None:
    env, poller = await polled_by_hand(make_env)
    runner = env.daemon
    seen: list[dict[str, Any]] = []
    runner.observers.append(recorder(seen))

    def applied() -> int:
        return sum(1 for e in seen if e["kind"] == "event" and e["type"] == "AgentsSeen")

    assert await poller.poll_once() is True  # the first poll after start-up is applied
    assert applied() == 1
    polls, at = poller.polls, poller.last_at
    for _ in range(3):  # WeChat answers the same, the engine holds it already
        assert await poller.poll_once() is True
    assert applied() == 1
    assert (poller.polls, poller.last_ok) == (polls + 3, True)  # still successful polls (health, metrics)
    assert poller.last_at is not None and at is not None and poller.last_at >= at
    assert runner.health()["last_poll_ok"] is True

    # WeChat's answer changed: applied
    await env.ctl.agents("a2@test", online=False)
    assert await poller.poll_once() is True
    assert applied() == 2
    a2 = runner.engine.agent("a2@test")
    assert a2 is not None and not a2.online

    # the same answer, but the engine was changed meanwhile (here: told a1 went offline): applied again,
    # and WeChat's truth is back
    await runner.submit(ev.AgentsSeen(rows=[AgentRow(kf_account="a1@test", status=0)], complete=False))
    assert await poller.poll_once() is True
    assert applied() == 4  # the test's own event, then the poll
    a1 = runner.engine.agent("a1@test")
    assert a1 is not None and a1.online

    # someone waits (nobody online): every poll is applied, the same answer too (the routing that follows
    # an input may assign them)
    await env.ctl.agents("a1@test", online=False)
    assert await poller.poll_once() is True
    assert await poller.poll_once() is True
    assert applied() == 5
    await runner.submit(ev.CustomerRequested(openid="w1", group="general"))
    assert runner.engine.queue_length() == 1
    for _ in range(2):
        assert await poller.poll_once() is True
    assert applied() == 7  # both


async def test_a_session_count_drifting_from_wechat_heals_in_two_polls_with_repeats_skipped(
    make_env: EnvFactory,
) -> None:
    env, poller = await polled_by_hand(make_env)
    runner = env.daemon
    assert await poller.poll_once() and await poller.poll_once()  # applied, then a repeat
    # the engine learns of a session WeChat does not list (as when the close push was lost)
    await runner.submit(ev.SessionCreated(openid="d1", kf_account="a1@test", source="push"))

    def count() -> int:
        a1 = runner.engine.agent("a1@test")
        assert a1 is not None
        return a1.sessions

    assert count() == 1
    assert await poller.poll_once()  # one poll may be a race: the engine's count is kept
    assert count() == 1
    assert await poller.poll_once()  # the same difference twice: WeChat's count is taken
    assert count() == 0


# ------------------------------------------------------------------------------ operator problems


def _told(caplog: pytest.LogCaptureFixture, code: str) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if r.name == "kfrouter.problems" and code in r.getMessage()
    ]


async def test_65400_during_operation_is_explained_once(
    make_env: EnvFactory, caplog: pytest.LogCaptureFixture
) -> None:
    env = await make_env()
    poller = env.daemon.agent_poller
    assert poller is not None
    caplog.set_level(logging.DEBUG, logger="kfrouter")
    caplog.clear()
    env.fake.model.options.kf_api_enabled = False  # someone switched the new customer service off
    for _ in range(4):
        assert await poller.poll_once() is False
    assert len(_told(caplog, "65400")) == 1
    assert "新版客服功能" in _told(caplog, "65400")[0]
    assert (
        len(
            [
                r
                for r in caplog.records
                if r.name.startswith("kfrouter")
                and r.levelno >= logging.WARNING
                and "65400" in r.getMessage()
            ]
        )
        == 1
    )  # the explanation, not a warning per poll
    env.fake.model.options.kf_api_enabled = True
    assert await poller.poll_once() is True
    env.fake.model.options.kf_api_enabled = False
    assert await poller.poll_once() is False
    assert len([m for m in _told(caplog, "65400") if "answered 65400" in m]) == 2  # back again: told again


async def test_start_up_checks_log_problems_in_the_doctors_words(
    make_env: EnvFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="kfrouter")
    # the config's group names a2@test, but WeChat has no such account
    await make_env(agents=("a1@test",))

    def start_up_lines() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.getMessage().startswith("start-up check")]

    lines = await wait_until(
        lambda: [m for m in start_up_lines() if "a2@test" in m], timeout=20, message="start-up check lines"
    )
    assert "problem" in lines[0] and "fix:" in lines[0]
