"""Inputs to the engine, named in the past tense: things that happened.

Every event is a frozen attrs value validated on construction, so a malformed event fails where it is
made, with a message naming the field. ``Engine.handle(event, now)`` consumes them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from attrs import field, frozen

from kfrouter.router.core.errors import CoreError
from kfrouter.router.core.model import AgentRow


def _openid(_inst: object, attr: object, value: str) -> None:
    if not isinstance(value, str) or not value:
        raise CoreError(f"{getattr(attr, 'name', 'openid')} must be a non-empty string, got {value!r}")


def _account(_inst: object, attr: object, value: str) -> None:
    if not isinstance(value, str) or not value:
        raise CoreError(f"{getattr(attr, 'name', 'kf_account')} must be a non-empty string, got {value!r}")


def _opt_account(_inst: object, attr: object, value: str | None) -> None:
    if value is not None:
        _account(_inst, attr, value)


def _int(_inst: object, attr: object, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise CoreError(f"{getattr(attr, 'name', 'value')} must be an integer, got {value!r}")


@frozen(kw_only=True)
class CustomerRequested:
    """A customer asks for a human: from a push (``source='push'``), from WeChat's wait list
    (``'waitlist'``), reloaded after a restart (``'restore'``) or from a trace (``'trace'``).

    A request for a customer who is already waiting, reserved or in a session is absorbed (the
    customer is never queued twice); ``arrived_at`` defaults to ``now``.
    """

    openid: str = field(validator=_openid)
    group: str | None = None
    priority: int = field(default=0, validator=_int)
    text: str = ""
    source: str = "push"
    preferred_agent: str | None = field(default=None, validator=_opt_account)
    tags: frozenset[str] = field(default=frozenset(), converter=frozenset)
    arrived_at: float | None = None


@frozen(kw_only=True)
class AgentsSeen:
    """Rows of ``getonlinekflist``. With ``complete=True`` (a full poll), known agents missing from the
    rows are offline; with ``complete=False`` only the listed agents are updated."""

    rows: tuple[AgentRow, ...] = field(converter=tuple)
    complete: bool = True


@frozen(kw_only=True)
class AgentSessionsSeen:
    """``getsessionlist`` for one agent: the customers WeChat says this agent serves right now."""

    kf_account: str = field(validator=_account)
    openids: tuple[str, ...] = field(converter=tuple)


@frozen(kw_only=True)
class SessionCreated:
    """A session exists between ``openid`` and ``kf_account``: ``kfsession/create`` answered 0
    (``source='api'``), a ``kf_create_session`` push arrived (``'push'``) or a poll found it (``'poll'``)."""

    openid: str = field(validator=_openid)
    kf_account: str = field(validator=_account)
    source: str = "push"


@frozen(kw_only=True)
class SessionClosed:
    """``kf_close_session``: the agent (or WeChat's 30-minute timeout, or we) closed the session."""

    openid: str = field(validator=_openid)
    kf_account: str = field(validator=_account)


@frozen(kw_only=True)
class SessionSwitched:
    """``kf_switch_session``: an agent handed the customer to another agent in their own client."""

    openid: str = field(validator=_openid)
    from_account: str = field(validator=_account)
    to_account: str = field(validator=_account)


ERR_SERVED_BY_OTHER = 65414
"""``CreateFailed.errcode`` when another agent already serves the customer (the reservation is superseded)."""


@frozen(kw_only=True)
class CreateFailed:
    """``kfsession/create`` failed with WeChat's ``errcode`` (or a local code: -2 timeout / network)."""

    openid: str = field(validator=_openid)
    kf_account: str = field(validator=_account)
    errcode: int = field(validator=_int)
    errmsg: str = ""


@frozen(kw_only=True)
class CustomerLeft:
    """A waiting or reserved customer gave up (``reason``: 'patience', 'cancelled', ...)."""

    openid: str = field(validator=_openid)
    reason: str = "gave_up"


def _opt_groups(value: Iterable[str] | None) -> frozenset[str] | None:
    if value is None:
        return None
    if isinstance(value, str) or not all(isinstance(g, str) and g for g in value):
        raise CoreError(f"groups must be a collection of non-empty strings, got {value!r}")
    return frozenset(value)


def _opt_capacity(_inst: object, _attr: object, value: int | None) -> None:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise CoreError(f"max_sessions must be an integer >= 1 or None, got {value!r}")


def _opt_skills(value: object) -> tuple[tuple[str, float], ...] | None:
    """``{group: proficiency}`` or (group, proficiency) pairs → sorted pairs, each proficiency in (0, 1]."""
    if value is None:
        return None
    pairs: Iterable[Any] = value.items() if isinstance(value, dict) else value  # type: ignore[assignment]
    out: list[tuple[Any, Any]] = []
    try:
        for group, proficiency in pairs:
            out.append((group, proficiency))
        out.sort()
    except (TypeError, ValueError):
        raise CoreError(f"skills must map group names to proficiencies, got {value!r}") from None
    for g, p in out:
        if not isinstance(g, str) or not g:
            raise CoreError(f"skills: group names must be non-empty strings, got {g!r}")
        if not isinstance(p, int | float) or isinstance(p, bool) or not 0.0 < p <= 1.0:
            raise CoreError(f"skills: proficiency of {g!r} must be a number in (0, 1], got {p!r}")
    return tuple((g, float(p)) for g, p in out)


@frozen(kw_only=True)
class AgentConfigured:
    """Local settings for an agent; ``None`` leaves a setting unchanged. Creates the agent (offline)
    if the engine has not seen it yet. ``max_sessions=0`` is refused: pause the agent instead.
    ``clear_max_sessions`` drops a local limit so WeChat's auto_accept or the default applies.
    ``skills``: the agent's proficiency per group, in (0, 1] (a group not listed: 1.0); policies read it
    through ``AgentView.proficiency``."""

    kf_account: str = field(validator=_account)
    groups: frozenset[str] | None = field(default=None, converter=_opt_groups)
    max_sessions: int | None = field(default=None, validator=_opt_capacity)
    clear_max_sessions: bool = False
    paused: bool | None = None
    nickname: str | None = None
    tags: frozenset[str] | None = field(default=None, converter=_opt_groups)
    skills: tuple[tuple[str, float], ...] | None = field(default=None, converter=_opt_skills)


@frozen(kw_only=True)
class CloseFailed:
    """``kfsession/close`` failed with WeChat's ``errcode`` (65413: there was no session any more)."""

    openid: str = field(validator=_openid)
    kf_account: str = field(validator=_account)
    errcode: int = field(validator=_int)
    errmsg: str = ""


@frozen(kw_only=True)
class ReassignRequested:
    """Move a customer in session to another agent (``to_account``, or whoever the policy picks): the
    engine closes the session first and routes the customer again only once WeChat confirms the close,
    so a customer never has two sessions."""

    openid: str = field(validator=_openid)
    to_account: str | None = field(default=None, validator=_opt_account)


@frozen(kw_only=True)
class AgentRemoved:
    """The kf account was deleted. Its reservations are released; the agent is forgotten."""

    kf_account: str = field(validator=_account)


Event = (
    CustomerRequested
    | AgentsSeen
    | AgentSessionsSeen
    | SessionCreated
    | SessionClosed
    | SessionSwitched
    | CreateFailed
    | CustomerLeft
    | AgentConfigured
    | AgentRemoved
    | CloseFailed
    | ReassignRequested
)
