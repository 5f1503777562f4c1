"""Push delivery of the fake WeChat server to a small aiohttp webhook on 127.0.0.1: signatures and
safe-mode crypto checked with router.wechat, retries with identical payloads on a slow or failing
webhook (short configured timeout, no sleeping), and what each kind of reply does."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from kfrouter.router.clock import SteadyClock
from kfrouter.router.wechat import replies, signature
from kfrouter.router.wechat.crypto import SafeModeCrypto
from kfrouter.router.wechat.push import KfCloseSession, KfCreateSession, MenuClick, UserMessage, parse_push
from kfrouter.sim.fake_options import FakeOptions
from kfrouter.sim.fake_server import FakeWeChat, running_fake

T0 = 1_700_000_000.0
TOKEN = "callbackTok3n"
AES_KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
APPID = "wxAPP"

Responder = Callable[[dict[str, str], bytes, int], Awaitable[web.StreamResponse]]


class Hook:
    """A webhook that checks every push's signature and answers with ``responder``."""

    def __init__(self, aes: bool = False) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.plain: list[Any] = []  # parsed pushes
        self.release = asyncio.Event()
        self.crypto = SafeModeCrypto(TOKEN, AES_KEY, APPID) if aes else None
        self.responder: Responder = self.success

    async def success(self, q: dict[str, str], body: bytes, n: int) -> web.StreamResponse:
        return web.Response(text="success")

    async def unavailable_once(self, q: dict[str, str], body: bytes, n: int) -> web.StreamResponse:
        return web.Response(status=503) if n == 1 else await self.success(q, body, n)

    async def hang(self, q: dict[str, str], body: bytes, n: int) -> web.StreamResponse:
        await asyncio.wait_for(self.release.wait(), timeout=5)  # released at teardown
        return web.Response(text="success")

    async def handle(self, request: web.Request) -> web.StreamResponse:
        q = dict(request.query)
        if request.method == "GET":  # URL verification
            ok = signature.verify(q.get("signature", ""), TOKEN, q.get("timestamp", ""), q.get("nonce", ""))
            return web.Response(text=q["echostr"] if ok else "bad", status=200 if ok else 403)
        body = await request.read()
        self.requests.append((q, body))
        assert signature.verify(q["signature"], TOKEN, q["timestamp"], q["nonce"]), "bad signature"
        if self.crypto is not None:
            assert q["encrypt_type"] == "aes"
            xml = self.crypto.decrypt_push(body, q["msg_signature"], q["timestamp"], q["nonce"])
            self.plain.append(parse_push(xml))
        else:
            self.plain.append(parse_push(body))
        return await self.responder(q, body, len(self.requests))


@pytest.fixture
async def hook_server() -> AsyncIterator[tuple[Hook, str]]:
    hook = Hook()
    app = web.Application()
    app.router.add_route("*", "/hook", hook.handle)
    async with TestServer(app, host="127.0.0.1") as srv:
        yield hook, str(srv.make_url("/hook"))
        hook.release.set()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def fake_for(url: str, aes: bool = False, **opts: Any) -> Any:
    return running_fake(
        APPID,
        "SECRET",
        webhook=url,
        token=TOKEN,
        aes_key=AES_KEY if aes else None,
        options=FakeOptions(**opts),
        clock=SteadyClock(T0, frozen=True),
    )


async def ctl(http: aiohttp.ClientSession, fake: FakeWeChat, path: str, body: Any = None) -> dict[str, Any]:
    async with http.post(f"{fake.base_url}/_fake/{path}", json=body) as resp:
        assert resp.status == 200, await resp.text()
        out: dict[str, Any] = await resp.json()
        return out


def transfer_reply(fake: FakeWeChat, openid: str, kf: str | None = None) -> str:
    return replies.transfer_customer_service(openid, fake.model.original_id, int(T0), kf)


async def test_plain_message_push_is_signed_and_success_is_handled(
    hook_server: tuple[Hook, str], http: aiohttp.ClientSession
) -> None:
    hook, url = hook_server
    async with fake_for(url) as fake:
        r = await ctl(http, fake, "customer/message", {"openid": "u1", "text": "你好 <&>", "wait": True})
        assert r["routed"] == "webhook"
        ((q, _body),) = hook.requests
        assert set(q) == {"signature", "timestamp", "nonce", "openid"} and q["openid"] == "u1"
        assert q["timestamp"] == str(int(T0))
        (msg,) = hook.plain
        assert isinstance(msg, UserMessage)
        assert (msg.from_user, msg.to_user, msg.content, msg.msg_id) == (
            "u1",
            fake.model.original_id,
            "你好 <&>",
            r["msg_id"],
        )
        assert [d["outcome"] for d in fake.pusher.log] == ["handled"]
        assert fake.model.waiting == {}


async def test_transfer_reply_queues_and_transinfo_pins(
    hook_server: tuple[Hook, str], http: aiohttp.ClientSession
) -> None:
    hook, url = hook_server
    async with fake_for(url) as fake:

        async def transfer(q: dict[str, str], body: bytes, n: int) -> web.StreamResponse:
            kf = "a1@test" if q["openid"] == "u2" else None
            return web.Response(text=transfer_reply(fake, q["openid"], kf), content_type="text/xml")

        hook.responder = transfer
        for u in ("u1", "u2"):
            await ctl(http, fake, "customer/message", {"openid": u, "text": "human please", "wait": True})
        assert [(o, w.pinned) for o, w in fake.model.waiting.items()] == [("u1", None), ("u2", "a1@test")]
        assert [d["outcome"] for d in fake.pusher.log] == ["transfer", "transfer"]


async def test_slow_webhook_gets_identical_retries(
    hook_server: tuple[Hook, str], http: aiohttp.ClientSession
) -> None:
    hook, url = hook_server
    async with fake_for(url, webhook_timeout_s=0.2) as fake:

        async def slow_twice(q: dict[str, str], body: bytes, n: int) -> web.StreamResponse:
            return await (hook.hang(q, body, n) if n <= 2 else hook.success(q, body, n))

        hook.responder = slow_twice
        await ctl(http, fake, "customer/message", {"openid": "u1", "text": "hi", "wait": True})
        assert len(hook.requests) == 3
        assert hook.requests[0] == hook.requests[1] == hook.requests[2]  # same query, same body
        assert [d["outcome"] for d in fake.pusher.log] == ["timeout", "timeout", "handled"]
        assert fake.pusher.failures == 0


@pytest.mark.parametrize("attempts", [3, 5])
async def test_failing_webhook_is_tried_delivery_attempts_times(
    hook_server: tuple[Hook, str], http: aiohttp.ClientSession, attempts: int
) -> None:
    hook, url = hook_server
    async with fake_for(url, delivery_attempts=attempts) as fake:

        async def boom(q: dict[str, str], body: bytes, n: int) -> web.StreamResponse:
            return web.Response(status=500)

        hook.responder = boom
        await ctl(http, fake, "customer/message", {"openid": "u1", "text": "hi", "wait": True})
        assert len(hook.requests) == attempts
        outcomes = [d["outcome"] for d in fake.pusher.log]
        assert outcomes == ["http_error"] * attempts + ["failed"]
        assert fake.pusher.failures == 1


async def test_invalid_reply_is_retried_then_counted(
    hook_server: tuple[Hook, str], http: aiohttp.ClientSession
) -> None:
    hook, url = hook_server
    async with fake_for(url) as fake:

        async def json_reply(q: dict[str, str], body: bytes, n: int) -> web.StreamResponse:
            return web.json_response({"msg": "not xml"})

        hook.responder = json_reply
        await ctl(http, fake, "customer/message", {"openid": "u1", "text": "hi", "wait": True})
        assert [d["outcome"] for d in fake.pusher.log] == ["invalid_reply"] * 3 + ["failed"]


async def test_text_reply_reaches_the_customer(
    hook_server: tuple[Hook, str], http: aiohttp.ClientSession
) -> None:
    hook, url = hook_server
    async with fake_for(url) as fake:

        async def answer(q: dict[str, str], body: bytes, n: int) -> web.StreamResponse:
            xml = replies.text_reply(q["openid"], fake.model.original_id, int(T0), "we are on it")
            return web.Response(text=xml)

        hook.responder = answer
        await ctl(http, fake, "customer/message", {"openid": "u1", "text": "hi", "wait": True})
        assert [m["content"] for m in fake.model.sent["u1"]] == ["we are on it"]


async def test_safe_mode_push_and_encrypted_transfer_reply(
    http: aiohttp.ClientSession,
) -> None:
    hook = Hook(aes=True)
    app = web.Application()
    app.router.add_route("*", "/hook", hook.handle)
    async with (
        TestServer(app, host="127.0.0.1") as srv,
        fake_for(str(srv.make_url("/hook")), aes=True) as fake,
    ):
        assert hook.crypto is not None
        crypto = hook.crypto

        async def encrypted_transfer(q: dict[str, str], body: bytes, n: int) -> web.StreamResponse:
            xml = transfer_reply(fake, q["openid"], "a1@test")
            env = crypto.encrypt_reply(xml, "1700000001", "98765", b"0123456789abcdef")
            return web.Response(text=env)

        hook.responder = encrypted_transfer
        await ctl(http, fake, "customer/message", {"openid": "u1", "text": "秘密", "wait": True})
        (msg,) = hook.plain
        assert isinstance(msg, UserMessage) and msg.content == "秘密"
        assert fake.model.waiting["u1"].pinned == "a1@test"
        assert [d["outcome"] for d in fake.pusher.log] == ["transfer"]

        async def plain_xml(q: dict[str, str], body: bytes, n: int) -> web.StreamResponse:
            return web.Response(text=transfer_reply(fake, q["openid"]))

        hook.responder = plain_xml  # unencrypted XML in safe mode is refused
        await ctl(http, fake, "customer/message", {"openid": "u2", "text": "x", "wait": True})
        assert (
            fake.pusher.log[-2]["outcome"] == "invalid_reply" and fake.pusher.log[-1]["outcome"] == "failed"
        )

        hook.responder = hook.success  # plaintext success: accepted by default (switch #14)
        await ctl(http, fake, "customer/message", {"openid": "u3", "text": "x", "wait": True})
        assert fake.pusher.log[-1]["outcome"] == "handled"
        await ctl(http, fake, "options", {"safe_mode_accept_plain_success": False})
        await ctl(http, fake, "customer/message", {"openid": "u4", "text": "x", "wait": True})
        assert fake.pusher.log[-1]["outcome"] == "failed"


async def test_kf_events_arrive_in_order_per_customer(
    hook_server: tuple[Hook, str], http: aiohttp.ClientSession
) -> None:
    hook, url = hook_server
    async with fake_for(url) as fake:
        m = fake.model
        m.set_agent("a1@test", T0, status=1)
        for u in ("u1", "u2"):
            m.customer_message(u, T0, "hi")
            assert m.create_session("a1@test", u, T0)["errcode"] == 0
            assert m.close_session("a1@test", u, T0 + 1)["errcode"] == 0
        fake.flush(m)
        assert await fake.settle(5)
        for u in ("u1", "u2"):
            seq = [type(p) for p in hook.plain if p.openid == u]
            assert seq == [UserMessage, KfCreateSession, KfCloseSession]
        create = next(p for p in hook.plain if isinstance(p, KfCreateSession))
        assert create.kf_account == "a1@test"


async def test_messages_in_a_session_are_not_pushed_and_clicks_are(
    hook_server: tuple[Hook, str], http: aiohttp.ClientSession
) -> None:
    hook, url = hook_server
    async with fake_for(url, push_include_openid=False) as fake:
        fake.model.set_agent("a1@test", T0, status=1)
        await ctl(http, fake, "customer/message", {"openid": "u1", "text": "hi", "wait": True})
        fake.model.create_session("a1@test", "u1", T0)
        r = await ctl(http, fake, "customer/message", {"openid": "u1", "text": "to agent", "wait": True})
        assert r["routed"] == "agent"
        await ctl(http, fake, "customer/click", {"openid": "u1", "key": "MENU_1", "wait": True})
        kinds = [type(p) for p in hook.plain]
        assert kinds == [UserMessage, KfCreateSession, MenuClick]
        assert all("openid" not in q for q, _ in hook.requests)


async def test_transfer_in_reply_to_an_event_is_ignored(
    hook_server: tuple[Hook, str], http: aiohttp.ClientSession
) -> None:
    hook, url = hook_server
    async with fake_for(url) as fake:

        async def transfer(q: dict[str, str], body: bytes, n: int) -> web.StreamResponse:
            return web.Response(text=transfer_reply(fake, q["openid"]))

        hook.responder = transfer
        await ctl(http, fake, "customer/click", {"openid": "u1", "key": "K", "wait": True})
        assert fake.model.waiting == {}
        assert [d["outcome"] for d in fake.pusher.log] == ["transfer_ignored"]


async def test_wait_on_any_control_request_answers_after_its_pushes(
    hook_server: tuple[Hook, str], http: aiohttp.ClientSession
) -> None:
    hook, url = hook_server
    async with fake_for(url, retry_interval_s=0.05) as fake:
        hook.responder = hook.unavailable_once
        await ctl(http, fake, "customer/follow", {"openid": "u1", "wait": True})
        assert [d["outcome"] for d in fake.pusher.log] == ["http_error", "handled"]  # the retry too
        assert (await ctl(http, fake, "options", {"retry_interval_s": 0.0, "wait": True}))["changed"] == [
            "retry_interval_s"
        ]


async def test_verify_webhook_echostr(hook_server: tuple[Hook, str], http: aiohttp.ClientSession) -> None:
    _hook, url = hook_server
    async with fake_for(url) as fake:
        r = await ctl(http, fake, "verify_webhook", {"echostr": "4375120948345356249"})
        assert r == {"ok": True, "status": 200, "body": "4375120948345356249"}
    async with running_fake(
        APPID, "SECRET", webhook=url, token="wrongToken", clock=SteadyClock(T0, frozen=True)
    ) as f2:
        assert (await ctl(http, f2, "verify_webhook", {}))["ok"] is False


async def test_unreachable_webhook_counts_connection_errors(http: aiohttp.ClientSession) -> None:
    async with TestServer(web.Application(), host="127.0.0.1") as srv:
        url = str(srv.make_url("/hook"))
    async with fake_for(url) as fake:  # the port is closed now
        await ctl(http, fake, "customer/message", {"openid": "u1", "text": "hi", "wait": True})
        assert [d["outcome"] for d in fake.pusher.log] == ["connection_error"] * 3 + ["failed"]


def test_webhook_needs_token() -> None:
    with pytest.raises(ValueError, match="token"):
        FakeWeChat(webhook="http://127.0.0.1:9/hook")


async def test_several_webhooks_take_turns_a_retry_goes_to_the_next_and_appid_is_filled_in(
    http: aiohttp.ClientSession,
) -> None:
    """Several daemons behind a load balancer: the first one fails, its retry reaches the second; a
    second account's pushes go to /wechat/<its appid>."""
    hooks = [Hook(), Hook()]
    paths: list[list[str]] = [[], []]

    def route(i: int) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handle(request: web.Request) -> web.StreamResponse:
            paths[i].append(request.path)
            return await hooks[i].handle(request)

        return handle

    async def boom(q: dict[str, str], body: bytes, n: int) -> web.StreamResponse:
        return web.Response(status=503)

    hooks[0].responder = boom
    servers = []
    for i in range(2):
        app = web.Application()
        app.router.add_route("*", "/wechat/{appid}", route(i))
        servers.append(TestServer(app, host="127.0.0.1"))
    async with servers[0] as s0, servers[1] as s1:
        urls = [str(s.make_url("/wechat/{appid}")).replace("%7B", "{").replace("%7D", "}") for s in (s0, s1)]
        async with running_fake(
            APPID, "SECRET", webhook=urls, token=TOKEN, clock=SteadyClock(T0, frozen=True)
        ) as fake:
            fake.add_app("wxOTHER", "S2")
            await ctl(http, fake, "customer/message", {"openid": "u1", "text": "hi", "wait": True})
            await ctl(
                http,
                fake,
                "customer/message",
                {"appid": "wxOTHER", "openid": "u2", "text": "hi", "wait": True},
            )
    outcomes = [(d["outcome"], d["url"].split("/")[2] == urls[1].split("/")[2]) for d in fake.pusher.log]
    assert outcomes[:2] == [("http_error", False), ("handled", True)]  # the retry went to the other one
    assert paths[0][0] == f"/wechat/{APPID}" and "/wechat/wxOTHER" in paths[0] + paths[1]


async def test_a_fake_on_several_ports_tells_which_port_each_create_came_in_on(
    http: aiohttp.ClientSession,
) -> None:
    fake = FakeWeChat(APPID, "SECRET")
    runner = web.AppRunner(fake.app)
    await runner.setup()
    ports = []
    try:
        for _ in range(2):
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            ports.append(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
        fake.base_url = f"http://127.0.0.1:{ports[0]}"
        await ctl(http, fake, "agents", {"agents": [{"kf_account": "a1@test", "online": True}]})
        for openid in ("u1", "u2"):
            await ctl(http, fake, "customer/message", {"openid": openid, "text": "hi"})
        for port, openid in zip(ports, ("u1", "u2"), strict=True):
            base = f"http://127.0.0.1:{port}"
            async with http.get(
                f"{base}/cgi-bin/token",
                params={"grant_type": "client_credential", "appid": APPID, "secret": "SECRET"},
            ) as resp:
                token = (await resp.json())["access_token"]
            async with http.post(
                f"{base}/customservice/kfsession/create?access_token={token}",
                json={"kf_account": "a1@test", "openid": openid},
            ) as resp:
                assert (await resp.json())["errcode"] == 0
        assert [(e["openid"], e["port"], e["agent_sessions"]) for e in fake.model.create_log] == [
            ("u1", ports[0], 1),
            ("u2", ports[1], 2),  # the agent's sessions right after the create (capacity checks)
        ]
    finally:
        await runner.cleanup()
