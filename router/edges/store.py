"""The durable state of an Official Account: waiting customers, reservations, agent settings, customer
history, the session log, the input event log and processed-push keys — plus, for several daemons
sharing a database, the account's lease, the daemons alive (members), the shared push inbox and the shared
access token.

``Store`` is the one interface; the database behind it is a backend (``router.edges.store_db``):

- **SQLite** (``Store(path)``, the embedded default, ``router.edges.store_sqlite``): one file per account,
  WAL, ``synchronous=FULL``. Nothing to install or start.
- **PostgreSQL** (``Store("postgresql://...", appid=...)`` or ``Store(PgDatabase(url), appid=...)`` to
  share one database object among the accounts of a process; ``router.edges.store_pg``): one schema per
  account, leases fenced by the database, LISTEN/NOTIFY for the shared inbox.

Rules of this module:

- **Durable before "success".** After WeChat receives "success" it never sends that push again, so the
  webhook commits what the customer told us first.
- **Group commit** (``router.edges.store_commit``): ``await store.commit(work)`` runs ``work(store)`` in the
  next batch of the writer thread — the pushes that arrive together share one transaction and one fsync —
  and returns once that batch committed. ``defer(work, what)`` queues without waiting (a failure is
  logged); ``submit(work)`` returns a ``concurrent.futures.Future``. Direct calls (``store.add_waiting(...)``,
  ``with store.transaction(): ...``) still work from any thread and first commit what is queued, so
  writes keep their order and a read sees every write submitted before it.
- **One transaction per logical step.** Each public write is one transaction on its own; inside an
  enclosing one (``with store.transaction():``, a ``commit`` job) it is part of that one — an exception
  from it must end the enclosing block, which rolls back (nested ``transaction()`` blocks are
  savepoints; a commit job that raises rolls back alone, see ``router.edges.store_commit``). Do not hold ``transaction()`` across an ``await``.
- **One SQL text for both backends**: ``?`` placeholders, ``ON CONFLICT`` upserts, ``RETURNING``; a
  PostgreSQL account's tables are named like a SQLite file's (its schema is the ``search_path``).
- **Leases and fencing.** ``acquire_lease`` / ``renew_lease`` / ``release_lease`` run in their own
  transaction on the database's clock; ``use_lease(lease)`` makes every later write of this store carry
  the lease's epoch. Once an account has a lease row, a write that does not carry the current epoch of a
  live lease is refused with ``StaleLease`` (PostgreSQL: by a function and triggers in the database;
  SQLite: in the write transaction, under SQLite's single write lock). Writing a shared push is not
  fenced (any daemon receives pushes); acknowledging one and storing a token are.
- **Time is an argument** (seconds since the epoch, as the daemon's clock gives them), except lease
  times, which are the database's clock (``db_now()``: one clock for every daemon).
- Arguments are checked before anything is written; errors name the argument and the value.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import IO, Any, TypeVar

from kfrouter.router.edges import store_export
from kfrouter.router.edges.store_commit import Job
from kfrouter.router.edges.store_database import Database
from kfrouter.router.edges.store_db import Conn
from kfrouter.router.edges.store_sqlite import MIGRATIONS, SCHEMA_VERSION, SqliteDatabase
from kfrouter.router.edges.store_values import (
    AgentSettings,
    CommitStats,
    ExportStats,
    HistoryRow,
    Lease,
    LeaseRow,
    Member,
    Reservation,
    SessionRow,
    SharedPush,
    StaleLease,
    StoredCounts,
    StoredState,
    StoredToken,
    StoreError,
    WaitingRow,
    check_appid,
    check_int,
    check_positive,
    check_text,
    check_time,
    dumps,
    str_tuple,
    tags_json,
)

__all__ = [
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "AgentSettings",
    "CommitStats",
    "ExportStats",
    "HistoryRow",
    "Lease",
    "LeaseRow",
    "Member",
    "Reservation",
    "SessionRow",
    "SharedPush",
    "StaleLease",
    "Store",
    "StoreError",
    "StoredCounts",
    "StoredState",
    "StoredToken",
    "WaitingRow",
    "open_database",
]

T = TypeVar("T")
log = logging.getLogger("kfrouter.store")
POSTGRES_SCHEMES = ("postgresql://", "postgres://")
_LEASE_COLUMNS = "owner, epoch, expires_at, granted_at"
IN_SESSION = "outcome IS NULL AND started_at IS NOT NULL"  # a row of ``sessions`` that is a session now


def open_database(
    target: str | Path, *, synchronous: str = "FULL", keepalive: Mapping[str, str] | None = None
) -> Database:
    """The database at ``target``: a ``postgresql://`` URL or a SQLite path (``:memory:`` too).
    ``keepalive``: PostgreSQL's TCP keepalive parameters (``ClusterSettings.keepalive()``; None: their
    defaults)."""
    if isinstance(target, str) and target.startswith(POSTGRES_SCHEMES):
        if synchronous != "FULL":
            raise StoreError("synchronous applies to SQLite only; PostgreSQL commits are durable")
        from kfrouter.router.edges.store_pg import PgDatabase

        return PgDatabase(target, keepalive=keepalive)
    if keepalive is not None:
        raise StoreError(f"keepalive applies to PostgreSQL only; the store {str(target)!r} is SQLite")
    return SqliteDatabase(target, synchronous=synchronous)


class Store:
    """The store of one account (see the module docstring). ``target``: a SQLite path, a
    ``postgresql://`` URL, or a ``Database`` shared with other stores (not closed by this one)."""

    def __init__(
        self, target: str | Path | Database, *, appid: str | None = None, synchronous: str = "FULL"
    ) -> None:
        if appid is not None:
            check_appid(appid)
        if isinstance(target, Database):
            self._db, self._own = target, False
        else:
            self._db, self._own = open_database(target, synchronous=synchronous), True
        try:
            self._account = self._db.account(appid)
        except BaseException:
            if self._own:
                self._db.close()
            raise
        self.appid = appid
        self.path = self._db.location
        self._lease: Lease | None = None

    # ---------------------------------------------------------------- lifecycle

    @property
    def database(self) -> Database:
        return self._db

    @property
    def backend(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return self._db.kind

    def close(self) -> None:
        """Commit what was submitted; close the database if this store opened it."""
        if self._own:
            self._db.close()
        elif not self._db.closed:
            self._db.commits.drain_here()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    @property
    def schema_version(self) -> int:
        return self._db.schema_version(self._account)

    def pragma(self, name: str) -> Any:
        """Read one SQLite PRAGMA (``journal_mode``, ``synchronous``, ...), for checks and diagnostics."""
        if not isinstance(self._db, SqliteDatabase):
            raise StoreError(f"pragma {name!r}: PRAGMAs exist in SQLite only (this store is {self.backend})")
        return self._db.pragma(name)

    @contextmanager
    def transaction(self, *, write: bool = True) -> Iterator[None]:
        """One atomic unit: committed when the block ends, rolled back if it raises. Nested blocks are
        savepoints. ``write=False`` starts a read snapshot."""
        with self._tx(write=write, savepoint=True):
            yield

    @contextmanager
    def _tx(self, *, write: bool, savepoint: bool = False) -> Iterator[Conn]:
        """A transaction of this account; a store method (``savepoint=False``) inside an open one is part
        of it, without a savepoint of its own (a round trip each with PostgreSQL)."""
        writes = self._db.writes
        if write or writes.held_here():
            epoch = self._lease.epoch if self._lease is not None else None
            with writes.transaction(self._account, write=True, epoch=epoch, savepoint=savepoint) as c:
                yield c
            return
        self._db.commits.drain_here()  # a read sees every write submitted before it
        with self._db.reads.transaction(self._account, write=False, savepoint=savepoint) as c:
            yield c

    @contextmanager
    def _write(self) -> Iterator[Conn]:
        """A write to the account's rows: fenced by the lease this store carries."""
        writes = self._db.writes
        joined = writes.inside(self._account)
        if joined is not None:  # the usual case in a commit job: no nesting machinery
            writes.fence()
            yield joined
            return
        with self._tx(write=True) as c:
            writes.fence()
            yield c

    def _read(self) -> Any:
        return self._tx(write=False)

    # ---------------------------------------------------------------- group commit

    async def commit(self, work: Callable[[Store], T]) -> T:
        """Run ``work(self)`` in the writer's next batch (one write unit of this account, carrying this
        store's lease); return its result once the batch committed, or raise what it raised (it alone
        was rolled back) or what failed the commit. Cancelling the caller does not undo the write."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        self._db.commits.submit(self._job(work, "commit", afuture=fut, loop=loop))
        return await fut

    def submit(self, work: Callable[[Store], T]) -> concurrent.futures.Future[T]:
        """``commit`` for threads: the future is settled once the batch committed."""
        fut: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._db.commits.submit(self._job(work, "submit", future=fut))
        return fut

    def defer(
        self,
        work: Callable[[Store], Any],
        what: str,
        *,
        then: Callable[[BaseException | None], Any] | None = None,
    ) -> None:
        """Queue ``work(self)`` for the next batch without waiting; a failure is logged with ``what``.
        ``then(error)`` (error None: committed) runs on the calling event loop once the batch is done —
        e.g. an API call that must not start before the write that records it is durable."""
        if then is None:
            self._db.commits.submit(self._job(work, what))
            return
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        fut.add_done_callback(partial(_then, what, then))
        self._db.commits.submit(self._job(work, what, afuture=fut, loop=loop))

    def flush(self) -> None:
        """Return once everything submitted so far is committed (or failed)."""
        if self._db.writes.held_here():
            raise StoreError("flush() inside a transaction would wait for itself")
        self._db.commits.drain_here()

    @property
    def commit_stats(self) -> CommitStats:
        return self._db.commits.stats

    def _job(self, work: Callable[[Store], Any], what: str, **futures: Any) -> Job:
        if not callable(work):
            raise StoreError(f"{what}: work must be a function of the store, got {work!r}")
        epoch = self._lease.epoch if self._lease is not None else None
        return Job(self, self._account, epoch, work, what, **futures)

    # ---------------------------------------------------------------- processed pushes

    def claim_push(self, dedup_key: str, answered_at: float) -> bool:
        """Record that the push ``dedup_key`` is being handled; ``False`` if it was already (a retry).
        Do it in the same transaction as what the push changes, so a crash leaves both or neither."""
        check_text("dedup_key", dedup_key)
        t = check_time("answered_at", answered_at)
        with self._write() as c:
            cur = c.execute(
                "INSERT INTO processed(dedup_key, answered_at) VALUES (?, ?) ON CONFLICT DO NOTHING",
                (dedup_key, t),
            )
            return cur.rowcount == 1

    def is_processed(self, dedup_key: str) -> bool:
        with self._read() as c:
            return (
                c.execute("SELECT 1 FROM processed WHERE dedup_key = ?", (dedup_key,)).fetchone() is not None
            )

    def prune_processed(self, before: float) -> int:
        """Forget push keys answered before ``before``; returns how many."""
        t = check_time("before", before)
        with self._write() as c:
            return int(c.execute("DELETE FROM processed WHERE answered_at < ?", (t,)).rowcount)

    # ---------------------------------------------------------------- waiting customers

    def add_waiting(self, row: WaitingRow) -> bool:
        """A customer asks for a human: queue them and open their case in the session log. ``False`` (and
        nothing written) if they are already waiting."""
        check_text("openid", row.openid)
        t = check_time("arrived_at", row.arrived_at)
        check_int("priority", row.priority)
        tags = dumps(list(str_tuple("tags", row.tags)))
        with self._write() as c:
            cur = c.execute(
                "INSERT INTO waiting(openid, grp, priority, arrived_at, text, preferred, tags) "
                "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (row.openid, row.group, row.priority, t, row.text, row.preferred, tags),
            )
            if cur.rowcount == 0:
                return False
            # One open case per customer: a session we never saw close has ended by now (WeChat pushes a
            # customer's messages to us only outside a session); any other open case is superseded.
            c.execute(
                "UPDATE sessions SET outcome = CASE WHEN started_at IS NULL THEN 'superseded' ELSE 'served' END, "
                "ended_at = ? WHERE openid = ? AND outcome IS NULL",
                (t, row.openid),
            )
            c.execute(
                "INSERT INTO sessions(openid, grp, priority, text, preferred, tags, requested_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (row.openid, row.group, row.priority, row.text, row.preferred, tags, t),
            )
            return True

    def remove_waiting(self, openid: str, at: float, reason: str = "left") -> bool:
        """A waiting customer gave up (``reason``: 'left', 'cancelled', 'patience', ...): drop them and their
        reservation and close their case. ``False`` if they were not waiting."""
        check_text("openid", openid)
        check_text("reason", reason)
        if reason == "served":
            raise StoreError("reason 'served' is recorded by record_session_end, not remove_waiting")
        t = check_time("at", at)
        with self._write() as c:
            gone = c.execute("DELETE FROM waiting WHERE openid = ?", (openid,)).rowcount
            c.execute("DELETE FROM reservations WHERE openid = ?", (openid,))
            c.execute(
                "UPDATE sessions SET outcome = ?, ended_at = ? "
                "WHERE openid = ? AND outcome IS NULL AND started_at IS NULL",
                (reason, t, openid),
            )
            return bool(gone == 1)

    # ---------------------------------------------------------------- reservations

    def add_reservation(self, openid: str, kf_account: str, created_at: float) -> None:
        """A ``CreateSession`` is in flight for ``openid`` with ``kf_account`` (replaces an older one)."""
        row = (
            check_text("openid", openid),
            check_text("kf_account", kf_account),
            check_time("created_at", created_at),
        )
        with self._write() as c:
            c.execute(
                "INSERT INTO reservations(openid, kf_account, created_at) VALUES (?, ?, ?) "
                "ON CONFLICT(openid) DO UPDATE SET kf_account = excluded.kf_account, "
                "created_at = excluded.created_at",
                row,
            )

    def reservation(self, openid: str) -> Reservation | None:
        """``openid``'s ``CreateSession`` in flight, if any (a session start or a failed create ends it)."""
        with self._read() as c:
            row = c.execute(
                "SELECT openid, kf_account, created_at FROM reservations WHERE openid = ?",
                (check_text("openid", openid),),
            ).fetchone()
        return None if row is None else Reservation(*row)

    def end_reservation(self, openid: str) -> bool:
        """The reservation ended without a session (failed, timed out); the customer stays waiting."""
        with self._write() as c:
            return bool(c.execute("DELETE FROM reservations WHERE openid = ?", (openid,)).rowcount == 1)

    # ---------------------------------------------------------------- sessions

    def record_session_start(self, openid: str, kf_account: str, started_at: float) -> None:
        """A session exists: the customer leaves the queue (and their reservation), their case records the
        agent and the start, and the agent becomes their last agent. Repeating it (API answer, then the
        push) changes nothing; a different agent replaces the first (as a switch would)."""
        check_text("openid", openid)
        check_text("kf_account", kf_account)
        t = check_time("started_at", started_at)
        with self._write() as c:
            c.execute("DELETE FROM waiting WHERE openid = ?", (openid,))
            c.execute("DELETE FROM reservations WHERE openid = ?", (openid,))
            row = c.execute(
                "SELECT id, started_at FROM sessions WHERE openid = ? AND outcome IS NULL", (openid,)
            ).fetchone()
            if row is None:  # not requested through us (agent-initiated, WeChat's own queue, restore)
                c.execute(
                    "INSERT INTO sessions(openid, priority, text, tags, requested_at, kf_account, started_at) "
                    "VALUES (?, 0, '', '[]', ?, ?, ?)",
                    (openid, t, kf_account, t),
                )
            elif row[1] is None:
                c.execute(
                    "UPDATE sessions SET kf_account = ?, started_at = ? WHERE id = ?", (kf_account, t, row[0])
                )
            else:
                c.execute("UPDATE sessions SET kf_account = ? WHERE id = ?", (kf_account, row[0]))
            _set_history(c, openid, kf_account, t)

    def record_session_switch(self, openid: str, to_account: str, at: float) -> None:
        """An agent handed the customer to ``to_account``."""
        self.record_session_start(openid, to_account, at)

    def record_session_end(self, openid: str, kf_account: str, ended_at: float) -> bool:
        """The session closed: the case is 'served'. ``False`` if no session of ``openid`` was open."""
        check_text("openid", openid)
        check_text("kf_account", kf_account)
        t = check_time("ended_at", ended_at)
        with self._write() as c:
            cur = c.execute(
                "UPDATE sessions SET outcome = 'served', ended_at = ?, kf_account = ? "
                "WHERE openid = ? AND outcome IS NULL AND started_at IS NOT NULL",
                (t, kf_account, openid),
            )
            if cur.rowcount == 0:
                return False
            _set_history(c, openid, kf_account, t)
            return True

    def history(self, openid: str) -> HistoryRow | None:
        """Who served ``openid`` last, and when (session start, updated at its end)."""
        with self._read() as c:
            row = c.execute("SELECT kf_account, at FROM history WHERE openid = ?", (openid,)).fetchone()
        return None if row is None else HistoryRow(openid, row[0], row[1])

    def session_log(self, since: float | None = None, until: float | None = None) -> list[SessionRow]:
        """Cases requested in ``[since, until)``, oldest first (for wait estimates and reports)."""
        lo = -math.inf if since is None else check_time("since", since)
        hi = math.inf if until is None else check_time("until", until)
        with self._read() as c:
            return _session_log(c, lo, hi)

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
        check_text("kf_account", kf_account)
        t = check_time("at", at)
        if max_sessions is not None:
            check_int("max_sessions", max_sessions, lo=1)
        g = None if groups is None else dumps(sorted(str_tuple("groups", groups)))
        tg = None if tags is None else dumps(sorted(str_tuple("tags", tags)))
        p = None if paused is None else int(bool(paused))
        with self._write() as c:
            c.execute(
                "INSERT INTO agents(kf_account, updated_at) VALUES (?, ?) "
                "ON CONFLICT(kf_account) DO UPDATE SET updated_at = excluded.updated_at",
                (kf_account, t),
            )
            c.execute(
                "UPDATE agents SET groups = coalesce(?, groups), "
                "max_sessions = CASE WHEN ? = 1 THEN NULL ELSE coalesce(?, max_sessions) END, "
                "paused = coalesce(?, paused), nickname = coalesce(?, nickname), tags = coalesce(?, tags) "
                "WHERE kf_account = ?",
                (g, int(bool(clear_max_sessions)), max_sessions, p, nickname, tg, kf_account),
            )

    def agents(self) -> dict[str, AgentSettings]:
        """Local settings of every agent that has any."""
        with self._read() as c:
            return _agents(c)

    def remove_agent(self, kf_account: str) -> bool:
        with self._write() as c:
            return bool(c.execute("DELETE FROM agents WHERE kf_account = ?", (kf_account,)).rowcount == 1)

    # ---------------------------------------------------------------- input log

    def append_event(self, t: float, kind: str, payload: Mapping[str, Any]) -> int:
        """Log one input (a push, a poll result, an admin action) as JSON; returns its sequence number.

        Kinds ``agent_online`` (payload ``agent``, ``groups``, ``max_sessions``) and ``agent_offline``
        (``agent``) become agent lines of an exported trace."""
        when = check_time("t", t)
        check_text("kind", kind)
        try:
            body = dumps(dict(payload))
        except (TypeError, ValueError) as exc:
            raise StoreError(f"payload of {kind!r} is not JSON-serialisable: {exc}") from None
        with self._write() as c:
            rows = c.execute(
                "INSERT INTO events(t, kind, payload) VALUES (?, ?, ?) RETURNING seq", (when, kind, body)
            ).fetchall()
            return int(rows[0][0])

    def events(
        self, since: float | None = None, kinds: Iterable[str] | None = None
    ) -> list[tuple[int, float, str, dict[str, Any]]]:
        """Logged inputs at or after ``since``: ``(seq, t, kind, payload)`` in order."""
        lo = -math.inf if since is None else check_time("since", since)
        with self._read() as c:
            return _events(c, lo, None if kinds is None else set(kinds))

    def prune_events(self, before: float) -> int:
        t = check_time("before", before)
        with self._write() as c:
            return int(c.execute("DELETE FROM events WHERE t < ?", (t,)).rowcount)

    # ---------------------------------------------------------------- restart

    def load_state(self, history_since: float | None = None) -> StoredState:
        """Everything needed to rebuild the engine, read from one consistent snapshot. ``history_since``
        limits customer history (pass ``now - sticky_window_s``)."""
        lo = -math.inf if history_since is None else check_time("history_since", history_since)
        with self._read() as c:
            agents = _agents(c)
            waiting = [
                WaitingRow(r[0], r[1], r[2], r[3], r[4], r[5], tuple(json.loads(r[6])))
                for r in c.execute(
                    "SELECT openid, grp, priority, arrived_at, text, preferred, tags FROM waiting "
                    "ORDER BY priority DESC, arrived_at, rowid"
                )
            ]
            reservations = [
                Reservation(*r)
                for r in c.execute(
                    "SELECT openid, kf_account, created_at FROM reservations ORDER BY created_at"
                )
            ]
            history = {
                r[0]: HistoryRow(*r)
                for r in c.execute("SELECT openid, kf_account, at FROM history WHERE at >= ?", (lo,))
            }
            in_session = {
                r[0]: (r[1], r[2])
                for r in c.execute(f"SELECT openid, kf_account, started_at FROM sessions WHERE {IN_SESSION}")
            }
        return StoredState(agents, waiting, reservations, history, in_session)

    def export_trace(
        self,
        out: IO[str],
        *,
        since: float | None = None,
        name: str = "recorded",
        default_capacity: int = 3,
    ) -> ExportStats:
        """Write the session log as a trace (spec/trace-format.md, version 1) to ``out``; see
        ``router.edges.store_export``."""
        lo = -math.inf if since is None else check_time("since", since)
        with self._read() as c:
            cases = _session_log(c, lo, math.inf)
            agent_events = _events(c, -math.inf, set(store_export.AGENT_EVENT_KINDS))
            agents = _agents(c)
        return store_export.write_trace(
            out, cases, agent_events, agents, since=since, name=name, default_capacity=default_capacity
        )

    # ---------------------------------------------------------------- leases

    def acquire_lease(self, owner: str, ttl_s: float) -> Lease | None:
        """Take the account's lease for ``ttl_s`` seconds if it is free, expired or already ``owner``'s
        (then it is renewed, same epoch); ``None`` if another owner holds it. A change of owner — or the
        same owner after its lease expired — starts a new epoch."""
        appid = self._need_appid("acquire_lease")
        check_text("owner", owner)
        ttl = check_positive("ttl_s", ttl_s)
        with self._lease_tx() as c:
            rows = c.execute(  # one reading of the clock: "WHERE true" lets SQLite parse the upsert
                "INSERT INTO leases(appid, owner, epoch, expires_at, granted_at) "
                "SELECT ?, ?, 1, clock.t + ?, clock.t FROM (SELECT db_now() AS t) AS clock WHERE true "
                "ON CONFLICT(appid) DO UPDATE SET "
                "epoch = CASE WHEN leases.owner = excluded.owner AND leases.expires_at > excluded.granted_at "
                "THEN leases.epoch ELSE leases.epoch + 1 END, "
                "owner = excluded.owner, expires_at = excluded.expires_at, granted_at = excluded.granted_at "
                "WHERE leases.owner = excluded.owner OR leases.expires_at <= excluded.granted_at "
                f"RETURNING {_LEASE_COLUMNS}",
                (appid, owner, ttl),
            ).fetchall()
        return _lease(appid, rows)

    def renew_lease(self, lease: Lease, ttl_s: float) -> Lease | None:
        """Extend a live lease by ``ttl_s`` from now (database clock); ``None`` if it expired or was taken
        (acquire again: a new epoch, and reload what another owner may have written)."""
        appid = self._lease_appid(lease)
        ttl = check_positive("ttl_s", ttl_s)
        with self._lease_tx() as c:
            rows = c.execute(
                "UPDATE leases SET expires_at = clock.t + ?, granted_at = clock.t "
                "FROM (SELECT db_now() AS t) AS clock "
                "WHERE appid = ? AND owner = ? AND epoch = ? AND expires_at > clock.t "
                f"RETURNING {_LEASE_COLUMNS}",
                (ttl, appid, lease.owner, lease.epoch),
            ).fetchall()
        return _lease(appid, rows)

    def release_lease(self, lease: Lease) -> bool:
        """Give the lease up now (it expires at once; the next owner starts a new epoch). ``False`` if it
        was no longer held."""
        appid = self._lease_appid(lease)
        if self._lease is not None and self._lease.epoch == lease.epoch:
            self._lease = None
        with self._lease_tx() as c:
            cur = c.execute(
                "UPDATE leases SET expires_at = db_now() "
                "WHERE appid = ? AND owner = ? AND epoch = ? AND expires_at > db_now()",
                (appid, lease.owner, lease.epoch),
            )
            return bool(cur.rowcount == 1)

    def lease_row(self) -> LeaseRow | None:
        """The account's lease as the database has it now (any owner), or ``None`` if never leased."""
        appid = self._need_appid("lease_row")
        with self._read() as c:
            row = c.execute(
                "SELECT appid, owner, epoch, expires_at, expires_at > db_now() FROM leases WHERE appid = ?",
                (appid,),
            ).fetchone()
        return None if row is None else LeaseRow(row[0], row[1], int(row[2]), float(row[3]), bool(row[4]))

    def leases(self) -> list[LeaseRow]:
        """Every lease row of the database (all accounts), by appid."""
        with self._read() as c:
            rows = c.execute(
                "SELECT appid, owner, epoch, expires_at, expires_at > db_now() FROM leases ORDER BY appid"
            ).fetchall()
        return [LeaseRow(r[0], r[1], int(r[2]), float(r[3]), bool(r[4])) for r in rows]

    # ---------------------------------------------------------------- members (the daemons sharing the database)

    def heartbeat(self, daemon_id: str, ttl_s: float) -> Member:
        """``daemon_id`` is alive for ``ttl_s`` more seconds (database clock); the lease keeper counts the
        live members to share the accounts out. Not fenced, not tied to an account."""
        check_text("daemon_id", daemon_id)
        ttl = check_positive("ttl_s", ttl_s)
        with self._lease_tx() as c:
            r = c.execute(
                "INSERT INTO members(daemon_id, expires_at, started_at) "
                "SELECT ?, clock.t + ?, clock.t FROM (SELECT db_now() AS t) AS clock WHERE true "
                "ON CONFLICT(daemon_id) DO UPDATE SET expires_at = excluded.expires_at, "
                "started_at = CASE WHEN members.expires_at > excluded.started_at THEN members.started_at "
                "ELSE excluded.started_at END "
                "RETURNING daemon_id, expires_at, started_at",
                (daemon_id, ttl),
            ).fetchone()
        return Member(r[0], float(r[1]), float(r[2]))

    def members(self) -> list[Member]:
        """The live members (their heartbeat has not expired), by daemon id."""
        with self._read() as c:
            rows = c.execute(
                "SELECT daemon_id, expires_at, started_at FROM members WHERE expires_at > db_now() "
                "ORDER BY daemon_id"
            ).fetchall()
        return [Member(r[0], float(r[1]), float(r[2])) for r in rows]

    def leave(self, daemon_id: str) -> bool:
        """``daemon_id`` is gone now (SIGTERM); ``False`` if it was not a live member."""
        check_text("daemon_id", daemon_id)
        with self._lease_tx() as c:
            cur = c.execute(
                "UPDATE members SET expires_at = db_now() WHERE daemon_id = ? AND expires_at > db_now()",
                (daemon_id,),
            )
            return bool(cur.rowcount == 1)

    def use_lease(self, lease: Lease | None) -> None:
        """Carry ``lease``'s epoch on every later write of this store (``None``: carry none)."""
        if lease is not None:
            self._lease_appid(lease)
        self._lease = lease

    @property
    def lease(self) -> Lease | None:
        """The lease this store's writes carry."""
        return self._lease

    def db_now(self) -> float:
        """The database's clock (seconds since the epoch), the one lease times use."""
        with self._read() as c:
            return float(c.execute("SELECT db_now()").fetchone()[0])

    @contextmanager
    def _lease_tx(self) -> Iterator[Conn]:
        if self._db.writes.held_here():
            raise StoreError(
                "lease operations run in their own transaction, not inside transaction() or commit()"
            )
        with self._tx(write=True) as c:
            yield c

    def _need_appid(self, what: str) -> str:
        if self.appid is None:
            raise StoreError(f"{what}: this store was opened without an appid (Store(..., appid=...))")
        return self.appid

    def _lease_appid(self, lease: Lease) -> str:
        appid = self._need_appid("lease")
        if not isinstance(lease, Lease) or lease.appid != appid:
            raise StoreError(f"lease must be a Lease of account {appid}, got {lease!r}")
        return appid

    # ---------------------------------------------------------------- shared push inbox

    def put_shared_push(
        self, dedup_key: str, raw: str, received_at: float, *, received_by: str, query: str = ""
    ) -> bool:
        """Keep a push this daemon received for an account it does not own (not fenced: any daemon may
        receive). ``False`` if that push (``dedup_key``) is already there. Waiters are woken after the
        commit (PostgreSQL: NOTIFY ``kfrouter_push``; in this process directly)."""
        appid = self._need_appid("put_shared_push")
        check_text("dedup_key", dedup_key)
        check_text("raw", raw)
        check_text("received_by", received_by)
        t = check_time("received_at", received_at)
        if not isinstance(query, str):
            raise StoreError(f"query must be a string, got {query!r}")
        with self._tx(write=True) as c:
            cur = c.execute(
                "INSERT INTO shared_pushes(appid, dedup_key, raw, query, received_at, received_by) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (appid, dedup_key, raw, query, t, received_by),
            )
            added = cur.rowcount == 1
            if added:
                db = self._db
                db.writes.after_commit(lambda: db.wake(appid))
            return added

    def shared_pushes(self, limit: int = 100) -> list[SharedPush]:
        """Pushes waiting in the shared inbox for this account, oldest first."""
        appid = self._need_appid("shared_pushes")
        n = check_int("limit", limit, lo=1)
        with self._read() as c:
            rows = c.execute(
                "SELECT id, appid, dedup_key, raw, query, received_at, received_by FROM shared_pushes "
                "WHERE appid = ? ORDER BY id LIMIT ?",
                (appid, n),
            ).fetchall()
        return [SharedPush(int(r[0]), r[1], r[2], r[3], r[4], float(r[5]), r[6]) for r in rows]

    def ack_shared_push(self, push_id: int) -> bool:
        """The owner took push ``push_id`` (fenced: do it in the same write unit as what the push
        changes, so it is handled exactly once). ``False`` if it was already taken."""
        appid = self._need_appid("ack_shared_push")
        check_int("push_id", push_id, lo=1)
        with self._write() as c:
            cur = c.execute("DELETE FROM shared_pushes WHERE id = ? AND appid = ?", (push_id, appid))
            return bool(cur.rowcount == 1)

    async def wait_shared_pushes(self, timeout_s: float) -> bool:
        """Wait until a push for this account may have reached the shared inbox, at most ``timeout_s``
        (the polling fallback); True if woken. Poll ``shared_pushes()`` after every return."""
        appid = self._need_appid("wait_shared_pushes")
        return await self._db.wait_pushes(appid, check_positive("timeout_s", timeout_s))

    # ---------------------------------------------------------------- shared access token

    def save_token(self, access_token: str, expires_at: float, refreshed_at: float) -> None:
        """Store the account's access token (fenced: only the lease owner fetches and stores it)."""
        appid = self._need_appid("save_token")
        check_text("access_token", access_token)
        exp = check_time("expires_at", expires_at)
        ref = check_time("refreshed_at", refreshed_at)
        epoch = self._lease.epoch if self._lease is not None else 0
        with self._write() as c:
            c.execute(
                "INSERT INTO tokens(appid, access_token, expires_at, refreshed_at, epoch) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT(appid) DO UPDATE SET access_token = excluded.access_token, "
                "expires_at = excluded.expires_at, refreshed_at = excluded.refreshed_at, epoch = excluded.epoch",
                (appid, access_token, exp, ref, epoch),
            )

    def token(self) -> StoredToken | None:
        """The account's stored access token (any daemon reads it)."""
        appid = self._need_appid("token")
        with self._read() as c:
            row = c.execute(
                "SELECT appid, access_token, expires_at, refreshed_at, epoch FROM tokens WHERE appid = ?",
                (appid,),
            ).fetchone()
        return None if row is None else StoredToken(row[0], row[1], float(row[2]), float(row[3]), int(row[4]))


# ---------------------------------------------------------------------------------------------- helpers


def _set_history(c: Conn, openid: str, kf_account: str, at: float) -> None:
    c.execute(
        "INSERT INTO history(openid, kf_account, at) VALUES (?, ?, ?) "
        "ON CONFLICT(openid) DO UPDATE SET kf_account = excluded.kf_account, at = excluded.at "
        "WHERE excluded.at >= history.at",
        (openid, kf_account, at),
    )


def _agents(c: Conn) -> dict[str, AgentSettings]:
    rows = c.execute(
        "SELECT kf_account, groups, max_sessions, paused, nickname, tags, updated_at FROM agents"
    ).fetchall()
    return {
        r[0]: AgentSettings(
            kf_account=r[0],
            groups=tags_json(r[1]),
            max_sessions=r[2],
            paused=bool(r[3]),
            nickname=r[4],
            tags=tags_json(r[5]),
            updated_at=r[6],
        )
        for r in rows
    }


def _session_log(c: Conn, lo: float, hi: float) -> list[SessionRow]:
    rows = c.execute(
        "SELECT id, openid, grp, priority, text, preferred, tags, requested_at, kf_account, "
        "started_at, ended_at, outcome FROM sessions WHERE requested_at >= ? AND requested_at < ? "
        "ORDER BY requested_at, id",
        (lo, hi),
    ).fetchall()
    return [
        SessionRow(
            id=int(r[0]),
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
        for r in rows
    ]


def _events(c: Conn, lo: float, kinds: set[str] | None) -> list[tuple[int, float, str, dict[str, Any]]]:
    rows = c.execute(
        "SELECT seq, t, kind, payload FROM events WHERE t >= ? ORDER BY t, seq", (lo,)
    ).fetchall()
    return [(int(s), t, k, json.loads(p)) for s, t, k, p in rows if kinds is None or k in kinds]


def _then(what: str, then: Callable[[BaseException | None], Any], fut: asyncio.Future[Any]) -> None:
    error = None if fut.cancelled() else fut.exception()
    if error is not None:
        log.error("store: %s not committed: %s: %s", what, type(error).__name__, error)
    then(error)


def _lease(appid: str, rows: list[Any]) -> Lease | None:
    if not rows:
        return None
    owner, epoch, expires_at, granted_at = rows[0]
    return Lease(appid, owner, int(epoch), float(expires_at), float(granted_at))
