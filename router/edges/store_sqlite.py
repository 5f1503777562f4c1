"""The embedded backend: one SQLite file per Official Account, WAL journal, ``synchronous=FULL``.

Rules of this module:

- **Durable before "success".** ``synchronous=FULL`` (the default) makes every commit reach the disk: with
  WAL, ``NORMAL`` only fsyncs at checkpoints, so a power cut may roll back the last commits — exactly the
  pushes WeChat will not resend. FULL costs one fsync per commit, which group commit shares among every
  write of a batch. ``NORMAL`` is accepted for the simulator and benchmarks.
- **Two connections.** Writes (the group-commit writer and direct calls) use one connection; reads use a
  second one, so a read never waits for a batch's fsync (WAL: readers never block the writer). A
  ``:memory:`` database has one connection for both.
- **The schema** is versioned with ``PRAGMA user_version`` and ``MIGRATIONS``: migration *i* moves the
  file from version *i* to *i + 1*, each in its own transaction. A file newer than this code is refused.
- **Leases** work in a file too (several processes on one machine may share it): the clock is this
  machine's (``db_now()``), and the fence check runs in the write transaction itself, which holds SQLite's
  single write lock from ``BEGIN IMMEDIATE`` to ``COMMIT`` — no other writer can take the lease between
  the check and the commit.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

from kfrouter.router.edges.store_database import Database
from kfrouter.router.edges.store_db import Account, Conn, Session
from kfrouter.router.edges.store_values import StaleLease, StoreError

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
    # 1 -> 2: leases with a fencing epoch, the shared push inbox, the shared access token
    """
    CREATE TABLE leases (
        appid      TEXT PRIMARY KEY,
        owner      TEXT NOT NULL,
        epoch      INTEGER NOT NULL,
        expires_at REAL NOT NULL,       -- db_now() seconds
        granted_at REAL NOT NULL
    );
    CREATE TABLE shared_pushes (
        id          INTEGER PRIMARY KEY,
        appid       TEXT NOT NULL,
        dedup_key   TEXT NOT NULL,
        raw         TEXT NOT NULL,
        query       TEXT NOT NULL,
        received_at REAL NOT NULL,
        received_by TEXT NOT NULL,
        UNIQUE (appid, dedup_key)
    );
    CREATE TABLE tokens (
        appid        TEXT PRIMARY KEY,
        access_token TEXT NOT NULL,
        expires_at   REAL NOT NULL,
        refreshed_at REAL NOT NULL,
        epoch        INTEGER NOT NULL
    );
    """,
    # 2 -> 3: the daemons sharing the database, each alive while it beats (balancing counts them)
    """
    CREATE TABLE members (
        daemon_id  TEXT PRIMARY KEY,
        expires_at REAL NOT NULL,       -- db_now() seconds
        started_at REAL NOT NULL
    );
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)
SYNCHRONOUS = ("FULL", "NORMAL")


class SqliteDialect:
    def begin(self, conn: Conn, write: bool) -> None:
        conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")

    def enter(self, conn: Conn, account: Account) -> None:
        pass  # one file, one set of tables

    def fence(self, conn: Conn, appid: str, epoch: int | None) -> None:
        row = conn.execute(
            "SELECT owner, epoch, expires_at > db_now() FROM leases WHERE appid = ?", (appid,)
        ).fetchone()
        problem = fence_problem(appid, epoch, None if row is None else (row[0], int(row[1]), bool(row[2])))
        if problem is not None:
            raise StaleLease(problem)

    def ready(self, conn: Conn) -> Conn:
        return conn


def fence_problem(appid: str, carried: int | None, row: tuple[str, int, bool] | None) -> str | None:
    """Why a write carrying lease epoch ``carried`` is refused, given the lease ``row`` (owner, epoch,
    live); None if it may go ahead. The PostgreSQL function ``kfrouter.check_fence`` says the same."""
    if row is None:
        return None  # never leased: a single daemon writes freely
    owner, epoch, live = row
    if carried is None:
        return (
            f"account {appid}: write refused: the account is leased by {owner} (epoch {epoch}) "
            "and this writer holds no lease"
        )
    if carried != epoch:
        return (
            f"account {appid}: write refused: this writer carries lease epoch {carried}, "
            f"the current one is {epoch} (owner {owner})"
        )
    if not live:
        return f"account {appid}: write refused: lease epoch {epoch} of {owner} expired"
    return None


def _connect(path: str, *, read_only: bool) -> sqlite3.Connection:
    # isolation_level=None: no implicit transactions, the session issues BEGIN/COMMIT itself.
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=5.0)
    db.create_function("db_now", 0, time.time)
    if read_only:
        db.execute("PRAGMA query_only=1")
    return db


class SqliteDatabase(Database):
    """One SQLite file (see the module docstring)."""

    kind = "sqlite"

    def __init__(self, path: str | Path, *, synchronous: str = "FULL") -> None:
        if synchronous not in SYNCHRONOUS:
            raise StoreError(f"synchronous must be one of {SYNCHRONOUS}, got {synchronous!r}")
        self.location = str(path)
        dialect = SqliteDialect()
        try:
            write = _connect(self.location, read_only=False)
        except sqlite3.Error as exc:
            raise StoreError(f"{self.location}: cannot open the database: {exc}") from None
        try:
            self._setup(write, synchronous)
            memory = self.location == ":memory:"
            read = write if memory else _connect(self.location, read_only=True)
        except sqlite3.DatabaseError as exc:
            write.close()
            raise StoreError(f"{self.location}: not a usable kfrouter database: {exc}") from None
        except BaseException:
            write.close()
            raise
        self._raw = (write, read)
        self.writes = Session("writes", write, dialect)
        self.reads = self.writes if memory else Session("reads", read, dialect)
        super().__init__()

    def _setup(self, db: sqlite3.Connection, synchronous: str) -> None:
        mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode != "wal" and self.location != ":memory:":
            raise StoreError(f"{self.location}: could not switch to WAL journal mode (got {mode!r})")
        db.execute(f"PRAGMA synchronous={synchronous}")
        db.execute("PRAGMA foreign_keys=ON")
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.location}: database schema version {version} is newer than this kfrouter supports "
                f"({SCHEMA_VERSION}); upgrade kfrouter"
            )
        for target in range(version + 1, SCHEMA_VERSION + 1):
            db.execute("BEGIN IMMEDIATE")
            try:
                for statement in statements(MIGRATIONS[target - 1]):
                    db.execute(statement)
                db.execute(f"PRAGMA user_version={target}")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def account(self, appid: str | None) -> Account:
        return Account(appid)

    def schema_version(self, account: Account) -> int:
        return int(self.pragma("user_version"))

    def pragma(self, name: str) -> Any:
        if not name.replace("_", "").isalnum():
            raise StoreError(f"not a pragma name: {name!r}")
        with self.writes.lock:
            return self.writes.conn.execute(f"PRAGMA {name}").fetchone()[0]

    def _close_connections(self) -> None:
        write, read = self._raw
        with self.writes.lock:
            write.close()
        if read is not write:
            with self.reads.lock:
                read.close()


def statements(script: str) -> list[str]:
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
