"""WeChatClient answer parsing and request shapes, against a small canned-answer aiohttp server on
127.0.0.1: lenient where WeChat varies (string errcodes, legacy shapes, str-or-int kf_id), strict and
specific (endpoint + field named) where an answer is malformed, and the exact wire form of requests."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from kfrouter.router.core.model import AgentRow
from kfrouter.router.edges.client import MsgRecord, SessionInfo, WaitEntry, WeChatClient
from kfrouter.router.edges.errors import BadResponse, InvalidKfAccount, NetworkError

Answer = dict[str, Any] | list[Any] | tuple[int, bytes]


class Canned:
    """Answers per path (the last one repeats); records every request."""

    def __init__(self) -> None:
        self.answers: dict[str, list[Answer]] = {
            "/cgi-bin/stable_token": [{"access_token": "TOKEN123", "expires_in": 7200}]
        }
        self.requests: list[tuple[str, str, bytes, str]] = []
        self.block = asyncio.Event()
        self.blocked_paths: set[str] = set()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.requests.append(
            (request.method, request.raw_path, body, request.headers.get("Content-Type", ""))
        )
        if request.path in self.blocked_paths:
            await self.block.wait()
        queue = self.answers.get(request.path)
        if not queue:
            return web.json_response({"errcode": 40066, "errmsg": f"invalid url {request.path}"})
        answer = queue.pop(0) if len(queue) > 1 else queue[0]
        if isinstance(answer, tuple):
            status, raw = answer
            return web.Response(status=status, body=raw)
        return web.Response(body=json.dumps(answer).encode(), content_type="application/json")

    def set(self, path: str, *answers: Answer) -> None:
        self.answers[path] = list(answers)

    def api_requests(self) -> list[tuple[str, str, bytes, str]]:
        return [r for r in self.requests if "token" not in r[1].split("?")[0]]


class Sleeps:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


@pytest.fixture
async def canned() -> AsyncIterator[tuple[Canned, WeChatClient, Sleeps]]:
    canned = Canned()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", canned.handle)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    sleeps = Sleeps()
    async with aiohttp.ClientSession() as http:
        base = str(server.make_url("/")).rstrip("/")
        yield canned, WeChatClient(http, "wxAPP", "SECRET", base_url=base, sleep=sleeps, timeout_s=2), sleeps
    canned.block.set()
    await server.close()


ONLINE = "/cgi-bin/customservice/getonlinekflist"


async def test_online_list_lenient_forms(canned: tuple[Canned, WeChatClient, Sleeps]) -> None:
    srv, client, _ = canned
    srv.set(
        ONLINE,
        {
            "kf_online_list": [
                {"kf_account": "a@x", "status": 1, "kf_id": "1001", "auto_accept": 0, "accepted_case": 1},
                {"kf_account": "b@x", "status": "3", "kf_id": 1002, "accepted_case": "2"},
                {"kf_account": "", "status": 1, "kf_id": "1003", "kf_openid": "kfopenid2"},  # new-doc example
            ]
        },
    )
    assert await client.get_online_kf_list() == [
        AgentRow(kf_account="a@x", status=1, accepted_case=1, auto_accept=0, kf_id="1001"),
        AgentRow(kf_account="b@x", status=3, accepted_case=2, auto_accept=0, kf_id="1002"),
    ]


@pytest.mark.parametrize(
    ("answer", "field"),
    [
        ({}, "kf_online_list"),
        ({"kf_online_list": {"a": 1}}, "kf_online_list"),
        ({"kf_online_list": ["x"]}, "kf_online_list[0]"),
        ({"kf_online_list": [{"status": 1}]}, "kf_online_list[0].kf_account"),
        ({"kf_online_list": [{"kf_account": "a@x"}]}, "kf_online_list[0].status"),
        ({"kf_online_list": [{"kf_account": "a@x", "status": "on"}]}, "kf_online_list[0].status"),
        ({"kf_online_list": [{"kf_account": "a@x", "status": 1, "kf_id": [1]}]}, "kf_online_list[0].kf_id"),
        ({"kf_online_list": [{"kf_account": "a@x", "status": -1}]}, "kf_online_list[0]"),
    ],
)
async def test_online_list_malformed_names_endpoint_and_field(
    canned: tuple[Canned, WeChatClient, Sleeps], answer: dict[str, Any], field: str
) -> None:
    srv, client, sleeps = canned
    srv.set(ONLINE, answer)
    with pytest.raises(BadResponse) as err:
        await client.get_online_kf_list()
    assert ONLINE in str(err.value) and field in str(err.value)
    assert err.value.errcode == -3 and sleeps.delays == []  # a malformed answer is not retried


async def test_string_errcodes(canned: tuple[Canned, WeChatClient, Sleeps]) -> None:
    srv, client, _ = canned
    srv.set("/customservice/kfsession/create", {"errcode": "0", "errmsg": "ok"})
    await client.create_session("oU", "a@x")
    srv.set(
        "/customservice/kfsession/create", {"errcode": "65401", "errmsg": "invalid custom service account"}
    )
    with pytest.raises(InvalidKfAccount):
        await client.create_session("oU", "a@x")


async def test_legacy_and_sdk_fixture_shapes(canned: tuple[Canned, WeChatClient, Sleeps]) -> None:
    srv, client, _ = canned
    # wechatpy's fixtures (spec §9.1)
    srv.set(
        "/customservice/kfsession/getwaitcase",
        {
            "count": 150,
            "waitcaselist": [
                {"openid": "OPENID", "kf_account": "test1@test", "createtime": 123456789},
                {"openid": "OPENID2", "kf_account": "", "createtime": 123456790},
            ],
        },
    )
    wait = await client.get_wait_case()
    assert wait.count == 150
    assert wait.entries == (
        WaitEntry(openid="OPENID", latest_time=123456789, kf_account="test1@test"),
        WaitEntry(openid="OPENID2", latest_time=123456790, kf_account=None),
    )
    srv.set(
        "/customservice/kfsession/getsession",
        {"errcode": 0, "errmsg": "ok", "kf_account": "test1@test", "createtime": 123456789},
    )
    assert await client.get_session("OPENID") == SessionInfo(kf_account="test1@test", createtime=123456789)
    srv.set(
        "/customservice/msgrecord/getmsglist",
        {
            "recordlist": [
                {"worker": " test1", "openid": "oD", "opercode": 2002, "time": 1400563710, "text": " 您好"},
            ]
        },
    )
    page = await client.get_msg_list(1400560000, 1400570000)
    assert page.records == (
        MsgRecord(openid="oD", opercode=2002, text=" 您好", time=1400563710, worker=" test1"),
    )
    assert page.number == 1 and page.msgid == 1
    srv.set("/customservice/kfsession/getsessionlist", {})  # no sessions: key absent
    assert await client.get_session_list("a@x") == []


async def test_waitcase_count_smaller_than_list_is_malformed(
    canned: tuple[Canned, WeChatClient, Sleeps],
) -> None:
    srv, client, _ = canned
    srv.set(
        "/customservice/kfsession/getwaitcase",
        {"count": 0, "waitcaselist": [{"openid": "o", "latest_time": 1}]},
    )
    with pytest.raises(BadResponse, match="count"):
        await client.get_wait_case()
    srv.set(
        "/customservice/kfsession/getwaitcase",
        {"count": 1, "waitcaselist": [{"openid": "", "latest_time": 1}]},
    )
    with pytest.raises(BadResponse, match=r"waitcaselist\[0\]\.openid"):
        await client.get_wait_case()


@pytest.mark.parametrize(
    ("answer", "match"),
    [
        ((200, b"<html>busy</html>"), "not UTF-8 JSON"),
        ((200, b"\xff\xfe"), "not UTF-8 JSON"),
        ([1, 2], "JSON object"),
        ((404, b"nope"), "HTTP 404"),
    ],
)
async def test_unusable_answers(
    canned: tuple[Canned, WeChatClient, Sleeps], answer: Answer, match: str
) -> None:
    srv, client, sleeps = canned
    srv.set("/customservice/kfsession/getwaitcase", answer)
    with pytest.raises(BadResponse, match=match):
        await client.get_wait_case()
    assert sleeps.delays == []


async def test_http_5xx_is_retried(canned: tuple[Canned, WeChatClient, Sleeps]) -> None:
    srv, client, sleeps = canned
    srv.set("/customservice/kfsession/getwaitcase", (502, b"bad gateway"), (503, b""), {"count": 0})
    assert (await client.get_wait_case()).count == 0
    assert len(sleeps.delays) == 2


async def test_timeout_is_network_error() -> None:
    srv = Canned()
    srv.blocked_paths.add("/cgi-bin/message/custom/typing")
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", srv.handle)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as http:
            base = str(server.make_url("/")).rstrip("/")
            client = WeChatClient(http, "wxAPP", "SECRET", base_url=base, retries=0, timeout_s=0.05)
            with pytest.raises(NetworkError, match="no answer within"):
                await client.typing("oU")
    finally:
        srv.block.set()
        await server.close()


async def test_request_wire_format(canned: tuple[Canned, WeChatClient, Sleeps]) -> None:
    srv, client, _ = canned
    for path in (
        "/customservice/kfaccount/del",
        "/customservice/kfsession/getsessionlist",
        "/customservice/kfaccount/uploadheadimg",
        "/cgi-bin/message/custom/send",
    ):
        srv.set(path, {"errcode": 0, "errmsg": "ok"})
    srv.set("/customservice/kfsession/getsessionlist", {"sessionlist": []})
    await client.delete_kf_account("kf1@test", method="GET")
    await client.get_session_list("kf1@test")
    await client.upload_kf_headimg("kf1@test", b"JPEGDATA")
    await client.send_text("oU", "中文 text", kf_account="kf1@test")
    (m1, p1, _, _), (m2, p2, _, _), (m3, p3, b3, ct3), (m4, p4, b4, ct4) = srv.api_requests()
    assert (m1, p1) == ("GET", "/customservice/kfaccount/del?access_token=TOKEN123&kf_account=kf1@test")
    assert (m2, p2) == (
        "GET",
        "/customservice/kfsession/getsessionlist?access_token=TOKEN123&kf_account=kf1@test",
    )
    assert m3 == "POST" and p3.endswith("kf_account=kf1@test") and ct3.startswith("multipart/form-data")
    assert b'name="media"' in b3 and b"JPEGDATA" in b3
    assert (m4, p4) == ("POST", "/cgi-bin/message/custom/send?access_token=TOKEN123")
    assert ct4.startswith("application/json")
    assert json.loads(b4.decode("utf-8")) == {
        "touser": "oU",
        "msgtype": "text",
        "text": {"content": "中文 text"},
        "customservice": {"kf_account": "kf1@test"},
    }
    assert "中文".encode() in b4  # UTF-8, not \\u escapes
    token_req = next(r for r in srv.requests if r[1].startswith("/cgi-bin/stable_token"))
    assert token_req[0] == "POST" and json.loads(token_req[2])["appid"] == "wxAPP"


async def test_iter_msg_records_tolerates_one_overlap_and_stops_on_stuck_cursor(
    canned: tuple[Canned, WeChatClient, Sleeps],
) -> None:
    srv, client, _ = canned

    def rec(i: int) -> dict[str, Any]:
        return {"openid": "o", "opercode": 2003, "text": f"r{i}", "time": 100 + i, "worker": "a@x"}

    path = "/customservice/msgrecord/getmsglist"
    srv.set(
        path,
        {"recordlist": [rec(1), rec(2)], "number": 2, "msgid": 2},
        {"recordlist": [rec(2), rec(3)], "number": 2, "msgid": 3},  # repeats the cursor record
        {"recordlist": [rec(3)], "number": 1, "msgid": 3},
    )
    assert [r.text async for r in client.iter_msg_records(100, 200, number=2)] == ["r1", "r2", "r3"]
    bodies = [json.loads(b) for (_, p, b, _) in srv.api_requests() if p.startswith(path)]
    assert [b["msgid"] for b in bodies] == [1, 2, 3]

    srv.requests.clear()
    srv.set(path, {"recordlist": [rec(1), rec(2)], "number": 2, "msgid": 1})  # cursor never advances
    assert [r.text async for r in client.iter_msg_records(100, 200, number=2)] == ["r1", "r2"]
    assert len(srv.api_requests()) == 1


async def test_argument_validation(canned: tuple[Canned, WeChatClient, Sleeps]) -> None:
    _, client, _ = canned
    with pytest.raises(ValueError, match="openid"):
        await client.create_session("", "a@x")
    with pytest.raises(ValueError, match="number"):
        await client.get_msg_list(0, 10, number=10001)
    with pytest.raises(ValueError, match="msgid"):
        await client.get_msg_list(0, 10, msgid=0)
    with pytest.raises(ValueError, match="image"):
        await client.upload_kf_headimg("a@x", b"x" * (5 * 1024 * 1024 + 1))
    with pytest.raises(ValueError, match="method"):
        await client.delete_kf_account("a@x", method="PUT")  # type: ignore[arg-type]
    async with aiohttp.ClientSession() as http:
        with pytest.raises(ValueError, match="token_mode"):
            WeChatClient(http, "wx", "s", token_mode="x")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="retries"):
            WeChatClient(http, "wx", "s", retries=-1)
        with pytest.raises(ValueError, match="secret"):
            WeChatClient(http, "wx", "")
