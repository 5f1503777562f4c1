"""Group commit: the writes that arrive together share one transaction and one fsync, and each is
answered only once that transaction committed.

How it works: ``submit(job)`` queues a job (a function of the store, run in a write unit of its account);
one writer thread takes everything queued, runs it as ONE transaction, commits, then settles the jobs'
futures: asyncio futures through one ``call_soon_threadsafe`` per event loop and batch,
``concurrent.futures`` futures directly. While one batch is being committed (the fsync), the next
one queues up: under load batches grow by themselves, without any timer.

Rules:

- **Committed before answered.** A future is settled after COMMIT returned; a job whose batch failed to
  commit gets that error.
- **Order.** Jobs commit in the order they were submitted. A thread that uses the store directly (not
  through ``submit``) first commits what is queued itself (``drain_here``), so a direct write never
  overtakes a queued one and a direct read sees every write submitted before it.
- **A job that raises rolls back alone** (a refused lease, a bad argument); the others commit. A batch
  first runs without a savepoint per job (each costs two statements — two round trips with PostgreSQL);
  if a job raises, the whole transaction is rolled back and the batch runs again with every job in a
  savepoint. So a job may run twice, and must have no effect outside the store it is given.
- A job must only use the store it is given (plain method calls) and never wait for another job: it
  runs on the writer thread holding the write connection.
- ``max_batch`` bounds one transaction (a long batch holds the write lock, and SQLite's single writer).
- ``close()`` commits what is queued, then stops the thread; later ``submit`` calls raise ``StoreError``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kfrouter.router.edges.store_db import Account, Session
from kfrouter.router.edges.store_values import CommitStats, StoreError

log = logging.getLogger("kfrouter.store")

DEFAULT_MAX_BATCH = 512


@dataclass(slots=True)
class Job:
    """One unit of work: ``work(store)`` in a write unit of ``account`` carrying lease ``epoch``.
    Exactly one of ``future`` (a thread waits), ``afuture`` (a coroutine on ``loop`` awaits) or neither
    (deferred: a failure is logged, naming ``what``)."""

    store: Any
    account: Account
    epoch: int | None
    work: Callable[[Any], Any]
    what: str
    future: concurrent.futures.Future[Any] | None = None
    afuture: asyncio.Future[Any] | None = None
    loop: asyncio.AbstractEventLoop | None = None


_Result = tuple[Job, bool, Any]  # (job, ok, value or exception)


class _JobRaised(Exception):
    """A job of a batch run without savepoints raised: the batch is rolled back and run again."""


class GroupCommit:
    """The writer of one database (see the module docstring)."""

    def __init__(self, session: Session, *, name: str, max_batch: int = DEFAULT_MAX_BATCH) -> None:
        if not isinstance(max_batch, int) or max_batch < 1:
            raise StoreError(f"max_batch must be an integer >= 1, got {max_batch!r}")
        self._session = session
        self._name = name
        self.max_batch = max_batch
        self._queue: deque[Job] = deque()
        self._cv = threading.Condition(threading.Lock())
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._closed = False
        self._draining = False
        self._dead: BaseException | None = None
        self._batches = self._jobs = self._failed = self._largest = 0
        self.reruns = 0  # batches run again with a savepoint per job, after a job raised
        session.before_begin = self._drain_locked

    @property
    def stats(self) -> CommitStats:
        return CommitStats(self._batches, self._jobs, self._failed, self._largest)

    def pending(self) -> int:
        with self._cv:
            return len(self._queue)

    # ------------------------------------------------------------------ submitting

    def submit(self, job: Job) -> None:
        with self._cv:
            if self._stopping or self._closed:
                raise StoreError("the store is closed: no more writes")
            if self._dead is not None:
                raise StoreError(f"the store's writer thread died: {self._dead!r}")
            self._queue.append(job)
            self._cv.notify()
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()

    def drain_here(self) -> None:
        """Commit, on the calling thread, everything queued or being committed: afterwards every job
        submitted before this call is durable (or failed)."""
        if self._session.held_here():
            return  # inside a transaction of this thread: the queue is drained when it began
        with self._cv:
            idle = not self._queue and not self._draining
        if idle:
            return
        with self._session.lock:
            self._drain_locked()

    def close(self, timeout_s: float | None = None) -> None:
        """Commit what is queued and stop the writer thread."""
        with self._cv:
            if self._closed:
                return
            self._stopping = True
            self._cv.notify()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout_s)
        with self._session.lock:
            self._drain_locked()
        with self._cv:
            self._closed = True

    # ------------------------------------------------------------------ the writer

    def _run(self) -> None:
        try:
            while True:
                with self._cv:
                    while not self._queue and not self._stopping:
                        self._cv.wait()
                    if not self._queue:
                        return
                with self._session.lock:
                    self._drain_locked()
        except BaseException as exc:  # pragma: no cover - a bug; fail the waiters rather than hang them
            log.exception("store: the writer thread died")
            with self._cv:
                self._dead = exc
                left = list(self._queue)
                self._queue.clear()
            self._settle([(job, False, StoreError(f"the store's writer died: {exc!r}")) for job in left])
            raise

    def _drain_locked(self) -> None:
        """Commit batches until the queue is empty; the caller holds the session lock."""
        if self._draining:
            return
        self._draining = True
        try:
            while True:
                with self._cv:
                    if not self._queue:
                        return
                    n = min(len(self._queue), self.max_batch)
                    batch = [self._queue.popleft() for _ in range(n)]
                self._settle(self._commit(batch))
        finally:
            self._draining = False

    def _commit(self, batch: list[Job]) -> list[_Result]:
        results = self._commit_plain(batch) if len(batch) > 1 else None
        if results is None:
            results = self._commit_each(batch)
        self._batches += 1
        self._jobs += len(batch)
        self._largest = max(self._largest, len(batch))
        self._failed += sum(1 for _job, ok, _v in results if not ok)
        return results

    def _commit_plain(self, batch: list[Job]) -> list[_Result] | None:
        """The batch in one transaction without a savepoint per job (two statements a job fewer: a
        PostgreSQL round trip each). ``None`` when a job raised: everything was rolled back, and the
        batch runs again with a savepoint per job (``_commit_each``)."""
        session = self._session
        values: list[Any] = []
        try:
            with session.transaction(None, write=True):
                for job in batch:
                    try:  # entering the job's unit can refuse too (SQLite checks a lease's fence there)
                        with session.transaction(job.account, write=True, epoch=job.epoch, savepoint=False):
                            values.append(job.work(job.store))
                    except Exception as exc:
                        raise _JobRaised from exc
        except _JobRaised:
            self.reruns += 1
            return None
        except Exception as exc:  # BEGIN or COMMIT failed: nothing of this batch is durable
            return [(job, False, exc) for job in batch]
        return [(job, True, value) for job, value in zip(batch, values, strict=True)]

    def _commit_each(self, batch: list[Job]) -> list[_Result]:
        """The batch in one transaction, each job in a savepoint: a job that raises rolls back alone."""
        session = self._session
        results: list[_Result] = []
        try:
            with session.transaction(None, write=True):
                for job in batch:
                    try:
                        with session.transaction(job.account, write=True, epoch=job.epoch):
                            value = job.work(job.store)
                    except Exception as exc:
                        results.append((job, False, exc))
                    else:
                        results.append((job, True, value))
        except Exception as exc:  # BEGIN or COMMIT failed: nothing of this batch is durable
            done = [(job, False, exc if ok else value) for job, ok, value in results]
            results = done + [(job, False, exc) for job in batch[len(results) :]]
        return results

    def _settle(self, results: list[_Result]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[_Result]] = {}
        for result in results:
            job, ok, value = result
            if job.future is not None:
                if job.future.set_running_or_notify_cancel():
                    if ok:
                        job.future.set_result(value)
                    else:
                        job.future.set_exception(value)
            elif job.afuture is not None and job.loop is not None:
                by_loop.setdefault(job.loop, []).append(result)
            elif not ok:
                log.error("store: %s not committed: %s: %s", job.what, type(value).__name__, value)
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_settle_async, items)
            except RuntimeError:  # that event loop is closed: nobody awaits these any more
                log.warning("store: %d commit result(s) for a closed event loop dropped", len(items))


def _settle_async(items: list[_Result]) -> None:
    for job, ok, value in items:
        fut = job.afuture
        if fut is None or fut.done():
            continue  # the awaiting coroutine was cancelled; the write itself stands
        if ok:
            fut.set_result(value)
        else:
            fut.set_exception(value)
