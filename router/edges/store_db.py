"""What the store needs from a database, written once for SQLite and PostgreSQL: a ``Session`` (one
connection, used by one thread at a time) runs transactions with savepoint nesting, enters an account's
scope and checks the account's lease fence. (``router.edges.store_database.Database`` owns a write
session, a read session and the group-commit writer.)

Rules of this module:

- **One connection, one lock.** A session's lock is held for a whole transaction; the thread inside it is
  ``Session.owner``. Nested ``transaction()`` calls are savepoints (``sp1``, ``sp2``, ...), or with
  ``savepoint=False`` just part of the enclosing transaction (a store method joining its caller's).
- **A write unit** is the outermost transaction of one account: a direct call from the daemon, or one job
  of a group-commit batch (the batch itself is one transaction of no account, its jobs are savepoints).
  Entering a unit sets the account's scope (PostgreSQL: ``search_path``) and remembers the lease epoch
  the writer carries; the first write to the account's rows checks the fence (``Session.fence``, once
  per transaction and epoch: the check holds until the transaction ends), and the database keeps
  refusing stale writes on its own (see the backends).
- **Hooks after commit** (``Session.after_commit``) run once the outermost transaction committed, and are
  dropped with a rolled-back savepoint or transaction: a wake-up must not announce what was not written.
- Backends differ only through ``Dialect``: how a transaction begins, how a scope is entered, how the
  fence is checked, how a broken connection is replaced.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

from kfrouter.router.edges.store_values import StoreError

log = logging.getLogger("kfrouter.store")


class Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class Conn(Protocol):
    """A DB-API connection as the store uses it: ``execute(sql, params)`` with ``?`` placeholders."""

    def execute(self, sql: str, params: Any = ..., /) -> Cursor: ...


@dataclass(frozen=True, slots=True)
class Account:
    """Whose rows a transaction touches. ``appid`` None: a SQLite store opened without one (no leases);
    ``scope``: the backend's way in (PostgreSQL: the ``search_path`` of the account's schema)."""

    appid: str | None
    scope: str | None = None


class Dialect(Protocol):
    def begin(self, conn: Conn, write: bool) -> None: ...

    def enter(self, conn: Conn, account: Account) -> None: ...

    def fence(self, conn: Conn, appid: str, epoch: int | None) -> None:
        """Raise ``StaleLease`` unless the account is not leased, or leased with ``epoch``, unexpired."""
        ...

    def ready(self, conn: Conn) -> Conn:
        """The connection to begin a transaction on: ``conn``, or a new one if it broke."""
        ...


class Session:
    """One connection and its transactions (see the module docstring)."""

    def __init__(self, name: str, conn: Conn, dialect: Dialect) -> None:
        self.name = name
        self.conn = conn
        self.dialect = dialect
        self.lock = threading.RLock()
        self.depth = 0
        self.owner: int | None = None
        self.before_begin: Callable[[], None] | None = None
        self._account: Account | None = None
        self._epoch: int | None = None
        # What the connection's open transaction already did, by the level that did it: the scope set
        # ("scope") and each fence checked ("fence:<appid>" -> epoch). A RELEASE hands a level's facts to
        # its parent, a ROLLBACK TO forgets them, the end of the transaction clears them all.
        self._facts: dict[str, tuple[int, object]] = {}
        self._after: list[Callable[[], None]] = []

    def held_here(self) -> bool:
        """Whether the calling thread is inside a transaction of this session."""
        return self.owner == threading.get_ident()

    def inside(self, account: Account) -> Conn | None:
        """The connection, if the calling thread is inside a unit of ``account`` (then a store call just
        joins it); else None."""
        if self.owner == threading.get_ident() and self._account == account:
            return self.conn
        return None

    @contextmanager
    def transaction(
        self, account: Account | None, *, write: bool, epoch: int | None = None, savepoint: bool = True
    ) -> Iterator[Conn]:
        """Begin (or, nested, a savepoint — or nothing with ``savepoint=False``: the block is then part of
        the enclosing transaction, which an exception from it must end); commit when the block ends,
        roll back if it raises."""
        with self.lock:
            depth = self.depth
            if depth == 0:
                self._begin(write)
            elif not savepoint:
                with self._unit(account, epoch):
                    yield self.conn
                return
            else:
                self.conn.execute(f"SAVEPOINT sp{depth}")
            self.depth = depth + 1
            mark = len(self._after)
            ok = False
            try:
                with self._unit(account, epoch):
                    yield self.conn
                ok = True
            finally:
                if not ok:
                    del self._after[mark:]
                self.depth = depth
                if depth == 0:
                    self.owner = None
                self._finish(depth, ok)

    def _begin(self, write: bool) -> None:
        if self.before_begin is not None:
            self.before_begin()
        self.conn = self.dialect.ready(self.conn)
        try:
            self.dialect.begin(self.conn, write)
        except StoreError:  # the connection died while idle (server restart): one new try
            fresh = self.dialect.ready(self.conn)
            if fresh is self.conn:
                raise
            self.conn = fresh
            self.dialect.begin(self.conn, write)
        self._facts.clear()
        self.owner = threading.get_ident()

    @contextmanager
    def _unit(self, account: Account | None, epoch: int | None) -> Iterator[None]:
        """Enter ``account`` (a write unit carrying ``epoch``) unless the block is already inside it."""
        if account is None or account == self._account:
            yield
            return
        if self._account is not None:
            raise StoreError(
                f"a transaction of account {account.appid!r} cannot run inside one of {self._account.appid!r}"
            )
        if self._fact("scope") != account.scope:
            self.dialect.enter(self.conn, account)
            self._facts["scope"] = (self.depth, account.scope)
        self._account, self._epoch = account, epoch
        try:
            yield
        finally:
            self._account, self._epoch = None, None

    def _fact(self, name: str) -> object:
        hit = self._facts.get(name)
        return None if hit is None else hit[1]

    def _finish(self, depth: int, ok: bool) -> None:
        inner = depth + 1
        if ok:
            try:
                self.conn.execute("COMMIT" if depth == 0 else f"RELEASE SAVEPOINT sp{depth}")
            except BaseException:
                self._rollback(depth)
                raise
            if depth == 0:
                self._facts.clear()
                hooks, self._after = self._after, []
                for hook in hooks:
                    try:
                        hook()
                    except Exception:
                        log.exception("store: a hook after commit failed")
            else:  # what the savepoint did now belongs to the enclosing level
                for name, (level, value) in list(self._facts.items()):
                    if level >= inner:
                        self._facts[name] = (depth, value)
            return
        self._rollback(depth)

    def _rollback(self, depth: int) -> None:
        if depth == 0:
            self._after.clear()
            self._facts.clear()
        else:
            for name, (level, _value) in list(self._facts.items()):
                if level > depth:
                    del self._facts[name]
        try:
            if depth == 0:
                self.conn.execute("ROLLBACK")
            else:
                self.conn.execute(f"ROLLBACK TO SAVEPOINT sp{depth}")
                self.conn.execute(f"RELEASE SAVEPOINT sp{depth}")
        except Exception as exc:  # the connection broke or the transaction is already gone
            log.debug("store: %s rollback at depth %d: %s", self.name, depth, exc)

    def fence(self) -> None:
        """Check the lease fence of the current write unit (the caller is about to write the account's
        rows) — once per transaction and epoch: the check holds until the transaction ends (PostgreSQL
        keeps the lease row locked, SQLite the whole database)."""
        account = self._account
        if account is None or account.appid is None:
            return
        key = f"fence:{account.appid}"
        hit = self._facts.get(key)
        if hit is not None and hit[1] == self._epoch:
            return
        self.dialect.fence(self.conn, account.appid, self._epoch)
        self._facts[key] = (self.depth, self._epoch)

    def after_commit(self, hook: Callable[[], None]) -> None:
        """Run ``hook`` once the outermost transaction commits (dropped if it rolls back)."""
        if self.depth == 0:
            raise StoreError("after_commit needs an open transaction")
        self._after.append(hook)
