"""Recorded traffic, read from a kfrouter SQLite database without ever writing to it.

``read_traffic(path, since, until)`` returns what ``kfrouter report`` and the supervisor page's history
charts are computed from: the cases of the session log (one per request for a human), the agents'
online/offline changes and the notifications sent. The tables are the store's (router/edges/store.py,
``MIGRATIONS``); this module only reads them.

Rules of this module:

- **Read-only, never in the writer's way.** The file is opened with the ``file:...?mode=ro`` URI: this
  connection cannot write, migrate or change the journal mode. The store runs in WAL mode, where a reader
  never blocks the daemon's writer and the writer never blocks a reader; everything is read in one
  ``BEGIN`` (deferred: a read snapshot, no lock taken), so the numbers agree with each other even while the
  daemon writes.
- **Refuse what is not a kfrouter database**, with a message naming the file: a missing file, a file that
  is not SQLite, a schema newer than this code, missing tables.
- **Only the columns needed**, as small named records (``Case``, ``AgentChange``, ``Notice``): a report
  over 100,000 customers must stay well under a second here.
- Cases overlapping the window are returned: requested in ``[since, until)``, or requested up to
  ``SPAN_LOOKBACK_S`` before ``since`` (sessions running into the window), or still open. Agent changes
  are every change before ``until`` (an agent's state at ``since`` may come from long before).
- Times are seconds since the epoch, as the daemon's clock wrote them; nothing here reads the clock.
"""

from __future__ import annotations

import json
import math
import sqlite3
from pathlib import Path
from typing import NamedTuple
from urllib.parse import quote

from kfrouter.router.edges.store import SCHEMA_VERSION

SPAN_LOOKBACK_S = 86400.0  # cases requested this long before ``since`` may still have a session in the window
NOTICE_KIND = "notified"  # events of this kind record a message sent to a waiting customer
AGENT_KINDS = ("agent_online", "agent_offline")
_TABLES = frozenset({"sessions", "events", "agents"})
_BUSY_TIMEOUT_S = 5.0  # only WAL recovery after a crash can make a reader wait


class TrafficError(Exception):
    """The database cannot be read as a kfrouter store; the message names the file and why."""


class Case(NamedTuple):
    """One request for a human (a row of the store's ``sessions`` table)."""

    id: int
    openid: str
    group: str | None
    requested_at: float
    kf_account: str | None
    started_at: float | None
    ended_at: float | None
    outcome: str | None  # None while open; 'served', 'superseded' or why the customer left
    direct: bool  # a session kfrouter did not route (agent-initiated, WeChat's own queue): no wait to count


class AgentChange(NamedTuple):
    """An ``agent_online`` / ``agent_offline`` entry of the input log."""

    t: float
    agent: str
    online: bool
    groups: tuple[str, ...]
    capacity: int | None


class Notice(NamedTuple):
    """A message sent to a customer (queue place, estimate, ...): a ``notified`` entry of the input log."""

    t: float
    openid: str
    kind: str


class Traffic(NamedTuple):
    path: str
    since: float
    until: float
    cases: list[Case]  # ordered by requested_at, id
    agent_changes: list[AgentChange]  # ordered by t
    notices: list[Notice]  # ordered by t, in [since, until)
    first_at: float | None  # earliest request in the whole database (None: no case at all)
    last_at: float | None  # latest time written in the session log or the input log


def connect_readonly(path: str | Path) -> sqlite3.Connection:
    """A read-only connection to the kfrouter database at ``path``; ``TrafficError`` if it is not one."""
    p = Path(path)
    if not p.exists():
        raise TrafficError(f"{p}: no such file (expected a kfrouter SQLite database, [store] path)")
    if not p.is_file():
        raise TrafficError(f"{p}: not a file (expected a kfrouter SQLite database)")
    uri = f"file:{quote(str(p.resolve()))}?mode=ro"
    try:
        db = sqlite3.connect(uri, uri=True, timeout=_BUSY_TIMEOUT_S, isolation_level=None)
    except sqlite3.Error as exc:
        raise TrafficError(f"{p}: cannot open the database read-only: {exc}") from None
    try:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.DatabaseError as exc:
        db.close()
        raise TrafficError(f"{p}: not a kfrouter database ({exc})") from None
    if version > SCHEMA_VERSION:
        db.close()
        raise TrafficError(
            f"{p}: database schema version {version} is newer than this kfrouter reads ({SCHEMA_VERSION}); "
            "upgrade kfrouter"
        )
    missing = sorted(_TABLES - tables)
    if version < 1 or missing:
        db.close()
        what = f"missing table(s) {', '.join(missing)}" if missing else "schema version 0"
        raise TrafficError(f"{p}: not a kfrouter database ({what})")
    return db


def read_traffic(path: str | Path, since: float | None = None, until: float | None = None) -> Traffic:
    """Everything needed to report on ``[since, until)`` (None: from the first case / up to the last write),
    read in one snapshot."""
    lo = -math.inf if since is None else _finite("since", since)
    hi = math.inf if until is None else _finite("until", until)
    if lo > hi:
        raise TrafficError(f"since ({since}) is after until ({until})")
    db = connect_readonly(path)
    try:
        db.execute("BEGIN")
        try:
            first_at, last_at = _bounds(db)
            cases = _cases(db, lo, hi)
            changes = _agent_changes(db, hi)
            notices = _notices(db, lo, hi)
        finally:
            db.execute("COMMIT")
    except sqlite3.DatabaseError as exc:
        raise TrafficError(f"{path}: reading failed: {exc}") from None
    finally:
        db.close()
    return Traffic(
        path=str(path),
        since=lo,
        until=hi,
        cases=cases,
        agent_changes=changes,
        notices=notices,
        first_at=first_at,
        last_at=last_at,
    )


def _finite(name: str, value: float) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        raise TrafficError(f"{name} must be a finite number of seconds, got {value!r}")
    return float(value)


def _bounds(db: sqlite3.Connection) -> tuple[float | None, float | None]:
    first, last_req, last_start, last_end = db.execute(
        "SELECT min(requested_at), max(requested_at), max(started_at), max(ended_at) FROM sessions"
    ).fetchone()
    last_event = db.execute("SELECT max(t) FROM events").fetchone()[0]
    times = [t for t in (last_req, last_start, last_end, last_event) if t is not None]
    return first, (max(times) if times else None)


def _cases(db: sqlite3.Connection, lo: float, hi: float) -> list[Case]:
    start = lo - SPAN_LOOKBACK_S
    columns = (
        "id, openid, grp, requested_at, kf_account, started_at, ended_at, outcome, "
        "coalesce(requested_at = started_at AND grp IS NULL AND text = '' AND tags = '[]', 0)"
    )
    rows = db.execute(
        f"SELECT {columns} FROM sessions WHERE requested_at >= ? AND requested_at < ?", (start, hi)
    ).fetchall()
    # Open cases requested long before (a customer still waiting, or a session never seen to close): the
    # partial index sessions_open covers them.
    rows += db.execute(
        f"SELECT {columns} FROM sessions WHERE outcome IS NULL AND requested_at < ?", (start,)
    ).fetchall()
    rows.sort(key=lambda r: (r[3], r[0]))
    return [Case(a, b, c, d, e, f, g, h, i == 1) for a, b, c, d, e, f, g, h, i in rows]


def _agent_changes(db: sqlite3.Connection, hi: float) -> list[AgentChange]:
    out: list[AgentChange] = []
    for seq, t, kind, payload in db.execute(
        "SELECT seq, t, kind, payload FROM events WHERE kind IN (?, ?) AND t < ? ORDER BY t, seq",
        (*AGENT_KINDS, hi),
    ):
        data = _payload(seq, kind, payload)
        agent = data.get("agent")
        if not isinstance(agent, str) or not agent:
            raise TrafficError(f"input log entry {seq} ({kind}): needs a non-empty 'agent', got {data!r}")
        groups = data.get("groups") or []
        cap = data.get("max_sessions")
        if not isinstance(groups, list) or not all(isinstance(g, str) and g for g in groups):
            raise TrafficError(
                f"input log entry {seq} ({kind}): 'groups' must be a list of names, got {groups!r}"
            )
        if cap is not None and (not isinstance(cap, int) or isinstance(cap, bool) or cap < 1):
            raise TrafficError(
                f"input log entry {seq} ({kind}): 'max_sessions' must be an integer >= 1, got {cap!r}"
            )
        out.append(AgentChange(t, agent, kind == "agent_online", tuple(groups), cap))
    return out


def _notices(db: sqlite3.Connection, lo: float, hi: float) -> list[Notice]:
    # json_extract in SQLite: parsing 100,000 payloads in Python would take a third of a second
    rows = db.execute(
        "SELECT seq, t, json_valid(payload), json_extract(payload, '$.openid'), json_extract(payload, '$.kind') "
        "FROM events WHERE t >= ? AND t < ? AND kind = ? ORDER BY t, seq",
        (lo, hi, NOTICE_KIND),
    ).fetchall()
    out: list[Notice] = []
    for seq, t, valid, openid, kind in rows:
        if not valid:
            raise TrafficError(f"input log entry {seq} ({NOTICE_KIND}): payload is not a JSON object")
        if not isinstance(openid, str) or not openid:
            raise TrafficError(
                f"input log entry {seq} ({NOTICE_KIND}): needs a non-empty 'openid', got {openid!r}"
            )
        out.append(Notice(t, openid, kind if isinstance(kind, str) else ""))
    return out


def _payload(seq: int, kind: str, payload: str) -> dict[str, object]:
    try:
        data = json.loads(payload)
    except (TypeError, json.JSONDecodeError) as exc:
        raise TrafficError(f"input log entry {seq} ({kind}): payload is not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise TrafficError(f"input log entry {seq} ({kind}): payload must be a JSON object, got {data!r}")
    return data
