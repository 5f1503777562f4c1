"""Customer notifications while waiting: a pure planner that turns queue events into ``SendText`` commands.

Rules:

- WeChat lets an Official Account send 5 customer-service messages within 48 h of the user's last
  message (spec §6.1); each new user message re-opens the window. kfrouter spends at most
  ``window_quota - reserve_for_agent`` of them per window (default 5 - 3 = 2), so the agent always keeps
  at least 3, and at most ``max_per_customer`` (default 2) per waiting spell.
- A 45015 (outside the window / unfollowed) or 45047 (quota used up) answer closes the customer's window
  until their next message; the failed text is never retried, and nothing else is sent meanwhile. The
  same holds for answers that mean the user cannot be messaged at all (43004, 43019, 48002).
- An updated estimate is sent only when it changed materially against what the customer was told
  (allowing for the time that passed since): by at least ``eta_change_ratio`` *and* ``eta_change_s``.
- Templates: Chinese (default) or English, overridable per kind; fields are checked when the config is
  built, so a typo fails at start-up, not when the first customer waits. ``KINDS`` and ``FIELDS`` are the
  one set of message kinds and placeholders: ``[notify.templates]`` in ``kfrouter.toml`` is validated
  against them and its texts reach this planner unchanged (docs/config.md lists every placeholder).

Pure: time is the ``now`` argument; the caller sends the texts and reports failures with
``on_send_failed``. Memory: one small record per customer with an open window or a waiting spell;
expired records are dropped as the planner goes.
"""

from __future__ import annotations

import math
import string
from collections import OrderedDict
from collections.abc import Callable, Mapping

from attrs import field, frozen

from kfrouter.router.core.commands import SendText
from kfrouter.router.core.errors import ConfigError, CoreError
from kfrouter.router.core.estimate import Estimate

# errcodes after which nothing more can reach the user until they write again (spec §3, §6.1)
ERR_WINDOW_CLOSED = 45015
ERR_QUOTA_USED = 45047
ERR_CANNOT_MESSAGE = frozenset({ERR_WINDOW_CLOSED, ERR_QUOTA_USED, 43004, 43019, 48002})

KINDS = ("queued", "eta", "assigned", "assigned_anonymous", "cancelled", "preferred")
_WAITING_FIELDS = frozenset({"position", "ahead", "wait", "eta_min", "group", "cancel"})
FIELDS: Mapping[str, frozenset[str]] = {
    "queued": _WAITING_FIELDS,  # joined the queue
    "eta": _WAITING_FIELDS,  # the estimate moved materially
    "preferred": frozenset({"agent", "wait", "eta_min", "fallback", "group", "cancel"}),  # chose a busy agent
    "assigned": frozenset({"agent", "group"}),  # an agent took the customer (also after a move)
    "assigned_anonymous": frozenset({"group"}),  # ... an agent without a display name
    "cancelled": frozenset({"group"}),  # the customer left the queue
}
"""The placeholders each kind may use: ``{position}`` the customer's 1-based place in their group's queue,
``{ahead}`` customers ahead of them, ``{wait}`` the estimate as words ("约 5 分钟"), ``{eta_min}`` the
estimate in whole minutes (rounded up, at least 1; "?" when unknown), ``{agent}`` the agent's display
name, ``{fallback}`` how long a customer waits for the agent they chose before another may take them
(whole minutes rounded up: "2 分钟"),
``{group}`` the customer's group ("" when none), ``{cancel}`` the first cancel keyword."""

TEMPLATES: Mapping[str, Mapping[str, str]] = {
    "zh": {
        "queued": "您已进入人工客服排队，当前排在第 {position} 位，预计等待{wait}。客服接入后会立即回复您，请勿离开。",
        "eta": "排队进度更新：预计还需等待{wait}。",
        "preferred": "您选择的客服 {agent} 正在忙，预计等待{wait}。如 {fallback}内仍未接入，将为您安排其他客服。",
        "assigned": "客服 {agent} 正在为您服务",
        "assigned_anonymous": "客服正在为您服务",
        "cancelled": "您的人工客服排队已取消。如仍需帮助，请重新发送消息。",
    },
    "en": {
        "queued": (
            "You are number {position} in the queue for a human agent. Estimated wait: {wait}. "
            "An agent will reply here as soon as one is free."
        ),
        "eta": "Queue update: estimated remaining wait {wait}.",
        "preferred": (
            "{agent}, the agent you chose, is busy: estimated wait {wait}. "
            "If they cannot take you within {fallback}, another agent will."
        ),
        "assigned": "Agent {agent} is now serving you.",
        "assigned_anonymous": "An agent is now serving you.",
        "cancelled": "Your place in the queue has been cancelled. Send us a message if you still need help.",
    },
}

# Appended to the built-in "queued" and "preferred" texts when a cancel keyword is configured.
CANCEL_HINT: Mapping[str, str] = {
    "zh": "回复“{cancel}”可取消排队。",
    "en": ' Reply "{cancel}" to leave the queue.',
}
_HINTED = frozenset({"queued", "preferred"})


def format_wait(seconds: float, language: str) -> str:
    """A wait as a customer reads it: under a minute, minutes (to 5 above 10), hours and minutes."""
    zh = language == "zh"
    if not math.isfinite(seconds):
        return "暂时无法预估（目前没有客服在线）" if zh else "unknown (no agent is online right now)"
    if seconds < 60:
        return "不到 1 分钟" if zh else "less than a minute"
    minutes = round(seconds / 60.0)
    if minutes >= 10:
        minutes = 5 * round(minutes / 5)
    return ("约 " if zh else "about ") + _minutes_text(minutes, zh)


def format_within(seconds: float, language: str) -> str:
    """A deadline as a customer reads it (``{fallback}``: "如 2 分钟内"): whole minutes rounded up, at
    least 1, so the customer is never told a shorter time than the real one."""
    return _minutes_text(max(1, math.ceil(seconds / 60.0 - 1e-9)), language == "zh")


def _minutes_text(minutes: int, zh: bool) -> str:
    hours, rest = divmod(minutes, 60)
    if zh:
        if hours == 0:
            return f"{minutes} 分钟"
        return f"{hours} 小时" + (f" {rest} 分钟" if rest else "")
    if hours == 0:
        return f"{minutes} minute{'s' if minutes != 1 else ''}"
    text = f"{hours} hour{'s' if hours != 1 else ''}"
    return text + (f" {rest} minute{'s' if rest != 1 else ''}" if rest else "")


def eta_minutes(seconds: float) -> str:
    """``{eta_min}``: whole minutes, rounded up, at least 1; "?" when the wait cannot be estimated."""
    if not math.isfinite(seconds):
        return "?"
    return str(max(1, math.ceil(seconds / 60.0 - 1e-9)))


def _check_language(_inst: object, _attr: object, value: str) -> None:
    if value not in TEMPLATES:
        raise ConfigError(f"notify.language must be one of {sorted(TEMPLATES)}, got {value!r}")


def _check_templates(_inst: object, _attr: object, value: Mapping[str, str]) -> None:
    for kind, text in value.items():
        if kind not in FIELDS:
            raise ConfigError(f"notify.templates.{kind}: unknown message kind (expected one of {KINDS})")
        if not isinstance(text, str) or not text.strip():
            raise ConfigError(f"notify.templates.{kind} must be a non-empty string, got {text!r}")
        try:
            names = {f for _lit, f, _spec, _conv in string.Formatter().parse(text) if f is not None}
        except ValueError as exc:
            raise ConfigError(f"notify.templates.{kind}: bad template {text!r}: {exc}") from exc
        unknown = names - FIELDS[kind]
        if unknown:
            raise ConfigError(
                f"notify.templates.{kind}: unknown field(s) {sorted(unknown)} "
                f"(allowed: {sorted(FIELDS[kind]) or 'none'})"
            )


def _int_at_least(name: str, low: int) -> Callable[[object, object, int], None]:
    def check(_inst: object, _attr: object, value: int) -> None:
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ConfigError(f"notify.{name} must be an integer >= {low}, got {value!r}")

    return check


def _non_negative(name: str) -> Callable[[object, object, float], None]:
    def check(_inst: object, _attr: object, value: float) -> None:
        ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        if not ok or value < 0:
            raise ConfigError(f"notify.{name} must be a finite number >= 0, got {value!r}")

    return check


@frozen(kw_only=True)
class NotifyConfig:
    """What to tell waiting customers and how much of WeChat's message window to spend on it."""

    language: str = field(default="zh", validator=_check_language)
    templates: Mapping[str, str] = field(factory=dict, validator=_check_templates)
    max_per_customer: int = field(default=2, validator=_int_at_least("max_per_customer", 0))
    window_quota: int = field(default=5, validator=_int_at_least("window_quota", 1))
    window_s: float = field(default=48 * 3600.0, validator=_non_negative("window_s"))
    reserve_for_agent: int = field(default=3, validator=_int_at_least("reserve_for_agent", 0))
    eta_change_ratio: float = field(default=0.3, validator=_non_negative("eta_change_ratio"))
    eta_change_s: float = field(default=60.0, validator=_non_negative("eta_change_s"))
    eta_on_decrease: bool = True  # also tell customers when the wait got materially shorter
    keep_one_for_assigned: bool = False  # eta updates never use the spell's last message
    kinds: frozenset[str] = field(
        default=frozenset({"queued", "eta", "preferred", "assigned", "cancelled"}), converter=frozenset
    )
    cancel_word: str = ""  # ``{cancel}``: the first cancel keyword ("" adds no cancel hint to built-ins)

    def __attrs_post_init__(self) -> None:
        if self.reserve_for_agent > self.window_quota:
            raise ConfigError(
                f"notify.reserve_for_agent ({self.reserve_for_agent}) cannot exceed notify.window_quota "
                f"({self.window_quota})"
            )
        unknown = self.kinds - {"queued", "eta", "preferred", "assigned", "cancelled"}
        if unknown:
            raise ConfigError(f"notify.kinds: unknown kind(s) {sorted(unknown)}")
        if not isinstance(self.cancel_word, str):
            raise ConfigError(f"notify.cancel_word must be a string, got {self.cancel_word!r}")

    def template(self, kind: str) -> str:
        """The text for ``kind``: the override, else the built-in (with the cancel hint, if any)."""
        text = self.templates.get(kind)
        if text:
            return text
        text = TEMPLATES[self.language][kind]
        if kind in _HINTED and self.cancel_word:
            text += CANCEL_HINT[self.language]
        return text

    def render(self, kind: str, **values: object) -> str:
        """``template(kind)`` filled in; ``{cancel}`` comes from ``cancel_word``. Every placeholder of the
        kind must be given (``group`` defaults to "")."""
        values.setdefault("group", "")
        values["cancel"] = self.cancel_word
        return self.template(kind).format(**{k: v for k, v in values.items() if k in FIELDS[kind]})

    @property
    def per_window(self) -> int:
        """Messages kfrouter may send per 48 h window."""
        return self.window_quota - self.reserve_for_agent


class _Customer:
    __slots__ = (
        "closed",
        "group",
        "in_spell",
        "spell_sent",
        "told_at",
        "told_s",
        "window_sent",
        "window_start",
    )

    def __init__(self) -> None:
        self.window_start: float | None = None  # the user's last message
        self.window_sent = 0  # kfrouter's messages in the current window
        self.closed = False  # a 45015/45047-like answer: nothing until the user writes again
        self.in_spell = False
        self.spell_sent = 0
        self.told_s = math.nan  # the last wait we told them, and when
        self.told_at = math.nan
        self.group = ""  # ``{group}`` of the current spell


class Notifier:
    """Plans the texts sent to waiting customers. Not thread-safe: drive it beside the engine."""

    def __init__(self, config: NotifyConfig | None = None) -> None:
        self.config = config if config is not None else NotifyConfig()
        self._customers: OrderedDict[str, _Customer] = OrderedDict()  # least recently touched first

    # ================================================================= inputs

    def on_user_message(self, openid: str, now: float) -> None:
        """The user wrote to the account: WeChat's window (re)opens with a fresh quota."""
        c = self._touch(openid, now)
        c.window_start = now
        c.window_sent = 0
        c.closed = False

    def on_queued(
        self, openid: str, position: int, estimate: Estimate, now: float, *, group: str | None = None
    ) -> list[SendText]:
        """The customer joined the queue at 1-based ``position`` of ``group``. Starts a waiting spell (a
        customer put back in the queue while already waiting is treated as an estimate update). Texts go
        out only inside a window opened by ``on_user_message``: call it for every inbound message, before
        this."""
        if not isinstance(position, int) or isinstance(position, bool) or position < 1:
            raise CoreError(f"on_queued: position must be an integer >= 1, got {position!r}")
        c = self._touch(openid, now)
        if c.in_spell:
            return self.on_estimate(openid, estimate, now)
        self._start_spell(c, group)
        text = self.config.render(
            "queued", position=position, ahead=position - 1, group=c.group, **self._wait(estimate.seconds)
        )
        return self._send(c, openid, "queued", text, now, estimate.seconds)

    def on_preferred(
        self,
        openid: str,
        agent: str,
        seconds: float,
        fallback_s: float,
        now: float,
        *,
        group: str | None = None,
    ) -> list[SendText]:
        """The customer chose ``agent`` (a display name), who is busy: they wait about ``seconds`` for
        them, at most ``fallback_s`` before another agent may take them. Starts a waiting spell."""
        c = self._touch(openid, now)
        if c.in_spell:
            return []
        self._start_spell(c, group)
        fallback = format_within(fallback_s, self.config.language)
        text = self.config.render(
            "preferred", agent=agent, fallback=fallback, group=c.group, **self._wait(seconds)
        )
        return self._send(c, openid, "preferred", text, now, seconds)

    def on_moved(self, openid: str, now: float, *, group: str | None = None) -> None:
        """kfrouter closed the customer's session to give them another agent (their agent went offline, a
        supervisor moved them): a spell starts without a text, so the new agent is announced."""
        c = self._touch(openid, now)
        if not c.in_spell:
            self._start_spell(c, group)

    def on_estimate(self, openid: str, estimate: Estimate, now: float) -> list[SendText]:
        """A fresh estimate for a waiting customer: a text only when it changed materially."""
        c = self._customers.get(openid)
        if c is None or not c.in_spell or estimate.method == "assigned":
            return []
        self._touch(openid, now)
        if not self._material(c, estimate.seconds, now):
            return []
        if self.config.keep_one_for_assigned and c.spell_sent + 1 >= self.config.max_per_customer:
            return []
        ahead = max(0, estimate.ahead)
        text = self.config.render(
            "eta", position=ahead + 1, ahead=ahead, group=c.group, **self._wait(estimate.seconds)
        )
        return self._send(c, openid, "eta", text, now, estimate.seconds)

    def on_assigned(
        self, openid: str, nickname: str, now: float, *, kf_account: str | None = None
    ) -> list[SendText]:
        """An agent took the customer; ends the waiting spell. ``kf_account`` makes the text come from
        that agent (``customservice.kf_account``)."""
        c = self._customers.get(openid)
        if c is None or not c.in_spell:
            return []
        self._touch(openid, now)
        if nickname:
            text = self.config.render("assigned", agent=nickname, group=c.group)
        else:
            text = self.config.render("assigned_anonymous", group=c.group)
        out = self._send(c, openid, "assigned", text, now, math.nan, kf_account=kf_account)
        c.in_spell = False
        return out

    def on_cancelled(self, openid: str, now: float) -> list[SendText]:
        """kfrouter took the customer out of the queue (e.g. the queue closed); ends the spell."""
        c = self._customers.get(openid)
        if c is None or not c.in_spell:
            return []
        self._touch(openid, now)
        text = self.config.render("cancelled", group=c.group)
        out = self._send(c, openid, "cancelled", text, now, math.nan)
        c.in_spell = False
        return out

    def on_left(self, openid: str, now: float) -> None:
        """The customer gave up or was served elsewhere: the spell ends, nothing is sent."""
        c = self._customers.get(openid)
        if c is not None:
            c.in_spell = False
            self._touch(openid, now)

    def on_send_failed(self, openid: str, errcode: int) -> None:
        """A planned text failed. 45015/45047 (and 43004/43019/48002) close the customer's window until
        they write again; the text is never retried. Other failures change nothing (the slot stays spent:
        WeChat may have counted it)."""
        c = self._customers.get(openid)
        if c is not None and errcode in ERR_CANNOT_MESSAGE:
            c.closed = True

    # ================================================================= reading

    def remaining(self, openid: str, now: float) -> int:
        """How many more texts kfrouter may send this customer now (0 without an open window)."""
        c = self._customers.get(openid)
        return 0 if c is None else self._allowance(c, now)

    def __len__(self) -> int:
        return len(self._customers)

    # ================================================================= internals

    @staticmethod
    def _start_spell(c: _Customer, group: str | None) -> None:
        c.in_spell = True
        c.spell_sent = 0
        c.told_s = c.told_at = math.nan
        c.group = group or ""

    def _wait(self, seconds: float) -> dict[str, str]:
        return {"wait": format_wait(seconds, self.config.language), "eta_min": eta_minutes(seconds)}

    def _touch(self, openid: str, now: float) -> _Customer:
        c = self._customers.get(openid)
        if c is None:
            c = self._customers[openid] = _Customer()
        else:
            self._customers.move_to_end(openid)
        self._prune(now)
        return c

    def _prune(self, now: float) -> None:
        """Drop up to a few least recently touched records that no longer matter (amortised O(1))."""
        for _ in range(4):
            if len(self._customers) <= 1:
                return
            openid, c = next(iter(self._customers.items()))
            if c.in_spell or (c.window_start is not None and now - c.window_start < self.config.window_s):
                return
            del self._customers[openid]

    def _allowance(self, c: _Customer, now: float) -> int:
        cfg = self.config
        if c.closed or c.window_start is None or now - c.window_start >= cfg.window_s:
            return 0
        spell_left = cfg.max_per_customer - c.spell_sent if c.in_spell else cfg.max_per_customer
        return max(0, min(cfg.per_window - c.window_sent, spell_left))

    def _material(self, c: _Customer, seconds: float, now: float) -> bool:
        if math.isnan(c.told_s):
            return True  # nothing told yet (the queued text was not sent or not wanted)
        told_left = max(0.0, c.told_s - (now - c.told_at)) if math.isfinite(c.told_s) else math.inf
        if math.isinf(told_left) or math.isinf(seconds):
            return math.isinf(told_left) != math.isinf(seconds)
        diff = seconds - told_left
        if diff < 0 and not self.config.eta_on_decrease:
            return False
        return abs(diff) >= self.config.eta_change_s and abs(diff) >= self.config.eta_change_ratio * told_left

    def _send(
        self,
        c: _Customer,
        openid: str,
        kind: str,
        text: str,
        now: float,
        told_s: float,
        *,
        kf_account: str | None = None,
    ) -> list[SendText]:
        if kind not in self.config.kinds or self._allowance(c, now) <= 0:
            return []
        c.window_sent += 1
        c.spell_sent += 1
        if not math.isnan(told_s):
            c.told_s, c.told_at = told_s, now
        return [SendText(openid=openid, text=text, kind=kind, kf_account=kf_account)]
