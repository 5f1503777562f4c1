"""The push receiver driven by the fake WeChat server's own deliverer (real HTTP both ways): URL
verification, safe-mode pushes and encrypted replies the fake accepts, kf events, and WeChat's retry
after a failed callback."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from kfrouter.router.clock import SteadyClock
from kfrouter.router.edges.webhook import CALLBACK_FAILED_STATUS, PushReceiver, WebhookConfig
from kfrouter.router.wechat import replies
from kfrouter.router.wechat.push import KfCloseSession, KfCreateSession, Push, UserMessage
from kfrouter.sim.fake_server import FakeWeChat, running_fake

APPID = "wx_webhook_fake_app"
SECRET = "fake_secret_value"
CB_TOKEN = "hookToken42"
AES_KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
T0 = 1_700_000_000.0


class App:
    """The daemon's side: records pushes, transfers user messages, can fail N times."""

    def __init__(self) -> None:
        self.pushes: list[Push] = []
        self.fail_next = 0

    async def on_push(self, push: Push, raw: str) -> str | None:
        if self.fail_next:
            self.fail_next -= 1
            raise OSError("store unavailable")
        self.pushes.append(push)
        if isinstance(push, UserMessage):
            return replies.transfer_customer_service(push.openid, push.to_user, push.create_time)
        return None


class Env:
    def __init__(
        self, fake: FakeWeChat, http: aiohttp.ClientSession, app: App, receiver: PushReceiver
    ) -> None:
        self.fake, self.http, self.app, self.receiver = fake, http, app, receiver

    async def ctl(self, method: str, name: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        async with self.http.request(method, f"{self.fake.base_url}/_fake/{name}", json=body) as resp:
            data: dict[str, Any] = await resp.json()
            assert resp.status == 200, data
            return data


@pytest.fixture
async def safe_env() -> AsyncIterator[Env]:
    clock = SteadyClock(start=T0, frozen=True)
    app = App()
    config = WebhookConfig(token=CB_TOKEN, appid=APPID, encoding_aes_key=AES_KEY, accept_plaintext=False)
    receiver = PushReceiver(config, app.on_push, clock=clock.now)
    web_app = web.Application()
    web_app.add_routes(receiver.routes("/wechat"))
    hook = TestServer(web_app, host="127.0.0.1", port=0)
    await hook.start_server()
    try:
        async with (
            running_fake(
                appid=APPID,
                secret=SECRET,
                webhook=str(hook.make_url("/wechat")),
                token=CB_TOKEN,
                aes_key=AES_KEY,
                clock=clock,
            ) as fake,
            aiohttp.ClientSession() as http,
        ):
            yield Env(fake, http, app, receiver)
    finally:
        await hook.close()


async def test_fake_verifies_the_url(safe_env: Env) -> None:
    result = await safe_env.ctl("POST", "verify_webhook", {"echostr": "5927782489442352469"})
    assert result["ok"] is True and result["body"] == "5927782489442352469"


async def test_safe_mode_push_and_encrypted_transfer_reply_accepted_by_fake(safe_env: Env) -> None:
    await safe_env.ctl("POST", "customer/message", {"openid": "oA", "text": "我要人工", "wait": True})
    [push] = safe_env.app.pushes
    assert isinstance(push, UserMessage) and push.content == "我要人工"
    state = await safe_env.ctl("GET", "state")
    assert [w["openid"] for w in state["waiting"]] == ["oA"]  # the fake decrypted our reply
    assert [d["outcome"] for d in state["deliveries"]] == ["transfer"]


async def test_kf_events_from_the_fake(safe_env: Env) -> None:
    await safe_env.ctl("POST", "agents", {"agents": [{"kf_account": "a1@test", "online": True}]})
    await safe_env.ctl("POST", "customer/message", {"openid": "oB", "text": "hi", "wait": True})
    await safe_env.ctl("POST", "agent/accept", {"kf_account": "a1@test"})
    await safe_env.ctl("POST", "session/close", {"openid": "oB"})
    assert (await safe_env.ctl("POST", "settle"))["settled"]
    kinds = [type(p) for p in safe_env.app.pushes]
    assert kinds == [UserMessage, KfCreateSession, KfCloseSession]
    assert all(getattr(p, "kf_account", "a1@test") == "a1@test" for p in safe_env.app.pushes[1:])


async def test_failed_callback_makes_the_fake_retry_and_the_retry_is_handed_on(safe_env: Env) -> None:
    safe_env.app.fail_next = 1
    await safe_env.ctl("POST", "customer/message", {"openid": "oC", "text": "again", "wait": True})
    state = await safe_env.ctl("GET", "state")
    outcomes = [(d["attempt"], d["outcome"], d.get("status")) for d in state["deliveries"]]
    assert outcomes == [(1, "http_error", CALLBACK_FAILED_STATUS), (2, "transfer", 200)]
    assert len(safe_env.app.pushes) == 1  # handed on once it could be persisted
    assert [w["openid"] for w in state["waiting"]] == ["oC"]


async def test_fake_retries_of_one_push_are_handed_on_once(safe_env: Env) -> None:
    # A reply the fake refuses (addressed to someone else) makes it deliver the identical push again:
    # each retry is answered from the dedup cache and on_push sees the push once.
    calls: list[Push] = []

    async def bad_reply(push: Push, raw: str) -> str | None:
        calls.append(push)
        return replies.text_reply("oSOMEONE_ELSE", "gh_wrong", 1, "misaddressed")

    safe_env.receiver._on_push = bad_reply
    await safe_env.ctl("POST", "customer/message", {"openid": "oD", "text": "once", "wait": True})
    state = await safe_env.ctl("GET", "state")
    assert [d["outcome"] for d in state["deliveries"]] == ["invalid_reply"] * 3 + ["failed"]
    assert len(calls) == 1
    assert safe_env.receiver.stats["duplicate"] == 2
