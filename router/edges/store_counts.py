"""The stored counts of accounts this process does not serve, read from the shared PostgreSQL: what
``kfrouter accounts list`` shows for an account another daemon serves (docs/scale-out.md).

``CountsReader(url, keepalive=...)``; ``read(appids)`` returns, for each appid, its ``StoredCounts``
(customers waiting, sessions open) or why they could not be read (a ``str``). It blocks: call it from a
worker thread.

Rules:

- **Read-only, and it never stalls an owner.** A connection of its own (opened at the first read,
  replaced once it broke) — never the store's writer or reader, the lease keeper's or a pickup's, so it
  takes no lock this process's own accounts wait for — in a read-only session. A read is one statement
  in autocommit over every account asked (and, once per account, a look-up of its schema): a plain
  SELECT takes only ACCESS SHARE locks, which no write of the owner waits for, and holds them for that
  statement alone; no lease row, no fence, no advisory lock. ``lock_timeout`` and ``statement_timeout``
  (``timeout_s``) bound it: tables locked by a schema change give a reason, not a wait.
- A count that cannot be read is a reason (``str``: what failed, the database's words), never an
  exception; every account of a read that failed gets that reason.
- The numbers are what the owner has committed (its engine may be one group commit ahead): customers in
  ``waiting`` without a reservation (a customer being assigned is not waiting, as in the engine's
  ``queue_length()``) and rows of ``sessions`` that are sessions now (``store.IN_SESSION``).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from kfrouter.router.edges.store import IN_SESSION
from kfrouter.router.edges.store_pg import conninfo, describe, driver
from kfrouter.router.edges.store_values import StoredCounts, StoreError

NOT_STORED = "nothing stored: the account was never opened on this database"


class CountsReader:
    """See the module docstring."""

    def __init__(
        self,
        url: str,
        *,
        keepalive: Mapping[str, str] | None = None,
        timeout_s: float = 2.0,
        connect_timeout_s: float = 5.0,
    ) -> None:
        self._psycopg = driver()
        self.location = describe(url)
        self._conninfo = conninfo(url, keepalive)
        self._timeout_ms = max(1, round(timeout_s * 1000))
        self._connect_timeout = max(1, round(connect_timeout_s))
        self._conn: Any = None
        self._schemas: dict[str, str] = {}  # appid -> its schema (kfrouter.accounts; it never changes)
        self._lock = threading.Lock()

    def read(self, appids: Sequence[str]) -> dict[str, StoredCounts | str]:
        """Each account's stored counts, or why they could not be read (see the module docstring)."""
        asked = list(dict.fromkeys(appids))
        if not asked:
            return {}
        with self._lock:
            try:
                conn = self._connection()
                counts = self._count(conn, self._schemas_of(conn, asked))
            except (self._psycopg.Error, StoreError) as exc:
                self._drop_broken()
                why = _first_line(exc)
                return {appid: why for appid in asked}
        return {appid: counts.get(appid, NOT_STORED) for appid in asked}

    def close(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.close()

    def _connection(self) -> Any:
        conn = self._conn
        if conn is not None and not (conn.closed or conn.broken):
            return conn
        self._drop_broken()
        try:
            conn = self._psycopg.connect(
                self._conninfo,
                autocommit=True,
                connect_timeout=self._connect_timeout,
                application_name="kfrouter-counts",
            )
        except self._psycopg.Error as exc:
            raise StoreError(f"cannot connect to {self.location}: {_first_line(exc)}") from None
        try:
            conn.execute(
                "SET default_transaction_read_only = on; "
                f"SET statement_timeout = {self._timeout_ms}; SET lock_timeout = {max(1, self._timeout_ms // 2)}",
                prepare=False,
            )
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        return conn

    def _drop_broken(self) -> None:
        conn = self._conn
        if conn is not None and (conn.closed or conn.broken):
            self._conn = None
            with contextlib.suppress(Exception):
                conn.close()

    def _schemas_of(self, conn: Any, appids: list[str]) -> dict[str, str]:
        unknown = [a for a in appids if a not in self._schemas]
        if unknown:
            rows = conn.execute(
                "SELECT appid, schema_name FROM kfrouter.accounts WHERE appid = ANY(%s)",
                (unknown,),
                prepare=False,
            ).fetchall()
            self._schemas.update({r[0]: r[1] for r in rows})
        return {a: self._schemas[a] for a in appids if a in self._schemas}

    def _count(self, conn: Any, schemas: Mapping[str, str]) -> dict[str, StoredCounts]:
        if not schemas:
            return {}
        from psycopg import sql

        one = sql.SQL(
            "SELECT {appid}, "
            "(SELECT count(*) FROM {schema}.waiting w "
            "WHERE NOT EXISTS (SELECT 1 FROM {schema}.reservations r WHERE r.openid = w.openid)), "
            f"(SELECT count(*) FROM {{schema}}.sessions WHERE {IN_SESSION})"
        )
        query = sql.SQL(" UNION ALL ").join(
            one.format(appid=sql.Literal(appid), schema=sql.Identifier(schema))
            for appid, schema in schemas.items()
        )
        rows = conn.execute(query, prepare=False).fetchall()
        return {r[0]: StoredCounts(int(r[1]), int(r[2])) for r in rows}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
