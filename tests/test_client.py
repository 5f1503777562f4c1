"""WeChatClient against the fake WeChat server over real HTTP on 127.0.0.1.

Covers every endpoint, token expiry mid-run (the fake's clock jumps), retry of -1 with backoff,
45009 / 45015 / 45047 surfaced without retry, 50 concurrent calls sharing one token refresh, and the
always-invalid-token mode stopping after one refresh. The fake's pushes reach a real ``PushReceiver``
that answers ``transfer_customer_service``, so the wait list fills the way it does in production.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from kfrouter.router.clock import SteadyClock
from kfrouter.router.core.model import AgentRow
from kfrouter.router.edges.client import (
    CUSTOM_SEND,
    MSG_LIST,
    SESSION_WAITCASE,
    KfAccountInfo,
    MsgRecord,
    SessionEntry,
    SessionInfo,
    WeChatClient,
)
from kfrouter.router.edges.errors import (
    AgentOffline,
    CredentialError,
    InvalidKfAccount,
    NetworkError,
    NoSession,
    NotSent,
    RateLimited,
    ServedByOther,
    SystemBusy,
    TokenError,
    WeChatError,
    WindowClosed,
)
from kfrouter.router.edges.webhook import PushReceiver, WebhookConfig
from kfrouter.router.wechat import replies
from kfrouter.router.wechat.push import Push, UserMessage
from kfrouter.sim.fake_server import FakeWeChat, running_fake

APPID = "wx_client_test_app"
SECRET = "s3cr3t_value_never_logged"
CB_TOKEN = "cbtoken123"
T0 = 1_700_000_000.0

STABLE = "cgi-bin/stable_token"
BASIC = "cgi-bin/token"
WAITCASE = "customservice/kfsession/getwaitcase"


class Sleeps:
    """Injected sleep: records the backoff delays and returns at once (no time passes)."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


class Env:
    def __init__(
        self, fake: FakeWeChat, http: aiohttp.ClientSession, clock: SteadyClock, receiver: PushReceiver
    ) -> None:
        self.fake = fake
        self.http = http
        self.clock = clock
        self.receiver = receiver
        self.sleeps = Sleeps()

    def client(self, **kw: Any) -> WeChatClient:
        kw.setdefault("sleep", self.sleeps)
        kw.setdefault("rng", random.Random(7))
        return WeChatClient(self.http, APPID, SECRET, base_url=self.fake.base_url, **kw)

    async def ctl(self, method: str, name: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        async with self.http.request(method, f"{self.fake.base_url}/_fake/{name}", json=body) as resp:
            data: dict[str, Any] = await resp.json()
            assert resp.status == 200, data
            return data

    async def calls(self, endpoint: str) -> int:
        state = await self.ctl("GET", "state")
        return int(state["calls"].get(endpoint, 0))

    async def advance(self, seconds: float) -> None:
        await self.ctl("POST", "clock/advance", {"seconds": seconds})

    async def customer_waits(self, openid: str, text: str = "hi") -> None:
        """The customer writes; the push reaches our receiver, which transfers them to the queue."""
        await self.ctl("POST", "customer/message", {"openid": openid, "text": text, "wait": True})

    async def agents(self, *rows: dict[str, Any]) -> None:
        await self.ctl("POST", "agents", {"agents": list(rows)})


async def transfer_everything(push: Push, raw: str) -> str | None:
    if isinstance(push, UserMessage):
        return replies.transfer_customer_service(push.openid, push.to_user, push.create_time)
    return None


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    clock = SteadyClock(start=T0, frozen=True)
    receiver = PushReceiver(WebhookConfig(token=CB_TOKEN, appid=APPID), transfer_everything, clock=clock.now)
    app = web.Application()
    app.add_routes(receiver.routes("/wechat"))
    hook_server = TestServer(app, host="127.0.0.1", port=0)
    await hook_server.start_server()
    try:
        async with (
            running_fake(
                appid=APPID,
                secret=SECRET,
                webhook=str(hook_server.make_url("/wechat")),
                token=CB_TOKEN,
                clock=clock,
            ) as fake,
            aiohttp.ClientSession() as http,
        ):
            yield Env(fake, http, clock, receiver)
    finally:
        await hook_server.close()


# ------------------------------------------------------------------------------------ every endpoint


async def test_account_endpoints(env: Env) -> None:
    c = env.client()
    await c.add_kf_account("alice@test", "Alice")
    await c.add_kf_account("bob@test", "Bob")
    await c.update_kf_account("alice@test", "Alice W")
    await c.invite_kf_worker("bob@test", "wx_bob_personal")
    await c.upload_kf_headimg("alice@test", b"\xff\xd8\xff" + b"0" * 100)
    rows = {r.kf_account: r for r in await c.get_kf_list()}
    alice, bob = rows["alice@test"], rows["bob@test"]
    assert isinstance(alice, KfAccountInfo)
    assert alice.nickname == "Alice W" and alice.kf_id == "1001"  # the fake sends an int kf_id
    assert alice.headimgurl.startswith("http://mmbiz.qpic.cn/")
    assert bob.invite_wx == "wx_bob_personal" and bob.invite_status == "waiting"
    assert bob.invite_expire_time is not None and bob.invite_expire_time > T0
    await c.delete_kf_account("alice@test")  # POST with a JSON body
    await c.delete_kf_account("bob@test", method="GET")  # legacy GET, '@' unencoded in the query
    assert await c.get_kf_list() == []
    with pytest.raises(InvalidKfAccount) as err:
        await c.delete_kf_account("ghost@test")
    assert err.value.errcode == 65401 and "kfaccount/del" in str(err.value)


async def test_online_list_as_agent_rows_both_styles(env: Env) -> None:
    c = env.client()
    await env.agents(
        {"kf_account": "a1@test", "status": 3, "auto_accept": 4},
        {"kf_account": "a2@test", "online": True},
        {"kf_account": "a3@test", "online": False},
    )
    rows = await c.get_online_kf_list()
    assert rows == [
        AgentRow(kf_account="a1@test", status=1, accepted_case=0, auto_accept=4, kf_id="1001"),
        AgentRow(kf_account="a2@test", status=1, accepted_case=0, auto_accept=0, kf_id="1002"),
    ]
    await env.ctl(
        "POST", "options", {"online_status_style": "legacy", "kf_id_type": "str", "emit_auto_accept": False}
    )
    legacy = {r.kf_account: r for r in await c.get_online_kf_list()}
    assert (
        legacy["a1@test"].status == 3
        and legacy["a1@test"].auto_accept == 0
        and legacy["a1@test"].kf_id == "1001"
    )


async def test_session_endpoints_and_wait_list(env: Env) -> None:
    c = env.client()
    await env.agents({"kf_account": "a1@test", "online": True}, {"kf_account": "a2@test", "online": True})
    await env.customer_waits("oCust1")
    await env.customer_waits("oCust2")
    wait = await c.get_wait_case()
    assert wait.count == 2 and [e.openid for e in wait.entries] == ["oCust1", "oCust2"]
    assert wait.entries[0].latest_time == int(T0)

    await c.create_session("oCust1", "a1@test")
    await c.create_session("oCust1", "a1@test")  # same agent again: 0 (spec §2.8)
    assert await c.get_session("oCust1") == SessionInfo(kf_account="a1@test", createtime=int(T0))
    assert await c.get_session_list("a1@test") == [SessionEntry(openid="oCust1", createtime=int(T0))]
    assert (await c.get_wait_case()).count == 1
    with pytest.raises(ServedByOther):
        await c.create_session("oCust1", "a2@test")
    await c.close_session("oCust1", "a1@test")
    assert await c.get_session("oCust1") == SessionInfo(kf_account=None, createtime=0)
    assert await c.get_session_list("a1@test") == []
    with pytest.raises(NoSession) as err:
        await c.close_session("oCust1", "a1@test")
    assert err.value.errcode == 65413

    await env.agents({"kf_account": "a2@test", "online": False})
    with pytest.raises(AgentOffline):
        await c.create_session("oCust2", "a2@test")
    with pytest.raises(InvalidKfAccount):
        await c.create_session("oCust2", "nobody@test")


async def test_send_text_typing_and_window_errors(env: Env) -> None:
    c = env.client(clock=env.clock.now)  # shares the fake's clock: the 49 h jump refreshes the token first
    await env.agents({"kf_account": "a1@test", "online": True})
    await env.customer_waits("oCust1")
    await c.typing("oCust1")
    await c.typing("oCust1", typing=False)
    await c.send_text("oCust1", "你好, one moment")
    await c.send_text("oCust1", "from Alice", kf_account="a1@test")
    state = await env.ctl("GET", "state")
    sent = [(m["content"], m["kf_account"], m["via"]) for m in state["sent"]["oCust1"]]
    assert sent == [("你好, one moment", None, "custom_send"), ("from Alice", "a1@test", "custom_send")]
    for i in range(3):  # quota: 5 per window
        await c.send_text("oCust1", f"msg {i}")
    calls_before = await env.calls("cgi-bin/message/custom/send")
    with pytest.raises(WindowClosed) as err:
        await c.send_text("oCust1", "sixth")
    assert err.value.quota_exhausted and err.value.errcode == 45047
    await env.advance(49 * 3600)
    with pytest.raises(WindowClosed) as err:
        await c.send_text("oCust1", "too late")
    assert err.value.errcode == 45015 and not err.value.quota_exhausted
    assert await env.calls("cgi-bin/message/custom/send") == calls_before + 2  # never retried
    assert env.sleeps.delays == []
    assert c.stats.endpoint(CUSTOM_SEND).errcodes == {45047: 1, 45015: 1}


async def test_msg_records_single_page_and_paging(env: Env) -> None:
    c = env.client()
    await env.agents({"kf_account": "a1@test", "online": True})
    await env.customer_waits("oCust1")
    await c.create_session("oCust1", "a1@test")
    for i in range(7):  # in a session, the customer's messages are recorded (opercode 2003)
        await env.ctl("POST", "customer/message", {"openid": "oCust1", "text": f"m{i}"})
    start, end = int(T0) - 10, int(T0) + 10
    page = await c.get_msg_list(start, end, msgid=1, number=100)
    texts = [r.text for r in page.records]
    assert texts[-7:] == [f"m{i}" for i in range(7)]
    assert all(isinstance(r, MsgRecord) and r.worker == "a1@test" for r in page.records[-7:])

    for cursor in ("last_returned", "next_to_request"):
        await env.ctl("POST", "options", {"msgid_cursor": cursor})
        got = [r.text async for r in c.iter_msg_records(start, end, number=2)]
        assert got == texts, cursor  # every record exactly once, whichever cursor WeChat uses

    with pytest.raises(ValueError, match="endtime - starttime"):
        await c.get_msg_list(start, start + 86401)


async def test_iter_msg_records_splits_long_ranges_into_days(env: Env) -> None:
    c = env.client(clock=env.clock.now)
    await env.ctl("POST", "options", {"forward_idle_s": None})  # the session outlives the 2-day jump
    await env.customer_waits("oCust1")
    await env.agents({"kf_account": "a1@test", "online": True})
    await c.create_session("oCust1", "a1@test")
    await env.ctl("POST", "customer/message", {"openid": "oCust1", "text": "day1"})
    await env.advance(2 * 86400)
    await env.ctl("POST", "customer/message", {"openid": "oCust1", "text": "day3"})
    before = await env.calls("customservice/msgrecord/getmsglist")
    got = [r.text async for r in c.iter_msg_records(int(T0) - 5, int(T0) + 3 * 86400)]
    assert got == ["day1", "day3"]
    assert await env.calls("customservice/msgrecord/getmsglist") - before == 4  # 72 h + 5 s → 4 windows


# ------------------------------------------------------------------------------------------- tokens


async def test_token_expiry_mid_run_refreshes_once(env: Env) -> None:
    c = env.client()
    await c.get_wait_case()
    assert await env.calls(STABLE) == 1
    await env.advance(7200 + 1)  # the fake's token expires; our holder's clock has not moved
    await c.get_wait_case()  # 42001 → invalidate → refresh → retry
    assert await env.calls(STABLE) == 2
    assert await env.calls(WAITCASE) == 3
    assert c.stats.endpoint(SESSION_WAITCASE).errcodes == {42001: 1}
    assert c.stats.token_refreshes == 2 and c.stats.token_invalidations == 1
    await c.get_wait_case()
    assert await env.calls(STABLE) == 2


async def test_token_refreshed_ahead_of_expiry_with_a_shared_clock(env: Env) -> None:
    c = env.client(clock=env.clock.now, token_margin_s=120)
    await c.get_wait_case()
    await env.advance(7200 - 100)  # inside the 120 s margin, before expiry: refresh, no error seen
    await c.get_wait_case()
    assert await env.calls(STABLE) == 2
    assert c.stats.endpoint(SESSION_WAITCASE).errcodes == {}


async def test_fifty_concurrent_calls_with_expired_token_share_one_refresh(env: Env) -> None:
    c = env.client()
    await c.get_wait_case()
    await env.advance(7201)
    results = await asyncio.gather(*(c.get_wait_case() for _ in range(50)))
    assert all(r.count == 0 for r in results)
    assert await env.calls(STABLE) == 2  # the first fetch plus exactly one refresh
    assert c.stats.token_invalidations == 1


async def test_fifty_concurrent_first_calls_fetch_one_token(env: Env) -> None:
    c = env.client()
    await asyncio.gather(*(c.get_wait_case() for _ in range(50)))
    assert await env.calls(STABLE) == 1


async def test_always_invalid_token_stops_after_one_refresh(env: Env) -> None:
    await env.ctl("POST", "options", {"token_always_invalid": True})
    c = env.client()
    with pytest.raises(TokenError) as err:
        await c.get_wait_case()
    assert err.value.errcode == 40001
    assert await env.calls(STABLE) == 2  # initial fetch + one refresh, then give up
    assert await env.calls(WAITCASE) == 2
    assert env.sleeps.delays == []


async def test_basic_token_mode(env: Env) -> None:
    c = env.client(token_mode="basic")
    await c.get_wait_case()
    await env.advance(7201)
    await c.get_wait_case()
    assert await env.calls(BASIC) == 2 and await env.calls(STABLE) == 0


async def test_credential_errors_from_token_endpoint(env: Env) -> None:
    await env.ctl("POST", "options", {"reject_secret": True})
    with pytest.raises(CredentialError) as err:
        await env.client().get_wait_case()
    assert err.value.errcode == 40125 and "stable_token" in str(err.value)
    await env.ctl("POST", "options", {"reject_secret": False, "ip_whitelisted": False})
    with pytest.raises(CredentialError) as err:
        await env.client(token_mode="basic").get_wait_case()
    assert err.value.errcode == 40164
    assert SECRET not in str(err.value)


# ----------------------------------------------------------------------------------- retry policy


async def test_system_busy_is_retried_with_jittered_backoff(env: Env) -> None:
    c = env.client(backoff_base=0.2, backoff_cap=0.5)
    await c.get_wait_case()
    await env.ctl("POST", "faults", {"endpoint": "getwaitcase", "errcode": -1, "times": 3})
    wait = await c.get_wait_case()
    assert wait.count == 0
    assert await env.calls(WAITCASE) == 5  # 1 warm-up + 3 faults + 1 success
    assert len(env.sleeps.delays) == 3
    for n, delay in enumerate(env.sleeps.delays):
        assert 0 <= delay <= min(0.5, 0.2 * 2**n)
    stats = c.stats.endpoint(SESSION_WAITCASE)
    assert stats.errcodes == {-1: 3} and stats.retries == 3 and stats.failures == 0


async def test_system_busy_gives_up_after_retries(env: Env) -> None:
    c = env.client(retries=2)
    await env.ctl("POST", "faults", {"endpoint": "getwaitcase", "errcode": -1000})
    with pytest.raises(SystemBusy):
        await c.get_wait_case()
    assert await env.calls(WAITCASE) == 3 and len(env.sleeps.delays) == 2


@pytest.mark.parametrize("errcode", [45009, 45011])
async def test_rate_limit_is_surfaced_without_retry(env: Env, errcode: int) -> None:
    c = env.client()
    await env.ctl("POST", "faults", {"endpoint": "getwaitcase", "errcode": errcode})
    with pytest.raises(RateLimited) as err:
        await c.get_wait_case()
    assert err.value.errcode == errcode and err.value.daily == (errcode == 45009)
    assert await env.calls(WAITCASE) == 1
    assert env.sleeps.delays == []


async def test_rate_limit_from_fake_quota(env: Env) -> None:
    await env.ctl("POST", "options", {"rate_limits": {"getwaitcase": {"per_minute": 2}}})
    c = env.client()
    await c.get_wait_case()
    await c.get_wait_case()
    with pytest.raises(RateLimited):
        await c.get_wait_case()
    await env.advance(60)
    await c.get_wait_case()


async def test_dropped_connection_is_a_retried_network_error(env: Env) -> None:
    # A POST: aiohttp itself silently re-sends idempotent GETs on a dropped keep-alive connection.
    c = env.client()
    start = int(T0)
    await env.ctl("POST", "faults", {"endpoint": "getmsglist", "drop_connection": True, "times": 1})
    assert (await c.get_msg_list(start, start + 60)).records == ()
    assert len(env.sleeps.delays) == 1
    assert c.stats.endpoint(MSG_LIST).errcodes == {-2: 1}
    await env.ctl("POST", "faults", {"endpoint": "getmsglist", "drop_connection": True})
    with pytest.raises(NetworkError) as err:
        await c.get_msg_list(start, start + 60)
    assert err.value.errcode == -2 and "getmsglist" in str(err.value)
    assert len(env.sleeps.delays) == 1 + 3


async def test_token_endpoint_busy_is_retried(env: Env) -> None:
    await env.ctl("POST", "faults", {"endpoint": "stable_token", "errcode": -1, "times": 1})
    c = env.client()
    assert (await c.get_wait_case()).count == 0
    assert await env.calls(STABLE) == 2 and len(env.sleeps.delays) == 1


async def test_logs_never_contain_token_or_secret(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="kfrouter")
    c = env.client()
    await c.get_wait_case()
    await env.advance(7201)
    await c.get_wait_case()
    token = c.tokens.current
    assert token
    await env.ctl("POST", "options", {"token_always_invalid": True})
    with pytest.raises(WeChatError):
        await c.get_wait_case()
    assert "access_token=***" in caplog.text
    assert token not in caplog.text and SECRET not in caplog.text
    assert SECRET not in repr(c)


async def test_stats_snapshot_counts_calls_and_latency(env: Env) -> None:
    c = env.client()
    for _ in range(3):
        await c.get_wait_case()
    snap = c.stats.snapshot()
    wc = snap["endpoints"][SESSION_WAITCASE]
    assert wc["calls"] == 3 and wc["requests"] == 3 and wc["failures"] == 0
    assert wc["latency_sum_s"] > 0 and wc["latency_max_s"] <= wc["latency_sum_s"]
    assert snap["endpoints"]["/cgi-bin/stable_token"]["requests"] == 1


async def test_connection_refused_is_network_error() -> None:
    async with aiohttp.ClientSession() as http:
        sleeps = Sleeps()
        c = WeChatClient(http, APPID, SECRET, base_url="http://127.0.0.1:9", retries=1, sleep=sleeps)
        with pytest.raises(NetworkError) as err:
            await c.get_wait_case()
        assert "stable_token" in str(err.value) and len(sleeps.delays) == 1


async def test_the_gate_stops_every_request_before_it_is_sent(env: Env) -> None:
    """A daemon that lost the account's lease sends nothing: not the call, not a token fetch, no retry."""
    c = env.client(retries=3)
    await env.agents({"kf_account": "a1@test", "online": True})
    await env.customer_waits("oGate")
    holds = [True]
    c.gate = lambda: holds[0]
    await c.get_wait_case()  # the lease is held: calls go out (token fetched)
    before = (await env.ctl("GET", "state"))["calls"]
    holds[0] = False
    with pytest.raises(NotSent) as err:
        await c.create_session("oGate", "a1@test")
    assert err.value.errcode == -4 and not err.value.retryable and env.sleeps.delays == []
    c.tokens.invalidate(c.tokens.current or "")
    with pytest.raises(NotSent):
        await c.get_wait_case()  # no token fetch either (a basic-mode fetch would kill the owner's)
    assert (await env.ctl("GET", "state"))["calls"] == before
    holds[0] = True
    await c.create_session("oGate", "a1@test")
