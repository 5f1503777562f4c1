"""The customer's side end to end: the daemon in-process against the fake WeChat (real HTTP both ways on
127.0.0.1, port 0). Choosing an agent by number or name, waiting for a busy chosen agent, an offline
choice, giving up (waiting and reserved), an agent leaving with open sessions (reassign and keep), stale
sessions, reassignment by hand (``kfrouter sessions reassign`` and the admin API).

Time: the daemon runs on ``JumpClock`` — real time plus an offset a test moves forward (grace periods,
stale limits), followed by ``daemon.wake()``; every other wait is a bounded poll of a condition.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest import ADMIN_TOKEN, CB_TOKEN, FakeControl, config_dict, recorder, wait_until

from kfrouter.router.app import build_daemon
from kfrouter.router.cli import main as kfrouter_main
from kfrouter.router.config import Config
from kfrouter.router.core import events as ev
from kfrouter.router.core.model import CustomerState
from kfrouter.router.daemon import DaemonOptions
from kfrouter.router.edges.store import Store
from kfrouter.router.host import Host
from kfrouter.sim.fake_options import FakeOptions
from kfrouter.sim.fake_server import FakeWeChat, running_fake
from kfrouter.sim.wechat_model import WeChatModel

APPID = "wx_test_app"
SECRET = "test_secret"


class JumpClock:
    """Unix seconds that follow the monotonic clock, plus an offset ``jump()`` moves forward."""

    def __init__(self) -> None:
        self._anchor = time.time() - time.monotonic()
        self.offset = 0.0

    def now(self) -> float:
        return time.monotonic() + self._anchor + self.offset

    def jump(self, seconds: float) -> None:
        self.offset += seconds


class SessionWatch:
    """Watches the fake's ``kfsession/create``: a create for a customer who holds a session with another
    agent at that moment would be a second session (WeChat answers 65414) — recorded as a violation."""

    def __init__(self, model: WeChatModel) -> None:
        self.violations: list[tuple[str, str, str]] = []
        original = model.create_session

        def create(kf_account: object, openid: object, now: float, *, via: str = "api") -> Any:
            current = model.sessions.get(openid) if isinstance(openid, str) else None
            if current is not None and current.kf_account != kf_account:
                self.violations.append((str(openid), current.kf_account, str(kf_account)))
            return original(kf_account, openid, now, via=via)

        model.create_session = create  # type: ignore[method-assign]


class Env:
    """One fake WeChat and one daemon in this process."""

    def __init__(
        self,
        fake: FakeWeChat,
        host: Host,
        clock: JumpClock,
        http: aiohttp.ClientSession,
        task: asyncio.Task[None],
    ) -> None:
        self.fake = fake
        self.host = host
        self.daemon = daemon = host.runner
        self.clock = clock
        self.http = http
        self.task = task
        self.ctl = FakeControl(fake.base_url, http)
        self.watch = SessionWatch(fake.model)
        self.events: list[dict[str, Any]] = []
        daemon.observers.append(recorder(self.events))

    @property
    def engine(self) -> Any:
        return self.daemon.engine

    async def poll_agents(self) -> None:
        """Run one ``getonlinekflist`` poll now and apply it (instead of waiting for the next one)."""
        poller = self.daemon.agent_poller
        assert poller is not None
        await poller.poll_once()

    async def settle(self) -> None:
        """Return once the engine task has applied everything queued before (and run its timers)."""
        await self.daemon.submit(ev.AgentsSeen(rows=(), complete=False))  # changes nothing

    async def jump(self, seconds: float) -> None:
        """Move the daemon's clock forward and let the engine act on the timers that came due."""
        self.clock.jump(seconds)
        self.daemon.wake()
        await self.settle()

    async def texts(self, openid: str, via: str | None = None) -> list[dict[str, Any]]:
        sent = (await self.ctl.state())["sent"].get(openid, [])
        return [m for m in sent if via is None or m["via"] == via]

    async def last_reply(self, openid: str) -> str:
        replies = await self.texts(openid, "passive_reply")
        assert replies, f"no passive reply to {openid}"
        return str(replies[-1]["content"])

    async def text_containing(self, openid: str, fragment: str, timeout: float = 10.0) -> dict[str, Any]:
        async def find() -> dict[str, Any] | None:
            return next((m for m in await self.texts(openid) if fragment in m["content"]), None)

        found: dict[str, Any] = await wait_until(find, timeout=timeout, message=f"{openid} told {fragment!r}")
        return found

    async def assigned(
        self, openid: str, *, to: str | None = None, not_to: str | None = None, timeout: float = 10.0
    ) -> str:
        """Wait until the fake has ``openid`` in a session (with ``to`` / not with ``not_to``, if given)
        and the engine agrees."""

        async def check() -> str | None:
            kf = (await self.ctl.sessions()).get(openid)
            ok = kf is not None and (to is None or kf == to) and kf != not_to
            ok = ok and self.engine.with_agent(openid) == kf
            return kf if ok and self.engine.state(openid) is CustomerState.IN_SESSION else None

        kf: str = await wait_until(
            check, timeout=timeout, message=f"{openid} in a session with {to or 'anyone'}"
        )
        return kf

    async def quiet(self) -> None:
        """Wait until no reservation is pending and no command is queued or running."""

        def idle() -> bool:
            ex = self.daemon.executor
            return not self.engine.reservations() and ex is not None and ex.pending == 0

        await wait_until(idle, message="the daemon idle")

    async def creates(self, openid: str) -> list[tuple[str, int]]:
        return [
            (c["kf_account"], c["errcode"])
            for c in (await self.ctl.state())["create_log"]
            if c["openid"] == openid
        ]


EnvFactory = Callable[..., Awaitable[Env]]


@pytest.fixture
async def make_env(tmp_path: Path) -> AsyncIterator[EnvFactory]:
    stack: list[tuple[Any, Env]] = []

    async def factory(*, online: tuple[str, ...] = (), offline: tuple[str, ...] = (), **config: Any) -> Env:
        opts = FakeOptions()
        opts.update({"check_openid": False})
        cm = running_fake(APPID, SECRET, token=CB_TOKEN, options=opts)
        fake = await cm.__aenter__()
        http = aiohttp.ClientSession()
        ctl = FakeControl(fake.base_url, http)
        if online:
            await ctl.agents(*online)
        if offline:
            await ctl.agents(*offline, online=False)
        cfg = Config.from_dict(
            config_dict(api_base=fake.base_url, store=tmp_path / "kfrouter.db", **config), env={}
        )
        clock = JumpClock()
        daemon = build_daemon(cfg, clock=clock, options=DaemonOptions(create_timeout_s=3.0, api_timeout_s=3.0))
        task = asyncio.create_task(daemon.run())
        await asyncio.wait_for(daemon.listening.wait(), 10)
        fake.pusher.webhook = f"http://127.0.0.1:{daemon.port}/wechat"
        await asyncio.wait_for(daemon.started.wait(), 15)
        env = Env(fake, daemon, clock, http, task)
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


def numbered(listing: str) -> dict[int, str]:
    """The numbered lines of an agent list: number -> the rest of the line."""
    out: dict[int, str] = {}
    for line in listing.splitlines():
        number, dot, rest = line.partition(". ")
        if dot and number.isdigit():
            out[int(number)] = rest
    return out


THREE = {"name": "general", "agents": ["a1@test", "a2@test", "a3@test"], "capacity": {"a2@test": 1}}


# ------------------------------------------------------------------------------------- choosing an agent


async def test_a_customer_picks_agent_2_by_number_and_gets_agent_2(make_env: EnvFactory) -> None:
    env = await make_env(
        online=("a1@test", "a2@test", "a3@test"),
        groups=(THREE,),
        routing={"choose_agent_keywords": ["choose agent"], "choose_agent_menu_keys": ["CHOOSE"]},
        notify={"enabled": True, "language": "en"},
    )
    await env.ctl.call("POST", "customer/click", {"openid": "p1", "key": "CHOOSE", "wait": True})
    lines = numbered(await env.last_reply("p1"))
    # numbered, with nickname, group and wait: everyone is free, so nobody waits
    assert lines == {i: f"a{i} (general) — available now" for i in (1, 2, 3)}
    assert env.engine.state("p1") is CustomerState.UNKNOWN  # a list is not a request
    await env.ctl.say("p1", "choose agent")  # the keyword works like the menu key
    assert numbered(await env.last_reply("p1")) == lines
    await env.ctl.say("p1", "2")
    assert await env.assigned("p1") == "a2@test"
    assert await env.creates("p1") == [("a2@test", 0)]
    # a name works as well as a number (full-width digits too, as Chinese keyboards type them)
    await env.ctl.say("p2", "choose agent")
    await env.ctl.say("p2", "Ａ3")
    assert await env.assigned("p2") == "a3@test"


async def test_a_busy_chosen_agent_is_waited_for_with_the_wait_told_then_serves(make_env: EnvFactory) -> None:
    env = await make_env(
        online=("a1@test", "a2@test", "a3@test"),
        groups=(THREE,),
        routing={"choose_agent_keywords": ["choose agent"]},
        engine={"preferred_wait_s": 600},
        notify={"enabled": True, "language": "en"},
    )
    await env.ctl.say("p1", "choose agent a2")  # keyword + name: no list needed
    assert await env.assigned("p1") == "a2@test"  # a2 now holds its one session
    await env.ctl.say("p2", "choose agent")
    lines = numbered(await env.last_reply("p2"))
    # a2 is busy: one session of capacity 1, 300 s per session until the estimator has learned more
    assert lines[2] == "a2 (general) — wait about 5 minutes"
    assert lines[1] == "a1 (general) — available now"
    await env.ctl.say("p2", "2")
    told = await env.text_containing("p2", "the agent you chose, is busy")
    assert told["via"] == "custom_send"
    assert told["content"].startswith("a2, the agent you chose, is busy: estimated wait about 5 minutes.")
    assert "within 10 minutes" in told["content"]  # preferred_wait_s = 600
    assert 'Reply "取消" to leave the queue.' in told["content"]  # the first cancel keyword
    # a1 and a3 are free, yet p2 waits for a2: the choice is honoured, their place is kept
    assert env.engine.state("p2") is CustomerState.WAITING
    assert env.engine.waiting_view("p2", env.clock.now()).preferred_agent == "a2@test"
    assert await env.creates("p2") == []
    await env.ctl.close("p1")  # a2 finishes with p1
    assert await env.assigned("p2") == "a2@test"
    served = await env.text_containing("p2", "Agent a2 is now serving you.")
    assert served["kf_account"] == "a2@test"
    assert await env.creates("p2") == [("a2@test", 0)]


async def test_without_the_chosen_agent_in_time_the_group_policy_takes_over(make_env: EnvFactory) -> None:
    env = await make_env(
        online=("a1@test", "a2@test"),
        groups=({"name": "general", "agents": ["a1@test", "a2@test"], "capacity": {"a1@test": 1}},),
        routing={"choose_agent_keywords": ["choose agent"]},
        engine={"preferred_wait_s": 120},
    )
    await env.ctl.say("f1", "choose agent a1")
    assert await env.assigned("f1") == "a1@test"
    await env.ctl.say("f2", "choose agent a1")
    await wait_until(lambda: env.engine.state("f2") is CustomerState.WAITING, message="f2 waits for a1")
    await env.jump(119)
    await env.quiet()
    assert env.engine.state("f2") is CustomerState.WAITING  # still a1's alone
    await env.jump(2)  # past preferred_wait_s: the group's policy decides
    assert await env.assigned("f2") == "a2@test"


async def test_an_offline_or_unknown_choice_gets_a_clear_answer_and_the_list_again(
    make_env: EnvFactory,
) -> None:
    env = await make_env(
        online=("a1@test", "a2@test", "a3@test"),
        groups=(THREE,),
        routing={"choose_agent_keywords": ["选客服"]},
        notify={"language": "zh"},
    )
    await env.ctl.say("o1", "选客服")
    first = numbered(await env.last_reply("o1"))
    assert first == {i: f"a{i}（general），现在即可接入" for i in (1, 2, 3)}
    await env.ctl.agents("a3@test", online=False)  # a3 logs off while o1 reads the list
    await env.poll_agents()
    await env.ctl.say("o1", "3")
    reply = await env.last_reply("o1")
    assert reply.startswith("客服 a3 当前不在线，请重新选择。请回复编号或名字选择客服：")
    assert numbered(reply) == {1: "a1（general），现在即可接入", 2: "a2（general），现在即可接入"}
    assert env.engine.state("o1") is CustomerState.UNKNOWN  # not queued for an agent who is away
    await env.ctl.say("o1", "9")  # no such number
    reply = await env.last_reply("o1")
    assert reply.startswith("没有编号为 9 的客服。请回复编号或名字选择客服：") and len(numbered(reply)) == 2
    await env.ctl.say("o1", "选客服 bob")  # no such name
    assert (await env.last_reply("o1")).startswith("没有找到客服“bob”。")
    await env.ctl.say("o1", "2")  # the new list's numbering counts now
    assert await env.assigned("o1") == "a2@test"
    assert await env.creates("o1") == [("a2@test", 0)]


async def test_a_waiting_customer_who_tries_to_choose_is_told_why_not(make_env: EnvFactory) -> None:
    env = await make_env(
        offline=("a1@test",),
        groups=({"name": "general", "agents": ["a1@test"]},),
        routing={"choose_agent_keywords": ["choose agent"]},
        notify={"language": "en"},
    )
    await env.ctl.say("q1", "human")
    await wait_until(lambda: env.engine.state("q1") is CustomerState.WAITING, message="q1 waiting")
    await env.ctl.say("q1", "choose agent a1")
    assert (await env.last_reply("q1")).startswith("You are already in the queue and cannot change agents")
    assert 'reply "取消" to leave the queue' in await env.last_reply("q1")
    assert env.engine.state("q1") is CustomerState.WAITING


# ------------------------------------------------------------------------------------------- giving up


async def test_a_waiting_customer_cancels_and_is_never_assigned(make_env: EnvFactory) -> None:
    env = await make_env(
        offline=("a1@test",),
        groups=({"name": "general", "agents": ["a1@test"]},),
        notify={"enabled": True, "language": "zh"},
    )
    await env.ctl.say("w1", "human")
    await env.ctl.say("w2", "human")
    queued = await env.text_containing("w1", "您已进入人工客服排队")
    assert "回复“取消”可取消排队。" in queued["content"]  # how to give up is part of the queued text
    await env.ctl.say("w1", "不等了")
    assert await env.last_reply("w1") == "您的人工客服排队已取消。如仍需帮助，请重新发送消息。"
    await env.settle()
    assert env.engine.state("w1") is CustomerState.GONE
    assert env.engine.gone_reason("w1") == "left:cancelled"
    with Store(env.daemon.config.store.path) as store:
        cases = {c.openid: c.outcome for c in store.session_log()}
        assert cases == {"w1": "cancelled", "w2": None}
        assert [w.openid for w in store.load_state().waiting] == ["w2"]
    await env.ctl.agents("a1@test")  # an agent logs in: the one still waiting is served, w1 is not
    await env.poll_agents()
    assert await env.assigned("w2") == "a1@test"
    await env.quiet()
    assert await env.creates("w1") == []
    assert "w1" not in await env.ctl.sessions()
    assert env.engine.gone_reason("w1") == "left:cancelled"


async def test_a_cancel_while_the_create_is_in_flight_releases_it_and_closes_what_lands(
    make_env: EnvFactory,
) -> None:
    env = await make_env(
        online=("a1@test",),
        groups=({"name": "general", "agents": ["a1@test"]},),
        notify={"enabled": True, "language": "en"},
    )
    await env.ctl.fault("kfsession/create", delay_s=2.0, times=1)  # the create is slow to answer
    await env.ctl.say("r1", "human")
    await wait_until(lambda: env.engine.state("r1") is CustomerState.RESERVED, message="r1 reserved")
    await env.ctl.say("r1", "cancel")
    assert (await env.last_reply("r1")).startswith("Your place in the queue has been cancelled.")
    await env.settle()
    assert env.engine.reservations() == []  # released at once: a1's capacity is free again
    assert env.engine.gone_reason("r1") == "left:cancelled"
    # WeChat still opens the session the create asked for; kfrouter closes it, since r1 gave up
    await wait_until(
        lambda: any(e["kind"] == "command" and e["type"] == "CloseSession" for e in env.events),
        message="the landed session closed",
    )
    await wait_until(lambda: env.engine.state("r1") is CustomerState.GONE, message="r1 gone again")
    await env.quiet()
    assert "r1" not in await env.ctl.sessions()
    assert await env.creates("r1") == [("a1@test", 0)]
    assert not [m for m in await env.texts("r1") if "now serving you" in m["content"]]
    with Store(env.daemon.config.store.path) as store:
        # r1's case ended 'cancelled'; the session that landed anyway (and was closed) is logged apart
        assert [c.outcome for c in store.session_log() if c.openid == "r1"] == ["cancelled", "served"]


# ------------------------------------------------------------------------------ an agent leaves, stale


async def test_an_agent_leaving_with_three_sessions_they_are_reassigned_once_each(
    make_env: EnvFactory,
) -> None:
    env = await make_env(
        online=("a1@test", "k1@test"),
        offline=("a2@test", "a3@test"),
        groups=(
            {
                "name": "general",
                "agents": ["a1@test", "a2@test", "a3@test"],
                "capacity": {"a1@test": 3, "a2@test": 2, "a3@test": 2},
                "on_agent_offline": "reassign",
                "offline_grace_s": 60,
            },
            {"name": "vip", "agents": ["k1@test"]},  # keeps its sessions (the default)
        ),
        routing={"rules": [{"keywords": ["vip"], "group": "vip"}]},
        notify={"enabled": True, "language": "zh"},
    )
    customers = ("r1", "r2", "r3")
    for openid in customers:
        await env.ctl.say(openid, "human")
        assert await env.assigned(openid) == "a1@test"
    await env.ctl.say("v1", "vip human")
    assert await env.assigned("v1") == "k1@test"
    await env.ctl.agents("a2@test", "a3@test")
    await env.ctl.agents("a1@test", "k1@test", online=False)  # both leave with their sessions open
    await env.poll_agents()
    assert {a.kf_account for a in env.engine.agents() if a.online} == {"a2@test", "a3@test"}
    await env.jump(59)
    await env.quiet()
    assert await env.ctl.sessions() == {"r1": "a1@test", "r2": "a1@test", "r3": "a1@test", "v1": "k1@test"}
    # past the grace: closed, then created with another agent of the group; the closes are slow, and a1
    # comes back meanwhile — the moves still go ahead, one session at a time
    await env.ctl.fault("kfsession/close", delay_s=1.5)
    await env.jump(2)
    await wait_until(
        lambda: len([e for e in env.events if e.get("type") == "CloseSession"]) == 3,
        message="three closes sent",
    )
    await env.ctl.agents("a1@test")
    await env.poll_agents()
    assert env.engine.agent("a1@test").online
    assert not [e for e in env.events if e["kind"] == "event" and e["type"] == "SessionClosed"]
    moved = {openid: await env.assigned(openid, not_to="a1@test") for openid in customers}
    await env.quiet()
    assert set(moved.values()) <= {"a2@test", "a3@test"}
    state = await env.ctl.state()
    for openid in customers:
        log = [(c["kf_account"], c["errcode"]) for c in state["create_log"] if c["openid"] == openid]
        assert log == [("a1@test", 0), (moved[openid], 0)], log  # once to a1, once to the new agent
        told = await env.text_containing(openid, f"客服 {moved[openid].split('@')[0]} 正在为您服务")
        assert told["kf_account"] == moved[openid]
    assert env.watch.violations == []  # no create while the customer still had a session
    sessions = {s["openid"]: s["kf_account"] for s in state["sessions"]}
    assert sessions == {**moved, "v1": "k1@test"}  # exactly one each; the vip group kept its session
    assert env.engine.sessions() == sessions


async def test_a_stale_session_is_closed_with_the_configured_message(make_env: EnvFactory) -> None:
    message = "本次会话已超过 10 分钟，已自动结束。如需帮助，请重新发送消息。"
    env = await make_env(
        online=("a1@test",),
        groups=({"name": "general", "agents": ["a1@test"]},),
        engine={"stale_session_s": 600, "stale_message": message},
    )
    await env.ctl.say("s1", "human")
    assert await env.assigned("s1") == "a1@test"
    await env.ctl.say("s2", "human")
    assert await env.assigned("s2") == "a1@test"
    await env.jump(599)
    await env.quiet()
    assert set(await env.ctl.sessions()) == {"s1", "s2"}
    await env.jump(2)
    await wait_until(lambda: env.engine.state("s1") is CustomerState.GONE, message="s1 closed")
    await wait_until(lambda: env.engine.state("s2") is CustomerState.GONE, message="s2 closed")
    await env.quiet()
    assert await env.ctl.sessions() == {}
    for openid in ("s1", "s2"):
        told = [m for m in await env.texts(openid, "custom_send") if m["content"] == message]
        assert len(told) == 1
        assert env.engine.gone_reason(openid) == "closed_stale"


# ----------------------------------------------------------------------------------- reassign by hand


async def test_reassign_by_hand_with_the_cli_and_the_admin_api(
    make_env: EnvFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    env = await make_env(
        online=("a1@test", "a2@test", "a3@test"),
        groups=({"name": "general", "agents": ["a1@test", "a2@test", "a3@test"]},),
        notify={"enabled": True, "language": "en"},
    )
    await env.ctl.say("m1", "human")
    first = await env.assigned("m1")
    other, third = sorted({"a1@test", "a2@test", "a3@test"} - {first})
    url = f"http://127.0.0.1:{env.host.port}"
    argv = ["sessions", "reassign", "m1", "--to", other, "--url", url, "--admin-token", ADMIN_TOKEN]
    capsys.readouterr()
    code = await asyncio.to_thread(kfrouter_main, argv)
    out = capsys.readouterr().out
    assert code == 0, out
    assert f"closing the session of m1 with {first}; then assigning to {other}" in out
    assert await env.assigned("m1", to=other) == other
    told = await env.text_containing("m1", f"Agent {other.split('@')[0]} is now serving you.")
    assert told["kf_account"] == other
    # the admin API without a target: whoever the policy picks — not an agent m1 just left (for avoid_s)
    async with env.http.post(
        f"{url}/api/sessions/m1/reassign", json={}, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
    ) as resp:
        assert resp.status == 202, await resp.text()
        assert (await resp.json())["status"] == "closing"
    assert await env.assigned("m1", to=third) == third
    await env.quiet()
    assert await env.creates("m1") == [(first, 0), (other, 0), (third, 0)]
    assert env.watch.violations == []
    # a customer without a session: refused with a message naming them
    code = await asyncio.to_thread(kfrouter_main, ["sessions", "reassign", "nobody", *argv[3:]])
    assert code == 1 and "nobody" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ templates


async def test_configured_templates_render_every_placeholder_unchanged(make_env: EnvFactory) -> None:
    queued = "pos={position} ahead={ahead} wait={wait} eta={eta_min} group={group} cancel={cancel}"
    env = await make_env(
        offline=("a1@test",),
        groups=({"name": "general", "agents": ["a1@test"]},),
        routing={"cancel_keywords": ["stop", "取消"]},
        notify={
            "enabled": True,
            "language": "en",
            "templates": {"en": {"queued": queued, "assigned": "agent={agent} group={group}"}},
        },
    )
    await env.ctl.say("t0", "human")
    await env.ctl.say("t1", "human")
    told = await env.text_containing("t1", "pos=")
    # nobody online: no estimate ("?" minutes); {cancel} is the first cancel keyword
    assert told["content"] == (
        "pos=2 ahead=1 wait=unknown (no agent is online right now) eta=? group=general cancel=stop"
    )
    await env.ctl.agents("a1@test")
    await env.poll_agents()
    assigned = await env.text_containing("t0", "agent=")
    assert assigned["content"] == "agent=a1 group=general" and assigned["kf_account"] == "a1@test"


# ------------------------------------------------------------------------ the same Desk in the simulator


async def test_the_daemon_and_the_simulator_send_the_same_texts_for_the_same_arrivals(
    make_env: EnvFactory, tmp_path: Path
) -> None:
    """One agent with one session, three customers asking at once: the daemon (against the fake WeChat)
    tells the two who wait their place and estimate, updates them, announces their agent. The traffic it
    recorded, exported as a trace and replayed by the simulator with the same notification settings,
    makes the simulator's Desk send the very same texts to the same customers in the same order."""
    import io

    from kfrouter.router.desk_setup import notify_config
    from kfrouter.sim.runner import RunConfig, run_trace

    group = {"name": "general", "agents": ["a1@test"], "capacity": {"a1@test": 1}}
    env = await make_env(online=("a1@test",), groups=[group], notify={"enabled": True})
    await env.poll_agents()
    for openid in ("c1", "c2", "c3"):
        await env.ctl.say(openid, "human")
    await env.assigned("c1", to="a1@test")
    for who in ("c1", "c2"):
        for _ in range(10):  # 100 s of the daemon's clock, in steps (estimate sweeps every 30 s)
            await env.jump(10.0)
        await env.ctl.close(who)
        await env.assigned("c2" if who == "c1" else "c3", to="a1@test")
    await env.jump(10.0)
    await env.ctl.close("c3")
    await wait_until(lambda: env.engine.state("c3") is CustomerState.GONE, message="c3's session over")
    await env.quiet()
    daemon_texts = [
        (openid, m["content"])
        for openid in ("c1", "c2", "c3")
        for m in await env.texts(openid, "custom_send")
    ]
    assert {o for o, _t in daemon_texts} == {"c2", "c3"}  # c1 was served at once: nothing to tell
    assert len(daemon_texts) >= 4  # place and estimate for both, then an update or their agent's name

    ncfg = notify_config(env.daemon.config)
    assert ncfg is not None
    store = env.daemon.store
    assert store is not None
    buf = io.StringIO()
    store.export_trace(buf, default_capacity=1)
    trace = tmp_path / "recorded.jsonl"
    trace.write_text(buf.getvalue(), encoding="utf-8")
    cfg = RunConfig(
        policy="least-load", default_capacity=1, notify=True, notify_config=ncfg, record_texts=True
    )
    result = run_trace(str(trace), cfg)
    sim_texts = [(s.openid, s.text) for s in sorted(result.texts, key=lambda s: (s.openid, s.t))]
    assert sim_texts == daemon_texts
    assert result.notify_budget_violations == 0
