"""Helpers for the WeCom 微信客服 tests: a callback receiver (a real aiohttp server on 127.0.0.1 port 0 that
verifies, decrypts and records every callback), clients pointed at the fake, and constants."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp import web

from kfrouter.router.edges.wecom_client import WeComKfClient
from kfrouter.router.wechat.crypto import SafeModeCrypto
from kfrouter.router.wechat.errors import WeChatCodecError
from kfrouter.router.wechat.wecom_kf import KfCallback, parse_kf_callback
from kfrouter.sim.wecom_server import FakeWeCom

T0 = 1_700_000_000.0
CORPID = "ww0123456789abcdef"
SECRET = "kf-app-secret-0123"
CB_TOKEN = "kfrTestToken42"
AES_KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"


async def _no_sleep(_s: float) -> None:
    return None


def client_for(fake: FakeWeCom, http: aiohttp.ClientSession, **kw: Any) -> WeComKfClient:
    """A client of the fake; backoff sleeps are skipped so retries do not take wall time."""
    kw.setdefault("sleep", _no_sleep)
    return WeComKfClient(http, fake.model.corpid, fake.model.secret, base_url=fake.base_url, **kw)


class Receiver:
    """The app's callback URL: checks msg_signature, decrypts with the corp id, records the callbacks.

    ``handler(callback)`` (optional) is awaited before answering; ``status`` is what it answers.
    """

    def __init__(self, corpid: str = CORPID) -> None:
        self.crypto = SafeModeCrypto(CB_TOKEN, AES_KEY, corpid, id_name="corpid")
        self.callbacks: list[KfCallback] = []
        self.bodies: list[tuple[dict[str, str], bytes]] = []
        self.rejected: list[str] = []
        self.handler: Callable[[KfCallback], Awaitable[None]] | None = None
        self.status = 200
        self.url = ""

    async def post(self, request: web.Request) -> web.Response:
        raw = await request.read()
        q = request.query
        self.bodies.append((dict(q), raw))
        try:
            xml = self.crypto.decrypt_push(
                raw, q.get("msg_signature", ""), q.get("timestamp", ""), q.get("nonce", "")
            )
            cb = parse_kf_callback(xml)
        except WeChatCodecError as exc:
            self.rejected.append(str(exc))
            return web.Response(status=400, text=str(exc))
        assert isinstance(cb, KfCallback)
        self.callbacks.append(cb)
        if self.handler is not None:
            await self.handler(cb)
        return web.Response(status=self.status, text="success")

    async def get(self, request: web.Request) -> web.Response:
        q = request.query
        try:
            plain = self.crypto.decrypt_echostr(
                q.get("echostr", ""), q.get("msg_signature", ""), q.get("timestamp", ""), q.get("nonce", "")
            )
        except WeChatCodecError as exc:
            return web.Response(status=400, text=str(exc))
        return web.Response(text=plain)


@contextlib.asynccontextmanager
async def running_receiver(receiver: Receiver | None = None) -> AsyncIterator[Receiver]:
    rec = receiver if receiver is not None else Receiver()
    app = web.Application()
    app.router.add_post("/wecom", rec.post)
    app.router.add_get("/wecom", rec.get)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        rec.url = f"http://127.0.0.1:{port}/wecom"
        yield rec
    finally:
        await runner.cleanup()
