"""Values the core exchanges with the outside: agent rows from WeChat, read-only views for policies.

Everything here is an immutable value: attrs ``@frozen`` classes, and ``WaitingView``, a NamedTuple
because the engine builds one per routing attempt (a positional tuple is built about four times faster
than a frozen attrs instance). The engine's own mutable bookkeeping lives in ``pool.py`` and
``engine.py`` and is never handed out.
"""

from __future__ import annotations

import enum
import re
from typing import NamedTuple

from attrs import field, frozen

from kfrouter.router.core.errors import CoreError

# kf_account is "prefix@wechat_id"; WeChat's own limits are prefix <= 10 [A-Za-z0-9_], id <= 30 (spec §1.7).
# The id is checked leniently (WeChat IDs have had several character rules over the years), but never has
# blanks, a second '@' or a '/' (the admin API puts accounts in URL paths).
KF_PREFIX_RE = re.compile(r"[A-Za-z0-9_]{1,10}")
KF_ACCOUNT_RE = re.compile(KF_PREFIX_RE.pattern + r"@[^\s@/]{1,30}")


def _non_negative(name: str):  # type: ignore[no-untyped-def]
    def check(_inst: object, _attr: object, value: int) -> None:
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise CoreError(f"{name} must be an integer >= 0, got {value!r}")

    return check


def _account(_inst: object, _attr: object, value: str) -> None:
    if not isinstance(value, str) or not value:
        raise CoreError(f"kf_account must be a non-empty string, got {value!r}")


@frozen(kw_only=True)
class AgentRow:
    """One row of ``getonlinekflist`` (validated), optionally enriched from ``getkflist``.

    ``status``: WeChat's online status; 0 is offline, any non-zero value (new style 1, legacy bitmask
    1/2/3) is online. ``auto_accept``: WeChat's per-agent auto-accept limit, 0 when not reported.
    """

    kf_account: str = field(validator=_account)
    status: int = field(validator=_non_negative("status"))
    accepted_case: int = field(default=0, validator=_non_negative("accepted_case"))
    auto_accept: int = field(default=0, validator=_non_negative("auto_accept"))
    kf_id: str = ""
    nickname: str = ""

    @property
    def online(self) -> bool:
        return self.status != 0


@frozen(kw_only=True)
class AgentView:
    """A read-only snapshot of one agent as the engine sees it."""

    kf_account: str
    nickname: str
    online: bool
    status: int
    paused: bool
    groups: frozenset[str]
    tags: frozenset[str]
    capacity: int
    sessions: int  # open sessions (WeChat's accepted_case, adjusted by events since)
    reserved: int  # pending reservations
    last_assigned_at: float  # -inf when never assigned
    skills: tuple[tuple[str, float], ...] = ()  # (group, proficiency in (0, 1]), sorted; unlisted: 1.0

    def proficiency(self, group: str | None) -> float:
        """How well this agent serves customers of ``group``: its ``skills`` entry, else 1.0."""
        for g, p in self.skills:
            if g == group:
                return p
        return 1.0

    @property
    def load(self) -> int:
        return self.sessions + self.reserved

    @property
    def free(self) -> bool:
        return self.online and not self.paused and self.load < self.capacity


class CustomerState(enum.Enum):
    WAITING = "waiting"  # in the queue
    RESERVED = "reserved"  # a CreateSession is in flight
    IN_SESSION = "in_session"  # WeChat confirmed a session
    GONE = "gone"  # served and closed, or left; see Engine.gone_reason()
    UNKNOWN = "unknown"


class WaitingView(NamedTuple):
    """What a policy may know about the customer it routes."""

    openid: str
    group: str | None
    priority: int
    arrived_at: float
    preferred_agent: str | None
    preferred_until: float = float("-inf")  # the customer waits for preferred_agent alone until then
    avoid: frozenset[str] = frozenset()  # agents this customer must not be offered to right now
    tags: frozenset[str] = frozenset()
    last_agent: str | None = None  # who served this customer last (customer history), if anyone
    last_served_at: float | None = None
    scope: tuple[str | None, ...] = (None,)  # groups allowed now, in order; (None,) means any agent


waiting_view = WaitingView  # the engine's name for it
