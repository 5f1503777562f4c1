"""The supervisor's actions clicked in a real browser (headless Debian Chromium over the DevTools protocol,
as tests/test_browser_supervisor.py drives it), each checked where it matters — at the fake WeChat: a paused
agent gets no new customer, a reassigned customer ends with the new agent, a closed session is gone, a
removed customer is never served, WeChat's refusal is shown in words. A cross-site (and a same-site,
cross-origin) form POST carrying the cookie is refused; the read-only token sees no action buttons and its
change requests are refused; the history charts load. Screenshots go to ``KFROUTER_SCREENSHOT_DIR`` (default
/tmp) as h20-actions.png, h20-readonly.png and h20-history.png. Skips when chromium is not installed."""

from __future__ import annotations

import base64
import contextlib
import json
import math
import os
import random
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import test_browser_supervisor as tbs
from aiohttp import web
from conftest import ADMIN_TOKEN, READONLY_TOKEN, wait_until
from test_browser_supervisor import Page, chromium
from test_metrics_env import ObsEnv, running_env

from kfrouter.router.core.model import CustomerState
from kfrouter.router.edges.store import Store, WaitingRow

pytestmark = tbs.pytestmark
SHOTS = Path(os.environ.get("KFROUTER_SCREENSHOT_DIR", "/tmp"))

AGENTS = [
    {"kf_account": "a1@test", "nickname": "Alice", "online": True},
    {"kf_account": "a2@test", "nickname": "Bob", "online": True},
    {"kf_account": "b1@test", "nickname": "Chen", "online": False},
]
GROUPS = [
    {"name": "general", "agents": ["a1@test", "a2@test"]},
    {"name": "billing", "agents": ["b1@test"]},
]
ROUTING = {"rules": [{"keywords": ["invoice"], "group": "billing"}]}


class Tab:
    """The page under test: JavaScript, real mouse clicks, waiting on conditions, screenshots."""

    def __init__(self, page: Page) -> None:
        self.page = page

    async def js(self, expr: str) -> Any:
        return await self.page.js(expr)

    async def maybe(self, expr: str) -> Any:
        try:
            return await self.page.js(expr)
        except AssertionError:
            return None  # between documents (a redirect)

    # a headless browser on a loaded two-core machine can take seconds to repaint: wait up to 30 s
    async def until(self, expr: str, message: str, timeout: float = 30.0) -> Any:
        return await wait_until(lambda: self.maybe(expr), timeout=timeout, message=message)

    async def open(self, url: str) -> None:
        for domain in ("Page", "Runtime", "Log"):
            await self.page.call(f"{domain}.enable")
        await self.page.call(
            "Emulation.setDeviceMetricsOverride", width=1440, height=1000, deviceScaleFactor=1, mobile=False
        )
        await self.page.call("Page.navigate", url=url)
        await self.until("document.body && document.body.dataset.ready === '1'", "the first snapshot", 15)
        await self.until("document.getElementById('live').dataset.state === 'live'", "the live stream")

    async def click(self, selector: str) -> None:
        """A real mouse click in the middle of the element, once it is on the page, visible and not covered
        (a notice or a re-render may be in the way for a moment: waited for, within the usual bound)."""
        sel = json.dumps(selector)
        spot = (
            f"(() => {{ const e = document.querySelector({sel}); if (!e) return null;"
            " e.scrollIntoView({block: 'center'}); const r = e.getBoundingClientRect();"
            " if (!(r.width > 0 && r.height > 0)) return null;"
            " const x = r.left + r.width / 2, y = r.top + r.height / 2;"
            " return e.contains(document.elementFromPoint(x, y)) ? [x, y] : null; })()"
        )
        x, y = await self.until(spot, f"{selector} visible and not covered")
        for kind in ("mousePressed", "mouseReleased"):
            await self.page.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)

    async def open_dialog(self, selector: str, action: str, tries: int = 5) -> None:
        """Click an action button until its dialog is open: the live stream may re-render the table
        between finding the button and the click landing (a person would click again)."""
        for _ in range(tries):
            await self.click(selector)
            if await self.maybe_within("document.getElementById('action-dialog').open", 3.0):
                return
        pytest.fail(f"the {action} dialog did not open after {tries} clicks on {selector}")

    async def maybe_within(self, expr: str, seconds: float) -> bool:
        try:
            await self.until(expr, expr, seconds)
        except pytest.fail.Exception:
            return False
        return True

    async def confirm(self, action: str) -> str:
        """Confirm the open dialog of ``action``; the notice that follows (its kind and text)."""
        await self.until("document.getElementById('action-dialog').open", f"the {action} dialog")
        assert await self.js("document.getElementById('action-confirm').dataset.action") == action
        await self.js("document.getElementById('notice').hidden = true")
        await self.click("#action-confirm")
        await self.until(
            "!document.getElementById('notice').hidden"
            " && document.getElementById('notice').dataset.kind !== 'pending'",
            f"the result of {action}",
        )
        assert not await self.js("document.getElementById('action-dialog').open")
        kind = await self.js("document.getElementById('notice').dataset.kind")
        text: str = await self.js("document.getElementById('notice-text').textContent")
        return f"{kind}: {text}"

    async def screenshot(self, name: str, clip_selector: str | None = None) -> None:
        params: dict[str, Any] = {"format": "png", "captureBeyondViewport": clip_selector is not None}
        if clip_selector is not None:
            sel = json.dumps(clip_selector)
            r = await self.js(
                f"(() => {{ const e = document.querySelector({sel}); e.scrollIntoView();"
                " const r = e.getBoundingClientRect();"
                " return [r.left + scrollX, r.top + scrollY, r.width, r.height]; })()"
            )
            params["clip"] = {"x": r[0], "y": r[1], "width": r[2], "height": r[3], "scale": 1}
        shot = await self.page.call("Page.captureScreenshot", **params)
        png = base64.b64decode(shot["data"])
        assert png.startswith(b"\x89PNG") and len(png) > 10_000
        SHOTS.mkdir(parents=True, exist_ok=True)
        (SHOTS / name).write_bytes(png)

    def errors(self) -> list[dict[str, Any]]:
        return [
            e
            for e in self.page.events
            if e["method"] == "Runtime.exceptionThrown"
            or (
                e["method"] == "Log.entryAdded"
                and e["params"]["entry"]["level"] == "error"
                and "/api/" not in e["params"]["entry"].get("url", "")
            )  # refused API calls log an error
        ]


@contextlib.asynccontextmanager
async def tab(tmp_path: Path, env: ObsEnv, token: str) -> AsyncIterator[Tab]:
    async with chromium(tmp_path / "profile") as page:
        t = Tab(page)
        await t.open(f"{env.base}/supervisor?token={token}")
        yield t


async def test_each_action_clicked_changes_what_wechat_sees(tmp_path: Path) -> None:
    async with (
        running_env(tmp_path, agents=(), fake_agents=AGENTS, groups=GROUPS, routing=ROUTING) as env,
        tab(tmp_path, env, ADMIN_TOKEN) as t,
    ):
        engine = env.daemon.engine
        assert await t.js("window.kfrouterActions.canAct") is True
        row = '#agents tr[data-agent="{}"] button[data-action="{}"]'

        # a dialog cancelled changes nothing
        await t.open_dialog(row.format("a1@test", "pause"), "pause")
        await t.until("document.getElementById('action-dialog').open", "the dialog")
        await t.click("#action-cancel")
        assert not await t.js("document.getElementById('action-dialog').open")
        assert not engine.agent("a1@test").paused  # type: ignore[union-attr]

        # pause Alice: the next customers all go to Bob
        await t.open_dialog(row.format("a1@test", "pause"), "pause")
        result = await t.confirm("pause")
        assert result == "ok: Paused Alice (a1@test): no new customers until resumed."
        assert engine.agent("a1@test").paused  # type: ignore[union-attr]
        await t.until(
            'document.querySelector(\'#agents tr[data-agent="a1@test"]\').dataset.status === "paused"',
            "badge",
        )
        for openid in ("oC1_customer", "oC2_customer"):
            await env.ctl.say(openid, "human please")
            assert await env.assigned(openid) == "a2@test"

        # Bob now serves billing only, at most 2 at a time: a general customer finds nobody
        await t.open_dialog(row.format("a2@test", "edit"), "edit")
        await t.until("document.getElementById('action-dialog').open", "the edit dialog")
        await t.click('#action-fields input[name="group"][value="general"]')
        await t.click('#action-fields input[name="group"][value="billing"]')
        await t.js(
            "(() => { const m = document.getElementById('action-max'); m.value = '2';"
            " m.dispatchEvent(new Event('input')); })()"
        )
        assert "will serve billing, at most 2 sessions" in await t.js(
            "document.getElementById('action-summary').textContent"
        )
        assert await t.confirm("edit") == "ok: Bob (a2@test) now serves billing, at most 2 at a time."
        bob = engine.agent("a2@test")
        assert bob is not None and set(bob.groups) == {"billing"} and bob.capacity == 2

        await env.ctl.say("oC3_customer", "human please")
        await t.until(
            "!!document.querySelector('#queues li[data-openid=\"oC3_customer\"]')", "c3 in the queue"
        )
        assert engine.state("oC3_customer") is CustomerState.WAITING

        # remove the waiting customer: never served, even once someone is free
        await t.open_dialog('#queues li[data-openid="oC3_customer"] button[data-action="remove"]', "remove")
        assert await t.confirm("remove") == "ok: Removed oC3_customer from the general queue."
        assert engine.state("oC3_customer") is CustomerState.GONE

        # resume Alice: she takes the next customer
        await t.until(f"!!document.querySelector('{row.format('a1@test', 'resume')}')", "the resume button")
        await t.open_dialog(row.format("a1@test", "resume"), "resume")
        assert (
            await t.confirm("resume")
            == "ok: Resumed Alice (a1@test): kfrouter assigns customers to them again."
        )
        await env.ctl.say("oC4_customer", "human please")
        assert await env.assigned("oC4_customer") == "a1@test"
        assert "oC3_customer" not in await env.ctl.sessions()
        assert not [c for c in (await env.ctl.state())["create_log"] if c["openid"] == "oC3_customer"]

        # reassign c1 from Bob to Alice: WeChat ends with Alice serving them
        await t.open_dialog(
            '#sessions tr[data-openid="oC1_customer"] button[data-action="reassign"]', "reassign"
        )
        await t.until("!!document.getElementById('action-to')", "the agent list")
        await t.js(
            "(() => { const s = document.getElementById('action-to'); s.value = 'a1@test';"
            " s.dispatchEvent(new Event('change')); })()"
        )
        assert "goes to Alice (a1@test)" in await t.js(
            "document.getElementById('action-summary').textContent"
        )
        result = await t.confirm("reassign")
        assert result.startswith("ok: Moving oC1_customer from Bob (a2@test) to Alice (a1@test)")
        assert await env.assigned("oC1_customer") == "a1@test"

        # close c2's session: WeChat no longer has it
        await t.until(
            "!!document.querySelector('#sessions tr[data-openid=\"oC2_customer\"]')", "c2's session"
        )
        await t.open_dialog('#sessions tr[data-openid="oC2_customer"] button[data-action="close"]', "close")
        assert await t.confirm("close") == "ok: Closed the session of oC2_customer with Bob (a2@test)."
        await wait_until(lambda: _without(env, "oC2_customer"), message="c2's session closed at WeChat")

        # WeChat refuses a close: the page says so, in words
        await env.ctl.fault("kfsession/close", errcode=65414, times=1)
        await t.open_dialog('#sessions tr[data-openid="oC4_customer"] button[data-action="close"]', "close")
        result = await t.confirm("close")
        assert result.startswith("error: WeChat refused: ") and "errcode 65414" in result
        assert result.endswith("— Another agent is serving this customer now.")
        assert (await env.ctl.sessions()).get("oC4_customer") == "a1@test"
        await t.screenshot("h20-actions.png")
        assert t.errors() == []


async def _without(env: ObsEnv, openid: str) -> bool:
    return openid not in await env.ctl.sessions()


# ---------------------------------------------------------------------------------------------- cross-site


def attacker_page(target: str) -> str:
    """A page on another origin that posts to the daemon with a form (text/plain, the body is JSON)."""
    return (
        "<!doctype html><html><body>"
        f'<form method="post" action="{target}" enctype="text/plain">'
        '<input type="hidden" name=\'{"x":"\' value=\'"}\'></form>'
        "<script>document.forms[0].submit()</script></body></html>"
    )


@contextlib.asynccontextmanager
async def attacker(target: str) -> AsyncIterator[int]:
    async def page(_request: web.Request) -> web.Response:
        return web.Response(text=attacker_page(target), content_type="text/html")

    app = web.Application()
    app.router.add_get("/", page)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    finally:
        await runner.cleanup()


async def test_a_cross_site_post_with_the_cookie_is_refused(tmp_path: Path) -> None:
    async with running_env(tmp_path, agents=(), fake_agents=AGENTS, groups=GROUPS, routing=ROUTING) as env:
        await env.ctl.say("oVictim_01", "human please")
        kf = await env.assigned("oVictim_01")
        target = f"{env.base}/api/sessions/oVictim_01/close"
        async with attacker(target) as port, tab(tmp_path, env, ADMIN_TOKEN) as t:
            cookies = (await t.page.call("Network.getAllCookies"))["cookies"]
            assert any(c["name"] == "kfrouter_supervisor" and c["sameSite"] == "Strict" for c in cookies)
            # 127.0.0.1 on another port is the same *site*: the browser sends the cookie, the CSRF token
            # is missing, kfrouter refuses
            await t.page.call("Page.navigate", url=f"http://127.0.0.1:{port}/")
            text = await t.until(
                f"location.href === {json.dumps(target)} && document.body && document.body.innerText",
                "the same-site attack's answer",
            )
            assert json.loads(text) == {
                "error": "missing or wrong X-CSRF-Token header: changes from the supervisor page need its token"
            }
            # localhost is another site: SameSite=Strict keeps the cookie home, kfrouter sees no token
            await t.page.call("Page.navigate", url=f"http://localhost:{port}/")
            await t.until("location.host.startsWith('localhost')", "the attacker page", 10)
            text = await t.until(
                f"location.href === {json.dumps(target)} && document.body && document.body.innerText",
                "the cross-site attack's answer",
            )
            assert "missing admin token" in json.loads(text)["error"]
        assert (await env.ctl.sessions()).get("oVictim_01") == kf
        assert env.daemon.engine.with_agent("oVictim_01") == kf
        assert (await env.ctl.state())["calls"].get("/customservice/kfsession/close", 0) == 0


# ---------------------------------------------------------------------------------------------- read-only


async def test_the_read_only_token_sees_no_buttons_and_cannot_change(tmp_path: Path) -> None:
    async with running_env(
        tmp_path, agents=(), fake_agents=AGENTS, groups=GROUPS, routing=ROUTING, readonly_token=READONLY_TOKEN
    ) as env:
        await env.ctl.say("oSeen_0001", "human please")
        kf = await env.assigned("oSeen_0001")
        await env.ctl.say("oQueued_01", "invoice please")  # billing: Chen is offline
        await wait_until(
            lambda: env.daemon.engine.state("oQueued_01") is CustomerState.WAITING, message="queued"
        )
        async with tab(tmp_path, env, READONLY_TOKEN) as t:
            await t.until(
                "!!document.querySelector('#sessions tr[data-openid=\"oSeen_0001\"]')", "the session row"
            )
            await t.until("!!document.querySelector('#queues li[data-openid=\"oQueued_01\"]')", "the queue")
            assert await t.js("window.kfrouterActions.canAct") is False
            assert await t.js("document.querySelectorAll('button[data-action]').length") == 0
            assert await t.js("document.getElementById('role').hidden") is False  # "read-only" badge
            assert await t.js("getComputedStyle(document.querySelector('th.admin-only')).display") == "none"
            # the page's own session, with its CSRF token, still may not change anything
            answers = await t.js(
                """(async () => {
                  const csrf = document.querySelector('meta[name="kfrouter-csrf"]').content;
                  const headers = {"Content-Type": "application/json", "X-CSRF-Token": csrf};
                  const calls = [
                    ["PATCH", "/api/agents/a1%40test/settings", {paused: true}],
                    ["POST", "/api/sessions/oSeen_0001/close", {}],
                    ["DELETE", "/api/queue/oQueued_01", undefined],
                  ];
                  const out = [];
                  for (const [method, path, body] of calls) {
                    const r = await fetch(path, {method, headers, credentials: "same-origin",
                                                 body: body === undefined ? undefined : JSON.stringify(body)});
                    out.push([r.status, (await r.json()).error]);
                  }
                  const r = await fetch("/api/agents", {credentials: "same-origin"});
                  out.push([r.status, null]);
                  return out;
                })()"""
            )
            refused = "read-only access: this token may look but not change anything"
            assert answers == [[403, refused], [403, refused], [403, refused], [200, None]]
            await t.screenshot("h20-readonly.png")
            assert t.errors() == []
        assert not env.daemon.engine.agent("a1@test").paused  # type: ignore[union-attr]
        assert (await env.ctl.sessions()).get("oSeen_0001") == kf
        assert env.daemon.engine.state("oQueued_01") is CustomerState.WAITING


# ---------------------------------------------------------------------------------------------- history


def a_day_of_traffic(path: Path, now: float, seed: int = 7) -> int:
    """24 hours of closed cases ending now (busier by day), written through the Store; how many."""
    rng = random.Random(seed)
    n = 0
    t = now - 24 * 3600
    with Store(path, synchronous="NORMAL") as s, s.transaction():
        for kf, g in (("a1@test", ["general"]), ("a2@test", ["general"]), ("b1@test", ["billing"])):
            s.append_event(now - 25 * 3600, "agent_online", {"agent": kf, "groups": g, "max_sessions": 3})
        while True:
            hour = time.localtime(t).tm_hour
            rate = 1 / 40 if 9 <= hour < 21 else 1 / 400  # one every 40 s by day, 400 s at night
            t += rng.expovariate(rate)
            if t >= now - 600:
                break
            group = "billing" if rng.random() < 0.3 else "general"
            openid = f"oDay_{n:05d}"
            s.add_waiting(WaitingRow(openid, group, 0, t))
            busy = 1.0 + 2.0 * math.sin(math.pi * ((t - now) / 86400 % 1.0)) ** 2
            if rng.random() < 0.08 * busy:
                s.remove_waiting(openid, t + rng.expovariate(1 / 60), "cancelled")
            else:
                start = t + rng.expovariate(1 / (8 * busy))
                kf = "b1@test" if group == "billing" else rng.choice(["a1@test", "a2@test"])
                s.record_session_start(openid, kf, start)
                s.record_session_end(openid, kf, start + rng.expovariate(1 / 240))
            n += 1
    return n


async def test_history_charts_load_on_the_page(tmp_path: Path) -> None:
    n = a_day_of_traffic(tmp_path / "kfrouter.db", time.time())
    assert n > 500
    async with (
        running_env(tmp_path, agents=(), fake_agents=AGENTS, groups=GROUPS, routing=ROUTING) as env,
        tab(tmp_path, env, ADMIN_TOKEN) as t,
    ):
        await t.until(
            "[...document.querySelectorAll('#history img')].every(i => i.dataset.loaded === '1' && i.naturalWidth > 0)",
            "the four history charts",
            20,
        )
        assert await t.js("document.querySelectorAll('#history img').length") == 4
        assert await t.js("document.getElementById('history-error').hidden") is True
        await t.screenshot("h20-history.png", ".panel-history")
        assert t.errors() == []
