"""The durable state of one Official Account in SQLite: waiting customers, reservations, agent settings,
customer history, the session log, the input event log and processed-push keys.

Rules of this module:

- **One database file per Official Account (appid).** Rows carry no appid; a daemon serving several
  accounts opens one ``Store`` per account. Moving an account to another machine is moving one file.
- **Durable before "success".** After WeChat receives "success" it never sends that push again, so the
  webhook commits what the customer told us first. ``synchronous=FULL`` (the default) makes every commit
  reach the disk: with WAL, ``NORMAL`` only fsyncs at checkpoints, so a power cut or kernel crash may roll
  back the last commits — exactly the pushes WeChat will not resend. FULL costs one fsync per commit:
  on the development container one push step (claim key + add waiting + log input, one transaction) took
  3.3 ms with FULL against 0.28 ms with NORMAL (300 steps in a loop, files under /tmp). Pushes arrive at
  tens per second at most, so FULL is affordable. ``NORMAL`` is accepted for the simulator and benchmarks.
- **WAL journal**: readers (``kfrouter trace export`` on a live database) never block the writer.
- **One transaction per logical step.** Each public write is one transaction; ``with store.transaction():``
  groups several (e.g. claim the push key, add the waiting customer, log the input) into one commit.
  Nested ``transaction()`` blocks are savepoints.
- **Threads**: one connection guarded by a lock, so calls are serialised and safe from any thread. The
  intended use is from the event-loop thread directly (each call is a few SQL statements plus, for
  writes, one fsync) or from one dedicated worker thread; do not hold ``transaction()`` across an
  ``await``. The Python ``sqlite3`` statement cache (constant SQL text) makes statements prepared once.
- **Time is an argument** (seconds since the epoch, as the daemon's clock gives them); nothing here reads
  the clock.
- The schema is versioned with ``PRAGMA user_version`` and the ``MIGRATIONS`` list: migration *i* moves
  the database from version *i* to *i + 1*, each in its own transaction. A database newer than this code
  is refused.
"""

from __future__ import annotations

import json
import math
import sqlite3
import statistics
import threading
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

MIGRATIONS: tuple[str, ...] = (
    # 0 -> 1
    """
    CREATE TABLE agents (
        kf_account   TEXT PRIMARY KEY,
        groups       TEXT,              -- JSON array, NULL: not set locally (the config decides)
        max_sessions INTEGER,           -- NULL: not set locally
        paused       INTEGER NOT NULL DEFAULT 0,
        nickname     TEXT,
        tags         TEXT,              -- JSON array or NULL
        updated_at   REAL NOT NULL
    );
    CREATE TABLE waiting (
        openid     TEXT PRIMARY KEY,
        grp        TEXT,
        priority   INTEGER NOT NULL,
        arrived_at REAL NOT NULL,
        text       TEXT NOT NULL,
        preferred  TEXT,
        tags       TEXT NOT NULL        -- JSON array
    );
    CREATE TABLE reservations (
        openid     TEXT PRIMARY KEY,
        kf_account TEXT NOT NULL,
        created_at REAL NOT NULL
    );
    CREATE TABLE history (
        openid     TEXT PRIMARY KEY,
        kf_account TEXT NOT NULL,
        at         REAL NOT NULL
    );
    CREATE TABLE sessions (             -- one row per request for a human ("case")
        id           INTEGER PRIMARY KEY,
        openid       TEXT NOT NULL,
        grp          TEXT,
        priority     INTEGER NOT NULL,
        text         TEXT NOT NULL,
        preferred    TEXT,
        tags         TEXT NOT NULL,
        requested_at REAL NOT NULL,
        kf_account   TEXT,
        started_at   REAL,
        ended_at     REAL,
        outcome      TEXT               -- NULL while open; 'served' or why the customer left
    );
    CREATE UNIQUE INDEX sessions_open ON sessions(openid) WHERE outcome IS NULL;
    CREATE INDEX sessions_requested ON sessions(requested_at);
    CREATE TABLE events (
        seq     INTEGER PRIMARY KEY,
        t       REAL NOT NULL,
        kind    TEXT NOT NULL,
        payload TEXT NOT NULL           -- JSON object
    );
    CREATE INDEX events_t ON events(t);
    CREATE TABLE processed (
        dedup_key   TEXT PRIMARY KEY,
        answered_at REAL NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX processed_at ON processed(answered_at);
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)

_SYNCHRONOUS = ("FULL", "NORMAL")
_AGENT_EVENT_KINDS = ("agent_online", "agent_offline")
_MIN_DURATION_S = 0.001  # a trace needs service_s / patience_s > 0
_DEFAULT_SERVICE_S = 60.0  # imputed service time when an export has no served customer to learn from


class StoreError(Exception):
    """The database cannot be used (wrong schema version, not WAL) or an argument is invalid."""


@dataclass(frozen=True, slots=True)
class WaitingRow:
    openid: str
    group: str | None
    priority: int
    arrived_at: float
    text: str = ""
    preferred: str | None = None
    tags: tuple[str, ...] = ()


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


# ---------------------------------------------------------------------------------------------- checks


def _text(name: str, value: object) -> str:
    if not isinstance(value, str) or not value:
        raise StoreError(f"{name} must be a non-empty string, got {value!r}")
    return value


def _time(name: str, value: object) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        raise StoreError(f"{name} must be a finite number of seconds, got {value!r}")
    return float(value)


def _dumps(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True, allow_nan=False)


def _str_tuple(name: str, value: Iterable[str]) -> tuple[str, ...]:
    if isinstance(value, str):
        raise StoreError(f"{name} must be a collection of strings, got the string {value!r}")
    out = tuple(value)
    for v in out:
        _text(name, v)
    return out


def _tags_json(value: str | None) -> tuple[str, ...] | None:
    return None if value is None else tuple(json.loads(value))


# ---------------------------------------------------------------------------------------------- store


class Store:
    """The SQLite store of one Official Account. ``Store(path)`` opens (creating and migrating) it."""

    def __init__(self, path: str | Path, *, synchronous: str = "FULL") -> None:
        if synchronous not in _SYNCHRONOUS:
            raise StoreError(f"synchronous must be one of {_SYNCHRONOUS}, got {synchronous!r}")
        self.path = str(path)
        self._lock = threading.RLock()
        self._depth = 0
        # isolation_level=None: no implicit transactions, this class issues BEGIN/COMMIT itself.
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=5.0)
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: cannot open the database: {exc}") from None
        try:
            self._setup(synchronous)
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise StoreError(f"{self.path}: not a usable kfrouter database: {exc}") from None
        except BaseException:
            self._db.close()
            raise

    def _setup(self, synchronous: str) -> None:
        db = self._db
        mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode != "wal" and self.path != ":memory:":
            raise StoreError(f"{self.path}: could not switch to WAL journal mode (got {mode!r})")
        db.execute(f"PRAGMA synchronous={synchronous}")
        db.execute("PRAGMA foreign_keys=ON")
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path}: database schema version {version} is newer than this kfrouter supports "
                f"({SCHEMA_VERSION}); upgrade kfrouter"
            )
        for target in range(version + 1, SCHEMA_VERSION + 1):
            db.execute("BEGIN IMMEDIATE")
            try:
                for statement in _statements(MIGRATIONS[target - 1]):
                    db.execute(statement)
                db.execute(f"PRAGMA user_version={target}")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    # ---------------------------------------------------------------- lifecycle

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    @property
    def schema_version(self) -> int:
        with self._lock:
            version: int = self._db.execute("PRAGMA user_version").fetchone()[0]
            return version

    def pragma(self, name: str) -> Any:
        """Read one PRAGMA (``journal_mode``, ``synchronous``, ...), for checks and diagnostics."""
        if not name.replace("_", "").isalnum():
            raise StoreError(f"not a pragma name: {name!r}")
        with self._lock:
            return self._db.execute(f"PRAGMA {name}").fetchone()[0]

    @contextmanager
    def transaction(self, *, write: bool = True) -> Iterator[None]:
        """One atomic unit: committed when the block ends, rolled back if it raises. Nested blocks are
        savepoints. ``write=False`` starts a read snapshot (``BEGIN DEFERRED``)."""
        with self._lock:
            depth = self._depth
            if depth == 0:
                self._db.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            else:
                self._db.execute(f"SAVEPOINT sp{depth}")
            self._depth += 1
            try:
                yield
            except BaseException:
                self._depth -= 1
                if depth == 0:
                    self._db.execute("ROLLBACK")
                else:
                    self._db.execute(f"ROLLBACK TO sp{depth}")
                    self._db.execute(f"RELEASE sp{depth}")
                raise
            self._depth -= 1
            self._db.execute("COMMIT" if depth == 0 else f"RELEASE sp{depth}")

    # ---------------------------------------------------------------- processed pushes

    def claim_push(self, dedup_key: str, answered_at: float) -> bool:
        """Record that the push ``dedup_key`` is being handled; ``False`` if it was already (a retry).
        Do it in the same transaction as what the push changes, so a crash leaves both or neither."""
        _text("dedup_key", dedup_key)
        t = _time("answered_at", answered_at)
        with self.transaction():
            cur = self._db.execute(
                "INSERT OR IGNORE INTO processed(dedup_key, answered_at) VALUES (?, ?)", (dedup_key, t)
            )
            return cur.rowcount == 1

    def is_processed(self, dedup_key: str) -> bool:
        with self._lock:
            row = self._db.execute("SELECT 1 FROM processed WHERE dedup_key = ?", (dedup_key,)).fetchone()
            return row is not None

    def prune_processed(self, before: float) -> int:
        """Forget push keys answered before ``before``; returns how many."""
        with self.transaction():
            return self._db.execute(
                "DELETE FROM processed WHERE answered_at < ?", (_time("before", before),)
            ).rowcount

    # ---------------------------------------------------------------- waiting customers

    def add_waiting(self, row: WaitingRow) -> bool:
        """A customer asks for a human: queue them and open their case in the session log. ``False`` (and
        nothing written) if they are already waiting."""
        _text("openid", row.openid)
        t = _time("arrived_at", row.arrived_at)
        if not isinstance(row.priority, int) or isinstance(row.priority, bool):
            raise StoreError(f"priority must be an integer, got {row.priority!r}")
        tags = _dumps(list(_str_tuple("tags", row.tags)))
        with self.transaction():
            cur = self._db.execute(
                "INSERT OR IGNORE INTO waiting(openid, grp, priority, arrived_at, text, preferred, tags) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (row.openid, row.group, row.priority, t, row.text, row.preferred, tags),
            )
            if cur.rowcount == 0:
                return False
            # One open case per customer: a session we never saw close has ended by now (WeChat pushes a
            # customer's messages to us only outside a session); any other open case is superseded.
            self._db.execute(
                "UPDATE sessions SET outcome = CASE WHEN started_at IS NULL THEN 'superseded' ELSE 'served' END, "
                "ended_at = ? WHERE openid = ? AND outcome IS NULL",
                (t, row.openid),
            )
            self._db.execute(
                "INSERT INTO sessions(openid, grp, priority, text, preferred, tags, requested_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (row.openid, row.group, row.priority, row.text, row.preferred, tags, t),
            )
            return True

    def remove_waiting(self, openid: str, at: float, reason: str = "left") -> bool:
        """A waiting customer gave up (``reason``: 'left', 'cancelled', 'patience', ...): drop them and their
        reservation and close their case. ``False`` if they were not waiting."""
        _text("openid", openid)
        _text("reason", reason)
        if reason == "served":
            raise StoreError("reason 'served' is recorded by record_session_end, not remove_waiting")
        t = _time("at", at)
        with self.transaction():
            gone = self._db.execute("DELETE FROM waiting WHERE openid = ?", (openid,)).rowcount
            self._db.execute("DELETE FROM reservations WHERE openid = ?", (openid,))
            self._db.execute(
                "UPDATE sessions SET outcome = ?, ended_at = ? "
                "WHERE openid = ? AND outcome IS NULL AND started_at IS NULL",
                (reason, t, openid),
            )
            return gone == 1

    # ---------------------------------------------------------------- reservations

    def add_reservation(self, openid: str, kf_account: str, created_at: float) -> None:
        """A ``CreateSession`` is in flight for ``openid`` with ``kf_account`` (replaces an older one)."""
        row = (_text("openid", openid), _text("kf_account", kf_account), _time("created_at", created_at))
        with self.transaction():
            self._db.execute(
                "INSERT OR REPLACE INTO reservations(openid, kf_account, created_at) VALUES (?, ?, ?)", row
            )

    def end_reservation(self, openid: str) -> bool:
        """The reservation ended without a session (failed, timed out); the customer stays waiting."""
        with self.transaction():
            return self._db.execute("DELETE FROM reservations WHERE openid = ?", (openid,)).rowcount == 1

    # ---------------------------------------------------------------- sessions

    def record_session_start(self, openid: str, kf_account: str, started_at: float) -> None:
        """A session exists: the customer leaves the queue (and their reservation), their case records the
        agent and the start, and the agent becomes their last agent. Repeating it (API answer, then the
        push) changes nothing; a different agent replaces the first (as a switch would)."""
        _text("openid", openid)
        _text("kf_account", kf_account)
        t = _time("started_at", started_at)
        with self.transaction():
            self._db.execute("DELETE FROM waiting WHERE openid = ?", (openid,))
            self._db.execute("DELETE FROM reservations WHERE openid = ?", (openid,))
            row = self._db.execute(
                "SELECT id, started_at FROM sessions WHERE openid = ? AND outcome IS NULL", (openid,)
            ).fetchone()
            if row is None:  # not requested through us (agent-initiated, WeChat's own queue, restore)
                self._db.execute(
                    "INSERT INTO sessions(openid, priority, text, tags, requested_at, kf_account, started_at) "
                    "VALUES (?, 0, '', '[]', ?, ?, ?)",
                    (openid, t, kf_account, t),
                )
            elif row[1] is None:
                self._db.execute(
                    "UPDATE sessions SET kf_account = ?, started_at = ? WHERE id = ?", (kf_account, t, row[0])
                )
            else:
                self._db.execute("UPDATE sessions SET kf_account = ? WHERE id = ?", (kf_account, row[0]))
            self._set_history(openid, kf_account, t)

    def record_session_switch(self, openid: str, to_account: str, at: float) -> None:
        """An agent handed the customer to ``to_account``."""
        self.record_session_start(openid, to_account, at)

    def record_session_end(self, openid: str, kf_account: str, ended_at: float) -> bool:
        """The session closed: the case is 'served'. ``False`` if no session of ``openid`` was open."""
        _text("openid", openid)
        _text("kf_account", kf_account)
        t = _time("ended_at", ended_at)
        with self.transaction():
            cur = self._db.execute(
                "UPDATE sessions SET outcome = 'served', ended_at = ?, kf_account = ? "
                "WHERE openid = ? AND outcome IS NULL AND started_at IS NOT NULL",
                (t, kf_account, openid),
            )
            if cur.rowcount == 0:
                return False
            self._set_history(openid, kf_account, t)
            return True

    def _set_history(self, openid: str, kf_account: str, at: float) -> None:
        self._db.execute(
            "INSERT INTO history(openid, kf_account, at) VALUES (?, ?, ?) "
            "ON CONFLICT(openid) DO UPDATE SET kf_account = excluded.kf_account, at = excluded.at "
            "WHERE excluded.at >= history.at",
            (openid, kf_account, at),
        )

    def history(self, openid: str) -> HistoryRow | None:
        """Who served ``openid`` last, and when (session start, updated at its end)."""
        with self._lock:
            row = self._db.execute(
                "SELECT kf_account, at FROM history WHERE openid = ?", (openid,)
            ).fetchone()
        return None if row is None else HistoryRow(openid, row[0], row[1])

    def session_log(self, since: float | None = None, until: float | None = None) -> list[SessionRow]:
        """Cases requested in ``[since, until)``, oldest first (for wait estimates and reports)."""
        lo = -math.inf if since is None else _time("since", since)
        hi = math.inf if until is None else _time("until", until)
        with self._lock:
            rows = self._db.execute(
                "SELECT id, openid, grp, priority, text, preferred, tags, requested_at, kf_account, "
                "started_at, ended_at, outcome FROM sessions WHERE requested_at >= ? AND requested_at < ? "
                "ORDER BY requested_at, id",
                (lo, hi),
            ).fetchall()
        return [_session_row(r) for r in rows]

    # ---------------------------------------------------------------- agents

    def set_agent(
        self,
        kf_account: str,
        at: float,
        *,
        groups: Iterable[str] | None = None,
        max_sessions: int | None = None,
        clear_max_sessions: bool = False,
        paused: bool | None = None,
        nickname: str | None = None,
        tags: Iterable[str] | None = None,
    ) -> None:
        """Save local settings of an agent; ``None`` leaves a setting as it is (as ``AgentConfigured``)."""
        _text("kf_account", kf_account)
        t = _time("at", at)
        if max_sessions is not None and (
            not isinstance(max_sessions, int) or isinstance(max_sessions, bool) or max_sessions < 1
        ):
            raise StoreError(f"max_sessions must be an integer >= 1, got {max_sessions!r}")
        g = None if groups is None else _dumps(sorted(_str_tuple("groups", groups)))
        tg = None if tags is None else _dumps(sorted(_str_tuple("tags", tags)))
        with self.transaction():
            self._db.execute(
                "INSERT INTO agents(kf_account, updated_at) VALUES (?, ?) "
                "ON CONFLICT(kf_account) DO UPDATE SET updated_at = excluded.updated_at",
                (kf_account, t),
            )
            self._db.execute(
                "UPDATE agents SET groups = coalesce(?, groups), "
                "max_sessions = CASE WHEN ? THEN NULL ELSE coalesce(?, max_sessions) END, "
                "paused = coalesce(?, paused), nickname = coalesce(?, nickname), tags = coalesce(?, tags) "
                "WHERE kf_account = ?",
                (g, clear_max_sessions, max_sessions, paused, nickname, tg, kf_account),
            )

    def agents(self) -> dict[str, AgentSettings]:
        """Local settings of every agent that has any."""
        with self._lock:
            rows = self._db.execute(
                "SELECT kf_account, groups, max_sessions, paused, nickname, tags, updated_at FROM agents"
            ).fetchall()
        return {
            r[0]: AgentSettings(
                kf_account=r[0],
                groups=_tags_json(r[1]),
                max_sessions=r[2],
                paused=bool(r[3]),
                nickname=r[4],
                tags=_tags_json(r[5]),
                updated_at=r[6],
            )
            for r in rows
        }

    def remove_agent(self, kf_account: str) -> bool:
        with self.transaction():
            return self._db.execute("DELETE FROM agents WHERE kf_account = ?", (kf_account,)).rowcount == 1

    # ---------------------------------------------------------------- input log

    def append_event(self, t: float, kind: str, payload: Mapping[str, Any]) -> int:
        """Log one input (a push, a poll result, an admin action) as JSON; returns its sequence number.

        Kinds ``agent_online`` (payload ``agent``, ``groups``, ``max_sessions``) and ``agent_offline``
        (``agent``) become agent lines of an exported trace."""
        when = _time("t", t)
        _text("kind", kind)
        try:
            body = _dumps(dict(payload))
        except (TypeError, ValueError) as exc:
            raise StoreError(f"payload of {kind!r} is not JSON-serialisable: {exc}") from None
        with self.transaction():
            cur = self._db.execute(
                "INSERT INTO events(t, kind, payload) VALUES (?, ?, ?)", (when, kind, body)
            )
            return int(cur.lastrowid or 0)

    def events(
        self, since: float | None = None, kinds: Iterable[str] | None = None
    ) -> list[tuple[int, float, str, dict[str, Any]]]:
        """Logged inputs at or after ``since``: ``(seq, t, kind, payload)`` in order."""
        lo = -math.inf if since is None else _time("since", since)
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, t, kind, payload FROM events WHERE t >= ? ORDER BY t, seq", (lo,)
            ).fetchall()
        wanted = None if kinds is None else set(kinds)
        return [(s, t, k, json.loads(p)) for s, t, k, p in rows if wanted is None or k in wanted]

    def prune_events(self, before: float) -> int:
        with self.transaction():
            return self._db.execute("DELETE FROM events WHERE t < ?", (_time("before", before),)).rowcount

    # ---------------------------------------------------------------- restart

    def load_state(self, history_since: float | None = None) -> StoredState:
        """Everything needed to rebuild the engine, read from one consistent snapshot. ``history_since``
        limits customer history (pass ``now - sticky_window_s``)."""
        lo = -math.inf if history_since is None else _time("history_since", history_since)
        with self.transaction(write=False):
            agents = self.agents()
            waiting = [
                WaitingRow(r[0], r[1], r[2], r[3], r[4], r[5], tuple(json.loads(r[6])))
                for r in self._db.execute(
                    "SELECT openid, grp, priority, arrived_at, text, preferred, tags FROM waiting "
                    "ORDER BY priority DESC, arrived_at, rowid"
                )
            ]
            reservations = [
                Reservation(*r)
                for r in self._db.execute(
                    "SELECT openid, kf_account, created_at FROM reservations ORDER BY created_at"
                )
            ]
            history = {
                r[0]: HistoryRow(*r)
                for r in self._db.execute("SELECT openid, kf_account, at FROM history WHERE at >= ?", (lo,))
            }
            in_session = {
                r[0]: (r[1], r[2])
                for r in self._db.execute(
                    "SELECT openid, kf_account, started_at FROM sessions "
                    "WHERE outcome IS NULL AND started_at IS NOT NULL"
                )
            }
        return StoredState(agents, waiting, reservations, history, in_session)

    # ---------------------------------------------------------------- trace export

    def export_trace(
        self,
        out: IO[str],
        *,
        since: float | None = None,
        name: str = "recorded",
        default_capacity: int = 3,
    ) -> ExportStats:
        """Write the session log as a trace (spec/trace-format.md, version 1) to ``out``.

        Times are relative to ``since`` (default: the first logged input). ``service_s`` runs from session
        start to end; ``patience_s`` is null for served customers and the observed wait for those who left.
        Customers still waiting or in session are skipped. A customer who left was never served, so their
        ``service_s`` is the median of the served ones (60 s if none), marked ``"x-imputed_service": true``.
        Agent lines come from ``agent_online``/``agent_offline`` events; an agent who served someone but
        never appears there is put online at ``t = 0`` with its stored settings."""
        with self.transaction(write=False):
            cases = self.session_log(since)
            agent_events = self.events(kinds=_AGENT_EVENT_KINDS)
            agents = self.agents()
        served: list[tuple[SessionRow, float]] = []  # (case, service_s)
        left: list[tuple[SessionRow, float]] = []  # (case, patience_s)
        for c in cases:
            if c.outcome is None or c.ended_at is None:
                continue
            if c.outcome == "served" and c.started_at is not None:
                served.append((c, max(_MIN_DURATION_S, c.ended_at - c.started_at)))
            elif c.started_at is None:
                left.append((c, max(_MIN_DURATION_S, c.ended_at - c.requested_at)))
        firsts = [c.requested_at for c in cases] + [t for _s, t, _k, _p in agent_events]
        t0 = since if since is not None else (min(firsts) if firsts else 0.0)
        lines: list[tuple[float, int, dict[str, Any]]] = []  # (t, 0 agent / 1 arrival, line)

        # Agent lines: the state before t0 folded into t = 0, later changes at their time.
        before: dict[str, dict[str, Any] | None] = {}
        for seq, t, kind, payload in agent_events:
            line = _agent_line(seq, kind, payload, default_capacity)
            if t < t0:
                before[line["agent"]] = line if kind == "agent_online" else None
            else:
                lines.append((t - t0, 0, {"t": t - t0, **line}))
        for initial in before.values():
            if initial is not None:
                lines.append((0.0, 0, {"t": 0.0, **initial}))
        described = {p.get("agent") for _s, _t, _k, p in agent_events}
        for kf in sorted({c.kf_account for c, _ in served if c.kf_account is not None} - described):
            a = agents.get(kf)
            line = {
                "t": 0.0,
                "kind": "agent_online",
                "agent": kf,
                "groups": list(a.groups) if a is not None and a.groups is not None else [],
                "max_sessions": a.max_sessions
                if a is not None and a.max_sessions is not None
                else default_capacity,
            }
            lines.append((0.0, 0, line))

        imputed = statistics.median(s for _c, s in served) if served else _DEFAULT_SERVICE_S
        for c, service in served:
            lines.append((c.requested_at - t0, 1, _arrival(c, t0, service, None)))
        for c, patience in left:
            lines.append(
                (c.requested_at - t0, 1, {**_arrival(c, t0, imputed, patience), "x-imputed_service": True})
            )

        lines.sort(key=lambda item: (item[0], item[1]))
        header = {
            "kind": "header",
            "version": 1,
            "name": name,
            "seed": None,
            "created_by": "kfrouter trace export",
            "recorded_from": t0,
        }
        out.write(_dumps_line(header))
        for _t, _order, line in lines:
            out.write(_dumps_line(line))
        return ExportStats(
            arrivals=len(served) + len(left),
            served=len(served),
            left=len(left),
            open=len(cases) - len(served) - len(left),
            agent_lines=sum(1 for _t, order, _l in lines if order == 0),
        )


def _agent_line(seq: int, kind: str, payload: Mapping[str, Any], default_capacity: int) -> dict[str, Any]:
    agent = payload.get("agent")
    if not isinstance(agent, str) or not agent:
        raise StoreError(f"event {seq} ({kind}): payload needs a non-empty 'agent', got {payload!r}")
    if kind == "agent_offline":
        return {"kind": kind, "agent": agent}
    groups = payload.get("groups") or []
    cap = payload.get("max_sessions") or default_capacity
    if not isinstance(groups, list) or not all(isinstance(g, str) and g for g in groups):
        raise StoreError(f"event {seq} (agent_online): 'groups' must be a list of names, got {groups!r}")
    if not isinstance(cap, int) or isinstance(cap, bool) or cap < 1:
        raise StoreError(f"event {seq} (agent_online): 'max_sessions' must be an integer >= 1, got {cap!r}")
    line = {"kind": kind, "agent": agent, "groups": groups, "max_sessions": cap}
    nickname = payload.get("nickname")
    if isinstance(nickname, str) and nickname:
        line["nickname"] = nickname  # replays tell customers the same name
    return line


def _arrival(c: SessionRow, t0: float, service_s: float, patience_s: float | None) -> dict[str, Any]:
    line: dict[str, Any] = {
        "t": c.requested_at - t0,
        "kind": "arrival",
        "customer": c.openid,
        "group": c.group,
        "priority": c.priority,
        "service_s": service_s,
        "patience_s": patience_s,
    }
    if c.text:
        line["text"] = c.text
    if c.preferred:
        line["preferred_agent"] = c.preferred
    if c.tags:
        line["tags"] = list(c.tags)
    return line


def _session_row(r: tuple[Any, ...]) -> SessionRow:
    return SessionRow(
        id=r[0],
        openid=r[1],
        group=r[2],
        priority=r[3],
        text=r[4],
        preferred=r[5],
        tags=tuple(json.loads(r[6])),
        requested_at=r[7],
        kf_account=r[8],
        started_at=r[9],
        ended_at=r[10],
        outcome=r[11],
    )


def _dumps_line(obj: Mapping[str, Any]) -> str:
    return json.dumps(obj, ensure_ascii=False, allow_nan=False) + "\n"


def _statements(script: str) -> list[str]:
    """Split a migration script into statements (``sqlite3.complete_statement`` decides where one ends)."""
    out: list[str] = []
    buf = ""
    for line in script.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            out.append(buf.strip())
            buf = ""
    if buf.strip():
        raise StoreError(f"incomplete SQL statement in a migration: {buf.strip()[:60]!r}")
    return out
