"""A database behind the store — a SQLite file or a PostgreSQL database: its two sessions (writes,
reads), its group-commit writer and the wake-ups of shared-inbox waiters; shared by the ``Store`` of
every account opened on it. The backends (``store_sqlite``, ``store_pg``) subclass it.

Rules: ``close()`` commits what was submitted before it closes the connections; ``wake(appid)`` may be
called from any thread (it hops to the waiter's event loop).
"""

from __future__ import annotations

import abc
import asyncio
import logging
import threading
from typing import ClassVar

from kfrouter.router.edges.store_commit import GroupCommit
from kfrouter.router.edges.store_db import Account, Session

log = logging.getLogger("kfrouter.store")


class Database(abc.ABC):
    """A SQLite file or a PostgreSQL database: its sessions, its group-commit writer (``commits``) and the
    wake-ups of shared-inbox waiters. Shared by every ``Store`` opened on it."""

    kind: ClassVar[str]
    location: str
    writes: Session
    reads: Session

    def __init__(self) -> None:
        self.commits = GroupCommit(self.writes, name=f"kfrouter-store-{self.kind}")
        self._waiters: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Event]] = {}
        self._waiters_lock = threading.Lock()
        self.closed = False

    @abc.abstractmethod
    def account(self, appid: str | None) -> Account:
        """Register (and migrate) an account; its ``Account`` for transactions."""

    @abc.abstractmethod
    def schema_version(self, account: Account) -> int: ...

    @abc.abstractmethod
    def _close_connections(self) -> None: ...

    def close(self) -> None:
        """Commit what was submitted, stop the writer, close the connections (idempotent)."""
        if self.closed:
            return
        try:
            self.commits.close()
            stats = self.commits.stats
            if stats.jobs:
                log.info(
                    "store %s: %d writes committed in %d transactions (largest %d, %d refused)",
                    self.location,
                    stats.jobs,
                    stats.batches,
                    stats.largest,
                    stats.failed,
                )
        finally:
            self.closed = True
            self._close_connections()

    # ------------------------------------------------------------------ shared-inbox wake-ups

    async def wait_pushes(self, appid: str, timeout_s: float) -> bool:
        """Wait until a push for ``appid`` may have reached the shared inbox, at most ``timeout_s``;
        True if woken (a notification), False on timeout (the caller polls either way)."""
        event = self._event(appid)
        try:
            async with asyncio.timeout(timeout_s):
                await event.wait()
        except TimeoutError:
            return False
        event.clear()  # before the caller's next poll: a push after it wakes the next wait
        return True

    def _event(self, appid: str) -> asyncio.Event:
        loop = asyncio.get_running_loop()
        with self._waiters_lock:
            hit = self._waiters.get(appid)
            if hit is None or hit[0] is not loop:
                hit = (loop, asyncio.Event())
                self._waiters[appid] = hit
        self._started_waiting(loop)
        return hit[1]

    def _started_waiting(self, loop: asyncio.AbstractEventLoop) -> None:
        """Hook: a backend with notifications starts listening on ``loop`` here (SQLite has none: its
        waiters are woken by writes of this process, and poll)."""
        return

    def wake(self, appid: str) -> None:
        """Wake the waiters of ``appid`` (from any thread)."""
        with self._waiters_lock:
            hit = self._waiters.get(appid)
        if hit is None:
            return
        loop, event = hit
        try:
            loop.call_soon_threadsafe(event.set)
        except RuntimeError:  # that loop is closed
            with self._waiters_lock:
                if self._waiters.get(appid) is hit:
                    del self._waiters[appid]
