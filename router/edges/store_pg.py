"""The PostgreSQL backend: many accounts and several daemons on one database (``[store] url``).

Driver: psycopg 3 (``pip install 'kfrouter[postgres]'``). The store is one synchronous interface run by a
writer thread (group commit) and by direct calls, exactly as with SQLite, and psycopg has both a
synchronous ``Connection`` for that and an asyncio ``AsyncConnection`` for LISTEN/NOTIFY, with one type
adaptation for both; asyncpg is asyncio-only (the writer thread would need its own event loop).

Layout (schema ``kfrouter`` holds what is shared, one schema per account holds its rows):

- ``kfrouter.schema_version(scope, version)``: one row per migrated scope (``shared``, ``account:<appid>``);
  ``SHARED_MIGRATIONS`` / ``ACCOUNT_MIGRATIONS`` are applied at start, each step in its own transaction
  under an advisory lock, so daemons starting together migrate once. A database newer than this code is
  refused.
- ``kfrouter.accounts``: appid -> schema ``acct_<appid in lower case>`` (``schema_name``; its tables: the same as a SQLite
  file's, so the store's SQL is one text for both; a transaction of an account sets ``search_path`` to its
  schema, then ``kfrouter``).
- ``kfrouter.leases(appid, owner, epoch, expires_at, granted_at)``, times from ``kfrouter.db_now()``: the
  database's clock, the one every daemon shares.
- **Fencing, enforced by the database.** ``kfrouter.fence(appid, epoch)`` records the epoch a write unit
  carries (``set_config('kfrouter.f<md5(appid)>', epoch, true)``: local to the transaction) and checks it;
  a BEFORE trigger on every table of the account (per statement) and on ``tokens`` / acknowledged shared
  pushes (per row) calls ``kfrouter.check_fence``: once an account has a lease row, a write whose
  transaction does not carry the current epoch of a live lease is refused (SQLSTATE ``KFR01``,
  ``StaleLease``). The check locks the lease row ``FOR SHARE`` until the writer commits, so a takeover
  (which updates that row) waits for writes already checked, and every write after it is refused.
- ``kfrouter.shared_pushes``: pushes received by a daemon that does not own the account; an insert
  notifies channel ``kfrouter_push`` with the appid (delivered at commit). Owners LISTEN through an
  ``AsyncConnection`` and poll as well (a notification is lost while that connection is down).
- ``kfrouter.tokens``: one access token per account, written by the lease owner only.
- ``kfrouter.members(daemon_id, expires_at, started_at)``: the daemons sharing the database, each alive
  while it beats (``Store.heartbeat``); the lease keeper balances accounts over the live ones.

A connection that broke (the server restarted) is replaced when the next transaction begins; the
transaction it broke fails with ``StoreError`` (its writes were not committed). Every connection opened
here (writes, reads, LISTEN; ``conninfo()`` for others) carries TCP keepalives and a TCP user timeout
(``keepalive``: libpq parameters, from ``[cluster]``'s lease settings, ``ClusterSettings.keepalive()``; its
defaults without it), so a half-open connection to a dead database host fails instead of hanging, and
the server's ``idle_in_transaction_session_timeout``, so a daemon paused in the middle of a write does not
keep the lease row locked past its lease; a parameter the URL sets itself wins.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from kfrouter.router.cluster_settings import ClusterSettings
from kfrouter.router.edges.store_database import Database
from kfrouter.router.edges.store_db import Account, Conn, Cursor, Session
from kfrouter.router.edges.store_values import StaleLease, StoreError, check_appid

log = logging.getLogger("kfrouter.store")

STALE_SQLSTATE = "KFR01"
NOTIFY_CHANNEL = "kfrouter_push"
_MIGRATION_LOCK = 0x6B66_726F_7574  # pg_advisory_xact_lock key: "kfrout"
_LISTEN_BACKOFF_S = (0.5, 30.0)

SHARED = Account(None, "kfrouter")

BOOTSTRAP = (
    "CREATE SCHEMA IF NOT EXISTS kfrouter",
    "CREATE TABLE IF NOT EXISTS kfrouter.schema_version ("
    " scope text PRIMARY KEY, version integer NOT NULL, updated_at timestamptz NOT NULL DEFAULT now())",
)

SHARED_MIGRATIONS: tuple[str, ...] = (
    # 0 -> 1
    """
    CREATE TABLE kfrouter.accounts (
        appid       text PRIMARY KEY,
        schema_name text NOT NULL UNIQUE,
        created_at  timestamptz NOT NULL DEFAULT now()
    );
    CREATE TABLE kfrouter.leases (
        appid      text PRIMARY KEY,
        owner      text NOT NULL,
        epoch      bigint NOT NULL,
        expires_at double precision NOT NULL,
        granted_at double precision NOT NULL
    );
    CREATE TABLE kfrouter.shared_pushes (
        id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        appid       text NOT NULL,
        dedup_key   text NOT NULL,
        raw         text NOT NULL,
        query       text NOT NULL,
        received_at double precision NOT NULL,
        received_by text NOT NULL,
        UNIQUE (appid, dedup_key)
    );
    CREATE TABLE kfrouter.tokens (
        appid        text PRIMARY KEY,
        access_token text NOT NULL,
        expires_at   double precision NOT NULL,
        refreshed_at double precision NOT NULL,
        epoch        bigint NOT NULL
    );
    CREATE FUNCTION kfrouter.db_now() RETURNS double precision LANGUAGE sql VOLATILE
        AS $$ SELECT extract(epoch FROM clock_timestamp())::double precision $$;
    CREATE FUNCTION kfrouter.check_fence(a text) RETURNS void LANGUAGE plpgsql AS $$
    DECLARE
        l kfrouter.leases%ROWTYPE;
        carried text := nullif(current_setting('kfrouter.f' || md5(a), true), '');
    BEGIN
        SELECT * INTO l FROM kfrouter.leases WHERE appid = a FOR SHARE;
        IF NOT FOUND THEN
            RETURN;  -- never leased: a single daemon writes freely
        END IF;
        IF carried IS NULL THEN
            RAISE EXCEPTION USING ERRCODE = 'KFR01', MESSAGE = format(
                'account %s: write refused: the account is leased by %s (epoch %s) and this writer holds no lease',
                a, l.owner, l.epoch);
        END IF;
        IF carried::bigint <> l.epoch THEN
            RAISE EXCEPTION USING ERRCODE = 'KFR01', MESSAGE = format(
                'account %s: write refused: this writer carries lease epoch %s, the current one is %s (owner %s)',
                a, carried, l.epoch, l.owner);
        END IF;
        IF l.expires_at <= kfrouter.db_now() THEN
            RAISE EXCEPTION USING ERRCODE = 'KFR01', MESSAGE = format(
                'account %s: write refused: lease epoch %s of %s expired', a, l.epoch, l.owner);
        END IF;
    END $$;
    CREATE FUNCTION kfrouter.fence(a text, e bigint) RETURNS void LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM set_config('kfrouter.f' || md5(a), coalesce(e::text, ''), true);
        PERFORM kfrouter.check_fence(a);
    END $$;
    CREATE FUNCTION kfrouter.fence_statement() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM kfrouter.check_fence(TG_ARGV[0]);
        RETURN NULL;
    END $$;
    CREATE FUNCTION kfrouter.fence_row() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'DELETE' THEN
            PERFORM kfrouter.check_fence(OLD.appid);
            RETURN OLD;
        END IF;
        IF TG_OP = 'UPDATE' AND OLD.appid <> NEW.appid THEN
            PERFORM kfrouter.check_fence(OLD.appid);
        END IF;
        PERFORM kfrouter.check_fence(NEW.appid);
        RETURN NEW;
    END $$;
    CREATE TRIGGER fence BEFORE INSERT OR UPDATE OR DELETE ON kfrouter.tokens
        FOR EACH ROW EXECUTE FUNCTION kfrouter.fence_row();
    CREATE TRIGGER fence BEFORE UPDATE OR DELETE ON kfrouter.shared_pushes
        FOR EACH ROW EXECUTE FUNCTION kfrouter.fence_row();
    CREATE FUNCTION kfrouter.notify_push() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM pg_notify('kfrouter_push', NEW.appid);
        RETURN NULL;
    END $$;
    CREATE TRIGGER notify AFTER INSERT ON kfrouter.shared_pushes
        FOR EACH ROW EXECUTE FUNCTION kfrouter.notify_push();
    """,
    # 1 -> 2: the daemons sharing the database, each alive while it beats (balancing counts them)
    """
    CREATE TABLE kfrouter.members (
        daemon_id  text PRIMARY KEY,
        expires_at double precision NOT NULL,
        started_at double precision NOT NULL
    );
    """,
)

# An account's tables: the SQLite file's, in PostgreSQL types. {schema} and {appid} are filled in
# (identifier and literal, quoted); waiting.rowid keeps the queue's arrival order like SQLite's rowid.
ACCOUNT_TABLES = ("agents", "waiting", "reservations", "history", "sessions", "events", "processed")
ACCOUNT_MIGRATIONS: tuple[str, ...] = (
    # 0 -> 1
    """
    CREATE SCHEMA {schema};
    CREATE TABLE {schema}.agents (
        kf_account   text PRIMARY KEY,
        groups       text,
        max_sessions integer,
        paused       integer NOT NULL DEFAULT 0,
        nickname     text,
        tags         text,
        updated_at   double precision NOT NULL
    );
    CREATE TABLE {schema}.waiting (
        openid     text PRIMARY KEY,
        grp        text,
        priority   integer NOT NULL,
        arrived_at double precision NOT NULL,
        text       text NOT NULL,
        preferred  text,
        tags       text NOT NULL,
        rowid      bigint GENERATED ALWAYS AS IDENTITY
    );
    CREATE TABLE {schema}.reservations (
        openid     text PRIMARY KEY,
        kf_account text NOT NULL,
        created_at double precision NOT NULL
    );
    CREATE TABLE {schema}.history (
        openid     text PRIMARY KEY,
        kf_account text NOT NULL,
        at         double precision NOT NULL
    );
    CREATE TABLE {schema}.sessions (
        id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        openid       text NOT NULL,
        grp          text,
        priority     integer NOT NULL,
        text         text NOT NULL,
        preferred    text,
        tags         text NOT NULL,
        requested_at double precision NOT NULL,
        kf_account   text,
        started_at   double precision,
        ended_at     double precision,
        outcome      text
    );
    CREATE UNIQUE INDEX sessions_open ON {schema}.sessions(openid) WHERE outcome IS NULL;
    CREATE INDEX sessions_requested ON {schema}.sessions(requested_at);
    CREATE TABLE {schema}.events (
        seq     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        t       double precision NOT NULL,
        kind    text NOT NULL,
        payload text NOT NULL
    );
    CREATE INDEX events_t ON {schema}.events(t);
    CREATE TABLE {schema}.processed (
        dedup_key   text PRIMARY KEY,
        answered_at double precision NOT NULL
    );
    CREATE INDEX processed_at ON {schema}.processed(answered_at);
    """
    + "".join(
        f"CREATE TRIGGER fence BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON {{schema}}.{table}\n"
        "    FOR EACH STATEMENT EXECUTE FUNCTION kfrouter.fence_statement({appid});\n"
        for table in ACCOUNT_TABLES
    ),
)


def driver() -> Any:
    """The psycopg module, or a ``StoreError`` saying how to install it."""
    try:
        import psycopg
    except ImportError:
        raise StoreError(
            "a postgresql:// store needs the psycopg driver: pip install 'kfrouter[postgres]'"
        ) from None
    return psycopg


def describe(url: str) -> str:
    """The URL without its password (for messages and logs)."""
    psycopg = driver()
    try:
        info = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError as exc:
        raise StoreError(f"store url is not a valid PostgreSQL URL: {exc}") from None
    user = f"{info['user']}@" if info.get("user") else ""
    port = f":{info['port']}" if info.get("port") else ""
    return f"postgresql://{user}{info.get('host', '')}{port}/{info.get('dbname', '')}"


def conninfo(url: str, keepalive: Mapping[str, str] | None = None) -> str:
    """``url`` as a libpq connection string with the ``keepalive`` parameters it does not set itself
    (None: the defaults of ``[cluster]``, ``ClusterSettings().keepalive()``); server settings (``options``)
    of both, the URL's after (so they win)."""
    psycopg = driver()
    params = ClusterSettings().keepalive() if keepalive is None else keepalive
    try:
        given = psycopg.conninfo.conninfo_to_dict(url)
        extra = {k: v for k, v in params.items() if k not in given}
        if "options" in given and "options" in params:  # server settings: both, the URL's last (it wins)
            extra["options"] = f"{params['options']} {given['options']}"
        return str(psycopg.conninfo.make_conninfo(url, **extra))
    except psycopg.ProgrammingError as exc:
        raise StoreError(f"store url is not a valid PostgreSQL URL: {exc}") from None


def _mapped(exc: Exception, where: str) -> StoreError:
    if getattr(exc, "sqlstate", None) == STALE_SQLSTATE:
        diag = getattr(exc, "diag", None)
        return StaleLease(getattr(diag, "message_primary", None) or str(exc))
    return StoreError(f"{where}: {type(exc).__name__}: {str(exc).strip()}")


_PLACEHOLDERS: dict[str, str] = {}


class PgConn:
    """A psycopg connection speaking the store's SQL: ``?`` placeholders, errors as ``StoreError`` (and
    ``StaleLease`` for a refused write)."""

    def __init__(self, raw: Any, where: str) -> None:
        self.raw = raw
        self._where = where
        self._errors = driver().Error

    def execute(self, sql: str, params: Sequence[Any] = (), /) -> Cursor:
        query = _PLACEHOLDERS.get(sql)
        if query is None:
            if "%" in sql:
                raise StoreError(f"store SQL must not contain '%': {sql[:60]!r}")
            query = _PLACEHOLDERS[sql] = sql.replace("?", "%s")
        try:
            if params:
                cur: Cursor = self.raw.execute(query, params)
            else:  # transaction control and constant queries: never prepared
                cur = self.raw.execute(query, prepare=False)
        except self._errors as exc:
            raise _mapped(exc, self._where) from exc
        return cur

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.raw.close()


class PgDialect:
    def __init__(self, connect: Callable[[], PgConn]) -> None:
        self._connect = connect

    def begin(self, conn: Conn, write: bool) -> None:
        conn.execute("BEGIN" if write else "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")

    def enter(self, conn: Conn, account: Account) -> None:
        conn.execute("SELECT set_config('search_path', ?, true)", (account.scope,))

    def fence(self, conn: Conn, appid: str, epoch: int | None) -> None:
        conn.execute("SELECT kfrouter.fence(?, ?)", (appid, epoch))

    def ready(self, conn: Conn) -> Conn:
        assert isinstance(conn, PgConn)
        if not (conn.raw.closed or conn.raw.broken):
            return conn
        log.warning("store: the PostgreSQL connection was lost; reconnecting")
        conn.close()
        return self._connect()


class PgDatabase(Database):
    """One PostgreSQL database shared by the accounts (``Store``) of this process (see the module
    docstring)."""

    kind = "postgresql"

    def __init__(
        self, url: str, *, connect_timeout_s: float = 10.0, keepalive: Mapping[str, str] | None = None
    ) -> None:
        self._psycopg = driver()
        if not isinstance(url, str) or not url.startswith(("postgresql://", "postgres://")):
            raise StoreError(f"store url must start with postgresql://, got {url!r}")
        self.url = url
        self.location = describe(url)
        self._conninfo = conninfo(url, keepalive)
        self._timeout = max(1, round(connect_timeout_s))
        dialect = PgDialect(self._connect)
        write = self._connect()
        try:
            self._migrate(write.raw, "shared", [_script(s, {}) for s in SHARED_MIGRATIONS])
            read = self._connect()
        except BaseException:
            write.close()
            raise
        self.writes = Session("writes", write, dialect)
        self.reads = Session("reads", read, dialect)
        self._accounts: dict[str, Account] = {}
        self._listener: asyncio.Task[None] | None = None
        self.listening = False
        super().__init__()

    def _connect(self) -> PgConn:
        try:
            raw = self._psycopg.connect(
                self._conninfo, autocommit=True, connect_timeout=self._timeout, application_name="kfrouter"
            )
        except self._psycopg.Error as exc:
            raise StoreError(f"{self.location}: cannot connect: {str(exc).strip()}") from None
        return PgConn(raw, self.location)

    # ------------------------------------------------------------------ migrations

    def _migrate(self, raw: Any, scope: str, steps: Sequence[list[Any]]) -> None:
        """Apply ``steps`` (each a list of statements) past ``scope``'s version, one transaction each."""
        try:
            while True:
                with raw.transaction():
                    raw.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
                    for statement in BOOTSTRAP:
                        raw.execute(statement)
                    row = raw.execute(
                        "SELECT version FROM kfrouter.schema_version WHERE scope = %s", (scope,)
                    ).fetchone()
                    version = 0 if row is None else int(row[0])
                    if version > len(steps):
                        raise StoreError(
                            f"{self.location}: schema {scope!r} is at version {version}, newer than this "
                            f"kfrouter supports ({len(steps)}); upgrade kfrouter"
                        )
                    if version == len(steps):
                        return
                    for statement in steps[version]:
                        raw.execute(statement)
                    raw.execute(
                        "INSERT INTO kfrouter.schema_version(scope, version) VALUES (%s, %s) "
                        "ON CONFLICT (scope) DO UPDATE SET version = excluded.version, updated_at = now()",
                        (scope, version + 1),
                    )
                    log.info("store: %s schema %r migrated to version %d", self.location, scope, version + 1)
        except self._psycopg.Error as exc:
            raise _mapped(exc, self.location) from None

    def account(self, appid: str | None) -> Account:
        if appid is None:
            raise StoreError("a PostgreSQL store serves one account: open it with appid=...")
        check_appid(appid)
        hit = self._accounts.get(appid)
        if hit is not None:
            return hit
        schema = schema_name(appid)
        with self.writes.lock:
            raw = self.writes.conn.raw  # type: ignore[attr-defined]
            try:
                with raw.transaction():
                    raw.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
                    row = raw.execute(
                        "SELECT appid FROM kfrouter.accounts WHERE schema_name = %s", (schema,)
                    ).fetchone()
                    if row is not None and row[0] != appid:
                        raise StoreError(
                            f"appid {appid!r} would share schema {schema} with appid {row[0]!r} "
                            "(schema names are in lower case)"
                        )
                    if row is None:
                        raw.execute(
                            "INSERT INTO kfrouter.accounts(appid, schema_name) VALUES (%s, %s)",
                            (appid, schema),
                        )
            except self._psycopg.Error as exc:
                raise _mapped(exc, self.location) from None
            names = {"schema": schema, "appid": appid}
            self._migrate(raw, f"account:{appid}", [_script(s, names) for s in ACCOUNT_MIGRATIONS])
        account = Account(appid, f'"{schema}", kfrouter')
        self._accounts[appid] = account
        return account

    def schema_version(self, account: Account) -> int:
        scope = "shared" if account.appid is None else f"account:{account.appid}"
        with self.reads.transaction(SHARED, write=False) as c:
            row = c.execute("SELECT version FROM schema_version WHERE scope = ?", (scope,)).fetchone()
        return 0 if row is None else int(row[0])

    def _close_connections(self) -> None:
        self._stop_listening()
        with self.writes.lock:
            self.writes.conn.close()  # type: ignore[attr-defined]
        with self.reads.lock:
            self.reads.conn.close()  # type: ignore[attr-defined]

    # ------------------------------------------------------------------ LISTEN / NOTIFY

    def _started_waiting(self, loop: asyncio.AbstractEventLoop) -> None:
        task = self._listener
        if task is not None and not task.done() and task.get_loop() is loop:
            return
        self._listener = loop.create_task(self._listen(), name="kfrouter-store-listen")

    async def _listen(self) -> None:
        """LISTEN on ``kfrouter_push`` and wake the waiters of each notified appid; reconnect with a
        growing pause when the connection fails (waiters poll meanwhile)."""
        pause, most = _LISTEN_BACKOFF_S
        while not self.closed:
            try:
                conn = await self._listen_connection()
                async with conn:
                    await conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                    self.listening = True
                    pause = _LISTEN_BACKOFF_S[0]
                    async for note in conn.notifies():
                        self.wake(note.payload)
            except self._psycopg.Error as exc:
                log.warning("store: LISTEN %s failed (%s); polling until it is back", NOTIFY_CHANNEL, exc)
            finally:
                self.listening = False
            await asyncio.sleep(pause)
            pause = min(pause * 2, most)

    async def _listen_connection(self) -> Any:
        return await self._psycopg.AsyncConnection.connect(
            self._conninfo, autocommit=True, connect_timeout=self._timeout, application_name="kfrouter-listen"
        )

    def _stop_listening(self) -> None:
        task, self._listener = self._listener, None
        if task is None or task.done():
            return
        loop = task.get_loop()
        with contextlib.suppress(RuntimeError):  # the loop is closed: the task is gone with it
            loop.call_soon_threadsafe(task.cancel)

    async def stop_listening(self) -> None:
        """Stop the LISTEN task and wait for it (tests and orderly shutdown)."""
        task, self._listener = self._listener, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def schema_name(appid: str) -> str:
    """``acct_`` and the appid in lower case; a long one is cut and told apart by a hash (PostgreSQL
    names hold 63 bytes). The mapping is recorded in ``kfrouter.accounts``, which refuses collisions."""
    low = appid.lower()
    if len(low) <= 50:
        return f"acct_{low}"
    return f"acct_{low[:40]}_{hashlib.md5(appid.encode()).hexdigest()[:8]}"


def _script(script: str, names: dict[str, str]) -> list[Any]:
    """A migration script (several statements, run in one ``execute`` without parameters) with
    ``{schema}`` / ``{appid}`` filled in, quoted as an identifier and a literal."""
    from psycopg import sql

    if not names:
        return [script]
    return [sql.SQL(script).format(schema=sql.Identifier(names["schema"]), appid=sql.Literal(names["appid"]))]
