"""WeComKfClient against the fake WeCom over HTTP: every errcode the router acts on becomes its typed
exception, tokens are refreshed on 40014 / 42001 (once), credentials and bad answers are reported by name."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from wecom_support import CORPID, SECRET, T0, client_for

from kfrouter.router.clock import SteadyClock
from kfrouter.router.edges.errors import (
    BadResponse,
    CredentialError,
    NetworkError,
    SystemBusy,
    TokenError,
    WindowClosed,
)
from kfrouter.router.edges.wecom_client import WeComKfClient
from kfrouter.router.edges.wecom_errors import (
    InvalidCustomer,
    KfOperatorProblem,
    MsgTokenInvalid,
    SendRefused,
    ServicerUnavailable,
    StateConflict,
    UnknownKfAccount,
    WeComTokenError,
)
from kfrouter.router.wecom_doctor import explain
from kfrouter.sim.fake_options import Fault
from kfrouter.sim.wecom_server import FakeWeCom, running_fake_wecom

KF = "wkA"


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
async def fake() -> AsyncIterator[FakeWeCom]:
    async with running_fake_wecom(CORPID, SECRET, clock=SteadyClock(T0, frozen=True)) as f:
        f.model.add_account("咨询", open_kfid=KF)
        f.model.add_servicer(KF, "alice")
        f.model.add_servicer(KF, "bob")
        f.model.customer_message(KF, "wmC", T0, "hi")
        yield f


async def test_servicer_errors(fake: FakeWeCom, http: aiohttp.ClientSession) -> None:
    c = client_for(fake, http)
    with pytest.raises(ServicerUnavailable) as e1:
        await c.trans_state(KF, "wmC", 3, "nobody")
    assert e1.value.errcode == 95014 and not e1.value.stopped
    fake.model.set_servicer_status("alice", 1, T0)
    with pytest.raises(ServicerUnavailable) as e2:
        await c.trans_state(KF, "wmC", 3, "alice")
    assert e2.value.errcode == 95019 and e2.value.stopped


async def test_state_conflicts(fake: FakeWeCom, http: aiohttp.ClientSession) -> None:
    c = client_for(fake, http)
    await c.trans_state(KF, "wmC", 2)
    with pytest.raises(StateConflict) as e1:
        await c.trans_state(KF, "wmC", 1)  # 2 -> 1 is not allowed
    assert e1.value.errcode == 95016 and not e1.value.ended
    await c.trans_state(KF, "wmC", 3, "bob")
    assert await c.trans_state(KF, "wmC", 4) is not None
    with pytest.raises(StateConflict) as e2:
        await c.trans_state(KF, "wmC", 3, "bob")
    assert e2.value.errcode == 95013 and e2.value.ended


async def test_send_refusals_are_window_closed(fake: FakeWeCom, http: aiohttp.ClientSession) -> None:
    c = client_for(fake, http)
    fake.options.send_quota = 1
    await c.send_text(KF, "wmC", "自动回复")
    with pytest.raises(SendRefused) as e1:
        await c.send_text(KF, "wmC", "again")
    assert e1.value.errcode == 95001 and e1.value.quota_exhausted and isinstance(e1.value, WindowClosed)
    await c.trans_state(KF, "wmC", 3, "alice")
    with pytest.raises(SendRefused) as e2:
        await c.send_text(KF, "wmC", "x")
    assert e2.value.errcode == 95018 and not e2.value.quota_exhausted
    assert fake.model.calls["cgi-bin/kf/send_msg"] == 3  # never retried


async def test_codes_and_sync_tokens(fake: FakeWeCom, http: aiohttp.ClientSession) -> None:
    c = client_for(fake, http)
    with pytest.raises(MsgTokenInvalid):
        await c.send_on_event("MSGCODEnotissued", "x")
    with pytest.raises(MsgTokenInvalid):
        await c.sync_msg(KF, token="ENCforged")
    with pytest.raises(InvalidCustomer):
        await c.get_state(KF, "wmSTRANGER")
    with pytest.raises(UnknownKfAccount) as e:
        await c.sync_msg("wkNOPE")
    assert e.value.errcode == 95004 and isinstance(e.value, KfOperatorProblem)


@pytest.mark.parametrize("code", [48002, 95011, 95012, 95017])
async def test_operator_problems_are_explained(
    fake: FakeWeCom, http: aiohttp.ClientSession, code: int
) -> None:
    fake.options.refuse_kf_calls = code
    c = client_for(fake, http)
    with pytest.raises(KfOperatorProblem) as e:
        await c.list_servicers(KF)
    assert e.value.errcode == code
    words = explain(code)
    assert words is not None and "What to do" in words and "企业微信管理后台" in words


async def test_unmanaged_account_is_48002(fake: FakeWeCom, http: aiohttp.ClientSession) -> None:
    fake.model.set_manage_privilege(KF, False)
    c = client_for(fake, http)
    with pytest.raises(KfOperatorProblem) as e:
        await c.trans_state(KF, "wmC", 2)
    assert e.value.errcode == 48002
    assert (await c.list_accounts())[0].manage_privilege is False


async def test_token_refreshed_once_on_40014_and_42001(fake: FakeWeCom, http: aiohttp.ClientSession) -> None:
    c = client_for(fake, http)
    await c.list_servicers(KF)
    first = c.tokens.current
    fake.model.revoke_token()  # WeCom invalidates early: 40014
    await c.list_servicers(KF)
    assert c.tokens.current not in (None, first)
    assert c.stats.endpoint("/cgi-bin/kf/servicer/list").errcodes[40014] == 1
    fake.clock.advance(7200)  # expired: 42001, refreshed
    await c.list_servicers(KF)
    assert c.stats.endpoint("/cgi-bin/kf/servicer/list").errcodes[42001] == 1
    fake.options.expired_token_errcode = 40014  # "expired reported as 40014": refreshed all the same
    fake.clock.advance(7200)
    await c.list_servicers(KF)
    assert c.stats.token_refreshes == 4
    # a token that keeps failing is given up after one refresh, not retried forever
    fake.model.set_fault("servicer/list", Fault(errcode=40014))
    with pytest.raises(WeComTokenError):
        await c.list_servicers(KF)
    # 4 successes + 3 refused before them + 2 attempts with the fault (one refresh in between)
    assert fake.model.calls["cgi-bin/kf/servicer/list"] == 9
    assert c.stats.token_refreshes == 5
    assert isinstance(WeComTokenError(40014, "", ""), TokenError)


async def test_credentials_from_gettoken(fake: FakeWeCom, http: aiohttp.ClientSession) -> None:
    bad_secret = WeComKfClient(http, CORPID, "wrong", base_url=fake.base_url)
    with pytest.raises(CredentialError) as e1:
        await bad_secret.list_servicers(KF)
    assert e1.value.errcode == 40001
    bad_corp = WeComKfClient(http, "wwother0000", SECRET, base_url=fake.base_url)
    with pytest.raises(CredentialError) as e2:
        await bad_corp.list_servicers(KF)
    assert e2.value.errcode == 40013
    fake.options.ip_allowed = False
    with pytest.raises(CredentialError) as e3:
        await client_for(fake, http).list_servicers(KF)
    assert e3.value.errcode == 60020
    assert "60020" in (explain(60020) or "")


async def test_busy_is_retried_with_backoff(fake: FakeWeCom, http: aiohttp.ClientSession) -> None:
    c = client_for(fake, http, retries=2)
    fake.model.set_fault("service_state/get", Fault(errcode=-1, times=2))
    assert (await c.get_state(KF, "wmC")).service_state == 0
    assert fake.model.calls["cgi-bin/kf/service_state/get"] == 3
    fake.model.set_fault("service_state/get", Fault(errcode=-1))
    with pytest.raises(SystemBusy):
        await c.get_state(KF, "wmC")


async def test_malformed_answers_name_the_field(http: aiohttp.ClientSession) -> None:
    answers = {
        "/cgi-bin/kf/servicer/list": {"errcode": 0, "servicer_list": [{"userid": "a", "status": 7}]},
        "/cgi-bin/kf/service_state/get": {"errcode": 0, "service_state": "x"},
        "/cgi-bin/kf/sync_msg": {"errcode": 0, "has_more": 1, "next_cursor": "", "msg_list": []},
        "/cgi-bin/kf/account/list": {"errcode": 0, "account_list": [{"name": "no id"}]},
    }

    async def handler(request: web.Request) -> web.Response:
        if request.path == "/cgi-bin/gettoken":
            return web.json_response({"errcode": 0, "access_token": "T", "expires_in": 7200})
        if request.path == "/cgi-bin/kf/service_state/trans":
            return web.Response(text="<html>not json</html>")
        return web.json_response(answers[request.path])

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    base = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
    try:
        c = WeComKfClient(http, CORPID, SECRET, base_url=base, retries=0)
        cases = [
            (c.list_servicers(KF), "servicer_list[0].status"),
            (c.get_state(KF, "wmC"), "service_state"),
            (c.sync_msg(KF), "next_cursor"),
            (c.list_accounts(), "account_list[0].open_kfid"),
            (c.trans_state(KF, "wmC", 2), "not UTF-8 JSON"),
        ]
        for call, needle in cases:
            with pytest.raises(BadResponse) as e:
                await call
            assert needle in str(e.value)
    finally:
        await runner.cleanup()
    c2 = WeComKfClient(http, CORPID, SECRET, base_url=base, retries=0)
    with pytest.raises(NetworkError):
        await c2.list_servicers(KF)  # the server is gone


async def test_sync_parses_events_and_lifts_ids(fake: FakeWeCom, http: aiohttp.ClientSession) -> None:
    m = fake.model
    m.customer_enter(KF, "wmD", T0, scene="menu", scene_param="a=1")
    m.set_servicer_status("alice", 1, T0, stop_type=0)
    m.trans(KF, "wmC", 2, None, T0)
    m.servicer_accept(KF, "bob", T0)
    m.servicer_reply(KF, "wmC", "bob", "您好", T0)
    c = client_for(fake, http)
    page = await c.sync_msg(KF, limit=1000)
    kinds = [type(x.event).__name__ if x.event else x.msgtype for x in page.messages]
    assert kinds == ["text", "EnterSession", "ServicerStatusChange", "SessionStatusChange", "text"]
    enter, status, accepted, reply = page.messages[1:]
    assert (enter.open_kfid, enter.external_userid) == (KF, "wmD")
    assert enter.event is not None and enter.event.welcome_code and enter.event.scene_param == "a=1"
    assert status.event is not None and not status.event.receiving and status.external_userid == ""
    assert (
        accepted.event is not None and accepted.event.msg_code and accepted.event.new_servicer_userid == "bob"
    )
    assert (reply.origin, reply.servicer_userid, reply.text, reply.from_customer) == (5, "bob", "您好", False)
