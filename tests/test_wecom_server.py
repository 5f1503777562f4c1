"""The fake WeCom over real HTTP: wire rules, the /_fake/ control API, encrypted callbacks (with retries
of the identical body), the URL check, and the `kfrouter fake-wecom` command as a real subprocess."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from conftest import wait_until
from wecom_support import AES_KEY, CB_TOKEN, CORPID, SECRET, T0, client_for, running_receiver

from kfrouter.router.clock import SteadyClock
from kfrouter.router.wechat.wecom_kf import KfCallback
from kfrouter.sim.wecom_options import WeComOptions
from kfrouter.sim.wecom_server import FakeWeCom, running_fake_wecom


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
async def fake() -> AsyncIterator[FakeWeCom]:
    async with running_fake_wecom(CORPID, SECRET, clock=SteadyClock(T0, frozen=True)) as f:
        yield f


async def control(
    http: aiohttp.ClientSession, fake: FakeWeCom, method: str, name: str, body: Any = None
) -> tuple[int, Any]:
    async with http.request(method, f"{fake.base_url}/_fake/{name}", json=body) as resp:
        return resp.status, await resp.json()


async def api(
    http: aiohttp.ClientSession,
    fake: FakeWeCom,
    method: str,
    path: str,
    *,
    token: str | None = None,
    body: Any = None,
    raw: bytes | None = None,
    **query: str,
) -> tuple[int, dict[str, Any]]:
    if token is not None:
        query["access_token"] = token
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    async with http.request(method, f"{fake.base_url}/{path}", params=query, data=data) as resp:
        return resp.status, await resp.json(content_type=None)


async def gettoken(http: aiohttp.ClientSession, fake: FakeWeCom) -> str:
    status, data = await api(http, fake, "GET", "cgi-bin/gettoken", corpid=CORPID, corpsecret=SECRET)
    assert status == 200 and data["errcode"] == 0, data
    return str(data["access_token"])


async def test_wire_rules(http: aiohttp.ClientSession, fake: FakeWeCom) -> None:
    kfid = fake.model.add_account("咨询", open_kfid="wkA")
    tok = await gettoken(http, fake)
    assert await gettoken(http, fake) == tok  # the same token while valid
    status, data = await api(http, fake, "GET", "cgi-bin/kf/nope", token=tok)
    assert status == 404 and data["errcode"] != 0  # an unknown path fails loudly
    _s, data = await api(http, fake, "GET", "cgi-bin/kf/sync_msg", token=tok, open_kfid=kfid)
    assert data["errcode"] == 40058  # POST endpoint called with GET: no body
    _s, data = await api(http, fake, "POST", "cgi-bin/kf/sync_msg", token=tok, raw=b"{not json")
    assert data["errcode"] == 40058
    _s, data = await api(http, fake, "POST", "cgi-bin/kf/sync_msg", token=tok, raw=b"")
    assert data["errcode"] == 40058
    _s, data = await api(http, fake, "POST", "cgi-bin/kf/sync_msg", body={"open_kfid": kfid})
    assert data["errcode"] == 41001
    _s, data = await api(http, fake, "POST", "cgi-bin/kf/sync_msg", token="forged", body={"open_kfid": kfid})
    assert data["errcode"] == 40014
    # account/list: POST with paging (current doc) and GET without (the SDKs' form) both work
    _s, data = await api(
        http,
        fake,
        "POST",
        "cgi-bin/kf/account/list",
        token=tok,
        body={"offset": 0, "limit": 10, "unknown": 1},
    )
    assert [a["open_kfid"] for a in data["account_list"]] == [kfid]
    _s, data = await api(http, fake, "GET", "cgi-bin/kf/account/list", token=tok)
    assert data["account_list"][0]["name"] == "咨询"
    assert (
        "more info at https://open.work.weixin.qq.com/devtool/query?e=40058"
        in (await api(http, fake, "POST", "cgi-bin/kf/sync_msg", token=tok, raw=b"[]"))[1]["errmsg"]
    )
    assert fake.model.calls["cgi-bin/gettoken"] == 2


async def test_control_api_drives_people_and_refuses_bad_input(
    http: aiohttp.ClientSession, fake: FakeWeCom
) -> None:
    status, data = await control(
        http, fake, "POST", "accounts", {"accounts": [{"name": "售后", "open_kfid": "wkB"}, {"name": "售前"}]}
    )
    assert status == 200 and data["open_kfids"][0] == "wkB"
    assert (
        await control(
            http,
            fake,
            "POST",
            "servicers",
            {
                "open_kfid": "wkB",
                "servicers": [{"userid": "alice"}, {"userid": "bob", "status": 1}],
                "departments": [7],
            },
        )
    )[0] == 200
    assert (
        await control(
            http,
            fake,
            "POST",
            "customer/message",
            {"open_kfid": "wkB", "external_userid": "wmC", "text": "转人工"},
        )
    )[0] == 200
    status, data = await control(
        http, fake, "POST", "servicer/status", {"userid": "alice", "status": 1, "stop_type": 1}
    )
    assert status == 200 and data["events"][0]["event"]["status"] == 2
    status, state = await control(http, fake, "GET", "state")
    assert state["servicers"]["alice"] == {"status": 1, "stop_type": 1}
    assert state["sessions"] == [
        {
            "open_kfid": "wkB",
            "external_userid": "wmC",
            "state": 0,
            "servicer_userid": None,
            "sent_since_customer": 0,
        }
    ]
    for name, body, needle in [
        ("accounts", {"accounts": [{"nam": "x"}]}, "unknown keys"),
        ("servicers", {"open_kfid": "wkNOPE", "servicers": [{"userid": "x"}]}, "unknown open_kfid"),
        ("servicer/accept", {"open_kfid": "wkB", "userid": "bob"}, "停止接待"),
        ("servicer/status", {"userid": "alice", "status": 3}, "status must be 0"),
        ("customer/message", {"open_kfid": "wkB"}, "external_userid"),
        ("options", {"no_such_option": 1}, "unknown option"),
        ("options", {"send_quota": -1}, "send_quota"),
        ("faults", {"endpoint": "nope"}, "unknown endpoint"),
        ("clock/advance", {"seconds": -5}, "seconds"),
    ]:
        status, data = await control(http, fake, "POST", name, body)
        assert status == 400 and needle in data["error"], (name, data)
    assert (await control(http, fake, "GET", "nope"))[0] == 404
    assert (await control(http, fake, "GET", "reset"))[0] == 405


async def test_faults_and_reset(http: aiohttp.ClientSession, fake: FakeWeCom) -> None:
    fake.model.add_account("a", open_kfid="wkA")
    tok = await gettoken(http, fake)
    await control(http, fake, "POST", "faults", {"endpoint": "sync_msg", "errcode": -1, "times": 1})
    assert (await api(http, fake, "POST", "cgi-bin/kf/sync_msg", token=tok, body={"open_kfid": "wkA"}))[1][
        "errcode"
    ] == -1
    assert (await api(http, fake, "POST", "cgi-bin/kf/sync_msg", token=tok, body={"open_kfid": "wkA"}))[1][
        "errcode"
    ] == 0
    await control(http, fake, "POST", "options", {"refuse_kf_calls": 95017})
    assert (await api(http, fake, "POST", "cgi-bin/kf/account/list", token=tok, body={}))[1][
        "errcode"
    ] == 95017
    await control(http, fake, "POST", "reset")
    assert fake.options.refuse_kf_calls == 0 and not fake.model.accounts
    assert (await api(http, fake, "POST", "cgi-bin/kf/account/list", token=tok, body={}))[1][
        "errcode"
    ] == 40014  # tokens forgotten


async def test_fault_rules_are_installed_all_or_nothing(http: aiohttp.ClientSession, fake: FakeWeCom) -> None:
    rules = {"sync_msg": {"errcode": -1}, "nowhere": {"errcode": -1}}
    status, data = await control(http, fake, "POST", "faults", {"faults": rules})
    assert status == 400 and "nowhere" in data["error"] and fake.model.faults == {}
    status, data = await control(http, fake, "POST", "faults", {"faults": {"sync_msg": {"errcode": -1}}})
    assert (status, data["changed"]) == (200, ["cgi-bin/kf/sync_msg"])
    async with http.post(f"{fake.base_url}/_fake/accounts", data=b"{oops") as resp:
        assert resp.status == 400 and "body is not JSON" in (await resp.json())["error"]


async def test_callbacks_are_encrypted_signed_and_retried_identically(http: aiohttp.ClientSession) -> None:
    async with running_receiver() as rec:
        options = WeComOptions(callback_timeout_s=0.3, callback_attempts=3)
        async with running_fake_wecom(
            CORPID,
            SECRET,
            callback_url=rec.url,
            token=CB_TOKEN,
            aes_key=AES_KEY,
            options=options,
            clock=SteadyClock(T0, frozen=True),
        ) as fake:
            kfid = fake.model.add_account("咨询", open_kfid="wkA")
            status, _ = await control(
                http,
                fake,
                "POST",
                "customer/message",
                {"open_kfid": kfid, "external_userid": "wmC", "text": "你好", "wait": True},
            )
            assert status == 200
            assert [(c.open_kfid, c.to_user) for c in rec.callbacks] == [(kfid, CORPID)]
            assert rec.callbacks[0].token in fake.model._sync_tokens
            # the receiver is slow: WeCom gives up after the timeout and sends the identical callback again
            gate = asyncio.Event()

            async def slow(_cb: KfCallback) -> None:
                if len(rec.callbacks) == 2:
                    await asyncio.wait_for(gate.wait(), 5)

            rec.handler = slow
            await control(
                http,
                fake,
                "POST",
                "customer/message",
                {"open_kfid": kfid, "external_userid": "wmC", "text": "在吗"},
            )
            await wait_until(lambda: len(rec.bodies) >= 3, timeout=5, message="the retried callback")
            gate.set()
            assert await fake.settle(5)
            assert rec.bodies[1] == rec.bodies[2]  # identical query and body
            assert rec.callbacks[1] == rec.callbacks[2]
            _s, state = await control(http, fake, "GET", "state")
            outcomes = [(c["attempt"], c["outcome"]) for c in state["callbacks"]]
            assert outcomes == [(1, "delivered"), (1, "timeout"), (2, "delivered")]
            # a URL that refuses everything: three attempts, then a counted failure
            rec.status = 500
            rec.handler = None
            await control(
                http,
                fake,
                "POST",
                "customer/message",
                {"open_kfid": kfid, "external_userid": "wmC", "text": "?", "wait": True},
            )
            _s, state = await control(http, fake, "GET", "state")
            assert state["callback_failures"] == 1
            assert [c["outcome"] for c in state["callbacks"][-4:]] == [
                "http_error",
                "http_error",
                "http_error",
                "failed",
            ]
            # WeCom's URL check: an encrypted echostr, answered in plaintext
            _s, check = await control(
                http, fake, "POST", "verify_callback", {"echostr": "5927782489442352469"}
            )
            assert check == {"ok": True, "status": 200, "body": "5927782489442352469"}
            assert not rec.rejected


async def test_kfrouter_fake_wecom_command(http: aiohttp.ClientSession, tmp_path: Any) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "kfrouter.router.cli",
        "fake-wecom",
        "--corpid",
        CORPID,
        "--secret",
        SECRET,
        "--account",
        "咨询=wkCLI",
        "--servicer",
        "alice",
        "--option",
        "send_quota=2",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        assert proc.stdout is not None
        base = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode().strip()
        account = (await asyncio.wait_for(proc.stdout.readline(), 5)).decode().split()
        assert base.startswith("http://127.0.0.1:") and account == ["wkCLI", "咨询"]
        async with http.get(f"{base}/_fake/state") as resp:
            state = await resp.json()
        assert state["accounts"][0]["servicers"] == ["alice"] and state["options"]["send_quota"] == 2
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 10) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    bad = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "kfrouter.router.cli",
        "fake-wecom",
        "--corpid",
        CORPID,
        "--secret",
        SECRET,
        "--callback-url",
        "http://127.0.0.1:1/x",
        stderr=asyncio.subprocess.PIPE,
    )
    _out, err = await asyncio.wait_for(bad.communicate(), 20)
    assert bad.returncode == 2 and b"--token and --aes-key" in err


async def test_client_against_fake_end_to_end(http: aiohttp.ClientSession, fake: FakeWeCom) -> None:
    """The typed client over HTTP: lists, state, trans with codes, the queue notice once, send windows."""
    m = fake.model
    kfid = m.add_account("咨询", open_kfid="wkA")
    m.add_servicer(kfid, "alice")
    m.add_servicer(kfid, "bob", status=1, stop_type=1)
    m.add_department(kfid, 3)
    m.customer_message(kfid, "wmC", T0, "人工")
    c = client_for(fake, http)
    accounts = await c.list_all_accounts()
    assert [(a.open_kfid, a.name, a.manage_privilege) for a in accounts] == [("wkA", "咨询", True)]
    servicers = await c.list_servicers(kfid)
    assert [(s.userid, s.receiving, s.stop_type) for s in servicers.servicers] == [
        ("alice", True, None),
        ("bob", False, 1),
    ]
    assert servicers.department_ids == (3,)
    page = await c.sync_msg(kfid)
    assert [(x.external_userid, x.text, x.from_customer) for x in page.messages] == [("wmC", "人工", True)]
    assert (await c.get_state(kfid, "wmC")).service_state == 0
    code = await c.trans_state(kfid, "wmC", 2)
    assert code is not None
    assert await c.send_on_event(code, "您前面还有 0 位", msgid="queue-wmC-1") == "queue-wmC-1"
    assert await c.trans_state(kfid, "wmC", 3, "alice") is not None
    state = await c.get_state(kfid, "wmC")
    assert (state.service_state, state.servicer_userid) == (3, "alice")
    assert [s["kind"] for s in m.sent] == ["pool"]
    with pytest.raises(ValueError, match="servicer_userid"):
        await c.trans_state(kfid, "wmC", 3)
    with pytest.raises(ValueError, match="only sent with service_state 3"):
        await c.trans_state(kfid, "wmC", 2, "alice")
    with pytest.raises(ValueError, match="msgid"):
        await c.send_text(kfid, "wmC", "x", msgid="has space")
    assert c.stats.token_refreshes == 1
