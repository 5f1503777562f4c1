"""The supervisor page: 401 without the admin token, the cookie login (URL token, form, logout, tampering,
expiry), static files, the snapshot (agents, queue per group with waits and estimates, recent assignments)
and the server-sent event stream (an update after an assignment; the stream ends on shutdown)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
from conftest import ADMIN_TOKEN, config_dict, wait_until
from test_metrics_env import AUTH, ObsEnv, running_env

from kfrouter.router.access import ADMIN, COOKIE, Access
from kfrouter.router.app import build_daemon
from kfrouter.router.config import Config
from kfrouter.router.core.model import CustomerState
from kfrouter.router.supervisor import observability_of

TWO_GROUPS: dict[str, Any] = {
    "groups": [
        {"name": "general", "agents": ["a1@test", "a2@test"]},
        {"name": "billing", "agents": ["b1@test"]},  # b1 stays offline
    ],
    "routing": {"rules": [{"keywords": ["invoice"], "group": "billing"}]},
}


async def sse_events(resp: aiohttp.ClientResponse) -> AsyncIterator[tuple[str, Any]]:
    """(event name, parsed data) for each server-sent event of ``resp``."""
    name, data = "message", list[str]()
    while True:
        raw = await resp.content.readline()
        if not raw:
            return
        line = raw.decode().rstrip("\r\n")
        if not line:
            if data:
                yield name, json.loads("\n".join(data))
            name, data = "message", []
        elif line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].lstrip())


async def test_everything_is_refused_without_the_token(tmp_path: Path) -> None:
    async with running_env(tmp_path) as env:
        status, body = await env.get("/supervisor", auth=False)
        assert status == 401 and 'action="/supervisor/login"' in body and "a1@test" not in body
        status, body = await env.get("/supervisor?token=not-the-admin-token", auth=False)
        assert status == 401 and "not the admin token" in body
        for path in ("/supervisor/state", "/supervisor/events", "/metrics"):
            status, body = await env.get(path, auth=False)
            assert status == 401, path
            assert "a1@test" not in body
            status, _ = await env.get(
                path, auth=False, headers={"Authorization": "Bearer wrong-0123456789abc"}
            )
            assert status == 401, path
        # a forged or expired cookie is no better
        forged = {COOKIE: f"admin.{int(time.time()) + 3600}.nonce.{'0' * 64}"}
        expired = {COOKIE: Access(ADMIN_TOKEN).cookie(ADMIN, int(time.time()) - 1)}
        other_token = {COOKIE: Access("some-other-admin-token").cookie(ADMIN, int(time.time()) + 3600)}
        for cookies in (forged, expired, other_token, {COOKIE: "garbage"}):
            async with (
                aiohttp.ClientSession(cookies=cookies) as s,
                s.get(env.base + "/supervisor/state") as r,
            ):
                assert r.status == 401, cookies
        valid = {
            COOKIE: Access(ADMIN_TOKEN).cookie(ADMIN, int(time.time()) + 3600)
        }  # the same way, a good one
        async with aiohttp.ClientSession(cookies=valid) as s, s.get(env.base + "/supervisor/state") as r:
            assert r.status == 200


async def test_url_token_logs_in_with_a_cookie_and_leaves_the_address_bar(tmp_path: Path) -> None:
    async with (
        running_env(tmp_path) as env,
        aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser,
    ):
        async with browser.get(f"{env.base}/supervisor?token={ADMIN_TOKEN}", allow_redirects=False) as r:
            assert r.status == 303 and r.headers["Location"] == "/supervisor"
            set_cookie = r.headers["Set-Cookie"]
            assert ADMIN_TOKEN not in set_cookie
            assert "HttpOnly" in set_cookie and "SameSite=Strict" in set_cookie
        async with browser.get(f"{env.base}/supervisor") as r:
            assert r.status == 200
            page = await r.text()
            assert "supervisor.js" in page and 'id="agents"' in page
            assert "script-src 'self'" in r.headers["Content-Security-Policy"]
            assert r.headers["X-Content-Type-Options"] == "nosniff"
        async with browser.get(f"{env.base}/supervisor/state") as r:
            assert r.status == 200
        async with browser.post(f"{env.base}/supervisor/logout", allow_redirects=False) as r:
            assert r.status == 303
        async with browser.get(f"{env.base}/supervisor/state") as r:
            assert r.status == 401


async def test_login_form(tmp_path: Path) -> None:
    async with (
        running_env(tmp_path) as env,
        aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser,
    ):
        async with browser.post(f"{env.base}/supervisor/login", data={"token": "wrong"}) as r:
            assert r.status == 401 and "not the admin token" in await r.text()
        async with browser.post(f"{env.base}/supervisor/login", data={"token": "x" * 5000}) as r:
            assert r.status == 401
        async with browser.post(f"{env.base}/supervisor/login", data={"token": ADMIN_TOKEN}) as r:
            assert r.status == 200 and r.url.path == "/supervisor"  # followed the redirect, cookie set
            assert 'id="queues"' in await r.text()


async def test_static_files(tmp_path: Path) -> None:
    async with running_env(tmp_path) as env:
        for name, ctype in (("supervisor.css", "text/css"), ("supervisor.js", "application/javascript")):
            async with env.http.get(f"{env.base}/supervisor/static/{name}") as r:
                assert r.status == 200 and r.content_type == ctype
                assert len(await r.text()) > 1000
        for name in ("supervisor.html", "login.html", "..%2Fsupervisor.py", "nope.js"):
            async with env.http.get(f"{env.base}/supervisor/static/{name}") as r:
                assert r.status == 404, name


async def _state(env: ObsEnv) -> dict[str, Any]:
    status, body = await env.get("/supervisor/state")
    assert status == 200
    data: dict[str, Any] = json.loads(body)
    return data


async def test_snapshot_shows_agents_queues_estimates_and_assignments(tmp_path: Path) -> None:
    async with running_env(tmp_path, agents=("a1@test", "a2@test"), **TWO_GROUPS) as env:
        await env.ctl.say("c1", "human please")
        await env.assigned("c1")
        await env.ctl.say("w1", "invoice please")
        await env.ctl.say("w2", "invoice again")
        await wait_until(
            lambda: env.daemon.engine.state("w2") is CustomerState.WAITING,
            message="w1, w2 waiting for billing",
        )
        s = await _state(env)
        assert s["status"] == "running" and s["appid"] == "wx_test_app"
        assert s["totals"]["waiting"] == 2 and s["totals"]["assigned"] == 1 and s["totals"]["sessions"] == 1
        assert s["totals"]["agents_online"] == 2 and s["totals"]["capacity"] == 6 and s["totals"]["load"] == 1
        agents = {a["kf_account"]: a for a in s["agents"]}
        assert set(agents) >= {"a1@test", "a2@test"}
        served = env.daemon.engine.with_agent("c1")
        assert agents[served]["load"] == 1 and agents[served]["assigned"] == 1
        assert agents[served]["last_assigned_at"] is not None and agents[served]["status"] == "available"
        assert agents[served]["groups"] == ["general"]
        groups = {g["name"]: g for g in s["groups"]}
        assert groups["general"]["waiting"] == 0 and groups["general"]["agents_online"] == 2
        assert groups["general"]["free_slots"] == 5
        billing = groups["billing"]
        assert billing["waiting"] == 2 and billing["agents_online"] == 0 and billing["free_slots"] == 0
        assert [c["openid"] for c in billing["customers"]] == ["w1", "w2"]
        assert [c["position"] for c in billing["customers"]] == [0, 1]
        for c in billing["customers"]:
            assert c["arrived_at"] <= s["now"]
            assert c["estimate"] is not None and c["estimate"]["ahead"] == c["position"]
        assert [(r["openid"], r["kf_account"], r["group"]) for r in s["recent"]] == [
            ("c1", served, "general")
        ]
        assert s["recent"][0]["waited_s"] is not None and s["recent"][0]["waited_s"] >= 0


async def test_event_stream_delivers_an_update_after_an_assignment(tmp_path: Path) -> None:
    async with running_env(tmp_path) as env:
        async with env.http.get(f"{env.base}/supervisor/events", headers=AUTH) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/event-stream")
            stream = sse_events(resp)
            name, first = await asyncio.wait_for(anext(stream), 5)
            assert name == "snapshot" and first["recent"] == [] and first["totals"]["assigned"] == 0
            hub = env.obs.account().hub
            assert hub.streams == 1
            await env.ctl.say("s1", "human please")

            async def assignment_seen() -> dict[str, Any]:
                async for name, snap in stream:
                    if name == "snapshot" and snap["recent"]:
                        found: dict[str, Any] = snap
                        return found
                raise AssertionError("stream ended")

            # the stream refreshes every 5 s anyway: the update must come well before that
            snap = await asyncio.wait_for(assignment_seen(), 3)
            assert snap["recent"][0]["openid"] == "s1"
            assert snap["totals"]["assigned"] == 1
            kf = snap["recent"][0]["kf_account"]
            assert {a["kf_account"]: a["load"] for a in snap["agents"]}[kf] == 1
            # shutting down ends the stream (so the daemon's web server can close)
            env.host.stop()
            rest = await asyncio.wait_for(resp.content.read(), 10)
            assert rest is not None
            await asyncio.wait_for(env.daemon.stopped.wait(), 10)
        assert hub.streams == 0


def test_snapshots_slow_down_when_they_are_expensive(tmp_path: Path) -> None:
    cfg = Config.from_dict(config_dict(api_base="http://127.0.0.1:9", store=tmp_path / "kf.db"), env={})
    obs = observability_of(build_daemon(cfg).app)
    assert obs is not None
    hub = obs.account().hub
    assert hub.pause_s() == hub.debounce_s == 0.15
    hub.last_build_s = 0.05  # a 50 ms snapshot (a very long queue): at most one every 0.5 s
    assert hub.pause_s() == 0.5
    snap = json.loads(hub.snapshot_bytes())  # before run(): nothing started, still a valid snapshot
    assert snap["status"] == "starting" and snap["totals"]["waiting"] == 0
    assert [g["name"] for g in snap["groups"]] == ["general"]
    assert hub.last_build_s < 0.05
