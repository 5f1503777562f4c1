"""Issue 15 items 2 and 3: hostile HTTP at the callback port is one deliberate log line, never a traceback.

- A client that sends ``Content-Length: 60000`` and a few bytes, then hangs up while the handler is
  reading the body: one line (warning or below), counted as ``hangup``, not as an unexpected error.
- A request line too long for aiohttp's parser (a 10,000-character ``nonce``), sent to the daemon:
  answered 400 with one line (warning or below), counted with the other refusals (``bad_request``).

Real servers on 127.0.0.1; raw sockets so the test decides when the connection ends.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import test_daemon
from aiohttp import web
from conftest import CB_TOKEN, wait_until
from test_daemon import EnvFactory

from kfrouter.router.edges.webhook import RECEIVER_KEY, WebhookConfig, make_webhook_app
from kfrouter.router.wechat import signature
from kfrouter.router.wechat.push import Push

make_env = test_daemon.make_env  # the fixture: a daemon in-process against the fake WeChat
NOW = 1_700_000_000


def _query(nonce: str, ts: int = NOW) -> str:
    return f"signature={signature.sign(CB_TOKEN, str(ts), nonce)}&timestamp={ts}&nonce={nonce}"


def _loud(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """Records above warning, or carrying a traceback."""
    return [r for r in caplog.records if r.levelno > logging.WARNING or r.exc_info]


@pytest.fixture
async def webhook_server() -> AsyncIterator[tuple[web.Application, int, asyncio.Event]]:
    """The receiver's own app; ``entered`` is set when a request reaches the handler, which then runs
    without a pause up to its first wait: reading the body."""
    entered = asyncio.Event()

    @web.middleware
    async def mark(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        entered.set()
        return await handler(request)

    async def on_push(push: Push, raw: str) -> str | None:  # pragma: no cover - nothing valid is sent
        raise AssertionError("a cut push was handed on")

    app = make_webhook_app(WebhookConfig(token=CB_TOKEN, appid="wx_hostile"), on_push, clock=lambda: NOW)
    app.middlewares.append(mark)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield app, port, entered
    finally:
        await runner.cleanup()


async def test_a_client_hanging_up_while_the_body_is_read_is_one_quiet_line(
    webhook_server: tuple[web.Application, int, asyncio.Event], caplog: pytest.LogCaptureFixture
) -> None:
    app, port, entered = webhook_server
    receiver = app[RECEIVER_KEY]
    caplog.set_level(logging.DEBUG)
    _reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = f"POST /wechat?{_query('4242')} HTTP/1.1\r\nHost: x\r\nContent-Length: 60000\r\n\r\n"
    writer.write(head.encode() + b"<xml><ToUserName>")
    await writer.drain()
    await asyncio.wait_for(entered.wait(), 10)  # the handler is now waiting for the rest of the body
    writer.close()
    await writer.wait_closed()
    await wait_until(lambda: receiver.stats.get("hangup"), timeout=10, message="the hang-up counted")
    assert _loud(caplog) == []
    assert receiver.stats.get("error", 0) == 0
    lines = [r for r in caplog.records if r.name == "kfrouter.webhook"]
    assert len(lines) == 1 and "hung up" in lines[0].getMessage(), [r.getMessage() for r in lines]


async def test_an_over_long_request_line_is_refused_in_one_quiet_line(
    make_env: EnvFactory, caplog: pytest.LogCaptureFixture
) -> None:
    env = await make_env()
    caplog.set_level(logging.DEBUG)
    caplog.clear()  # start-up is done; from here on only this request
    before = dict(env.daemon.receiver.stats)
    reader, writer = await asyncio.open_connection("127.0.0.1", env.host.port)
    path = f"/wechat?{_query('7' * 10_000, int(time.time()))}"
    writer.write(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n".encode())
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    await writer.wait_closed()
    assert answer.startswith(b"HTTP/1.") and answer[8:13] == b" 400 ", answer[:200]
    assert _loud(caplog) == []
    refused = [r for r in caplog.records if "LineTooLong" in r.getMessage()]
    assert len(refused) == 1 and refused[0].levelno <= logging.WARNING
    assert len(refused[0].getMessage()) < 400  # the line itself is not echoed
    stats = env.daemon.receiver.stats
    assert stats["bad_request"] == before.get("bad_request", 0) + 1
    assert stats.get("error", 0) == 0
