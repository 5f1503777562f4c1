"""The pure WeChat model (sim.wechat_model): tokens, kf accounts, sessions, wait list, windows, faults.

Every errcode rule of spec §10 has a row here; time is an argument, never waited for.
"""

from __future__ import annotations

import math
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kfrouter.sim import fake_options as fo
from kfrouter.sim.fake_options import FakeOptions, Fault
from kfrouter.sim.wechat_model import SEEN_BATCH, WeChatModel

T0 = 1_700_000_000.0


def make(**opts: object) -> WeChatModel:
    return WeChatModel("wxAPP", "SECRET", wxid="test", options=FakeOptions(**opts), rng=random.Random(7))  # type: ignore[arg-type]


def code(result: dict[str, Any]) -> int:
    return int(result.get("errcode", 0))


def token(m: WeChatModel, now: float = T0) -> str:
    r = m.fetch_token(grant_type="client_credential", appid="wxAPP", secret="SECRET", now=now)
    assert r["expires_in"] == 7200
    return str(r["access_token"])


def stable(m: WeChatModel, now: float, force: bool = False) -> dict[str, Any]:
    return m.fetch_stable_token(
        grant_type="client_credential", appid="wxAPP", secret="SECRET", force_refresh=force, now=now
    )


def with_agents(m: WeChatModel, *accounts: str, online: bool = True) -> None:
    for acc in accounts:
        m.set_agent(acc, T0, status=1 if online else 0, auto_accept=2)


def customer(m: WeChatModel, openid: str, now: float = T0) -> None:
    m.customer_message(openid, now, "hello")


# ---------------------------------------------------------------------------------------------- tokens
def test_token_valid_until_expiry_then_42001() -> None:
    m = make()
    t = token(m)
    assert m.check_access_token(t, T0 + 7199) is None
    assert code(m.check_access_token(t, T0 + 7200) or {}) == 42001


def test_new_token_keeps_previous_for_300_s_grace_only() -> None:
    m = make()
    old = token(m, T0)
    new = token(m, T0 + 1000)
    assert old != new
    assert m.check_access_token(old, T0 + 1299) is None
    assert code(m.check_access_token(old, T0 + 1300) or {}) == 40001
    assert m.check_access_token(new, T0 + 1300) is None


def test_third_fetch_kills_the_first_token_at_once() -> None:
    m = make()
    first = token(m, T0)
    token(m, T0 + 10)
    token(m, T0 + 20)
    assert code(m.check_access_token(first, T0 + 21) or {}) == 40001


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, 41001), ("", 41001), ("never-issued", 40014), (12, 40014)],
)
def test_missing_or_unknown_token(value: object, expected: int) -> None:
    m = make()
    token(m)
    assert code(m.check_access_token(value, T0) or {}) == expected


@pytest.mark.parametrize(
    ("kwargs", "opts", "expected"),
    [
        ({"grant_type": "password"}, {}, 40002),
        ({"appid": ""}, {}, 41002),
        ({"appid": "wxOTHER"}, {}, 40013),
        ({"secret": ""}, {}, 41004),
        ({"secret": "WRONG"}, {}, 40001),
        ({}, {"reject_secret": True}, 40001),
        ({}, {"ip_whitelisted": False}, 40164),
        ({"secret": "WRONG"}, {"error_codes": {"token_wrong_secret": 40125}}, 40125),
    ],
)
def test_token_credential_errors(kwargs: dict[str, str], opts: dict[str, object], expected: int) -> None:
    m = make(**opts)
    args = {"grant_type": "client_credential", "appid": "wxAPP", "secret": "SECRET", **kwargs}
    assert code(m.fetch_token(now=T0, **args)) == expected


def test_stable_token_wrong_secret_is_40125() -> None:
    m = make()
    r = m.fetch_stable_token(
        grant_type="client_credential", appid="wxAPP", secret="x", force_refresh=False, now=T0
    )
    assert code(r) == 40125


def test_stable_token_same_until_renew_window_then_new_and_old_still_valid() -> None:
    m = make()
    a = stable(m, T0)
    b = stable(m, T0 + 3000)
    assert a["access_token"] == b["access_token"]
    assert b["expires_in"] == 4200
    c = stable(m, T0 + 6900 + 1)  # inside the last 300 s: renewed early
    assert c["access_token"] != a["access_token"]
    assert m.check_access_token(a["access_token"], T0 + 7000) is None  # old one lives to its expiry
    assert code(m.check_access_token(a["access_token"], T0 + 7200) or {}) == 42001


def test_stable_force_refresh_revokes_old_and_is_limited() -> None:
    m = make()
    a = stable(m, T0)
    b = stable(m, T0 + 100, force=True)
    assert a["access_token"] != b["access_token"]
    assert code(m.check_access_token(a["access_token"], T0 + 101) or {}) == 40001
    assert code(stable(m, T0 + 110, force=True)) == 45011  # < 30 s apart
    assert "access_token" in stable(m, T0 + 131, force=True)


def test_stable_token_independent_of_cgi_bin_token() -> None:
    m = make()
    s = stable(m, T0)
    for i in range(3):
        token(m, T0 + i)
    assert m.check_access_token(s["access_token"], T0 + 10) is None


def test_token_daily_quota_45009_and_reset_next_day() -> None:
    m = make(token_daily_quota=3)
    for _ in range(3):
        assert m.check_call(fo.TOKEN, None, T0) is None
    assert code(m.check_call(fo.TOKEN, None, T0) or {}) == 45009
    assert m.check_call(fo.TOKEN, None, T0 + 86_400) is None


def test_token_always_invalid_switch() -> None:
    m = make(token_always_invalid=True)
    assert code(m.check_access_token(token(m), T0) or {}) == 40001


def test_errmsg_has_rid_and_override() -> None:
    m = make(errmsg_overrides={"40014": "custom text"})
    r = m.err(40014)
    assert r["errmsg"].startswith("custom text rid: ")
    assert len(r["errmsg"].split("rid: ")[1].split("-")) == 3
    assert make(errmsg_rid=False).err(45047) == {"errcode": 45047, "errmsg": "out of response count limit"}


# ---------------------------------------------------------------------------------------------- gate
def test_check_call_order_token_then_65400_then_rate_limit() -> None:
    m = make(kf_api_enabled=False, rate_limits={"getwaitcase": {"per_minute": 1}})
    t = token(m)
    assert code(m.check_call(fo.WAITCASE, "bogus", T0) or {}) == 40014
    assert code(m.check_call(fo.WAITCASE, t, T0) or {}) == 65400
    assert m.check_call(fo.CUSTOM_SEND, t, T0) is None  # not a kf endpoint
    m.options.kf_api_enabled = True
    assert m.check_call(fo.WAITCASE, t, T0) is None
    assert code(m.check_call(fo.WAITCASE, t, T0 + 1) or {}) == 45011
    assert m.check_call(fo.WAITCASE, t, T0 + 61) is None


def test_rate_limit_per_day() -> None:
    m = make(rate_limits={"kfsession/create": {"per_day": 2}})
    t = token(m)
    assert [code(m.check_call(fo.SESSION_CREATE, t, T0 + i) or {}) for i in range(3)] == [0, 0, 45009]


def test_fault_rate_is_drawn_from_the_injected_random() -> None:
    counts = []
    for _ in range(2):
        m = make()
        m.set_fault("kfsession/create", Fault(errcode=-1, rate=0.3))
        counts.append(sum(m.draw_fault(fo.SESSION_CREATE) is not None for _ in range(2000)))
    assert counts[0] == counts[1]  # same seed, same draws
    assert 500 < counts[0] < 700


def test_fault_times_and_clear() -> None:
    m = make()
    assert m.set_fault("getwaitcase", Fault(errcode=45009, times=2)) == fo.WAITCASE
    assert [m.draw_fault(fo.WAITCASE) is not None for _ in range(3)] == [True, True, False]
    m.set_fault(fo.WAITCASE, None)
    assert m.faults == {}
    with pytest.raises(ValueError, match="unknown endpoint"):
        m.set_fault("nope", Fault())
    assert fo.resolve_endpoint("/cgi-bin/customservice/getkflist") == fo.KF_LIST


def test_fault_validation() -> None:
    with pytest.raises(ValueError, match="rate"):
        Fault(rate=1.5)
    with pytest.raises(ValueError, match="unknown keys"):
        Fault.from_json({"errcode": 1, "bogus": 2})


# ---------------------------------------------------------------------------------------------- kf accounts
@pytest.mark.parametrize(
    ("account", "nickname", "expected"),
    [
        ("a1@test", "Alice", 0),
        ("abcdefghij@test", "x" * 16, 0),
        ("abcdefghijk@test", "Alice", 65404),  # prefix > 10
        ("a-1@test", "Alice", 65404),
        ("a1@other", "Alice", 65404),  # suffix must be the account's WeChat ID
        ("a1", "Alice", 65404),
        ("a@b@test", "Alice", 65404),
        (None, "Alice", 65404),
        ("a1@test", "", 65403),
        ("a1@test", "   ", 65403),
        ("a1@test", "x" * 17, 65403),
        ("a1@test", None, 65403),
    ],
)
def test_add_account_rules(account: object, nickname: object, expected: int) -> None:
    assert code(make().add_account(account, nickname)) == expected


def test_add_duplicate_65406_and_limit_65405() -> None:
    m = make()
    assert code(m.add_account("a0@test", "n")) == 0
    assert code(m.add_account("a0@test", "n")) == 65406
    for i in range(1, 100):
        assert code(m.add_account(f"a{i}@test", "n")) == 0
    assert code(m.add_account("z@test", "n")) == 65405
    assert len(m.get_kf_list(T0)["kf_list"]) == 100


def test_update_and_delete_rules() -> None:
    m = make()
    m.add_account("a1@test", "old")
    assert code(m.update_account("zz@test", "n")) == 65401
    assert code(m.update_account("a1@test", "x" * 17)) == 65403
    assert code(m.update_account("a1@test", "new")) == 0
    assert m.get_kf_list(T0)["kf_list"][0]["kf_nick"] == "new"
    assert code(m.delete_account("zz@test", T0)) == 65401
    assert code(m.delete_account("a1@test", T0)) == 0
    assert m.get_kf_list(T0) == {"kf_list": []}


def test_delete_ends_sessions_with_close_events_and_unpins() -> None:
    m = make()
    with_agents(m, "a1@test")
    customer(m, "u1")
    customer(m, "u2")
    assert code(m.create_session("a1@test", "u1", T0)) == 0
    m.transfer("u2", T0, "a1@test")
    m.transfer("u3", T0 + 1)
    m.drain_outbox()
    assert code(m.delete_account("a1@test", T0 + 5)) == 0
    assert m.sessions == {}
    assert [(p.event, p.kf_account) for p in m.drain_outbox()] == [("kf_close_session", "a1@test")]
    assert [(o, w.arrived, w.pinned) for o, w in m.waiting.items()] == [
        ("u2", T0, None),
        ("u3", T0 + 1, None),
    ]


@pytest.mark.parametrize(
    ("account", "filename", "ctype", "size", "expected"),
    [
        ("zz@test", "a.jpg", "image/jpeg", 10, 65401),
        ("a1@test", None, None, 0, 41005),
        ("a1@test", "a.png", "image/png", 10, 40005),
        ("a1@test", "a.jpg", "image/jpeg", 0, 40009),
        ("a1@test", "a.jpg", "image/jpeg", 5 * 1024 * 1024 + 1, 40009),
        ("a1@test", "a.jpg", None, 10, 0),
        ("a1@test", "blob", "image/jpeg", 10, 0),
    ],
)
def test_upload_headimg_rules(
    account: str, filename: str | None, ctype: str | None, size: int, expected: int
) -> None:
    m = make()
    m.add_account("a1@test", "n")
    assert code(m.upload_headimg(account, filename, ctype, size)) == expected
    if expected == 0:
        assert m.get_kf_list(T0)["kf_list"][0]["kf_headimgurl"].startswith("http://mmbiz.qpic.cn/mmbiz/")


def test_invite_worker_rules_and_binding() -> None:
    m = make()
    m.add_account("a1@test", "n")
    m.add_account("a2@test", "n")
    assert code(m.invite_worker("zz@test", "worker_1", T0)) == 65401
    assert code(m.invite_worker("a1@test", "1bad", T0)) == 65409
    assert code(m.invite_worker("a1@test", "worker_1", T0)) == 0
    assert code(m.invite_worker("a1@test", "worker_9", T0)) == 65411  # a pending invitation exists
    assert code(m.invite_worker("a2@test", "worker_1", T0)) == 65408  # already invited elsewhere
    row = m.get_kf_list(T0)["kf_list"][0]
    assert (row["invite_wx"], row["invite_status"]) == ("worker_1", "waiting")
    assert row["invite_expire_time"] > T0
    assert code(m.answer_invite("a1@test", True, T0 + 1)) == 0
    row = m.get_kf_list(T0)["kf_list"][0]
    assert row["kf_wx"] == "worker_1" and "invite_wx" not in row
    assert code(m.invite_worker("a1@test", "worker_2", T0)) == 65412  # already bound
    assert code(m.invite_worker("a2@test", "worker_1", T0)) == 65407  # already a worker here


def test_invitation_expires_and_rejection() -> None:
    m = make()
    m.add_account("a1@test", "n")
    m.invite_worker("a1@test", "worker_1", T0)
    assert m.get_kf_list(T0 + 8 * 86_400)["kf_list"][0]["invite_status"] == "expired"
    assert code(m.invite_worker("a1@test", "worker_2", T0 + 8 * 86_400)) == 0
    assert code(m.answer_invite("a1@test", False, T0 + 8 * 86_400)) == 0
    assert m.get_kf_list(T0)["kf_list"][0]["invite_status"] == "rejected"


@pytest.mark.parametrize(("style", "expected_id"), [("int", 1001), ("str", "1001")])
def test_kf_id_type_switch(style: str, expected_id: object) -> None:
    m = make(kf_id_type=style)
    with_agents(m, "a1@test")
    assert m.get_kf_list(T0)["kf_list"][0]["kf_id"] == expected_id
    assert m.get_online_kf_list()["kf_online_list"][0]["kf_id"] == expected_id


def test_online_list_new_and_legacy_styles() -> None:
    m = make()
    m.set_agent("a1@test", T0, status=3, auto_accept=4)
    m.set_agent("a2@test", T0, status=0)
    customer(m, "u1")
    m.create_session("a1@test", "u1", T0)
    rows = m.get_online_kf_list()["kf_online_list"]
    assert rows == [
        {
            "kf_account": "a1@test",
            "status": 1,
            "kf_id": 1001,
            "auto_accept": 4,
            "accepted_case": 1,
            "kf_openid": "kfopenid1001",
        }
    ]
    m.options.online_status_style = "legacy"
    m.options.emit_auto_accept = False
    assert m.get_online_kf_list()["kf_online_list"] == [
        {"kf_account": "a1@test", "status": 3, "kf_id": 1001, "accepted_case": 1}
    ]


def test_agents_unbound_switch_hides_kf_wx() -> None:
    m = make(agents_unbound=True)
    with_agents(m, "a1@test")
    assert "kf_wx" not in m.get_kf_list(T0)["kf_list"][0]


# ---------------------------------------------------------------------------------------------- sessions
def test_create_rules() -> None:
    m = make()
    with_agents(m, "a1@test", "a2@test")
    m.set_agent("off@test", T0, status=0)
    m.set_agent("unb@test", T0, status=1, bound=False)
    customer(m, "u1")
    assert code(m.create_session("a1@test", "stranger", T0)) == 40003
    assert code(m.create_session("zz@test", "u1", T0)) == 65401
    assert code(m.create_session("unb@test", "u1", T0)) == 65402
    assert code(m.create_session("off@test", "u1", T0)) == 65415
    assert code(m.create_session("a1@test", "u1", T0)) == 0
    assert code(m.create_session("a1@test", "u1", T0 + 1)) == 0  # same agent: idempotent
    assert code(m.create_session("a2@test", "u1", T0 + 2)) == 65414
    pushes = m.drain_outbox()
    assert [(p.event, p.kf_account) for p in pushes if p.msg_type == "event"] == [
        ("kf_create_session", "a1@test")
    ]
    assert [e["errcode"] for e in m.create_log] == [40003, 65401, 65402, 65415, 0, 0, 65414]
    assert m.get_session("u1") == {"createtime": int(T0), "kf_account": "a1@test"}


def test_create_offline_switch_and_no_push_switch() -> None:
    m = make(create_offline_error=0, push_events_on_api_actions=False)
    m.set_agent("off@test", T0, status=0)
    customer(m, "u1")
    m.drain_outbox()
    assert code(m.create_session("off@test", "u1", T0)) == 0
    assert m.drain_outbox() == []


def test_agents_unbound_switch_refuses_create() -> None:
    m = make(agents_unbound=True)
    with_agents(m, "a1@test")
    customer(m, "u1")
    assert code(m.create_session("a1@test", "u1", T0)) == 65402
    assert code(m.get_session_list("a1@test")) == 65402


def test_check_openid_switch() -> None:
    m = make(check_openid=False)
    with_agents(m, "a1@test")
    assert code(m.create_session("a1@test", "never-seen", T0)) == 0


def test_a_session_begun_for_an_unseen_openid_stays_unknown_when_the_check_comes_back() -> None:
    m = make(check_openid=False)
    with_agents(m, "a1@test")
    customer(m, "u1")
    assert code(m.create_session("a1@test", "ghost", T0)) == 0
    assert code(m.create_session("a1@test", "u1", T0)) == 0
    m.options.check_openid = True
    assert code(m.get_session("ghost")) == 40003
    assert m.close_errcode("a1@test", "ghost", T0 + 1) == 40003  # in a session, yet never seen
    assert m.close_errcode("a1@test", "u1", T0 + 1) == 0
    customer(m, "ghost", T0 + 2)  # the user writes: now WeChat knows them
    assert m.close_errcode("a1@test", "ghost", T0 + 3) == 0 and m.sessions == {}


def test_every_openid_a_transfer_saw_is_known_across_batches() -> None:
    m = make(push_events_on_api_actions=False)
    with_agents(m, "a1@test")
    openids = [f"u{i}" for i in range(SEEN_BATCH + 5)]
    for openid in openids:
        assert m.transfer_result(openid, T0) == "waiting"
        assert m.leave_result(openid) == "left"
    assert m.waiting == {} and m.known == set(openids)
    for openid in (openids[0], openids[SEEN_BATCH], openids[-1]):  # known, though no longer waiting
        assert m.create_errcode("a1@test", openid, T0 + 1) == 0
        assert m.close_errcode("a1@test", openid, T0 + 2) == 0
    assert m.create_errcode("a1@test", "never-seen", T0 + 3) == 40003
    assert m.close_errcode("a1@test", "never-seen", T0 + 3) == 40003
    m.reset()
    assert m.known == set()


def test_create_takes_the_customer_off_the_wait_list() -> None:
    m = make()
    with_agents(m, "a1@test")
    customer(m, "u1")
    m.transfer("u1", T0)
    assert m.get_wait_case()["count"] == 1
    m.create_session("a1@test", "u1", T0 + 3)
    assert m.get_wait_case() == {"count": 0, "waitcaselist": []}


def test_close_rules() -> None:
    m = make()
    with_agents(m, "a1@test", "a2@test")
    customer(m, "u1")
    assert code(m.close_session("a1@test", "stranger", T0)) == 40003
    assert code(m.close_session("zz@test", "u1", T0)) == 65401
    assert code(m.close_session("a1@test", "u1", T0)) == 65413
    m.create_session("a1@test", "u1", T0)
    m.drain_outbox()
    assert code(m.close_session("a2@test", "u1", T0)) == 65414
    assert code(m.close_session("a1@test", "u1", T0 + 9)) == 0
    assert [(p.event, p.kf_account, p.create_time) for p in m.drain_outbox()] == [
        ("kf_close_session", "a1@test", int(T0 + 9))
    ]
    assert m.get_session("u1") == {"createtime": 0, "kf_account": ""}


def test_getsession_switches() -> None:
    m = make(no_session_createtime=123, getsession_include_errcode=True)
    customer(m, "u1")
    assert m.get_session("u1") == {"errcode": 0, "errmsg": "ok", "createtime": 123, "kf_account": ""}
    assert code(m.get_session("nobody")) == 40003


def test_getsessionlist() -> None:
    m = make()
    with_agents(m, "a1@test")
    for i, u in enumerate(("u1", "u2")):
        customer(m, u)
        m.create_session("a1@test", u, T0 + i)
    assert code(m.get_session_list("zz@test")) == 65401
    assert m.get_session_list("a1@test") == {
        "sessionlist": [{"createtime": int(T0), "openid": "u1"}, {"createtime": int(T0 + 1), "openid": "u2"}]
    }


def test_waitcase_count_100_oldest_and_latest_time() -> None:
    m = make()
    for i in range(150):
        customer(m, f"u{i:03d}", T0 + i)
        m.transfer(f"u{i:03d}", T0 + i)
    customer(m, "u000", T0 + 500)  # a later message updates latest_time, not the position
    r = m.get_wait_case()
    assert r["count"] == 150
    assert len(r["waitcaselist"]) == 100
    assert r["waitcaselist"][0] == {"latest_time": int(T0 + 500), "openid": "u000"}
    assert r["waitcaselist"][-1] == {"latest_time": int(T0 + 99), "openid": "u099"}


def test_waitcase_legacy_shape_shows_pin() -> None:
    m = make(waitcase_style="legacy")
    customer(m, "u1")
    m.transfer("u1", T0, "a1@test")
    assert m.get_wait_case()["waitcaselist"] == [
        {"createtime": int(T0), "kf_account": "a1@test", "openid": "u1"}
    ]


def test_switch_session_moves_the_customer_and_pushes() -> None:
    m = make()
    with_agents(m, "a1@test", "a2@test")
    customer(m, "u1")
    assert code(m.switch_session("u1", "a2@test", T0)) == 65413
    m.create_session("a1@test", "u1", T0)
    m.drain_outbox()
    assert code(m.switch_session("u1", "zz@test", T0)) == 65401
    assert code(m.switch_session("u1", "a2@test", T0 + 1)) == 0
    (p,) = m.drain_outbox()
    assert (p.event, p.from_kf_account, p.to_kf_account) == ("kf_switch_session", "a1@test", "a2@test")
    online = {r["kf_account"]: r["accepted_case"] for r in m.get_online_kf_list()["kf_online_list"]}
    assert online == {"a1@test": 0, "a2@test": 1}


# ---------------------------------------------------------------------------------------------- customers
def test_customer_message_routing_push_vs_agent() -> None:
    m = make()
    with_agents(m, "a1@test")
    r = m.customer_message("u1", T0, "hi")
    assert r["routed"] == "webhook"
    (p,) = m.drain_outbox()
    assert (p.msg_type, p.content, p.msg_id) == ("text", "hi", r["msg_id"])
    m.transfer("u1", T0)
    assert m.customer_message("u1", T0 + 1, "still there?")["routed"] == "webhook"  # queued: pushed
    m.drain_outbox()
    m.create_session("a1@test", "u1", T0 + 2)
    m.drain_outbox()
    assert m.customer_message("u1", T0 + 3, "to the agent")["routed"] == "agent"
    assert m.drain_outbox() == []
    assert m.records[-1]["opercode"] == 2003 and m.records[-1]["worker"] == "a1@test"


def test_forwarding_lapses_after_idle_and_closes_the_session() -> None:
    m = make()
    with_agents(m, "a1@test")
    customer(m, "u1")
    m.create_session("a1@test", "u1", T0)
    m.drain_outbox()
    assert m.customer_message("u1", T0 + 1801, "anyone?")["routed"] == "webhook"
    kinds = [(p.msg_type, p.event) for p in m.drain_outbox()]
    assert kinds == [("event", "kf_close_session"), ("text", "")]
    assert "u1" not in m.sessions


@pytest.mark.parametrize("pushes", [True, False])
def test_forwarding_idle_counts_from_the_last_message_of_this_session_only(pushes: bool) -> None:
    m = make(forward_idle_s=100.0, push_events_on_api_actions=pushes)
    with_agents(m, "a1@test", "a2@test")
    customer(m, "u1")
    m.create_session("a1@test", "u1", T0)
    assert m.customer_message("u1", T0 + 90, "still here")["routed"] == "agent"
    assert m.customer_message("u1", T0 + 180, "and here")["routed"] == "agent"  # 90 s after the last
    assert code(m.close_session("a1@test", "u1", T0 + 181)) == 0
    m.create_session("a1@test", "u1", T0 + 500)  # a new session: the old messages do not count
    assert m.customer_message("u1", T0 + 590, "hi again")["routed"] == "agent"
    assert code(m.switch_session("u1", "a2@test", T0 + 650)) == 0  # the switch starts the clock anew
    assert m.get_session("u1") == {"createtime": int(T0 + 650), "kf_account": "a2@test"}
    assert m.get_session_list("a2@test") == {"sessionlist": [{"createtime": int(T0 + 650), "openid": "u1"}]}
    assert m.customer_message("u1", T0 + 740, "there?")["routed"] == "agent"
    assert m.customer_message("u1", T0 + 841, "hello?")["routed"] == "webhook"
    assert "u1" not in m.sessions and m.agents["a2@test"].sessions == {}


def test_msg_ids_are_unique_and_increasing() -> None:
    m = make()
    ids = [m.customer_message("u1", T0 + i, str(i))["msg_id"] for i in range(5)]
    assert ids == sorted(set(ids))


def test_transfer_while_in_session_is_ignored_and_pin_updates() -> None:
    m = make()
    with_agents(m, "a1@test")
    customer(m, "u1")
    m.transfer("u1", T0)
    m.transfer("u1", T0 + 10, "a1@test")
    assert m.waiting["u1"].arrived == T0 and m.waiting["u1"].pinned == "a1@test"
    m.transfer("u2", T0 + 20)
    m.transfer("u1", T0 + 21, "a2@test")  # a new pin: same place, same arrival
    m.transfer("u1", T0 + 22)  # no TransInfo: the pin stays
    assert [(o, w.arrived, w.pinned) for o, w in m.waiting.items()] == [
        ("u1", T0, "a2@test"),
        ("u2", T0 + 20, None),
    ]
    m.create_session("a1@test", "u1", T0 + 11)
    assert m.transfer("u1", T0 + 12) == {"result": "in_session"}
    assert "u1" not in m.waiting


def test_session_cores_answer_bare_codes_with_the_json_methods_effects() -> None:
    m = make(push_events_on_api_actions=False)
    with_agents(m, "a1@test", "a2@test")
    assert m.transfer_result("u1", T0) == "waiting"  # a transfer alone makes the openid known
    assert m.create_errcode("a1@test", "stranger", T0) == 40003
    assert m.create_errcode("zz@test", "u1", T0) == 65401
    assert m.create_errcode("a1@test", "u1", T0 + 1) == 0
    assert m.create_errcode("a2@test", "u1", T0 + 2) == 65414
    assert m.transfer_result("u1", T0 + 3) == "in_session" and "u1" not in m.waiting
    assert m.close_errcode("a2@test", "u1", T0 + 4) == 65414
    assert m.close_errcode("a1@test", "u1", T0 + 5) == 0
    assert m.close_errcode("a1@test", "u1", T0 + 6) == 65413
    assert [e["errcode"] for e in m.create_log] == [40003, 65401, 0, 65414]
    m.transfer_result("u2", T0 + 7)
    assert m.leave_result("u2") == "left" and m.leave_result("u2") == "not_waiting"
    assert m.drain_outbox() == []


def test_a_customer_known_from_a_transfer_only_has_a_fresh_customers_windows() -> None:
    m = make()
    m.transfer("u1", T0)
    assert _send(m, "u1", T0) == 45015 and code(m.typing("u1", "Typing", T0)) == 45015
    endless = make(window_hours=math.inf)  # a fresh customer's window never closes: open from the start
    endless.transfer("u1", T0)
    assert _send(endless, "u1", T0) == 0
    assert _send(endless, "never-seen", T0) == 45015


# ---------------------------------------------------------------------------------------------- windows
def _send(m: WeChatModel, openid: str, now: float, kf: str | None = None) -> int:
    return code(m.send_custom(openid, "text", {"content": "hi"}, kf, now))


def test_send_window_5_per_48h_then_45047_then_45015() -> None:
    m = make()
    customer(m, "u1", T0)
    assert [_send(m, "u1", T0 + i) for i in range(6)] == [0, 0, 0, 0, 0, 45047]
    assert _send(m, "u1", T0 + 48 * 3600 + 1) == 45015
    assert _send(m, "never", T0) == 45015
    assert len(m.sent["u1"]) == 5


def test_each_user_message_reopens_the_window() -> None:
    m = make()
    customer(m, "u1", T0)
    for i in range(5):
        _send(m, "u1", T0 + i)
    customer(m, "u1", T0 + 100)
    assert _send(m, "u1", T0 + 101) == 0
    m2 = make(reopen_on_user_message=False)
    customer(m2, "u1", T0)
    for i in range(5):
        _send(m2, "u1", T0 + i)
    customer(m2, "u1", T0 + 100)
    assert _send(m2, "u1", T0 + 101) == 45047


def test_menu_click_gives_3_per_minute_only() -> None:
    m = make()
    m.menu_click("u1", "HUMAN", T0)
    (p,) = m.drain_outbox()
    assert (p.event, p.event_key) == ("CLICK", "HUMAN")
    assert [_send(m, "u1", T0 + i) for i in range(4)] == [0, 0, 0, 45047]
    m.menu_click("u2", "X", T0)
    assert _send(m, "u2", T0 + 61) == 45015


def test_follow_window_and_unfollow() -> None:
    m = make()
    m.follow("u1", T0)
    assert _send(m, "u1", T0 + 1) == 0
    customer(m, "u1", T0 + 2)
    m.unfollow("u1", T0 + 3)
    assert _send(m, "u1", T0 + 4) == 45015
    assert [p.event for p in m.drain_outbox() if p.msg_type == "event"] == ["subscribe", "unsubscribe"]


def test_send_validation_and_kf_account() -> None:
    m = make()
    with_agents(m, "a1@test")
    customer(m, "u1")
    assert code(m.send_custom("u1", "bogus", {}, None, T0)) == 40008
    assert code(m.send_custom("u1", "text", {"content": ""}, None, T0)) == 47001
    assert code(m.send_custom("u1", "text", "x", None, T0)) == 47001
    assert code(m.send_custom("", "text", {"content": "x"}, None, T0)) == 40003
    assert _send(m, "u1", T0, kf="zz@test") == 65401
    assert _send(m, "u1", T0, kf="a1@test") == 0
    assert m.sent["u1"][-1]["kf_account"] == "a1@test"
    assert m.records[-1] == {
        "openid": "u1",
        "opercode": 2002,
        "text": "hi",
        "time": int(T0),
        "worker": "a1@test",
    }


def test_typing_rules() -> None:
    m = make()
    customer(m, "u1", T0)
    assert code(m.typing("u1", "Dance", T0)) == 45072
    assert code(m.typing("u1", "Typing", T0 + 1)) == 0
    assert code(m.typing("u1", "Typing", T0 + 2)) == 45081
    assert code(m.typing("u1", "CancelTyping", T0 + 3)) == 0
    assert code(m.typing("u1", "Typing", T0 + 4)) == 0
    _send(m, "u1", T0 + 5)  # sending cancels typing
    assert code(m.typing("u1", "Typing", T0 + 6)) == 0
    assert code(m.typing("u1", "Typing", T0 + 31)) == 45080
    assert code(m.typing("nobody", "Typing", T0)) == 45015


# ---------------------------------------------------------------------------------------------- msg records
def test_getmsglist_validation() -> None:
    m = make()
    assert code(m.get_msg_list(0, 86_401, 1, 10)) == 65417
    assert code(m.get_msg_list(10, 10, 1, 10)) == 65416
    assert code(m.get_msg_list(0, 100, 0, 10)) == 65416
    assert code(m.get_msg_list(0, 100, 1, 10_001)) == 65416
    assert code(m.get_msg_list("0", 100, 1, 10)) == 65416
    assert m.get_msg_list(0, 100, 1, 10) == {"recordlist": [], "number": 0, "msgid": 1}


@pytest.mark.parametrize("cursor", ["last_returned", "next_to_request"])
def test_getmsglist_pagination_covers_every_record(cursor: str) -> None:
    m = make(msgid_cursor=cursor)
    with_agents(m, "a1@test")
    customer(m, "u1", T0)
    m.create_session("a1@test", "u1", T0)
    for i in range(7):
        m.customer_message("u1", T0 + 1 + i, f"m{i}")
    seen: list[str] = []
    msgid = 1
    for _ in range(10):
        r = m.get_msg_list(int(T0), int(T0 + 3600), msgid, 3)
        if not r["recordlist"]:
            break
        seen += [x["text"] for x in r["recordlist"]]
        msgid = r["msgid"]
        if r["number"] < 3:
            break
    unique = list(dict.fromkeys(seen))
    assert unique == [f"m{i}" for i in range(7)]
    if cursor == "next_to_request":
        assert seen == unique
    else:
        assert len(seen) > len(unique)  # the last record of each page comes again


# ---------------------------------------------------------------------------------------------- agents / auto-accept
def test_agent_accept_takes_oldest_not_pinned_elsewhere() -> None:
    m = make()
    with_agents(m, "a1@test", "a2@test")
    for i, u in enumerate(("u1", "u2", "u3")):
        customer(m, u, T0 + i)
    m.transfer("u1", T0, "a2@test")
    m.transfer("u2", T0 + 1)
    m.transfer("u3", T0 + 2)
    r = m.agent_accept("a1@test", T0 + 5)
    assert (code(r), r["openid"]) == (0, "u2")
    assert code(m.agent_accept("a1@test", T0 + 5, "u1")) == 65414
    assert m.agent_accept("a2@test", T0 + 6)["openid"] == "u1"
    m.set_agent("a2@test", T0, status=0)
    assert code(m.agent_accept("a2@test", T0 + 7)) == 65415


def test_wechat_auto_accept_off_by_default() -> None:
    m = make()
    with_agents(m, "a1@test")
    customer(m, "u1")
    m.transfer("u1", T0)
    assert m.sessions == {}


def test_wechat_auto_accept_fills_room_and_refills_on_close() -> None:
    m = make(wechat_auto_accept=True)
    m.set_agent("a1@test", T0, status=1, auto_accept=1)
    for u in ("u1", "u2"):
        customer(m, u)
        m.transfer(u, T0)
    assert m.sessions["u1"].kf_account == "a1@test" and "u2" in m.waiting
    m.close_session("a1@test", "u1", T0 + 5)
    assert m.sessions["u2"].kf_account == "a1@test"
    events = [p.event for p in m.drain_outbox() if p.msg_type == "event"]
    assert events == ["kf_create_session", "kf_close_session", "kf_create_session"]


def test_wechat_auto_accept_pinned_only_to_their_agent() -> None:
    m = make(wechat_auto_accept=True)
    m.set_agent("a1@test", T0, status=1, auto_accept=5)
    m.set_agent("a2@test", T0, status=0, auto_accept=5)
    customer(m, "u1")
    m.transfer("u1", T0, "a2@test")
    assert "u1" in m.waiting
    m.set_agent("a2@test", T0 + 1, status=1)
    assert m.sessions["u1"].kf_account == "a2@test"


def test_set_agent_validation() -> None:
    m = make()
    with pytest.raises(ValueError, match="prefix@wxid"):
        m.set_agent("nope", T0)
    with pytest.raises(ValueError, match="status"):
        m.set_agent("a@test", T0, status=7)
    with pytest.raises(ValueError, match="auto_accept"):
        m.set_agent("a@test", T0, auto_accept=-1)


def test_options_update_is_all_or_nothing() -> None:
    o = FakeOptions()
    with pytest.raises(ValueError, match="kf_id_type"):
        o.update({"wechat_auto_accept": True, "kf_id_type": "float"})
    assert o.wechat_auto_accept is False
    with pytest.raises(ValueError, match="unknown option"):
        o.update({"nope": 1})
    assert o.update({"del_methods": ["post"]}) == ["del_methods"]
    assert o.del_methods == frozenset({"POST"})
    with pytest.raises(ValueError, match="error_codes"):
        o.update({"error_codes": {"bogus": 1}})


def test_reset_forgets_state() -> None:
    m = make()
    with_agents(m, "a1@test")
    t = token(m)
    m.reset()
    assert m.agents == {} and code(m.check_access_token(t, T0) or {}) == 40014


# ---------------------------------------------------------------------------------------------- property
OPS = st.lists(
    st.tuples(
        st.sampled_from(["msg", "transfer", "create", "close", "switch", "accept", "agent", "leave"]),
        st.integers(0, 5),  # customer
        st.integers(0, 2),  # agent
        st.booleans(),
    ),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(ops=OPS, auto=st.booleans())
def test_invariants_hold_under_any_sequence(ops: list[tuple[str, int, int, bool]], auto: bool) -> None:
    m = make(wechat_auto_accept=auto)
    for a in range(3):
        m.set_agent(f"a{a}@test", T0, status=1, auto_accept=2)
    now = T0
    for op, c, a, flag in ops:
        now += 1
        openid, kf = f"u{c}", f"a{a}@test"
        if op == "msg":
            m.customer_message(openid, now, "x")
        elif op == "transfer":
            m.transfer(openid, now, kf if flag else None)
        elif op == "create":
            m.create_session(kf, openid, now)
        elif op == "close":
            m.close_session(kf, openid, now, via="agent" if flag else "api")
        elif op == "switch":
            m.switch_session(openid, kf, now)
        elif op == "accept":
            m.agent_accept(kf, now)
        elif op == "agent":
            m.set_agent(kf, now, status=1 if flag else 0)
        else:
            m.leave_queue(openid)
        # a customer is never both waiting and in a session; agents' lists mirror sessions
        assert not set(m.waiting) & set(m.sessions)
        derived = {o: ag.kf_account for ag in m.agents.values() for o in ag.sessions}
        assert derived == {o: s.kf_account for o, s in m.sessions.items()}
        if auto:  # WeChat's auto-accept never leaves a customer waiting while their agent has room
            room = {k for k, ag in m.agents.items() if ag.status and len(ag.sessions) < ag.auto_accept}
            for w in m.waiting.values():
                assert (w.pinned in room) is False if w.pinned else not room
        # every create that answered 0 left the customer with that agent at that moment
        last = m.create_log[-1] if m.create_log and op == "create" else None
        if last is not None and last["errcode"] == 0:
            assert m.sessions[openid].kf_account == kf


CORE_OPS = st.lists(
    st.tuples(
        st.sampled_from(["msg", "transfer", "create", "close", "agent", "leave"]),
        st.integers(0, 4),  # customer
        st.integers(0, 3),  # agent (3: no such account)
        st.booleans(),
    ),
    max_size=60,
)


@settings(max_examples=100, deadline=None)
@given(ops=CORE_OPS, auto=st.booleans(), history=st.booleans())
def test_session_cores_decide_as_the_json_methods(
    ops: list[tuple[str, int, int, bool]], auto: bool, history: bool
) -> None:
    """The replay's bare-result cores and the fake server's JSON methods are one implementation: twin
    models driven through each answer the same codes and end in the same state."""
    twins = [
        WeChatModel("wxAPP", "SECRET", options=FakeOptions(wechat_auto_accept=auto), history=history)
        for _ in range(2)
    ]
    via_json, via_core = twins
    for m in twins:
        for a in range(3):
            m.set_agent(f"a{a}@test", T0, status=1, auto_accept=1)
    now = T0
    for op, c, a, flag in ops:
        now += 1
        openid, kf = f"u{c}", f"a{a}@test"
        if op == "msg":
            for m in twins:
                m.customer_message(openid, now, "x")
        elif op == "transfer":
            pin = kf if flag else None
            result = via_core.transfer_result(openid, now, pin)
            assert via_json.transfer(openid, now, pin) == {"result": result}
        elif op == "create":
            assert code(via_json.create_session(kf, openid, now)) == via_core.create_errcode(kf, openid, now)
        elif op == "close":
            via = "agent" if flag else "api"
            assert code(via_json.close_session(kf, openid, now, via=via)) == via_core.close_errcode(
                kf, openid, now, via
            )
        elif op == "agent":
            for m in twins:
                m.set_agent(kf if a < 3 else "a0@test", now, status=1 if flag else 0)
        else:
            assert via_json.leave_queue(openid) == {"result": via_core.leave_result(openid)}
    assert via_json.snapshot(now) == via_core.snapshot(now)
    assert via_json.drain_outbox() == via_core.drain_outbox()


def test_a_model_that_remembers_no_openids() -> None:
    with pytest.raises(ValueError, match=r"remember_openids=False needs options\.check_openid=False"):
        WeChatModel("wxAPP", "SECRET", wxid="test", options=FakeOptions(), remember_openids=False)
    m = WeChatModel(
        "wxAPP",
        "SECRET",
        wxid="test",
        options=FakeOptions(check_openid=False, push_events_on_api_actions=False),
        remember_openids=False,
    )
    with_agents(m, "a1@test")
    for i in range(SEEN_BATCH * 3):  # past several batches of openids seen lately
        openid = f"u{i}"
        assert m.transfer_result(openid, T0) == "waiting"
        assert m.create_errcode("a1@test", openid, T0) == 0
        assert m.close_errcode("a1@test", openid, T0 + 1) == 0
    customer(m, "w1")  # a message from the user does not make them remembered either
    assert m.known == set() and m._strangers == set() and m.sessions == {} and m.waiting == {}
