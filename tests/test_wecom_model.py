"""The pure WeCom 微信客服 model: the session state machine against the spec's table (written out here
independently of router.wechat.wecom_kf), msg_code rules, send_msg windows, sync_msg cursors, tokens and
limits, servicer status. Time is an argument; no I/O."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from kfrouter.router.wechat import wecom_kf
from kfrouter.sim.wecom_model import WeComModel
from kfrouter.sim.wecom_options import WeComOptions

T0 = 1_700_000_000.0
KF = "wkTEST"

# The spec's table (wecom-kf.md §A2), typed in again so that a wrong table in the code fails here.
SPEC_TRANSITIONS = {0: {1, 2, 3}, 1: {2, 3}, 2: {3}, 3: {3, 4}, 4: set()}


def new_model(**opts: object) -> WeComModel:
    m = WeComModel("wwcorp000001", "sec", options=WeComOptions(**opts), rng=random.Random(1))  # type: ignore[arg-type]
    m.add_account("咨询", open_kfid=KF)
    m.add_servicer(KF, "alice")
    m.add_servicer(KF, "bob")
    return m


def token(m: WeComModel, now: float = T0) -> str:
    answer = m.gettoken(m.corpid, m.secret, now)
    assert answer["errcode"] == 0
    return str(answer["access_token"])


def test_module_table_matches_the_spec() -> None:
    assert {s: set(t) for s, t in wecom_kf.TRANSITIONS.items()} == SPEC_TRANSITIONS


def test_customer_message_starts_a_session_and_trans_walks_it() -> None:
    m = new_model()
    assert m.get_state(KF, "wmC", T0)["errcode"] == 40096  # never seen: not a customer of the corp
    m.customer_message(KF, "wmC", T0, "hello")
    assert m.get_state(KF, "wmC", T0)["service_state"] == 0
    pool = m.trans(KF, "wmC", 2, None, T0 + 1)
    assert pool["errcode"] == 0 and pool["msg_code"]
    served = m.trans(KF, "wmC", 3, "alice", T0 + 2)
    assert served["errcode"] == 0 and served["msg_code"]
    assert m.get_state(KF, "wmC", T0 + 2) == {
        "errcode": 0,
        "errmsg": "ok",
        "service_state": 3,
        "servicer_userid": "alice",
    }
    transfer = m.trans(KF, "wmC", 3, "bob", T0 + 3)
    assert transfer == {"errcode": 0, "errmsg": "ok"}  # 3 -> 3: entered before, no new code
    end = m.trans(KF, "wmC", 4, None, T0 + 4)
    assert end["errcode"] == 0 and end["msg_code"]  # every end gets an ending code
    assert m.trans(KF, "wmC", 3, "alice", T0 + 5)["errcode"] == 95013  # ended: nothing by API
    m.customer_message(KF, "wmC", T0 + 6, "again")  # a new session begins in 0
    again = m.trans(KF, "wmC", 2, None, T0 + 7)
    assert again["errcode"] == 0 and again["msg_code"]  # a new session: the first entry into 2 again


def test_servicer_rules_for_state_3() -> None:
    m = new_model()
    m.add_account("other", open_kfid="wkOTHER")
    m.add_servicer("wkOTHER", "carol")
    m.customer_message(KF, "wmC", T0)
    assert m.trans(KF, "wmC", 3, None, T0)["errcode"] == 40058  # servicer required
    assert m.trans(KF, "wmC", 3, "carol", T0)["errcode"] == 95014  # a servicer, of another account
    assert m.trans(KF, "wmC", 3, "nobody", T0)["errcode"] == 95014
    m.set_servicer_status("alice", 1, T0, stop_type=1)
    assert m.trans(KF, "wmC", 3, "alice", T0)["errcode"] == 95019  # 停止接待 / 暂时挂起
    assert m.get_state(KF, "wmC", T0)["service_state"] == 0  # refused calls change nothing
    assert m.trans(KF, "wmC", 3, "bob", T0)["errcode"] == 0


def test_same_servicer_again_is_a_switch() -> None:
    m = new_model()
    m.customer_message(KF, "wmC", T0)
    m.trans(KF, "wmC", 3, "alice", T0)
    assert m.trans(KF, "wmC", 3, "alice", T0)["errcode"] == 0
    m.options.trans_same_servicer_errcode = 95016
    assert m.trans(KF, "wmC", 3, "alice", T0)["errcode"] == 95016


class TransitionMachine(RuleBasedStateMachine):
    """Random trans calls, customer messages, servicer status changes and clock jumps; a naive model
    kept here decides each expected errcode and whether a msg_code comes back."""

    @initialize()
    def setup(self) -> None:
        self.m = new_model()
        self.now = T0
        self.state: dict[str, int] = {}
        self.servicer: dict[str, str | None] = {}
        self.entered: dict[str, set[int]] = {}
        self.last_msg: dict[str, float] = {}
        self.stopped: set[str] = set()
        assert self.m.trans(KF, "wmNEVER", 2, None, self.now)["errcode"] == 40096  # not a customer
        for c in ("wmA", "wmB"):
            self.customer_writes(c)

    def _expire(self, c: str) -> None:
        if self.state.get(c, 4) != 4 and self.now >= self.last_msg[c] + 48 * 3600:
            self.state[c], self.servicer[c], self.entered[c] = 4, None, set()

    @rule(c=st.sampled_from(["wmA", "wmB"]))
    def customer_writes(self, c: str) -> None:
        self.m.customer_message(KF, c, self.now, "hi")
        self._expire(c)
        if self.state.get(c, 4) == 4:
            self.state[c], self.servicer[c], self.entered[c] = 0, None, {0}
        self.last_msg[c] = self.now

    @rule(
        c=st.sampled_from(["wmA", "wmB"]),
        dst=st.integers(0, 4),
        who=st.sampled_from([None, "alice", "bob", "zed"]),
    )
    def trans(self, c: str, dst: int, who: str | None) -> None:
        answer = self.m.trans(KF, c, dst, who, self.now)
        if c not in self.last_msg:
            assert answer["errcode"] == 40096
            return
        self._expire(c)
        cur = self.state[c]
        if cur == 4:
            expected = 95013
        elif dst not in SPEC_TRANSITIONS[cur]:
            expected = 95016
        elif dst == 3 and who is None:
            expected = 40058
        elif dst == 3 and who == "zed":
            expected = 95014
        elif dst == 3 and who in self.stopped:
            expected = 95019
        else:
            expected = 0
        assert answer["errcode"] == expected, (cur, dst, who, answer)
        if expected:
            assert "msg_code" not in answer
            return
        if dst == 3 and cur == 3 and who == self.servicer[c]:
            assert "msg_code" not in answer  # same servicer: nothing happens
            return
        first = dst not in self.entered[c]
        wants_code = dst == 4 or (dst in (2, 3) and first)
        assert ("msg_code" in answer) == wants_code, (cur, dst, self.entered[c], answer)
        self.entered[c].add(dst)
        self.state[c] = dst
        self.servicer[c] = who if dst == 3 else None
        if dst == 4:
            self.entered[c] = set()

    @rule(who=st.sampled_from(["alice", "bob"]), stop=st.booleans())
    def status(self, who: str, stop: bool) -> None:
        self.m.set_servicer_status(who, 1 if stop else 0, self.now)
        (self.stopped.add if stop else self.stopped.discard)(who)

    @rule(dt=st.sampled_from([1.0, 3600.0, 48 * 3600.0]))
    def wait(self, dt: float) -> None:
        self.now += dt

    @invariant()
    def states_agree(self) -> None:
        if not hasattr(self, "m"):
            return
        for c in self.last_msg:
            self._expire(c)
            got = self.m.get_state(KF, c, self.now)
            assert got["service_state"] == self.state[c]
            assert got.get("servicer_userid") == (self.servicer[c] if self.state[c] == 3 else None)


TestTransitions = TransitionMachine.TestCase
TestTransitions.settings = settings(
    max_examples=150, stateful_step_count=30, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


# ---------------------------------------------------------------------------------------- msg_code


def test_queue_notice_code_once_in_its_state_within_48h() -> None:
    m = new_model()
    m.customer_message(KF, "wmC", T0)
    code = m.trans(KF, "wmC", 2, None, T0)["msg_code"]
    text = {"content": "您前面还有 3 位"}
    assert m.send_on_event(code, None, "msgmenu", {"head_content": "x"}, T0)["errcode"] == 95030  # text only
    assert m.send_on_event(code, None, "text", text, T0 + 1)["errcode"] == 0
    assert m.send_on_event(code, None, "text", text, T0 + 2)["errcode"] == 95007  # one message per code
    sent = [s for s in m.sent if s["via"] == "send_msg_on_event"]
    assert [(s["kind"], s["external_userid"], s["body"]) for s in sent] == [("pool", "wmC", text)]


def test_queue_notice_code_expires_and_needs_the_pool_state() -> None:
    m = new_model()
    m.customer_message(KF, "wmC", T0)
    code = m.trans(KF, "wmC", 2, None, T0)["msg_code"]
    m.trans(KF, "wmC", 3, "alice", T0 + 1)
    assert m.send_on_event(code, None, "text", {"content": "x"}, T0 + 2)["errcode"] == 95018  # left the pool
    m2 = new_model()
    m2.customer_message(KF, "wmD", T0)
    late = m2.trans(KF, "wmD", 2, None, T0)["msg_code"]
    m2.customer_message(KF, "wmD", T0 + 47 * 3600)  # keeps the session alive
    assert m2.send_on_event(late, None, "text", {"content": "x"}, T0 + 48 * 3600)["errcode"] == 95007


def test_welcome_code_20s_and_quiet_rules() -> None:
    m = new_model()
    first = m.customer_enter(KF, "wmC", T0, scene="menu")["event"]
    assert first["event_type"] == "enter_session" and first["scene"] == "menu"
    code = first["welcome_code"]
    assert m.send_on_event(code, None, "text", {"content": "欢迎"}, T0 + 21)["errcode"] == 95007  # 20 s
    second = m.customer_enter(KF, "wmC", T0 + 30)["event"]
    assert m.send_on_event(second["welcome_code"], None, "text", {"content": "欢迎"}, T0 + 31)["errcode"] == 0
    # a welcome was received: no code for 48 h; writing also suppresses it
    assert "welcome_code" not in m.customer_enter(KF, "wmC", T0 + 3600)["event"]
    m.customer_message(KF, "wmE", T0)
    assert "welcome_code" not in m.customer_enter(KF, "wmE", T0 + 60)["event"]
    m.options.console_welcome = True
    assert "welcome_code" not in m.customer_enter(KF, "wmNEW", T0)["event"]


def test_servicer_actions_emit_session_events_with_codes() -> None:
    m = new_model()
    m.customer_message(KF, "wmC", T0)
    m.trans(KF, "wmC", 2, None, T0)
    m.customer_message(KF, "wmD", T0 + 1)
    m.trans(KF, "wmD", 2, None, T0 + 1)
    assert m.pool(KF, T0 + 2) == ["wmC", "wmD"]
    took = m.servicer_accept(KF, "alice", T0 + 2)["event"]  # the oldest in the pool
    assert (took["change_type"], took["external_userid"], took["new_servicer_userid"]) == (1, "wmC", "alice")
    assert (
        m.send_on_event(took["msg_code"], None, "text", {"content": "客服 alice 为您服务"}, T0 + 3)["errcode"]
        == 0
    )
    moved = m.servicer_transfer(KF, "wmC", "bob", T0 + 4)["event"]
    assert (moved["change_type"], moved["old_servicer_userid"], moved["new_servicer_userid"]) == (
        2,
        "alice",
        "bob",
    )
    ended = m.servicer_end(KF, "wmC", T0 + 5)["event"]
    assert ended["change_type"] == 3 and ended["old_servicer_userid"] == "bob"
    assert (
        m.send_on_event(ended["msg_code"], None, "msgmenu", {"head_content": "满意吗"}, T0 + 6)["errcode"]
        == 0
    )
    m.servicer_reply(KF, "wmC", "alice", "还在吗", T0 + 7)  # re-joins the ended session
    assert m.get_state(KF, "wmC", T0 + 7)["servicer_userid"] == "alice"
    kinds = [e["event"]["change_type"] for e in m.streams[KF] if e["msgtype"] == "event"]
    assert kinds == [1, 2, 3, 4]
    with pytest.raises(ValueError, match="not in the pool"):
        m.servicer_accept(KF, "alice", T0 + 8, "wmC")


# ---------------------------------------------------------------------------------------- send_msg


def test_send_msg_states_quota_and_window() -> None:
    m = new_model()
    m.customer_message(KF, "wmC", T0)
    text = {"content": "自动回复"}
    for i in range(5):
        assert m.send_msg("wmC", KF, f"m{i}", "text", text, T0 + i)["msgid"] == f"m{i}"
    assert m.send_msg("wmC", KF, None, "text", text, T0 + 5)["errcode"] == 95001
    m.customer_message(KF, "wmC", T0 + 10)  # writing again restores the quota
    assert m.send_msg("wmC", KF, "m0", "text", text, T0 + 11)["errcode"] == 40058  # msgid not unique
    assert m.send_msg("wmC", KF, None, "text", {"content": ""}, T0 + 11)["errcode"] == 44004
    assert m.send_msg("wmC", KF, None, "text", text, T0 + 11)["errcode"] == 0
    m.trans(KF, "wmC", 1, None, T0 + 12)
    assert m.send_msg("wmC", KF, None, "text", text, T0 + 12)["errcode"] == 0  # 智能助手: still allowed
    m.trans(KF, "wmC", 3, "alice", T0 + 13)
    assert m.send_msg("wmC", KF, None, "text", text, T0 + 13)["errcode"] == 95018  # a human serves
    m2 = new_model()
    m2.customer_message(KF, "wmD", T0)
    assert m2.send_msg("wmD", KF, None, "text", text, T0 + 48 * 3600 + 1)["errcode"] == 95002
    assert not any(e.get("text") == text for e in m.streams[KF])  # API sends are not in sync_msg


def test_session_ends_48h_after_the_last_customer_message() -> None:
    m = new_model()
    m.customer_message(KF, "wmC", T0)
    m.trans(KF, "wmC", 3, "alice", T0)
    assert m.get_state(KF, "wmC", T0 + 48 * 3600 - 1)["service_state"] == 3
    assert m.get_state(KF, "wmC", T0 + 48 * 3600)["service_state"] == 4


# ---------------------------------------------------------------------------------------- sync_msg


def test_sync_cursor_limit_and_history() -> None:
    m = new_model()
    m.customer_message(KF, "wmOld", T0, "old")
    for i in range(5):
        m.customer_message(KF, "wmC", T0 + 4 * 86400 + i, f"m{i}")
    now = T0 + 4 * 86400 + 10
    tokens = [p.token for p in m.drain_outbox()]
    assert len(tokens) == 6  # one callback per stream entry
    first = m.sync_msg(None, tokens[-1], 2, None, KF, now)
    assert [x["text"]["content"] for x in first["msg_list"]] == ["m0", "m1"]  # older than 3 days: gone
    assert first["has_more"] == 1
    rest = m.sync_msg(first["next_cursor"], tokens[-1], 1000, None, KF, now)
    assert [x["text"]["content"] for x in rest["msg_list"]] == ["m2", "m3", "m4"] and rest["has_more"] == 0
    again = m.sync_msg(first["next_cursor"], tokens[-1], 1000, None, KF, now)  # cursors can be re-read
    assert [x["text"]["content"] for x in again["msg_list"]] == ["m2", "m3", "m4"]
    tail = m.sync_msg(rest["next_cursor"], tokens[-1], 5000, None, KF, now)  # limit above 1000 is capped
    assert tail["msg_list"] == [] and tail["has_more"] == 0
    assert m.sync_msg("bogus", tokens[-1], 10, None, KF, now)["errcode"] == 40058
    assert m.sync_msg(None, tokens[-1], 10, None, None, now)["errcode"] == 95000
    assert m.sync_msg(None, tokens[-1], 10, None, "wkNOPE", now)["errcode"] == 95004


def test_sync_tokens_expire_and_belong_to_one_account() -> None:
    m = new_model(sync_untokened_per_minute=2)
    m.add_account("other", open_kfid="wkOTHER")
    m.customer_message(KF, "wmC", T0)
    tok = m.drain_outbox()[0].token
    assert m.sync_msg(None, tok, 10, None, "wkOTHER", T0)["errcode"] == 95007
    assert m.sync_msg(None, tok, 10, None, KF, T0 + 599)["errcode"] == 0
    assert m.sync_msg(None, tok, 10, None, KF, T0 + 600)["errcode"] == 95007
    assert m.sync_msg(None, None, 10, None, KF, T0 + 601)["errcode"] == 0
    assert m.sync_msg(None, None, 10, None, KF, T0 + 602)["errcode"] == 0
    assert m.sync_msg(None, None, 10, None, KF, T0 + 603)["errcode"] == 45009  # the strict limit


def test_events_carry_ids_inside_the_event() -> None:
    m = new_model()
    m.customer_enter(KF, "wmC", T0)
    m.set_servicer_status("alice", 1, T0, stop_type=1)
    entries = m.sync_msg(None, None, 10, None, KF, T0)["msg_list"]
    enter, status = entries
    assert "open_kfid" not in enter and "external_userid" not in enter
    assert enter["event"]["open_kfid"] == KF and enter["event"]["external_userid"] == "wmC"
    assert status["event"] == {
        "open_kfid": KF,
        "event_type": "servicer_status_change",
        "servicer_userid": "alice",
        "status": 2,  # event codes: 1 接待中, 2 停止接待 (the list says 0 / 1)
        "stop_type": 1,
    }
    assert m.list_servicers(KF)["servicer_list"][0] == {"userid": "alice", "status": 1, "stop_type": 1}
    assert m.set_servicer_status("alice", 1, T0, stop_type=1) == []  # no change, no event


def test_empty_pages_with_has_more() -> None:
    m = new_model(empty_page_every=2)
    for i in range(3):
        m.customer_message(KF, "wmC", T0 + i, f"m{i}")
    got: list[str] = []
    cursor = None
    for _ in range(10):
        page = m.sync_msg(cursor, None, 2, None, KF, T0 + 5)
        got += [x["text"]["content"] for x in page["msg_list"]]
        cursor = page["next_cursor"]
        if not page["has_more"]:
            break
    assert got == ["m0", "m1", "m2"]


# ---------------------------------------------------------------------------------------- tokens, privileges


def test_gettoken_same_token_until_expiry_or_revocation() -> None:
    m = new_model(token_expires_in=100)
    assert m.gettoken("x", m.secret, T0)["errcode"] == 40013
    assert m.gettoken(m.corpid, "wrong", T0)["errcode"] == 40001
    a = token(m, T0)
    assert token(m, T0 + 50) == a  # WeCom: the same token while it is valid
    assert m.gettoken(m.corpid, m.secret, T0 + 50)["expires_in"] == 50
    assert m.check_call("cgi-bin/kf/sync_msg", a, T0 + 100)["errcode"] == 42001
    m.options.expired_token_errcode = 40014
    assert m.check_call("cgi-bin/kf/sync_msg", a, T0 + 100)["errcode"] == 40014
    b = token(m, T0 + 100)
    assert b != a
    assert m.revoke_token()
    assert m.check_call("cgi-bin/kf/sync_msg", b, T0 + 101)["errcode"] == 40014
    assert token(m, T0 + 101) not in (a, b)
    assert m.check_call("cgi-bin/kf/sync_msg", None, T0)["errcode"] == 41001


def test_unmanaged_account_answers_48002_but_lists() -> None:
    m = new_model()
    m.customer_message(KF, "wmC", T0)
    m.set_manage_privilege(KF, False)
    assert m.list_accounts(None, None)["account_list"][0]["manage_privilege"] is False
    assert m.list_servicers(KF)["errcode"] == 0
    for answer in (
        m.trans(KF, "wmC", 2, None, T0),
        m.get_state(KF, "wmC", T0),
        m.sync_msg(None, None, 10, None, KF, T0),
        m.send_msg("wmC", KF, None, "text", {"content": "x"}, T0),
    ):
        assert answer["errcode"] == 48002


def test_account_list_paging() -> None:
    m = WeComModel("wwcorp000001", "sec")
    ids = [m.add_account(f"kf{i}") for i in range(5)]
    assert [a["open_kfid"] for a in m.list_accounts(2, 2)["account_list"]] == ids[2:4]
    assert m.list_accounts(0, 101)["errcode"] == 40058
    assert m.list_accounts(-1, 10)["errcode"] == 40058
    assert all(i.startswith("wk") and len(i) == 32 for i in ids)
