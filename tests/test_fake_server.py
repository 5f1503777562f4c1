"""The fake WeChat HTTP server over 127.0.0.1: endpoint round trips, paths, methods, bodies, faults,
the control API and the misconfiguration switches. The fake's clock is frozen and jumps on demand."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from yarl import URL

from kfrouter.router.clock import SteadyClock
from kfrouter.sim.fake_options import FakeOptions
from kfrouter.sim.fake_server import FakeWeChat, running_fake

T0 = 1_700_000_000.0


@pytest.fixture
async def fake() -> AsyncIterator[FakeWeChat]:
    async with running_fake("wxAPP", "SECRET", clock=SteadyClock(T0, frozen=True)) as f:
        yield f


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def call(
    http: aiohttp.ClientSession,
    fake: FakeWeChat,
    method: str,
    path: str,
    *,
    token: str | None = None,
    body: Any = None,
    raw: bytes | None = None,
    params: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    q = dict(params or {})
    if token is not None:
        q["access_token"] = token
    data = (
        raw
        if raw is not None
        else (json.dumps(body, ensure_ascii=False).encode() if body is not None else None)
    )
    async with http.request(method, fake.base_url + path, params=q, data=data, headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        out: dict[str, Any] = json.loads(await resp.read())
        return out


async def control(
    http: aiohttp.ClientSession,
    fake: FakeWeChat,
    path: str,
    body: Any = None,
    method: str = "POST",
    status: int = 200,
) -> dict[str, Any]:
    async with http.request(method, f"{fake.base_url}/_fake/{path}", json=body) as resp:
        assert resp.status == status, await resp.text()
        out: dict[str, Any] = await resp.json()
        return out


async def get_token(http: aiohttp.ClientSession, fake: FakeWeChat) -> str:
    r = await call(
        http,
        fake,
        "GET",
        "/cgi-bin/token",
        params={"grant_type": "client_credential", "appid": "wxAPP", "secret": "SECRET"},
    )
    return str(r["access_token"])


async def setup_agents(http: aiohttp.ClientSession, fake: FakeWeChat, *agents: str) -> None:
    rows = [{"kf_account": a, "online": True, "auto_accept": 3} for a in agents]
    await control(http, fake, "agents", {"agents": rows})


# ---------------------------------------------------------------------------------------------- tokens
async def test_token_get_and_stable_post(fake: FakeWeChat, http: aiohttp.ClientSession) -> None:
    t = await get_token(http, fake)
    assert len(t) >= 32
    body = {"grant_type": "client_credential", "appid": "wxAPP", "secret": "SECRET", "force_refresh": False}
    s1 = await call(http, fake, "POST", "/cgi-bin/stable_token", body=body)
    s2 = await call(http, fake, "POST", "/cgi-bin/stable_token", body=body)
    assert s1["access_token"] == s2["access_token"] != t
    bad = await call(http, fake, "POST", "/cgi-bin/stable_token", body={**body, "secret": "nope"})
    assert bad["errcode"] == 40125
    bad = await call(
        http,
        fake,
        "GET",
        "/cgi-bin/token",
        params={"grant_type": "client_credential", "appid": "wxAPP", "secret": "nope"},
    )
    assert bad["errcode"] == 40001


async def test_clock_advance_expires_tokens_and_grace(fake: FakeWeChat, http: aiohttp.ClientSession) -> None:
    old = await get_token(http, fake)
    assert "kf_list" in await call(http, fake, "GET", "/cgi-bin/customservice/getkflist", token=old)
    await control(http, fake, "clock/advance", {"seconds": 100})
    new = await get_token(http, fake)
    await control(http, fake, "clock/advance", {"seconds": 299})
    assert "kf_list" in await call(http, fake, "GET", "/cgi-bin/customservice/getkflist", token=old)
    r = await control(http, fake, "clock/advance", {"seconds": 1})
    assert r["now"] == T0 + 400
    assert (await call(http, fake, "GET", "/cgi-bin/customservice/getkflist", token=old))["errcode"] == 40001
    await control(http, fake, "clock/advance", {"seconds": 7200})
    assert (await call(http, fake, "GET", "/cgi-bin/customservice/getkflist", token=new))["errcode"] == 42001
    await control(http, fake, "clock/advance", {"seconds": -5}, status=400)


async def test_token_missing_and_unknown(fake: FakeWeChat, http: aiohttp.ClientSession) -> None:
    assert (await call(http, fake, "GET", "/customservice/kfsession/getwaitcase"))["errcode"] == 41001
    r = await call(http, fake, "GET", "/customservice/kfsession/getwaitcase", token="forged")
    assert r["errcode"] == 40014


# ---------------------------------------------------------------------------------------------- routing
@pytest.mark.parametrize(
    "path",
    [
        "/customservice/getkflist",  # wechatpy >= PR #698 drops /cgi-bin/
        "/customservice/getonlinekflist",
        "/cgi-bin/customservice/kfsession/create",
        "/cgi-bin/customservice/kfaccount/add",
        "/cgi-bin/customservice/msgrecord/getmsglist",
        "/customservice/msgrecord/getrecord",  # retired
        "/message/custom/send",
        "/nothing/here",
    ],
)
async def test_wrong_prefix_or_unknown_path_is_40066(
    fake: FakeWeChat, http: aiohttp.ClientSession, path: str
) -> None:
    t = await get_token(http, fake)
    for method in ("GET", "POST"):
        r = await call(http, fake, method, path, token=t, body={})
        assert r["errcode"] == 40066
        assert r["errmsg"].startswith("invalid url")


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        ("POST", "/cgi-bin/token", 43001),
        ("GET", "/cgi-bin/stable_token", 43002),
        ("GET", "/customservice/kfsession/create", 43002),
        ("POST", "/cgi-bin/customservice/getkflist", 43001),
        ("PUT", "/customservice/kfaccount/add", 43002),
        ("DELETE", "/customservice/kfsession/getwaitcase", 43001),
    ],
)
async def test_wrong_method(
    fake: FakeWeChat, http: aiohttp.ClientSession, method: str, path: str, expected: int
) -> None:
    t = await get_token(http, fake)
    assert (await call(http, fake, method, path, token=t, body={}))["errcode"] == expected


async def test_bodies_empty_bad_no_content_type_and_unknown_fields(
    fake: FakeWeChat, http: aiohttp.ClientSession
) -> None:
    t = await get_token(http, fake)
    path = "/customservice/kfaccount/add"
    assert (await call(http, fake, "POST", path, token=t, raw=b""))["errcode"] == 44002
    assert (await call(http, fake, "POST", path, token=t, raw=b"  \n"))["errcode"] == 44002
    assert (await call(http, fake, "POST", path, token=t, raw=b"{not json"))["errcode"] == 47001
    assert (await call(http, fake, "POST", path, token=t, raw=b"[1, 2]"))["errcode"] == 47001
    assert (await call(http, fake, "POST", path, token=t, raw=b"\xff\xfe"))["errcode"] == 47001
    # wechatpy style: UTF-8 JSON, no Content-Type, legacy password field
    raw = json.dumps(
        {"kf_account": "a1@test", "nickname": "客服1", "password": "9003d1df"}, ensure_ascii=False
    )
    r = await call(http, fake, "POST", path, token=t, raw=raw.encode("utf-8"), headers={"Content-Type": ""})
    assert r == {"errcode": 0, "errmsg": "ok"}
    r = await call(
        http,
        fake,
        "POST",
        path,
        token=t,
        body={"kf_account": "a2@test", "nickname": "n"},
        headers={"Content-Type": "text/plain"},
    )
    assert r["errcode"] == 0
    kf = await call(http, fake, "GET", "/cgi-bin/customservice/getkflist", token=t)
    assert [(x["kf_account"], x["kf_nick"]) for x in kf["kf_list"]] == [
        ("a1@test", "客服1"),
        ("a2@test", "n"),
    ]


# ---------------------------------------------------------------------------------------------- accounts
async def test_account_round_trips(fake: FakeWeChat, http: aiohttp.ClientSession) -> None:
    t = await get_token(http, fake)
    add = "/customservice/kfaccount/add"
    assert (await call(http, fake, "POST", add, token=t, body={"kf_account": "a1@test", "nickname": "A"}))[
        "errcode"
    ] == 0
    assert (await call(http, fake, "POST", add, token=t, body={"kf_account": "a1@test", "nickname": "A"}))[
        "errcode"
    ] == 65406
    assert (await call(http, fake, "POST", add, token=t, body={"kf_account": "bad@x", "nickname": "A"}))[
        "errcode"
    ] == 65404
    upd = "/customservice/kfaccount/update"
    assert (await call(http, fake, "POST", upd, token=t, body={"kf_account": "a1@test", "nickname": "B"}))[
        "errcode"
    ] == 0
    assert (await call(http, fake, "POST", upd, token=t, body={"kf_account": "zz@test", "nickname": "B"}))[
        "errcode"
    ] == 65401
    inv = "/customservice/kfaccount/inviteworker"
    r = await call(http, fake, "POST", inv, token=t, body={"kf_account": "a1@test", "invite_wx": "worker_1"})
    assert r["errcode"] == 0
    row = (await call(http, fake, "GET", "/cgi-bin/customservice/getkflist", token=t))["kf_list"][0]
    assert row["kf_nick"] == "B" and row["invite_status"] == "waiting" and isinstance(row["kf_id"], int)
    await control(http, fake, "agent/invite", {"kf_account": "a1@test", "accept": True})
    await control(http, fake, "agents", {"agents": [{"kf_account": "a1@test", "online": True}]})
    online = await call(http, fake, "GET", "/cgi-bin/customservice/getonlinekflist", token=t)
    assert online["kf_online_list"][0]["kf_account"] == "a1@test"
    assert "errcode" not in online


async def test_uploadheadimg_multipart(fake: FakeWeChat, http: aiohttp.ClientSession) -> None:
    t = await get_token(http, fake)
    await setup_agents(http, fake, "a1@test")
    url = fake.base_url + "/customservice/kfaccount/uploadheadimg"
    form = aiohttp.FormData()
    form.add_field(
        "media", io.BytesIO(b"\xff\xd8\xff" + b"0" * 100), filename="head.jpg", content_type="image/jpeg"
    )
    async with http.post(url, params={"access_token": t, "kf_account": "a1@test"}, data=form) as resp:
        assert (await resp.json())["errcode"] == 0
    form = aiohttp.FormData()
    form.add_field("media", io.BytesIO(b"GIF89a"), filename="head.gif", content_type="image/gif")
    async with http.post(url, params={"access_token": t, "kf_account": "a1@test"}, data=form) as resp:
        assert (await resp.json())["errcode"] == 40005
    form = aiohttp.FormData()
    form.add_field("other", "x")
    async with http.post(url, params={"access_token": t, "kf_account": "a1@test"}, data=form) as resp:
        assert (await resp.json())["errcode"] == 41005
    r = await call(
        http,
        fake,
        "POST",
        url.replace(fake.base_url, ""),
        token=t,
        raw=b"{}",
        params={"kf_account": "a1@test"},
    )
    assert r["errcode"] == 41005
    row = (await call(http, fake, "GET", "/cgi-bin/customservice/getkflist", token=t))["kf_list"][0]
    assert row["kf_headimgurl"].startswith("http://mmbiz.qpic.cn/")


@pytest.mark.parametrize("encoded", ["a1@test", "a1%40test"])
async def test_del_get_accepts_at_and_percent40(
    fake: FakeWeChat, http: aiohttp.ClientSession, encoded: str
) -> None:
    t = await get_token(http, fake)
    await setup_agents(http, fake, "a1@test")
    url = URL(
        f"{fake.base_url}/customservice/kfaccount/del?access_token={t}&kf_account={encoded}", encoded=True
    )
    async with http.get(url) as resp:
        assert (await resp.json())["errcode"] == 0
    async with http.get(url) as resp:
        assert (await resp.json())["errcode"] == 65401


@pytest.mark.parametrize("encoded", ["a1@test", "a1%40test"])
async def test_getsessionlist_accepts_at_and_percent40(
    fake: FakeWeChat, http: aiohttp.ClientSession, encoded: str
) -> None:
    t = await get_token(http, fake)
    await setup_agents(http, fake, "a1@test")
    url = URL(
        f"{fake.base_url}/customservice/kfsession/getsessionlist?access_token={t}&kf_account={encoded}",
        encoded=True,
    )
    async with http.get(url) as resp:
        assert await resp.json() == {"sessionlist": []}


async def test_del_via_post_body_post_query_and_method_switch(
    fake: FakeWeChat, http: aiohttp.ClientSession
) -> None:
    t = await get_token(http, fake)
    await setup_agents(http, fake, "a1@test", "a2@test", "a3@test")
    path = "/customservice/kfaccount/del"
    assert (await call(http, fake, "POST", path, token=t, body={"kf_account": "a1@test"}))["errcode"] == 0
    assert (await call(http, fake, "POST", path, token=t, raw=b"[]", params={"kf_account": "a2@test"}))[
        "errcode"
    ] == 0
    assert (await call(http, fake, "POST", path, token=t, raw=b""))["errcode"] == 44002
    await control(http, fake, "options", {"del_methods": ["POST"]})
    assert (await call(http, fake, "GET", path, token=t, params={"kf_account": "a3@test"}))[
        "errcode"
    ] == 43002
    await control(http, fake, "options", {"del_methods": ["GET"]})
    assert (await call(http, fake, "POST", path, token=t, body={"kf_account": "a3@test"}))["errcode"] == 43001


# ---------------------------------------------------------------------------------------------- sessions
async def test_session_round_trips(fake: FakeWeChat, http: aiohttp.ClientSession) -> None:
    t = await get_token(http, fake)
    await setup_agents(http, fake, "a1@test", "a2@test")
    for u in ("u1", "u2"):
        r = await control(http, fake, "customer/message", {"openid": u, "text": "help"})
        assert r["routed"] == "webhook"
    wait = await call(http, fake, "GET", "/customservice/kfsession/getwaitcase", token=t)
    assert wait == {"count": 0, "waitcaselist": []}  # nobody transferred yet (no webhook here)
    fake.model.transfer("u1", fake.clock.now())
    fake.model.transfer("u2", fake.clock.now())
    wait = await call(http, fake, "GET", "/customservice/kfsession/getwaitcase", token=t)
    assert wait["count"] == 2 and [w["openid"] for w in wait["waitcaselist"]] == ["u1", "u2"]
    create = "/customservice/kfsession/create"
    body = {"kf_account": "a1@test", "openid": "u1", "text": "legacy note"}
    assert (await call(http, fake, "POST", create, token=t, body=body))["errcode"] == 0
    assert (await call(http, fake, "POST", create, token=t, body=body))["errcode"] == 0
    assert (await call(http, fake, "POST", create, token=t, body={**body, "kf_account": "a2@test"}))[
        "errcode"
    ] == 65414
    r = await call(http, fake, "GET", "/customservice/kfsession/getsession", token=t, params={"openid": "u1"})
    assert r == {"createtime": int(T0), "kf_account": "a1@test"}
    r = await call(
        http,
        fake,
        "GET",
        "/customservice/kfsession/getsessionlist",
        token=t,
        params={"kf_account": "a1@test"},
    )
    assert r == {"sessionlist": [{"createtime": int(T0), "openid": "u1"}]}
    online = await call(http, fake, "GET", "/cgi-bin/customservice/getonlinekflist", token=t)
    assert {x["kf_account"]: x["accepted_case"] for x in online["kf_online_list"]} == {
        "a1@test": 1,
        "a2@test": 0,
    }
    close = "/customservice/kfsession/close"
    assert (await call(http, fake, "POST", close, token=t, body={"kf_account": "a2@test", "openid": "u1"}))[
        "errcode"
    ] == 65414
    assert (await call(http, fake, "POST", close, token=t, body={"kf_account": "a1@test", "openid": "u1"}))[
        "errcode"
    ] == 0
    assert (await call(http, fake, "POST", close, token=t, body={"kf_account": "a1@test", "openid": "u1"}))[
        "errcode"
    ] == 65413
    state = await control(http, fake, "state", method="GET")
    assert [(e["openid"], e["errcode"]) for e in state["create_log"]] == [("u1", 0), ("u1", 0), ("u1", 65414)]
    assert state["calls"]["customservice/kfsession/create"] == 3
    assert state["waiting"] == [{"openid": "u2", "arrived": T0, "pinned": None}]


async def test_custom_send_typing_and_msglist(fake: FakeWeChat, http: aiohttp.ClientSession) -> None:
    t = await get_token(http, fake)
    await setup_agents(http, fake, "a1@test")
    await control(http, fake, "customer/message", {"openid": "u1", "text": "hi"})
    send = "/cgi-bin/message/custom/send"
    msg = {
        "touser": "u1",
        "msgtype": "text",
        "text": {"content": "hello"},
        "customservice": {"kf_account": "a1@test"},
    }
    results = [(await call(http, fake, "POST", send, token=t, body=msg))["errcode"] for _ in range(6)]
    assert results == [0, 0, 0, 0, 0, 45047]
    assert (await call(http, fake, "POST", send, token=t, body={**msg, "customservice": "x"}))[
        "errcode"
    ] == 47001
    assert (await call(http, fake, "POST", send, token=t, body={**msg, "touser": "ghost"}))[
        "errcode"
    ] == 45015
    typing = "/cgi-bin/message/custom/typing"
    assert (await call(http, fake, "POST", typing, token=t, body={"touser": "u1", "command": "Typing"}))[
        "errcode"
    ] == 0
    assert (await call(http, fake, "POST", typing, token=t, body={"touser": "u1", "command": "Typing"}))[
        "errcode"
    ] == 45081
    state = await control(http, fake, "state", method="GET")
    assert [m["content"] for m in state["sent"]["u1"]] == ["hello"] * 5
    body = {"starttime": int(T0) - 10, "endtime": int(T0) + 10, "msgid": 1, "number": 10000}
    r = await call(http, fake, "POST", "/customservice/msgrecord/getmsglist", token=t, body=body)
    assert (
        r["number"] == 5
        and r["recordlist"][0]["opercode"] == 2002
        and r["recordlist"][0]["worker"] == "a1@test"
    )
    r = await call(
        http,
        fake,
        "POST",
        "/customservice/msgrecord/getmsglist",
        token=t,
        body={**body, "endtime": int(T0) + 90_000},
    )
    assert r["errcode"] == 65417


# ---------------------------------------------------------------------------------------------- faults
async def test_fault_errcode_times_then_normal(fake: FakeWeChat, http: aiohttp.ClientSession) -> None:
    t = await get_token(http, fake)
    r = await control(http, fake, "faults", {"endpoint": "getwaitcase", "errcode": 45011, "times": 2})
    assert r["faults"]["customservice/kfsession/getwaitcase"]["times"] == 2
    codes = [
        (await call(http, fake, "GET", "/customservice/kfsession/getwaitcase", token=t)).get("errcode", 0)
        for _ in range(3)
    ]
    assert codes == [45011, 45011, 0]


async def test_fault_on_create_is_logged(fake: FakeWeChat, http: aiohttp.ClientSession) -> None:
    t = await get_token(http, fake)
    await setup_agents(http, fake, "a1@test")
    await control(http, fake, "customer/message", {"openid": "u1"})
    await control(http, fake, "faults", {"faults": {"kfsession/create": {"errcode": -1, "times": 1}}})
    body = {"kf_account": "a1@test", "openid": "u1"}
    assert (await call(http, fake, "POST", "/customservice/kfsession/create", token=t, body=body))[
        "errcode"
    ] == -1
    assert (await call(http, fake, "POST", "/customservice/kfsession/create", token=t, body=body))[
        "errcode"
    ] == 0
    state = await control(http, fake, "state", method="GET")
    assert [e["errcode"] for e in state["create_log"]] == [-1, 0]
    assert state["sessions"] == [{"openid": "u1", "kf_account": "a1@test", "createtime": int(T0)}]


async def test_fault_delay_and_dropped_connection(fake: FakeWeChat, http: aiohttp.ClientSession) -> None:
    t = await get_token(http, fake)
    await control(http, fake, "faults", {"endpoint": "getkflist", "delay_s": 0.5})
    url = fake.base_url + "/cgi-bin/customservice/getkflist"
    with pytest.raises(asyncio.TimeoutError):
        async with http.get(url, params={"access_token": t}, timeout=aiohttp.ClientTimeout(total=0.05)):
            pass
    # unlimited: aiohttp's client retries an idempotent request once when a reused connection drops
    await control(http, fake, "faults", {"endpoint": "getkflist", "drop_connection": True})
    with pytest.raises(aiohttp.ServerDisconnectedError):
        async with http.get(url, params={"access_token": t}):
            pass
    await control(http, fake, "faults", method="DELETE")
    assert "kf_list" in await call(http, fake, "GET", "/cgi-bin/customservice/getkflist", token=t)
    state = await control(http, fake, "state", method="GET")
    assert state["calls"]["cgi-bin/customservice/getkflist"] >= 3


async def test_fault_rate_is_seeded(http: aiohttp.ClientSession) -> None:
    outcomes = []
    for _ in range(2):
        async with running_fake("wxAPP", "SECRET", seed=5, clock=SteadyClock(T0, frozen=True)) as f:
            t = await get_token(http, f)
            await control(http, f, "faults", {"endpoint": "getwaitcase", "errcode": -1, "rate": 0.5})
            outcomes.append(
                [
                    (await call(http, f, "GET", "/customservice/kfsession/getwaitcase", token=t)).get(
                        "errcode", 0
                    )
                    for _ in range(20)
                ]
            )
    assert outcomes[0] == outcomes[1]
    assert 0 < outcomes[0].count(-1) < 20


async def test_control_errors(fake: FakeWeChat, http: aiohttp.ClientSession) -> None:
    r = await control(http, fake, "nope", {}, status=404)
    assert "unknown control endpoint" in r["error"]
    await control(http, fake, "state", {}, method="POST", status=405)
    r = await control(http, fake, "faults", {"endpoint": "nowhere", "errcode": 1}, status=400)
    assert "unknown endpoint" in r["error"]
    r = await control(http, fake, "faults", {"endpoint": "getwaitcase", "rate": 2}, status=400)
    assert "rate" in r["error"]
    r = await control(
        http, fake, "agents", {"agents": [{"kf_account": "x@test", "color": "red"}]}, status=400
    )
    assert "color" in r["error"]
    r = await control(http, fake, "options", {"kf_id_type": "float"}, status=400)
    assert "kf_id_type" in r["error"]
    r = await control(http, fake, "customer/message", {"text": "no openid"}, status=400)
    assert "openid" in r["error"]


async def test_control_bodies_must_be_json_objects(fake: FakeWeChat, http: aiohttp.ClientSession) -> None:
    for method, path in (("GET", "state"), ("POST", "reset"), ("DELETE", "faults"), ("POST", "agents")):
        async with http.request(method, f"{fake.base_url}/_fake/{path}", data=b"{oops") as resp:
            assert resp.status == 400 and "body is not JSON" in (await resp.json())["error"], path
    r = await control(http, fake, "agents", ["not", "an", "object"], status=400)
    assert "must be a JSON object, got list" in r["error"]


async def test_fault_rules_are_installed_all_or_nothing(
    fake: FakeWeChat, http: aiohttp.ClientSession
) -> None:
    rules = {"getwaitcase": {"errcode": -1}, "nowhere": {"errcode": -1}}
    r = await control(http, fake, "faults", {"faults": rules}, status=400)
    assert "nowhere" in r["error"] and fake.model.faults == {}
    r = await control(
        http, fake, "faults", {"faults": {"getwaitcase": {"errcode": -1}, "kfsession/create": None}}
    )
    assert r["changed"] == {
        "customservice/kfsession/getwaitcase": True,
        "customservice/kfsession/create": False,
    }


async def test_reset_and_state(fake: FakeWeChat, http: aiohttp.ClientSession) -> None:
    t = await get_token(http, fake)
    await setup_agents(http, fake, "a1@test")
    await control(http, fake, "options", {"kf_id_type": "str"})
    await control(http, fake, "reset")
    state = await control(http, fake, "state", method="GET")
    assert state["agents"] == [] and state["calls"] == {} and state["options"]["kf_id_type"] == "int"
    assert (await call(http, fake, "GET", "/customservice/kfsession/getwaitcase", token=t))[
        "errcode"
    ] == 40014


async def test_control_agent_accept_close_switch(fake: FakeWeChat, http: aiohttp.ClientSession) -> None:
    await setup_agents(http, fake, "a1@test", "a2@test")
    await control(http, fake, "customer/message", {"openid": "u1"})
    fake.model.transfer("u1", fake.clock.now())
    r = await control(http, fake, "agent/accept", {"kf_account": "a1@test"})
    assert (r["errcode"], r["openid"]) == (0, "u1")
    assert (await control(http, fake, "session/switch", {"openid": "u1", "to_kf_account": "a2@test"}))[
        "errcode"
    ] == 0
    assert (await control(http, fake, "session/close", {"openid": "u1"}))["errcode"] == 0
    assert (await control(http, fake, "session/close", {"openid": "u1"}))["errcode"] == 65413
    state = await control(http, fake, "state", method="GET")
    events = [d["push"].get("event") for d in state["deliveries"]]
    assert events == [None, "kf_create_session", "kf_switch_session", "kf_close_session"]
    assert {d["outcome"] for d in state["deliveries"]} == {"no_webhook"}


# ---------------------------------------------------------------------------------------------- misconfiguration
async def test_misconfiguration_switches(fake: FakeWeChat, http: aiohttp.ClientSession) -> None:
    t = await get_token(http, fake)
    await setup_agents(http, fake, "a1@test")
    await control(http, fake, "customer/message", {"openid": "u1"})
    await control(http, fake, "options", {"kf_api_enabled": False})
    for path in ("/cgi-bin/customservice/getkflist", "/customservice/kfsession/getwaitcase"):
        assert (await call(http, fake, "GET", path, token=t))["errcode"] == 65400
    await control(http, fake, "options", {"kf_api_enabled": True, "agents_unbound": True})
    body = {"kf_account": "a1@test", "openid": "u1"}
    assert (await call(http, fake, "POST", "/customservice/kfsession/create", token=t, body=body))[
        "errcode"
    ] == 65402
    await control(http, fake, "options", {"ip_whitelisted": False})
    q = {"grant_type": "client_credential", "appid": "wxAPP", "secret": "SECRET"}
    assert (await call(http, fake, "GET", "/cgi-bin/token", params=q))["errcode"] == 40164
    await control(http, fake, "options", {"ip_whitelisted": True, "reject_secret": True})
    assert (await call(http, fake, "GET", "/cgi-bin/token", params=q))["errcode"] == 40001


async def test_second_app_served_by_its_own_tokens(fake: FakeWeChat, http: aiohttp.ClientSession) -> None:
    other = fake.add_app("wxOTHER", "S2")
    other.set_agent("b1@test", T0, status=1)
    r = await call(
        http,
        fake,
        "GET",
        "/cgi-bin/token",
        params={"grant_type": "client_credential", "appid": "wxOTHER", "secret": "S2"},
    )
    kf = await call(http, fake, "GET", "/cgi-bin/customservice/getkflist", token=r["access_token"])
    assert [x["kf_account"] for x in kf["kf_list"]] == ["b1@test"]
    state = await control(http, fake, "state?appid=wxOTHER", method="GET")
    assert state["appid"] == "wxOTHER"


async def test_options_object_shared_with_caller() -> None:
    opts = FakeOptions(kf_id_type="str")
    async with running_fake(options=opts, clock=SteadyClock(T0, frozen=True)) as f:
        assert f.model.options is opts
        assert f.base_url.startswith("http://127.0.0.1:")
