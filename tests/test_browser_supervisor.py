"""The supervisor page in a real browser: headless Debian Chromium driven over the DevTools protocol with
aiohttp's websocket client (no Playwright download). It logs in with ``?token=``, sees the agent rows, sees a
new assignment appear without a reload, renders nicknames as text (no markup injection), raises no script
error, and leaves a screenshot in /tmp/supervisor.png. Skips when chromium is not installed."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest import ADMIN_TOKEN, wait_until
from test_metrics_env import running_env

from kfrouter.router.core.model import CustomerState

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SCREENSHOT = Path(os.environ.get("KFROUTER_SCREENSHOT", "/tmp/supervisor.png"))

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not os.access(CHROMIUM, os.X_OK),
        reason="Debian's chromium is not installed (apt-get install -y chromium) — browser test skipped",
    ),
]

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--force-device-scale-factor=1",
    "--window-size=1440,1000",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
)


class Page:
    """One page target over the DevTools protocol: ``call(method, **params)``; events are collected."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.events: list[dict[str, Any]] = []
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            data = json.loads(msg.data)
            fut = self._pending.pop(data.get("id", -1), None)
            if fut is not None and not fut.done():
                fut.set_result(data)
            elif "method" in data:
                self.events.append(data)
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(ConnectionError("DevTools connection closed"))

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        n = next(self._ids)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[n] = fut
        await self.ws.send_json({"id": n, "method": method, "params": params})
        answer = await asyncio.wait_for(fut, 15)
        if "error" in answer:
            raise AssertionError(f"{method}: {answer['error']}")
        result: dict[str, Any] = answer.get("result", {})
        return result

    async def js(self, expression: str) -> Any:
        """Evaluate ``expression`` in the page; its JSON value (fails on a script exception)."""
        r = await self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise AssertionError(f"{expression}: {r['exceptionDetails']}")
        return r["result"].get("value")

    async def close(self) -> None:
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
        await self.ws.close()


@contextlib.asynccontextmanager
async def chromium(profile: Path) -> AsyncIterator[Page]:
    proc = await asyncio.create_subprocess_exec(
        CHROMIUM,
        *FLAGS,
        f"--user-data-dir={profile}",
        "about:blank",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stderr is not None
    drain: asyncio.Task[None] | None = None
    try:
        seen: list[str] = []
        try:
            async with asyncio.timeout(30):
                while True:
                    line = (await proc.stderr.readline()).decode(errors="replace")
                    if not line:
                        pytest.fail("chromium exited before DevTools listened:\n" + "".join(seen[-20:]))
                    seen.append(line)
                    m = re.search(r"DevTools listening on (ws://[^\s]+)", line)
                    if m:
                        browser_ws = m.group(1)
                        break
        except TimeoutError:
            pytest.fail("chromium did not start within 30 s:\n" + "".join(seen[-20:]))

        async def discard(stream: asyncio.StreamReader) -> None:
            while await stream.readline():
                pass

        drain = asyncio.create_task(discard(proc.stderr))  # never let the pipe fill up
        http_base = "http://" + browser_ws.split("/")[2]
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{http_base}/json/list") as resp:
                targets = await resp.json()
            page_ws = next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")
            async with http.ws_connect(page_ws, max_msg_size=64 * 1024 * 1024) as ws:
                page = Page(ws)
                try:
                    yield page
                finally:
                    await page.close()
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
        if drain is not None:
            drain.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await drain


async def test_supervisor_page_in_chromium(tmp_path: Path) -> None:
    async with running_env(
        tmp_path,
        agents=(),
        fake_agents=[
            {"kf_account": "a1@test", "nickname": "Alice", "online": True},
            {"kf_account": "a2@test", "nickname": "<b>Bob</b>", "online": True},
            {"kf_account": "b1@test", "nickname": "Chen", "online": False},
        ],
        groups=[
            {"name": "general", "agents": ["a1@test", "a2@test"]},
            {"name": "billing", "agents": ["b1@test"]},
        ],
        routing={"rules": [{"keywords": ["invoice"], "group": "billing"}]},
    ) as env:
        for openid in ("oCustomer_0001", "oCustomer_0002", "oCustomer_0003"):
            await env.ctl.say(openid, "human please")
            await env.assigned(openid)
        for openid in ("oBilling_0001", "oBilling_0002"):
            await env.ctl.say(openid, "invoice please")
        await wait_until(
            lambda: env.daemon.engine.state("oBilling_0002") is CustomerState.WAITING, message="billing queue"
        )
        await wait_until(
            lambda: {a.nickname for a in env.daemon.engine.agents()} >= {"Alice", "<b>Bob</b>"},
            message="nicknames learnt from getkflist",
        )

        async with chromium(tmp_path / "profile") as page:
            await page.call("Page.enable")
            await page.call("Runtime.enable")
            await page.call("Log.enable")
            await page.call(
                "Emulation.setDeviceMetricsOverride",
                width=1440,
                height=1000,
                deviceScaleFactor=1,
                mobile=False,
            )
            await page.call("Page.navigate", url=f"{env.base}/supervisor?token={ADMIN_TOKEN}")

            async def js(expr: str) -> Any:
                try:
                    return await page.js(expr)
                except AssertionError:
                    return None  # the page is between documents (the redirect)

            await wait_until(
                lambda: js("document.body && document.body.dataset.ready === '1'"),
                timeout=15,
                message="the page rendered its first snapshot",
            )
            assert await page.js("location.pathname + location.search") == "/supervisor"  # token gone
            rows = await page.js(
                "[...document.querySelectorAll('#agents tr[data-agent]')].map(r => r.dataset.agent)"
            )
            assert rows[:2] == ["a1@test", "a2@test"] and "b1@test" in rows  # online first
            assert await page.js(
                "document.querySelector('#agents tr[data-agent=\"b1@test\"]').dataset.status"
            ) == ("offline")
            # the nickname is shown as text, not parsed as markup
            assert await page.js("document.querySelectorAll('#agents b').length") == 0
            assert "<b>Bob</b>" in await page.js("document.querySelector('#agents').textContent")
            queued = await page.js(
                "[...document.querySelectorAll('#queues [data-group=\"billing\"] li[data-openid]')]"
                ".map(li => li.dataset.openid)"
            )
            assert queued == ["oBilling_0001", "oBilling_0002"]
            assert await page.js("document.getElementById('t-waiting').textContent") == "2"
            assert await wait_until(
                lambda: js("document.getElementById('live').dataset.state === 'live'"), message="live"
            )
            before = await page.js("document.querySelectorAll('#recent li').length")
            assert before == 3

            await page.js("window.__sameDocument = 'yes'")
            await env.ctl.say("oNewcomer_042", "human please")
            await wait_until(
                lambda: js("!!document.querySelector('#recent li[data-openid=\"oNewcomer_042\"]')"),
                timeout=10,
                message="the new assignment in the feed",
            )
            assert await page.js("window.__sameDocument") == "yes"  # no reload happened
            assert await page.js("document.querySelector('#recent li').dataset.openid") == "oNewcomer_042"
            assert await page.js("document.querySelector('#recent li').classList.contains('new')")
            assert await page.js("document.getElementById('t-assigned').textContent") == "4"

            shot = await page.call("Page.captureScreenshot", format="png", captureBeyondViewport=False)
            png = base64.b64decode(shot["data"])
            assert png.startswith(b"\x89PNG") and len(png) > 10_000
            SCREENSHOT.write_bytes(png)

            errors = [
                e
                for e in page.events
                if e["method"] == "Runtime.exceptionThrown"
                or (e["method"] == "Log.entryAdded" and e["params"]["entry"]["level"] == "error")
            ]
            assert errors == []
