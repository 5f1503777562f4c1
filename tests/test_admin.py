"""The admin HTTP API against a running daemon and the fake WeChat (both in-process, real HTTP on
127.0.0.1): the token on every route, agent management reaching WeChat, settings persisted across a
restart, the queue and sessions, closing and reassigning, and the error answers."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest import ADMIN_TOKEN, CB_TOKEN, FakeControl, config_dict, wait_until

from kfrouter.router.admin import ROUTE_NAME, install
from kfrouter.router.app import build_daemon
from kfrouter.router.config import Config
from kfrouter.router.daemon import AccountRunner, DaemonOptions
from kfrouter.router.host import Host
from kfrouter.sim.fake_options import FakeOptions
from kfrouter.sim.fake_server import FakeWeChat, running_fake

APPID = "wx_test_app"
SECRET = "test_secret"
GROUPS = (
    {"name": "sales", "agents": ["a1@test"]},
    {"name": "support", "agents": ["a2@test"]},
)
JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 200 + b"\xff\xd9"


class Env:
    """The fake WeChat and one daemon (restartable on the same store), with an admin HTTP helper."""

    def __init__(self, fake: FakeWeChat, http: aiohttp.ClientSession, store: Path) -> None:
        self.fake = fake
        self.http = http
        self.store = store
        self.ctl = FakeControl(fake.base_url, http)
        self.daemon: Host | None = None
        self.task: asyncio.Task[None] | None = None

    @property
    def h(self) -> Host:
        assert self.daemon is not None
        return self.daemon

    @property
    def d(self) -> AccountRunner:
        return self.h.runner

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.h.port}"

    async def start(self) -> Host:
        cfg = Config.from_dict(
            config_dict(
                api_base=self.fake.base_url,
                store=self.store,
                groups=GROUPS,
                routing={
                    "mode": "keywords",
                    "keywords": ["human"],
                    "default_group": "support",
                    "rules": [{"keywords": ["buy"], "group": "sales"}],
                },
            ),
            env={},
        )
        daemon = build_daemon(cfg, options=DaemonOptions(create_timeout_s=2.0, api_timeout_s=2.0, api_retries=0))
        self.daemon = daemon
        self.task = asyncio.create_task(daemon.run())
        await asyncio.wait_for(daemon.listening.wait(), 10)
        self.fake.pusher.webhook = f"{self.url}/wechat"
        await asyncio.wait_for(daemon.started.wait(), 15)
        return daemon

    async def stop(self) -> None:
        if self.daemon is not None and self.task is not None:
            self.daemon.stop()
            await asyncio.wait_for(self.task, 15)
        self.daemon = None
        self.task = None

    async def api(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        token: str | None = ADMIN_TOKEN,
        data: Any = None,
        raw: bytes | None = None,
    ) -> tuple[int, Any]:
        headers = {} if token is None else {"Authorization": f"Bearer {token}"}
        kw: dict[str, Any] = {"headers": headers}
        if body is not None:
            kw["json"] = body
        if data is not None:
            kw["data"] = data
        if raw is not None:
            kw["data"] = raw
        async with self.http.request(method, self.url + path, **kw) as resp:
            assert resp.content_type == "application/json", f"{method} {path}: {await resp.text()}"
            return resp.status, await resp.json()


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    opts = FakeOptions()
    opts.update({"check_openid": False})
    async with (
        running_fake(APPID, SECRET, token=CB_TOKEN, options=opts) as fake,
        aiohttp.ClientSession() as http,
    ):
        e = Env(fake, http, tmp_path / "kfrouter.db")
        await e.ctl.agents("a1@test", "a2@test", auto_accept=2)
        await e.start()
        try:
            yield e
        finally:
            await e.stop()


async def in_session(e: Env, openid: str, kf: str | None = None) -> str:
    async def check() -> str | None:
        got = (await e.ctl.sessions()).get(openid)
        ok = got is not None and (kf is None or got == kf) and e.d.engine.sessions().get(openid) == got
        return got if ok and not e.d.engine.reservations() else None

    result: str = await wait_until(check, message=f"{openid} in session with {kf or 'someone'}")
    return result


# ============================================================================================ auth


def _fill(path: str) -> str:
    path = path.replace("{appid}", "wx_test_app")
    return re.sub(r"\{kf\}", "a1@test", re.sub(r"\{openid\}", "nobody", re.sub(r"\{tail[^}]*\}", "x", path)))


async def test_every_route_refuses_a_missing_or_wrong_token(env: Env) -> None:
    routes = sorted(
        {
            (r.method, r.resource.canonical)
            for r in env.h.app.router.routes()
            if r.resource is not None and r.resource.canonical.startswith("/api") and r.method != "HEAD"
        }
    )
    per_account = {
        ("GET", "/agents"),
        ("POST", "/agents"),
        ("GET", "/agents/{kf}"),
        ("PATCH", "/agents/{kf}"),
        ("DELETE", "/agents/{kf}"),
        ("PATCH", "/agents/{kf}/settings"),
        ("POST", "/agents/{kf}/avatar"),
        ("POST", "/agents/{kf}/invite"),
        ("GET", "/queue"),
        ("DELETE", "/queue/{openid}"),
        ("GET", "/sessions"),
        ("POST", "/sessions/{openid}/close"),
        ("POST", "/sessions/{openid}/reassign"),
    }
    expected = {
        ("GET", "/api/accounts"),
        ("GET", "/api/accounts/{appid}"),
        *((m, "/api/accounts/{appid}" + p) for m, p in per_account),
        ("GET", "/api/agents"),
        ("POST", "/api/agents"),
        ("GET", "/api/agents/{kf}"),
        ("PATCH", "/api/agents/{kf}"),
        ("DELETE", "/api/agents/{kf}"),
        ("PATCH", "/api/agents/{kf}/settings"),
        ("POST", "/api/agents/{kf}/avatar"),
        ("POST", "/api/agents/{kf}/invite"),
        ("GET", "/api/queue"),
        ("DELETE", "/api/queue/{openid}"),
        ("GET", "/api/sessions"),
        ("POST", "/api/sessions/{openid}/close"),
        ("POST", "/api/sessions/{openid}/reassign"),
        ("*", "/api"),
        ("*", "/api/{tail}"),
    }
    assert set(routes) == expected
    for method, canonical in routes:
        m = "GET" if method == "*" else method
        path = _fill(canonical)
        status, body = await env.api(m, path, token=None)
        assert status == 401, (m, path, body)
        assert "missing admin token" in body["error"]
        status, body = await env.api(m, path, token="not-the-token-0123456789")
        assert status == 401, (m, path, body)
        assert body == {"error": "wrong admin token"}
        status, body = await env.api(m, path, token=ADMIN_TOKEN + "x")
        assert status == 401
        # the right token gets past the check: whatever the answer, it is not 401
        status, body = await env.api(m, path, {})
        assert status != 401, (m, path, body)
    # a scheme other than Bearer is no token at all
    async with env.http.get(
        env.url + "/api/agents", headers={"Authorization": f"Basic {ADMIN_TOKEN}"}
    ) as resp:
        assert resp.status == 401
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    # aiohttp's automatic HEAD routes share the guarded handlers
    async with env.http.head(env.url + "/api/queue") as resp:
        assert resp.status == 401
    # and the routes are there once: install() sees them
    assert ROUTE_NAME in env.h.app.router.named_resources()
    assert install(env.h.app, env.h) is False


async def test_unknown_admin_route_is_a_json_404(env: Env) -> None:
    status, body = await env.api("GET", "/api/nothing-here")
    assert status == 404 and "GET /api/nothing-here" in body["error"]
    status, body = await env.api("DELETE", "/api/queue")
    assert status == 404 and "DELETE /api/queue" in body["error"]


# ============================================================================================ agents


async def test_list_agents_shows_live_status_groups_and_load(env: Env) -> None:
    await env.ctl.say("c1", "buy human")
    await in_session(env, "c1", "a1@test")
    status, body = await env.api("GET", "/api/agents")
    assert status == 200
    agents = {a["kf_account"]: a for a in body["agents"]}
    assert set(agents) == {"a1@test", "a2@test"}
    a1 = agents["a1@test"]
    assert a1["online"] is True and a1["paused"] is False
    assert a1["groups"] == ["sales"] and a1["configured_groups"] == ["sales"]
    assert (a1["sessions"], a1["load"], a1["capacity"]) == (1, 1, 2)
    assert isinstance(a1["last_assigned_at"], float)
    assert agents["a2@test"]["last_assigned_at"] is None
    assert a1["local_settings"] is None
    status, one = await env.api("GET", "/api/agents/a2@test")
    assert status == 200 and one["groups"] == ["support"] and one["load"] == 0
    status, body = await env.api("GET", "/api/agents?wechat=1")
    assert status == 200
    assert {a["kf_account"]: a["wechat"]["kf_wx"] is not None for a in body["agents"]} == {
        "a1@test": True,
        "a2@test": True,
    }


async def test_add_update_avatar_invite_delete_reach_wechat(env: Env) -> None:
    status, body = await env.api(
        "POST", "/api/agents", {"kf_account": "new1@test", "nickname": "Newbie", "groups": ["sales"]}
    )
    assert status == 201, body
    model = env.fake.model
    assert model.agents["new1@test"].nickname == "Newbie"
    assert body["groups"] == ["sales"] and body["online"] is False and body["nickname"] == "Newbie"
    assert env.d.store is not None and env.d.store.agents()["new1@test"].groups == ("sales",)

    status, body = await env.api("PATCH", "/api/agents/new1@test", {"nickname": "Renamed"})
    assert status == 200, body
    assert model.agents["new1@test"].nickname == "Renamed"
    assert env.d.engine.agent("new1@test").nickname == "Renamed"  # type: ignore[union-attr]

    form = aiohttp.FormData()
    form.add_field("media", JPEG, filename="me.jpg", content_type="image/jpeg")
    status, body = await env.api("POST", "/api/agents/new1@test/avatar", data=form)
    assert status == 200, body
    assert body["uploaded_bytes"] == len(JPEG)
    assert model.agents["new1@test"].headimgurl.startswith("http://mmbiz.qpic.cn/")

    status, body = await env.api("POST", "/api/agents/new1@test/invite", {"invite_wx": "new_worker_1"})
    assert status == 200, body
    assert model.agents["new1@test"].invite_wx == "new_worker_1"
    assert model.agents["new1@test"].invite_status == "waiting"

    status, body = await env.api("DELETE", "/api/agents/new1@test")
    assert status == 200, body
    assert body["deleted"] == "new1@test" and body["note"] is None
    assert "new1@test" not in model.agents
    assert env.d.engine.agent("new1@test") is None
    assert "new1@test" not in env.d.store.agents()
    status, body = await env.api("GET", "/api/agents/new1@test")
    assert status == 404 and "new1@test" in body["error"]
    kinds = [p["action"] for _s, _t, k, p in env.d.store.events(kinds=("admin",)) if k == "admin"]
    assert kinds == ["add", "set", "update", "avatar", "invite", "delete"]


async def test_agent_errors_name_the_field_the_agent_or_the_errcode(env: Env) -> None:
    cases: list[tuple[str, str, Any, int, str]] = [
        ("POST", "/api/agents", {"nickname": "x"}, 400, "body.kf_account: is required"),
        ("POST", "/api/agents", {"kf_account": "nope", "nickname": "x"}, 400, "body.kf_account: must be"),
        ("POST", "/api/agents", {"kf_account": "n@test"}, 400, "body.nickname: is required"),
        ("POST", "/api/agents", {"kf_account": "n@test", "nickname": "x" * 17}, 400, "at most 16"),
        ("POST", "/api/agents", {"kf_account": "n@test", "nickname": "x", "pwd": 1}, 400, "'pwd'"),
        ("POST", "/api/agents", [1, 2], 400, "expected a JSON object"),
        ("PATCH", "/api/agents/ghost@test", {"nickname": "x"}, 404, "unknown agent 'ghost@test'"),
        ("DELETE", "/api/agents/ghost@test", None, 404, "unknown agent 'ghost@test'"),
        ("PATCH", "/api/agents/ghost@test/settings", {"paused": True}, 404, "'ghost@test'"),
        ("POST", "/api/agents/ghost@test/invite", {"invite_wx": "someone"}, 404, "'ghost@test'"),
        ("PATCH", "/api/agents/a1@test/settings", {}, 400, "at least one of"),
        ("PATCH", "/api/agents/a1@test/settings", {"groups": ["vip"]}, 400, "unknown group 'vip'"),
        ("PATCH", "/api/agents/a1@test/settings", {"groups": "sales"}, 400, "body.groups:"),
        ("PATCH", "/api/agents/a1@test/settings", {"max_sessions": 0}, 400, "body.max_sessions:"),
        ("PATCH", "/api/agents/a1@test/settings", {"max_sessions": True}, 400, "body.max_sessions:"),
        ("PATCH", "/api/agents/a1@test/settings", {"paused": "yes"}, 400, "body.paused:"),
        ("POST", "/api/agents/a1@test/invite", {}, 400, "body.invite_wx: is required"),
    ]
    for method, path, body, want_status, want_text in cases:
        status, answer = await env.api(method, path, body)
        assert status == want_status, (method, path, body, answer)
        assert want_text in answer["error"], (method, path, answer)
    status, answer = await env.api("PATCH", "/api/agents/a1@test", raw=b"{not json")
    assert status == 400 and "not valid JSON" in answer["error"]
    # WeChat's own refusals: 502 with the errcode
    status, answer = await env.api("POST", "/api/agents", {"kf_account": "a1@test", "nickname": "dup"})
    assert status == 502 and answer["errcode"] == 65406 and answer["endpoint"].endswith("kfaccount/add")
    status, answer = await env.api("POST", "/api/agents", {"kf_account": "x1@otherwx", "nickname": "x"})
    assert status == 502 and answer["errcode"] == 65404
    status, answer = await env.api("POST", "/api/agents/a1@test/invite", {"invite_wx": "someone_new"})
    assert status == 502 and answer["errcode"] == 65412  # a1 is bound already
    await env.ctl.fault("kfaccount/update", errcode=-1)
    status, answer = await env.api("PATCH", "/api/agents/a2@test", {"nickname": "zz"})
    assert status == 502 and answer["errcode"] == -1
    await env.ctl.clear_faults()
    form = aiohttp.FormData()
    form.add_field("media", b"GIF89a", filename="x.gif", content_type="image/gif")
    status, answer = await env.api("POST", "/api/agents/a1@test/avatar", data=form)
    assert status == 502 and answer["errcode"] == 40005
    form = aiohttp.FormData()
    form.add_field("other", "x")
    status, answer = await env.api("POST", "/api/agents/a1@test/avatar", data=form)
    assert status == 400 and "'media'" in answer["error"]
    status, answer = await env.api("POST", "/api/agents/a1@test/avatar", {"media": "x"})
    assert status == 400 and "multipart" in answer["error"]
    assert set(env.fake.model.agents) == {"a1@test", "a2@test"}


async def test_settings_reach_the_engine_and_survive_a_restart(env: Env) -> None:
    status, body = await env.api(
        "PATCH",
        "/api/agents/a1@test/settings",
        {"groups": ["sales", "support"], "max_sessions": 1, "paused": True, "tags": ["en"]},
    )
    assert status == 200, body
    assert body["groups"] == ["sales", "support"] and body["capacity"] == 1 and body["paused"] is True
    assert body["local_settings"]["max_sessions"] == 1
    # paused: a support customer goes to a2, a sales customer waits (a1 is the only sales agent)
    await env.ctl.say("s1", "buy human")
    status, q = await env.api("GET", "/api/queue")
    assert [w["openid"] for w in q["waiting"]] == ["s1"]

    await env.stop()
    await env.start()
    a1 = env.d.engine.agent("a1@test")
    assert a1 is not None
    assert (sorted(a1.groups), a1.capacity, a1.paused, sorted(a1.tags)) == (
        ["sales", "support"],
        1,
        True,
        ["en"],
    )
    status, q = await env.api("GET", "/api/queue")
    assert [w["openid"] for w in q["waiting"]] == ["s1"]

    # resume and clear the limit: back to WeChat's auto_accept (2); the waiting customer is served
    status, body = await env.api(
        "PATCH", "/api/agents/a1@test/settings", {"paused": False, "max_sessions": None}
    )
    assert status == 200, body
    assert body["paused"] is False and body["capacity"] == 2
    await in_session(env, "s1", "a1@test")
    stored = env.d.store.agents()["a1@test"]  # type: ignore[union-attr]
    assert (stored.paused, stored.max_sessions, stored.groups) == (False, None, ("sales", "support"))


# ============================================================================================ queue, sessions


async def test_queue_lists_waiting_customers_in_order_with_wait_and_estimate(env: Env) -> None:
    for kf in ("a1@test", "a2@test"):
        status, _ = await env.api("PATCH", f"/api/agents/{kf}/settings", {"paused": True})
        assert status == 200
    await env.ctl.say("w1", "human please")
    await env.ctl.say("w2", "buy human")
    await env.ctl.say("w3", "human again")
    status, q = await env.api("GET", "/api/queue")
    assert status == 200
    rows = q["waiting"]
    assert [(r["position"], r["openid"], r["group"]) for r in rows] == [
        (1, "w1", "support"),
        (2, "w2", "sales"),
        (3, "w3", "support"),
    ]
    assert [r["ahead_in_group"] for r in rows] == [0, 0, 1]
    assert all(r["waited_s"] >= 0 and r["priority"] == 0 for r in rows)
    assert rows[0]["waited_s"] >= rows[2]["waited_s"]
    assert all("estimate_s" in r and "estimate_method" in r for r in rows)
    assert rows[0]["estimate_method"] is not None
    assert q["count"] == 3 and q["reservations"] == []
    status, s = await env.api("GET", "/api/sessions")
    assert status == 200 and s == {"sessions": [], "count": 0}


async def test_sessions_close_and_reassign_go_through_wechat(env: Env) -> None:
    await env.ctl.say("c1", "buy human")
    await env.ctl.say("c2", "human")
    await in_session(env, "c1", "a1@test")
    await in_session(env, "c2", "a2@test")
    status, s = await env.api("GET", "/api/sessions")
    assert status == 200
    assert [(r["openid"], r["kf_account"]) for r in s["sessions"]] == [("c1", "a1@test"), ("c2", "a2@test")]
    assert all(r["duration_s"] is not None and r["duration_s"] >= 0 for r in s["sessions"])

    # close c2 through kfsession/close
    status, body = await env.api("POST", "/api/sessions/c2/close")
    assert status == 200 and body == {"openid": "c2", "kf_account": "a2@test", "closed": True}
    assert "c2" not in await env.ctl.sessions()
    assert "c2" not in env.d.engine.sessions()
    closes = [c for c in (await env.ctl.state())["calls"] if "close" in c]
    assert closes, "kfsession/close was called"
    await wait_until(lambda: env.d.engine.agent("a2@test").sessions == 0, message="a2 load back to 0")  # type: ignore[union-attr]

    # reassign c1 from a1 to a2: closed first, then created with a2
    status, body = await env.api("POST", "/api/sessions/c1/reassign", {"to": "a2@test"})
    assert status == 202, body
    assert body == {"openid": "c1", "from": "a1@test", "to": "a2@test", "status": "closing"}
    await in_session(env, "c1", "a2@test")
    # to whoever the policy picks (null): the session with a2 is closed and c1 waits again — its group's
    # only agent, a1, is one it just left (avoided for engine.avoid_s), a2 is the one it leaves now
    status, body = await env.api("POST", "/api/sessions/c1/reassign", {"to": None})
    assert status == 202 and body["from"] == "a2@test" and body["to"] is None

    async def requeued() -> bool:
        return "c1" not in await env.ctl.sessions() and env.d.engine.position("c1") is not None

    await wait_until(requeued, message="c1 closed at WeChat and waiting again")
    status, q = await env.api("GET", "/api/queue")
    assert [w["openid"] for w in q["waiting"]] == ["c1"]
    # the agent a customer already has: nothing to do
    await env.ctl.say("c3", "human")
    await in_session(env, "c3", "a2@test")
    status, body = await env.api("POST", "/api/sessions/c3/reassign", {"to": "a2@test"})
    assert status == 200 and body["status"] == "unchanged"


async def test_session_errors(env: Env) -> None:
    status, body = await env.api("POST", "/api/sessions/nobody/close")
    assert status == 404 and "'nobody'" in body["error"]
    status, body = await env.api("POST", "/api/sessions/nobody/reassign", {"to": None})
    assert status == 404 and "'nobody'" in body["error"]
    await env.ctl.say("c1", "human")
    await in_session(env, "c1")
    status, body = await env.api("POST", "/api/sessions/c1/reassign", {"to": "ghost@test"})
    assert status == 404 and "unknown agent 'ghost@test'" in body["error"]
    status, body = await env.api("POST", "/api/sessions/c1/reassign", {"to": 5})
    assert status == 400 and "body.to" in body["error"]
    status, body = await env.api("POST", "/api/sessions/c1/reassign", {"agent": "a1@test"})
    assert status == 400 and "'agent'" in body["error"]
    # WeChat has no session any more (closed behind our back, push lost): 502 65413, engine heals
    kf = env.d.engine.sessions()["c1"]
    env.fake.model.sessions.pop("c1")
    env.fake.model.agents[kf].sessions.pop("c1")
    status, body = await env.api("POST", "/api/sessions/c1/close")
    assert status == 502 and body["errcode"] == 65413
    assert "c1" not in env.d.engine.sessions()
