"""The supervisor's actions over HTTP (the browser tests click them: tests/test_browser_actions.py): removing a
waiting customer, the read-only token, the cookie session's CSRF token and cross-site requests, WeChat's
refusals in words, the history from the store (JSON and SVG), and the notification log the reports count."""

from __future__ import annotations

import re
import time
from datetime import UTC
from pathlib import Path
from typing import Any

import aiohttp
import attrs
import pytest
from conftest import ADMIN_TOKEN, READONLY_TOKEN, wait_until
from test_metrics_env import ObsEnv, running_env

from kfrouter.router.access import ADMIN, COOKIE, VIEWER, Access, Principal
from kfrouter.router.core.model import CustomerState
from kfrouter.router.edges.store import Store, WaitingRow
from kfrouter.router.notice_log import NoticeLog
from kfrouter.router.observe import ApiCalled, PushReceived
from kfrouter.router.report import build_report
from kfrouter.router.traffic import NOTICE_KIND, read_traffic

OFFLINE = [{"kf_account": "a1@test", "nickname": "Alice", "online": False}]
READONLY = {"Authorization": f"Bearer {READONLY_TOKEN}"}
ADMIN_AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


async def call(
    env: ObsEnv, method: str, path: str, body: Any = None, *, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    async with env.http.request(method, env.base + path, json=body, headers=headers or {}) as r:
        data = await r.json() if r.content_type == "application/json" else await r.text()
        return r.status, data


async def login(env: ObsEnv, token: str) -> tuple[aiohttp.ClientSession, str, str]:
    """A browser-like session logged in with ``token``: (session, role, csrf token) read from the page."""
    s = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
    async with s.get(f"{env.base}/supervisor?token={token}") as r:
        assert r.status == 200
        page = await r.text()
    role = re.search(r'<meta name="kfrouter-role" content="([^"]*)">', page)
    csrf = re.search(r'<meta name="kfrouter-csrf" content="([^"]*)">', page)
    assert role is not None and csrf is not None
    return s, role.group(1), csrf.group(1)


# ---------------------------------------------------------------------------------------------- removing


async def test_removing_a_waiting_customer_is_a_cancel(tmp_path: Path) -> None:
    async with running_env(tmp_path, agents=(), fake_agents=OFFLINE, readonly_token=READONLY_TOKEN) as env:
        await env.ctl.say("oWait_1", "human please")
        await wait_until(
            lambda: env.daemon.engine.state("oWait_1") is CustomerState.WAITING, message="waiting"
        )

        status, body = await call(env, "DELETE", "/api/queue/oWait_1", headers=READONLY)
        assert status == 403 and "read-only" in body["error"]
        assert env.daemon.engine.state("oWait_1") is CustomerState.WAITING

        status, body = await call(env, "DELETE", "/api/queue/oWait_1", headers=ADMIN_AUTH)
        assert (status, body) == (200, {"openid": "oWait_1", "group": "general", "removed": True})
        assert env.daemon.engine.state("oWait_1") is CustomerState.GONE
        # what the customer's own cancel does
        assert env.daemon.engine.gone_reason("oWait_1") == "left:cancelled"
        store = env.daemon.store
        assert store is not None
        (case,) = [c for c in store.session_log() if c.openid == "oWait_1"]
        assert case.outcome == "removed" and case.ended_at is not None
        audit = [p for _s, _t, _k, p in store.events(kinds=["admin"])]
        assert {"action": "remove", "openid": "oWait_1", "group": "general"} in audit

        status, body = await call(env, "DELETE", "/api/queue/oWait_1", headers=ADMIN_AUTH)
        assert status == 404 and body["error"] == "customer 'oWait_1' is not waiting"

        # an agent comes online: the next customer is served, the removed one is not
        await env.ctl.agents("a1@test")
        await env.ctl.say("oNext_1", "human please")
        assert await env.assigned("oNext_1") == "a1@test"
        assert "oWait_1" not in await env.ctl.sessions()
        status, body = await call(env, "DELETE", "/api/queue/oNext_1", headers=ADMIN_AUTH)
        assert status == 404 and "in a session (close the session instead)" in body["error"]


# ---------------------------------------------------------------------------------------------- tokens


async def test_the_read_only_token_reads_everything_and_changes_nothing(tmp_path: Path) -> None:
    async with running_env(tmp_path, readonly_token=READONLY_TOKEN) as env:
        await env.ctl.say("oRo_1", "human please")
        kf = await env.assigned("oRo_1")
        for path in ("/api/agents", "/api/queue", "/api/sessions", "/metrics", "/supervisor/state"):
            async with env.http.get(env.base + path, headers=READONLY) as r:
                assert r.status == 200, path
        changes = [
            ("PATCH", "/api/agents/a1@test/settings", {"paused": True}),
            ("POST", "/api/sessions/oRo_1/close", {}),
            ("POST", "/api/sessions/oRo_1/reassign", {"to": None}),
            ("POST", "/api/agents", {"kf_account": "x@test", "nickname": "X"}),
            ("DELETE", "/api/agents/a1@test", None),
        ]
        for method, path, body in changes:
            status, answer = await call(env, method, path, body, headers=READONLY)
            assert status == 403, (method, path, answer)
            assert answer == {"error": "read-only access: this token may look but not change anything"}
        assert not env.daemon.engine.agent("a1@test").paused  # type: ignore[union-attr]
        assert (await env.ctl.sessions()).get("oRo_1") == kf
        state = await env.ctl.state()
        assert "x@test" not in {a["kf_account"] for a in state["agents"]}
        # a wrong token is still a 401, whichever it resembles
        status, _ = await call(
            env, "GET", "/api/agents", headers={"Authorization": f"Bearer {READONLY_TOKEN}x"}
        )
        assert status == 401


async def test_a_read_only_token_equal_to_the_admin_token_is_refused() -> None:
    from conftest import config_dict

    from kfrouter.router.config import Config, ConfigError

    data = config_dict(api_base="http://127.0.0.1:1", store="x.db", readonly_token=ADMIN_TOKEN)
    with pytest.raises(ConfigError, match=r"server\.readonly_token: must differ from admin_token"):
        Config.from_dict(data, env={})
    data = config_dict(api_base="http://127.0.0.1:1", store="x.db", readonly_token="short")
    with pytest.raises(ConfigError, match=r"server\.readonly_token: must be at least 16 characters"):
        Config.from_dict(data, env={})
    data = config_dict(api_base="http://127.0.0.1:1", store="x.db")
    cfg = Config.from_dict(data, env={"KFROUTER_READONLY_TOKEN": "r" * 20})
    assert cfg.server.readonly_token == "r" * 20
    assert cfg.secret_sources["server.readonly_token"] == "KFROUTER_READONLY_TOKEN"
    assert "r" * 20 not in repr(cfg)
    from kfrouter.router.logs import config_secrets

    assert "r" * 20 in config_secrets(cfg)  # redacted from every log line


# ---------------------------------------------------------------------------------------------- cookies


async def test_page_changes_need_the_sessions_csrf_token(tmp_path: Path) -> None:
    async with running_env(tmp_path, readonly_token=READONLY_TOKEN) as env:
        browser, role, csrf = await login(env, ADMIN_TOKEN)
        other, _, other_csrf = await login(env, ADMIN_TOKEN)
        viewer, viewer_role, viewer_csrf = await login(env, READONLY_TOKEN)
        try:
            assert (role, viewer_role) == (ADMIN, VIEWER)
            assert csrf and csrf != other_csrf  # one per session
            url = f"{env.base}/api/agents/a1@test/settings"
            body = {"paused": True}

            async def patch(s: aiohttp.ClientSession, headers: dict[str, str]) -> tuple[int, Any]:
                async with s.patch(url, json=body, headers=headers) as r:
                    return r.status, await r.json()

            refused = "missing or wrong X-CSRF-Token header"
            for headers in ({}, {"X-CSRF-Token": "0" * 64}, {"X-CSRF-Token": other_csrf}):
                status, answer = await patch(browser, headers)
                assert status == 403 and refused in answer["error"], headers
            # the shape of a cross-site form or no-cors fetch: text/plain, no token
            async with browser.post(
                f"{env.base}/api/sessions/nobody/close", data=b"{}", headers={"Content-Type": "text/plain"}
            ) as r:
                assert r.status == 403 and refused in (await r.json())["error"]
            # a browser that says the request comes from another site is refused even with the token
            status, answer = await patch(browser, {"X-CSRF-Token": csrf, "Sec-Fetch-Site": "cross-site"})
            assert (status, answer["error"]) == (403, "cross-site request refused")
            assert not env.daemon.engine.agent("a1@test").paused  # type: ignore[union-attr]

            status, answer = await patch(viewer, {"X-CSRF-Token": viewer_csrf})
            assert status == 403 and "read-only" in answer["error"]

            status, answer = await patch(browser, {"X-CSRF-Token": csrf, "Sec-Fetch-Site": "same-origin"})
            assert status == 200 and answer["paused"] is True
            assert env.daemon.engine.agent("a1@test").paused  # type: ignore[union-attr]
            # reading needs no CSRF token
            async with browser.get(f"{env.base}/api/agents") as r:
                assert r.status == 200
            async with browser.post(f"{env.base}/supervisor/logout", allow_redirects=False) as r:
                assert r.status == 303
            status, answer = await patch(browser, {"X-CSRF-Token": csrf})
            assert status == 401
        finally:
            for s in (browser, other, viewer):
                await s.close()


def test_cookies_name_their_role_and_die_with_their_token() -> None:
    access = Access("admin-token-0123456789", "viewer-token-0123456789")
    now = time.time()
    admin_cookie = access.cookie(ADMIN, int(now) + 60)
    viewer_cookie = access.cookie(VIEWER, int(now) + 60)
    who = access.from_cookie(admin_cookie, now)
    assert who is not None and who.role == ADMIN and who.via == "cookie"
    assert access.from_cookie(viewer_cookie, now) == Principal(VIEWER, "cookie", viewer_cookie.split(".")[2])
    # a viewer cookie relabelled as admin is a forgery
    forged = "admin." + viewer_cookie.partition(".")[2]
    assert access.from_cookie(forged, now) is None
    assert access.from_cookie(admin_cookie, now + 61) is None  # expired
    assert Access("admin-token-0123456789-new").from_cookie(admin_cookie, now) is None
    assert Access("admin-token-0123456789").from_cookie(viewer_cookie, now) is None  # no read-only token now
    assert access.role_of_token("viewer-token-0123456789") == VIEWER
    assert access.role_of_token("admin-token-0123456789") == ADMIN
    assert access.role_of_token("x" * 600) is None
    with pytest.raises(ValueError, match="must differ"):
        Access("same-token-0123456789", "same-token-0123456789")
    assert COOKIE == "kfrouter_supervisor"


# ---------------------------------------------------------------------------------------------- refusals


async def test_wechats_refusal_comes_back_in_words(tmp_path: Path) -> None:
    async with running_env(tmp_path) as env:
        await env.ctl.say("oRef_1", "human please")
        kf = await env.assigned("oRef_1")
        await env.ctl.fault("kfsession/close", errcode=65414, times=1)
        status, body = await call(env, "POST", "/api/sessions/oRef_1/close", {}, headers=ADMIN_AUTH)
        assert status == 502 and body["errcode"] == 65414
        assert body["error"].startswith("WeChat refused: /customservice/kfsession/close: errcode 65414")
        assert body["explanation"] == "Another agent is serving this customer now."
        assert (await env.ctl.sessions()).get("oRef_1") == kf


# ---------------------------------------------------------------------------------------------- history


def prefill(path: Path, now: float) -> list[tuple[str, str, float, float | None]]:
    """Closed cases of the last hours, written through the Store: (openid, group, asked at, wait or None
    for one who left after 30 s). Served customers are in session 120 s."""
    cases = []
    for i in range(40):
        group = "general" if i % 2 else "billing"
        asked = now - 6 * 3600 + i * 400.0
        wait = None if i % 5 == 0 else float(5 + 3 * (i % 9))
        cases.append((f"oHist_{i:02d}", group, asked, wait))
    with Store(path) as s:
        for openid, group, asked, wait in cases:
            s.add_waiting(WaitingRow(openid, group, 0, asked))
            if wait is None:
                s.remove_waiting(openid, asked + 30, "cancelled")
            else:
                s.record_session_start(openid, "a1@test", asked + wait)
                s.record_session_end(openid, "a1@test", asked + wait + 120)
    return cases


async def test_history_from_the_store_as_json_and_svg(tmp_path: Path) -> None:
    now = time.time()
    cases = prefill(tmp_path / "kfrouter.db", now)
    async with running_env(tmp_path, readonly_token=READONLY_TOKEN) as env:
        status, _ = await call(env, "GET", "/supervisor/history")
        assert status == 401
        status, h = await call(env, "GET", "/supervisor/history", headers=READONLY)
        assert status == 200
        assert h["slots"] == 96 and h["slot_s"] == 900 and h["start"] <= now - 23.75 * 3600
        groups = {g["group"]: g for g in h["groups"]}
        assert {"general", "billing"} <= set(groups)
        for name, g in groups.items():
            mine = [c for c in cases if c[1] == name]
            assert sum(g["requests"]) == len(mine)
            assert sum(g["abandoned"]) == sum(1 for c in mine if c[3] is None)
            assert sum(g["served"]) == sum(1 for c in mine if c[3] is not None)
        # one slot computed by hand: who asked in it, who of them got an agent within 20 s
        i = next(k for k, n in enumerate(groups["general"]["requests"]) if n)
        lo = h["start"] + i * 900
        mine = [c for c in cases if c[1] == "general" and lo <= c[2] < lo + 900]
        decided = len(mine)
        within = sum(1 for c in mine if c[3] is not None and c[3] <= 20)
        assert groups["general"]["service_level"][i] == round(within / decided, 4)
        # in session on average over a slot: 120 s per served customer, spread over the slots they cover
        total_in_session = sum(sum(v or 0 for v in g["in_session"]) * 900 for g in h["groups"])
        assert total_in_session == pytest.approx(120 * sum(1 for c in cases if c[3] is not None), rel=0.01)

        for chart in ("waiting", "in_session", "service_level", "abandoned"):
            async with env.http.get(f"{env.base}/supervisor/history/{chart}.svg", headers=READONLY) as r:
                assert r.status == 200 and r.content_type == "image/svg+xml"
                svg = await r.text()
                assert svg.startswith("<svg") and "billing" in svg and "<script" not in svg
        async with env.http.get(f"{env.base}/supervisor/history/nope.svg", headers=READONLY) as r:
            assert r.status == 404
        before = env.obs.account().history.computed
        await call(env, "GET", "/supervisor/history", headers=READONLY)
        assert env.obs.account().history.computed == before  # cached: the store is not read for every viewer


# ---------------------------------------------------------------------------------------------- notifications


async def test_notifications_sent_are_logged_and_counted_by_the_report(tmp_path: Path) -> None:
    async with running_env(
        tmp_path, agents=(), fake_agents=OFFLINE, notify={"enabled": True, "language": "en"}
    ) as env:
        await env.ctl.say("oNote_1", "human please")
        sent = await wait_until(
            lambda: _sent_to(env, "oNote_1"), timeout=10, message="the queue message sent to oNote_1"
        )
        assert sent >= 1
        await wait_until(
            lambda: env.obs.account().notices.written + len(env.obs.account().notices._pending) >= sent, message="logged"
        )
    traffic = read_traffic(tmp_path / "kfrouter.db")  # the daemon stopped: everything was flushed
    notes = [n for n in traffic.notices if n.openid == "oNote_1"]
    assert len(notes) == sent and notes[0].kind
    report = build_report(traffic, tz=UTC)
    assert report["totals"]["notifications"] == len(traffic.notices) >= 1
    assert next(g for g in report["groups"] if g["group"] == "general")["notifications"] == len(notes)


async def _sent_to(env: ObsEnv, openid: str) -> int:
    state = await env.ctl.state()
    return sum(1 for m in state["sent"].get(openid, []) if m.get("via") == "custom_send")


async def test_notice_log_writes_in_batches(tmp_path: Path) -> None:
    path = tmp_path / "kf.db"
    clock = [1000.0]
    with Store(path) as store:
        log = NoticeLog(lambda: store, lambda: clock[0], flush_after_s=0.05, max_batch=3)
        ok = ApiCalled(
            endpoint="message/custom/send", ok=True, errcode=0, elapsed_s=0.01, openid="o1", kind="queued"
        )
        log.observe(ok, 0.0)
        log.observe(attrs.evolve(ok, ok=False, errcode=45015), 0.0)  # failed: not a notification
        log.observe(attrs.evolve(ok, endpoint="kfsession/create"), 0.0)
        log.observe(PushReceived("UserMessage", "o1"), 0.0)
        assert store.events(kinds=[NOTICE_KIND]) == []  # not written yet
        await wait_until(lambda: log.written == 1, timeout=5, message="the timed flush")
        clock[0] = 1001.0
        for k in range(3):  # a full batch is written at once
            log.observe(attrs.evolve(ok, openid=f"o{k + 2}"), 0.0)
        assert log.written == 4
        log.observe(attrs.evolve(ok, openid="o9"), 0.0)
        log.close()
        rows = store.events(kinds=[NOTICE_KIND])
        assert [(t, p["openid"]) for _s, t, _k, p in rows] == [
            (1000.0, "o1"),
            (1001.0, "o2"),
            (1001.0, "o3"),
            (1001.0, "o4"),
            (1001.0, "o9"),
        ]


def test_the_pages_files_are_found_outside_the_repository(tmp_path: Path) -> None:
    """The static files are read under the installed name (``kfrouter.router``), whatever the directory."""
    import subprocess
    import sys

    code = (
        "from kfrouter.router.supervisor import STATIC_TYPES, _static\n"
        "print(sorted((n, len(_static(n)) > 1000) for n in STATIC_TYPES))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60, check=True
    ).stdout
    assert out.strip() == str(
        sorted((n, True) for n in ("supervisor-actions.js", "supervisor.css", "supervisor.js"))
    )
