"""The load bench's generator (bench/http_load.py) against a real aiohttp server on 127.0.0.1: every
request is answered once and counted with its status and body, connections are reused, and a server that
does not answer in time gives timeouts, never latencies."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import http_load


@pytest.fixture
async def server() -> AsyncIterator[tuple[str, list[str], asyncio.Event]]:
    seen: list[str] = []
    hold = asyncio.Event()
    hold.set()

    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        seen.append(f"{request.query.get('n')}:{body.decode()}:{id(request.transport)}")
        await hold.wait()
        status = 200 if request.query.get("n") != "3" else 424
        return web.Response(status=status, text="success" if status == 200 else "retry")

    app = web.Application()
    app.router.add_post("/wechat", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}/wechat", seen, hold
    finally:
        await runner.cleanup()


async def test_every_request_is_answered_once_over_few_connections(
    server: tuple[str, list[str], asyncio.Event],
) -> None:
    url, seen, _hold = server
    wire = [http_load.build_post(url, {"n": str(i)}, f"body{i}".encode()) for i in range(40)]
    result = await http_load.run_open_loop(url, wire, rate=400.0, connections=4)
    assert len(result.outcomes) == 40
    assert sorted(s.split(":")[0] for s in seen) == sorted(str(i) for i in range(40))
    assert all(s.split(":")[1] == f"body{s.split(':')[0]}" for s in seen)  # each body arrived whole
    assert len({s.split(":")[2] for s in seen}) <= 4  # at most 4 connections, kept alive
    statuses = sorted(o.status for o in result.outcomes)
    assert statuses == [200] * 39 + [424]
    assert all(o.latency_s is not None and o.latency_s >= 0 for o in result.outcomes)
    assert {o.body for o in result.outcomes} == {b"success", b"retry"}
    assert result.duration_s >= 40 / 400.0 and result.client_cpu_s >= 0


async def test_no_answer_in_time_is_a_timeout(server: tuple[str, list[str], asyncio.Event]) -> None:
    url, _seen, hold = server
    hold.clear()  # the server reads the requests and answers none
    wire = [http_load.build_post(url, {"n": str(i)}, b"x") for i in range(5)]
    result = await http_load.run_open_loop(url, wire, rate=100.0, connections=2, timeout_s=0.5)
    assert [o.error for o in result.outcomes] == ["timeout"] * 5
    assert all(o.latency_s is None for o in result.outcomes)
    hold.set()
