"""The store's values and errors, shared by the interface (``router.edges.store``) and its backends.

Rules of this module:

- Values are frozen and slotted; the store builds them from rows and never hands out a mutable row.
- Argument checks (``check_text``, ``check_time``, ...) raise ``StoreError`` naming the argument, the
  value and what was expected; the store calls them before it writes anything.
- ``StaleLease`` is the one error a fenced write raises when the database refused it: the writer's lease
  epoch is not the account's current one, or its lease expired.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Container, Iterable
from dataclasses import dataclass

from kfrouter.router.core import events as ev

# Account ids (appids) key lease rows and name PostgreSQL schemas: the config's rule (letters, digits,
# "_" or "-", at most 64). WeChat appids are "wx" and 16 hex digits; WeCom corp ids "ww" and 16.
APPID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")


class StoreError(Exception):
    """The database cannot be used (wrong schema version, not WAL, unreachable) or an argument is invalid."""


class StaleLease(StoreError):
    """A write refused by the database: the writer does not hold the account's current lease."""


@dataclass(frozen=True, slots=True)
class WaitingRow:
    openid: str
    group: str | None
    priority: int
    arrived_at: float
    text: str = ""
    preferred: str | None = None
    tags: tuple[str, ...] = ()

    def request(self, source: str, agents: Container[str]) -> ev.CustomerRequested:
        """The customer's request as kept here, handed to the engine again (``source``: why); the agent they
        asked for is dropped unless the engine still knows it (``agents``: its pool)."""
        return ev.CustomerRequested(
            openid=self.openid,
            group=self.group,
            priority=self.priority,
            text=self.text,
            source=source,
            preferred_agent=self.preferred if self.preferred and self.preferred in agents else None,
            tags=frozenset(self.tags),  # type: ignore[arg-type]  # (the event converts any iterable)
            arrived_at=self.arrived_at,
        )


@dataclass(frozen=True, slots=True)
class AgentSettings:
    """Settings made locally (admin API); ``None`` fields were never set here."""

    kf_account: str
    groups: tuple[str, ...] | None
    max_sessions: int | None
    paused: bool
    nickname: str | None
    tags: tuple[str, ...] | None
    updated_at: float


@dataclass(frozen=True, slots=True)
class Reservation:
    openid: str
    kf_account: str
    created_at: float


@dataclass(frozen=True, slots=True)
class HistoryRow:
    openid: str
    kf_account: str
    at: float


@dataclass(frozen=True, slots=True)
class SessionRow:
    """One request for a human, from ``requested_at`` to served/left."""

    id: int
    openid: str
    group: str | None
    priority: int
    text: str
    preferred: str | None
    tags: tuple[str, ...]
    requested_at: float
    kf_account: str | None
    started_at: float | None
    ended_at: float | None
    outcome: str | None


@dataclass(frozen=True, slots=True)
class StoredState:
    """Everything the daemon reloads after a restart. ``waiting`` is in queue order (priority, arrival);
    ``in_session`` maps openid -> (kf_account, started_at) for sessions not yet closed."""

    agents: dict[str, AgentSettings]
    waiting: list[WaitingRow]
    reservations: list[Reservation]
    history: dict[str, HistoryRow]
    in_session: dict[str, tuple[str, float]]


@dataclass(frozen=True, slots=True)
class ExportStats:
    arrivals: int
    served: int
    left: int
    open: int  # still waiting or in session: skipped
    agent_lines: int


@dataclass(frozen=True, slots=True)
class Lease:
    """An account's lease as the database granted it. Times are the DATABASE's clock (seconds since the
    epoch), the one clock every daemon shares: ``expires_at - granted_at`` is what is left of it as
    of the grant, whatever the local clock says. ``epoch`` grows by one at every change of tenure."""

    appid: str
    owner: str
    epoch: int
    expires_at: float
    granted_at: float

    @property
    def ttl_s(self) -> float:
        return self.expires_at - self.granted_at


@dataclass(frozen=True, slots=True)
class LeaseRow:
    """A lease row as it is now (any owner); ``live`` is False once it expired (database clock)."""

    appid: str
    owner: str
    epoch: int
    expires_at: float
    live: bool


@dataclass(frozen=True, slots=True)
class Member:
    """A daemon sharing the database, alive until ``expires_at`` (database clock) unless it beats again."""

    daemon_id: str
    expires_at: float
    started_at: float


@dataclass(frozen=True, slots=True)
class SharedPush:
    """A push received by a daemon that does not own the account, kept for the owner (shared inbox).
    ``raw`` is the verified, decrypted push XML; ``query`` the callback's query string (forwarding)."""

    id: int
    appid: str
    dedup_key: str
    raw: str
    query: str
    received_at: float
    received_by: str


@dataclass(frozen=True, slots=True)
class StoredToken:
    """An account's access token as its lease owner stored it (WeChat invalidates the previous token on
    each fetch, so one daemon fetches and every other one reads)."""

    appid: str
    access_token: str
    expires_at: float
    refreshed_at: float
    epoch: int


@dataclass(frozen=True, slots=True)
class StoredCounts:
    """An account's customers as its store has them (``router.edges.store_counts``): ``waiting`` in the
    queue (not being assigned: no reservation), ``sessions`` open with an agent — what its owner's engine
    counts, as far as it has committed."""

    waiting: int
    sessions: int


@dataclass(frozen=True, slots=True)
class CommitStats:
    """What the group-commit writer did so far: ``jobs`` committed or refused in ``batches`` transactions
    (one fsync each with SQLite ``synchronous=FULL``); ``largest`` batch."""

    batches: int
    jobs: int
    failed: int
    largest: int


# ---------------------------------------------------------------------------------------------- checks


def check_text(name: str, value: object) -> str:
    if not isinstance(value, str) or not value:
        raise StoreError(f"{name} must be a non-empty string, got {value!r}")
    return value


def check_time(name: str, value: object) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        raise StoreError(f"{name} must be a finite number of seconds, got {value!r}")
    return float(value)


def check_positive(name: str, value: object) -> float:
    t = check_time(name, value)
    if t <= 0:
        raise StoreError(f"{name} must be > 0 seconds, got {value!r}")
    return t


def check_int(name: str, value: object, *, lo: int | None = None) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or (lo is not None and value < lo):
        expected = "an integer" if lo is None else f"an integer >= {lo}"
        raise StoreError(f"{name} must be {expected}, got {value!r}")
    return value


def check_appid(value: object) -> str:
    if not isinstance(value, str) or not APPID_PATTERN.fullmatch(value):
        raise StoreError(f"appid must be 1-64 letters, digits, '_' or '-', got {value!r}")
    return value


def str_tuple(name: str, value: Iterable[str]) -> tuple[str, ...]:
    if isinstance(value, str):
        raise StoreError(f"{name} must be a collection of strings, got the string {value!r}")
    out = tuple(value)
    for v in out:
        check_text(name, v)
    return out


def dumps(value: object) -> str:
    """Compact, sorted, NaN-free JSON: how the store writes JSON columns."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True, allow_nan=False)


def tags_json(value: str | None) -> tuple[str, ...] | None:
    return None if value is None else tuple(json.loads(value))
