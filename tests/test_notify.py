"""Notifier: WeChat's message budget is never exceeded, closed windows are never retried, estimates are
re-sent only on material change, templates render in Chinese and English and are checked at start-up."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kfrouter.router.core import ConfigError, CoreError, SendText
from kfrouter.router.core.estimate import Estimate
from kfrouter.router.core.notify import Notifier, NotifyConfig, format_wait

H = 3600.0


def est(seconds: float) -> Estimate:
    return Estimate(seconds=seconds, method="queue", ahead=0, servers=1)


# ----------------------------------------------------------------------------------- templates


def test_chinese_templates_by_default() -> None:
    n = Notifier()
    n.on_user_message("o", 0.0)
    [queued] = n.on_queued("o", 3, est(300.0), 0.0)
    assert queued.kind == "queued" and queued.openid == "o"
    assert "第 3 位" in queued.text and "约 5 分钟" in queued.text
    [assigned] = n.on_assigned("o", "小王", 10.0, kf_account="kf1@acct")
    assert assigned.text == "客服 小王 正在为您服务"
    assert (assigned.kind, assigned.kf_account) == ("assigned", "kf1@acct")


def test_english_templates_and_overrides() -> None:
    n = Notifier(NotifyConfig(language="en", templates={"eta": "New estimate: {wait}!"}))
    n.on_user_message("o", 0.0)
    [queued] = n.on_queued("o", 1, est(30.0), 0.0)
    assert queued.text.startswith("You are number 1 in the queue") and "less than a minute" in queued.text
    [eta] = n.on_estimate("o", est(2 * H + 600), 1.0)
    assert eta.text == "New estimate: about 2 hours 10 minutes!"
    assert n.on_assigned("o", "Ann", 2.0) == []  # the spell's two messages are spent
    n2 = Notifier(NotifyConfig(language="en"))
    n2.on_user_message("p", 0.0)
    n2.on_queued("p", 2, est(90.0), 0.0)
    assert [t.text for t in n2.on_assigned("p", "", 5.0)] == ["An agent is now serving you."]


def test_cancelled_template() -> None:
    n = Notifier()
    n.on_user_message("o", 0.0)
    n.on_queued("o", 1, est(60.0), 0.0)
    [c] = n.on_cancelled("o", 5.0)
    assert c.kind == "cancelled" and "已取消" in c.text
    assert n.on_cancelled("o", 6.0) == []  # the spell is over


@pytest.mark.parametrize(
    ("seconds", "zh", "en"),
    [
        (0.0, "不到 1 分钟", "less than a minute"),
        (59.9, "不到 1 分钟", "less than a minute"),
        (60.0, "约 1 分钟", "about 1 minute"),
        (7 * 60 + 20, "约 7 分钟", "about 7 minutes"),
        (23 * 60, "约 25 分钟", "about 25 minutes"),
        (3600.0, "约 1 小时", "about 1 hour"),
        (95 * 60, "约 1 小时 35 分钟", "about 1 hour 35 minutes"),
        (math.inf, "暂时无法预估（目前没有客服在线）", "unknown (no agent is online right now)"),
    ],
)
def test_format_wait(seconds: float, zh: str, en: str) -> None:
    assert format_wait(seconds, "zh") == zh
    assert format_wait(seconds, "en") == en


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"language": "fr"}, "notify.language"),
        (
            {"templates": {"queued": "排在第 {pos} 位"}},
            r"notify.templates.queued: unknown field\(s\) \['pos'\]",
        ),
        ({"templates": {"assigned": "{nickname"}}, "notify.templates.assigned: bad template"),
        ({"templates": {"bye": "再见"}}, "notify.templates.bye: unknown message kind"),
        ({"templates": {"eta": "  "}}, "notify.templates.eta must be a non-empty string"),
        ({"reserve_for_agent": 6}, "reserve_for_agent"),
        ({"max_per_customer": -1}, "notify.max_per_customer"),
        ({"eta_change_s": math.nan}, "notify.eta_change_s"),
        ({"kinds": {"queued", "spam"}}, r"notify.kinds: unknown kind\(s\) \['spam'\]"),
    ],
)
def test_config_errors_name_the_key(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        NotifyConfig(**kwargs)  # type: ignore[arg-type]


def test_position_is_validated() -> None:
    with pytest.raises(CoreError, match="position must be an integer >= 1"):
        Notifier().on_queued("o", 0, est(1.0), 0.0)


# ----------------------------------------------------------------------------------- eta changes


def test_eta_update_only_on_material_change_allowing_for_elapsed_time() -> None:
    n = Notifier(NotifyConfig(max_per_customer=2, eta_change_ratio=0.3, eta_change_s=60.0))
    n.on_user_message("o", 0.0)
    assert len(n.on_queued("o", 5, est(600.0), 0.0)) == 1
    assert n.on_estimate("o", est(300.0), 300.0) == []  # 600 told, 300 passed: 300 left, as told
    assert n.on_estimate("o", est(350.0), 300.0) == []  # +50 s: under 60 s
    assert n.on_estimate("o", est(1000.0), 0.0 + 100.0) != []  # 500 left was told; +500 s and +100%


def test_small_absolute_change_or_small_ratio_is_not_material() -> None:
    n = Notifier(NotifyConfig(max_per_customer=5, reserve_for_agent=0))
    n.on_user_message("o", 0.0)
    n.on_queued("o", 1, est(100.0), 0.0)
    assert n.on_estimate("o", est(150.0), 0.0) == []  # +50%, but only 50 s
    n.on_user_message("p", 0.0)
    n.on_queued("p", 1, est(3000.0), 0.0)
    assert n.on_estimate("p", est(3500.0), 0.0) == []  # +500 s, but only 17%
    assert n.on_estimate("p", est(math.inf), 0.0) != []  # nobody online any more: material


def test_eta_decrease_can_be_muted_and_last_slot_kept_for_assignment() -> None:
    n = Notifier(NotifyConfig(eta_on_decrease=False))
    n.on_user_message("o", 0.0)
    n.on_queued("o", 1, est(1200.0), 0.0)
    assert n.on_estimate("o", est(100.0), 10.0) == []
    k = Notifier(NotifyConfig(keep_one_for_assigned=True))
    k.on_user_message("o", 0.0)
    k.on_queued("o", 1, est(100.0), 0.0)
    assert k.on_estimate("o", est(2000.0), 10.0) == []
    assert len(k.on_assigned("o", "小李", 20.0)) == 1


# ----------------------------------------------------------------------------------- budget


def test_budget_keeps_three_messages_of_the_window_for_the_agent() -> None:
    n = Notifier(NotifyConfig(max_per_customer=4))  # per spell 4, but per window only 5 - 3 = 2
    n.on_user_message("o", 0.0)
    sent = n.on_queued("o", 9, est(600.0), 0.0)
    sent += n.on_estimate("o", est(3000.0), 1.0)
    sent += n.on_estimate("o", est(9000.0), 2.0)
    sent += n.on_assigned("o", "小王", 3.0)
    assert [t.kind for t in sent] == ["queued", "eta"]
    assert n.remaining("o", 3.0) == 0
    n.on_user_message("o", 4.0)  # the user wrote again: a fresh window
    assert n.remaining("o", 4.0) == 2


def test_window_expires_after_48_hours_and_reopens_on_a_user_message() -> None:
    n = Notifier()
    n.on_user_message("o", 0.0)
    assert n.on_queued("o", 1, est(600.0), 48 * H) == []
    assert n.on_estimate("o", est(6000.0), 48 * H + 1) == []
    n.on_user_message("o", 48 * H + 2)
    assert [t.kind for t in n.on_estimate("o", est(6000.0), 48 * H + 3)] == ["eta"]


@pytest.mark.parametrize("errcode", [45015, 45047])
def test_closed_window_is_never_retried(errcode: int) -> None:
    n = Notifier(NotifyConfig(max_per_customer=2))
    n.on_user_message("o", 0.0)
    [first] = n.on_queued("o", 4, est(600.0), 0.0)
    n.on_send_failed("o", errcode)
    assert n.remaining("o", 1.0) == 0
    assert n.on_estimate("o", est(5000.0), 1.0) == []
    assert n.on_assigned("o", "小王", 2.0) == []
    n.on_queued("o", 1, est(60.0), 3.0)  # re-queued: still nothing
    assert n.remaining("o", 3.0) == 0
    # only a new message from the user re-opens the window; the failed text is not re-sent
    n.on_user_message("o", 10.0)
    n.on_queued("o", 2, est(60.0), 11.0)
    again = n.on_estimate("o", est(4000.0), 12.0)
    assert [t.kind for t in again] == ["eta"] and again[0].text != first.text


def test_other_failures_do_not_close_the_window() -> None:
    n = Notifier(NotifyConfig(max_per_customer=2))
    n.on_user_message("o", 0.0)
    n.on_queued("o", 4, est(600.0), 0.0)
    n.on_send_failed("o", -1)
    assert n.remaining("o", 1.0) == 1  # the slot stays spent (WeChat may have counted it)
    n.on_send_failed("nobody", 45015)  # unknown customer: ignored


def test_nothing_is_sent_without_a_window_opened_by_a_user_message() -> None:
    n = Notifier()
    assert n.on_queued("o", 1, est(60.0), 5.0) == []
    assert n.remaining("o", 5.0) == 0 and n.remaining("nobody", 5.0) == 0
    assert n.on_estimate("nobody", est(60.0), 5.0) == []
    assert n.on_assigned("nobody", "x", 5.0) == []


def test_idle_records_are_forgotten() -> None:
    n = Notifier()
    for i in range(100):
        n.on_user_message(f"o{i}", 0.0)
    n.on_user_message("late", 49 * H)
    n.on_user_message("later", 49 * H + 1)
    assert len(n) < 100


OPS = st.lists(
    st.tuples(
        st.sampled_from(["msg", "queued", "eta", "assigned", "cancelled", "left", "fail45047", "fail-1"]),
        st.sampled_from(["a", "b"]),
        st.floats(0.0, 30 * H),  # time step
        st.sampled_from([0.0, 30.0, 600.0, 4000.0, math.inf]),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(ops=OPS, max_per=st.integers(0, 4), reserve=st.integers(0, 5))
def test_budget_is_never_exceeded(
    ops: list[tuple[str, str, float, float]], max_per: int, reserve: int
) -> None:
    cfg = NotifyConfig(max_per_customer=max_per, reserve_for_agent=reserve)
    n = Notifier(cfg)
    now = 0.0
    window: dict[str, tuple[float, int]] = {}  # openid -> (window start, sent in window)
    spell: dict[str, int | None] = {}  # openid -> sent in current spell (None: not waiting)
    closed: set[str] = set()
    for op, o, step, seconds in ops:
        now += step
        out: list[SendText] = []
        if op == "msg":
            n.on_user_message(o, now)
            window[o] = (now, 0)
            closed.discard(o)
        elif op == "queued":
            if spell.get(o) is None:
                spell[o] = 0
            out = n.on_queued(o, 1, est(seconds), now)
        elif op == "eta":
            out = n.on_estimate(o, est(seconds), now)
        elif op == "assigned":
            out = n.on_assigned(o, "小王", now)
        elif op == "cancelled":
            out = n.on_cancelled(o, now)
        elif op == "left":
            n.on_left(o, now)
        else:
            n.on_send_failed(o, 45047 if op == "fail45047" else -1)
            if op == "fail45047":
                closed.add(o)
        for text in out:
            assert text.openid == o
            assert o not in closed, "sent after 45047"
            start, count = window[o]
            assert now - start < 48 * H, "sent outside the 48 h window"
            window[o] = (start, count + 1)
            assert count + 1 <= 5 - reserve, "ate into the agent's reserve"
            sent_in_spell = spell.get(o)
            assert sent_in_spell is not None, "sent to a customer who is not waiting"
            spell[o] = sent_in_spell + 1
            assert sent_in_spell + 1 <= max_per, "spell budget exceeded"
        if op in ("assigned", "cancelled", "left"):
            spell[o] = None


@pytest.mark.parametrize(
    ("language", "fallback_s", "phrase"),
    [
        ("zh", 90.0, "如 2 分钟内仍未接入"),
        ("zh", 89.99, "如 2 分钟内仍未接入"),  # a moment after the choice: the same deadline
        ("zh", 30.0, "如 1 分钟内仍未接入"),
        ("zh", 3600.0, "如 1 小时内仍未接入"),
        ("en", 90.0, "within 2 minutes, another"),
        ("en", 60.0, "within 1 minute, another"),
    ],
)
def test_the_fallback_deadline_is_never_understated(language: str, fallback_s: float, phrase: str) -> None:
    # Issue 15 item 8: preferred_wait_s = 90 read "预计等待约 2 分钟 ... 如约 1 分钟内仍未接入". The fallback is a
    # deadline: whole minutes rounded up, so the customer is never told less than the real wait.
    n = Notifier(NotifyConfig(language=language))
    n.on_user_message("o", 0.0)
    [text] = n.on_preferred("o", "Ann", 100.0, fallback_s, 0.0)
    assert phrase in text.text, text.text
