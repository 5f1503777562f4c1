"""The WeCom intake: on a ``kf_msg_or_event`` callback, pull ``kf/sync_msg`` for that kf account and hand
every new message on, exactly in stream order, saving the cursor only after each batch was handled.

Rules (spec wecom-kf.md §A3 and the lessons of CowAgent's ``wechat_kf``):

* **One pull at a time per open_kfid.** A lock per account: a retried callback (WeCom re-sends after
  5 s) or a second callback waits behind the pull in flight, then pulls from the cursor that pull
  saved — so it finds nothing it has not seen, and no message is handed on twice.
* **Cursor after commit.** For each page, every message goes to ``on_message`` (awaited, in order), then
  the optional ``commit`` hook runs (the daemon makes the batch durable there), and only then is the
  page's ``next_cursor`` saved. If a handler raises, the cursor stays where it was and the error
  propagates: the next callback re-delivers the page (at least once; handlers dedupe by ``msgid``).
* **No replay on a first start.** With no saved cursor the pull starts from the oldest message WeCom
  keeps (3 days); messages sent before ``history_before`` (the puller's creation time by default) are
  skipped, later ones are handed on, so a customer writing during the first start is not lost. The
  cut-off is saved at once in place of the cursor (``!since:<unix s>``, a value WeCom never uses), so a
  crash before the first real cursor is saved starts again from the same cut-off, not a later one.
* **Tokens.** The callback's ``token`` lifts the strict rate limit; if WeCom says it is invalid or
  expired (95007) the pull goes on once without it.
* **Bounded.** At most ``max_pages`` pages per pull (``has_more`` may be 1 with an empty page); what is
  left is pulled on the next callback. Unknown open_kfids (not in ``open_kfids``) are ignored.
* ``notify(callback)`` starts the pull as a task owned here and returns at once (the webhook must
  answer WeCom within 5 s); failures are logged and counted. ``aclose()`` waits for pulls in flight
  under a timeout, then cancels the rest.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Collection

from attrs import define

from kfrouter.router.edges.wecom_client import SYNC_LIMIT_MAX, KfMessage, SyncPage, WeComKfClient
from kfrouter.router.edges.wecom_cursor import CursorStore
from kfrouter.router.edges.wecom_errors import MsgTokenInvalid
from kfrouter.router.wechat.wecom_kf import KfCallback

log = logging.getLogger("kfrouter.wecom.sync")

SINCE_PREFIX = "!since:"  # a first start's saved cut-off (WeCom's cursors are letters and digits)

OnMessage = Callable[[KfMessage], Awaitable[None]]
Commit = Callable[[str], Awaitable[None]]


@define
class PullResult:
    """What one pull did: pages read, messages handed on, old messages skipped on a first start."""

    open_kfid: str
    pages: int = 0
    handed: int = 0
    skipped_history: int = 0
    complete: bool = True  # False when max_pages stopped it with more to read


@define
class SyncStats:
    """The puller's counters over its life (``puller.stats``): pulls, pages read, messages handed on and
    skipped, failed pulls, callbacks of accounts not served, pulls that went on without the callback's
    token."""

    pulls: int = 0
    pages: int = 0
    handed: int = 0
    skipped_history: int = 0
    failures: int = 0
    ignored_callbacks: int = 0
    token_fallbacks: int = 0


class KfSyncPuller:
    """Pulls ``kf/sync_msg`` per kf account on callbacks; see the module docstring.

    ``source``: the API client (its ``sync_msg``); ``cursors``: where cursors live; ``on_message``:
    awaited for every new message; ``commit(open_kfid)``: awaited after each batch, before its cursor is
    saved; ``open_kfids``: the accounts served (None: any); ``clock``: unix seconds (for
    ``history_before``).
    """

    def __init__(
        self,
        source: WeComKfClient,
        cursors: CursorStore,
        on_message: OnMessage,
        *,
        commit: Commit | None = None,
        open_kfids: Collection[str] | None = None,
        history_before: float | None = None,
        clock: Callable[[], float] = time.time,
        limit: int = SYNC_LIMIT_MAX,
        max_pages: int = 100,
    ) -> None:
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= SYNC_LIMIT_MAX:
            raise ValueError(f"limit must be an integer in 1..{SYNC_LIMIT_MAX}, got {limit!r}")
        if isinstance(max_pages, bool) or not isinstance(max_pages, int) or max_pages < 1:
            raise ValueError(f"max_pages must be an integer >= 1, got {max_pages!r}")
        self._source = source
        self._cursors = cursors
        self._on_message = on_message
        self._commit = commit
        self._open_kfids = frozenset(open_kfids) if open_kfids is not None else None
        self.history_before = float(clock() if history_before is None else history_before)
        self._limit = limit
        self._max_pages = max_pages
        self._locks: dict[str, asyncio.Lock] = {}
        self._tasks: set[asyncio.Task[PullResult | None]] = set()
        self.stats = SyncStats()

    def _lock(self, open_kfid: str) -> asyncio.Lock:
        lock = self._locks.get(open_kfid)
        if lock is None:
            lock = self._locks[open_kfid] = asyncio.Lock()
        return lock

    def serves(self, open_kfid: str) -> bool:
        return self._open_kfids is None or open_kfid in self._open_kfids

    async def pull(self, open_kfid: str, token: str | None = None) -> PullResult:
        """Pull everything new for ``open_kfid`` (waiting for a pull in flight on the same account)."""
        if not isinstance(open_kfid, str) or not open_kfid:
            raise ValueError(f"open_kfid must be a non-empty string, got {open_kfid!r}")
        async with self._lock(open_kfid):
            return await self._pull_locked(open_kfid, token)

    async def _pull_locked(self, open_kfid: str, token: str | None) -> PullResult:
        result = PullResult(open_kfid=open_kfid)
        self.stats.pulls += 1
        cursor, cutoff = self._start(open_kfid)
        for _ in range(self._max_pages):
            page = await self._page(open_kfid, cursor, token)
            if page is None:  # 95007 with a token: go on without it
                token = None
                page = await self._page(open_kfid, cursor, None)
                assert page is not None
            result.pages += 1
            self.stats.pages += 1
            for msg in page.messages:
                if cutoff is not None and msg.send_time < cutoff:
                    result.skipped_history += 1
                    self.stats.skipped_history += 1
                    continue
                await self._on_message(msg)
                result.handed += 1
                self.stats.handed += 1
            if self._commit is not None:
                await self._commit(open_kfid)
            if page.next_cursor:
                self._cursors.set_cursor(open_kfid, page.next_cursor)
                cursor = page.next_cursor
            if not page.has_more:
                return result
        result.complete = False
        log.warning(
            "sync_msg for %s: stopped after %d pages with more to read; the next callback goes on",
            open_kfid,
            self._max_pages,
        )
        return result

    def _start(self, open_kfid: str) -> tuple[str | None, int | None]:
        """The cursor to pull from and, on a first start, the history cut-off (saved at once)."""
        saved = self._cursors.get_cursor(open_kfid)
        if saved is None:
            cutoff = int(self.history_before)
            self._cursors.set_cursor(open_kfid, f"{SINCE_PREFIX}{cutoff}")
            return None, cutoff
        if saved.startswith(SINCE_PREFIX):
            try:
                return None, int(saved[len(SINCE_PREFIX) :])
            except ValueError:
                raise ValueError(f"saved cursor of {open_kfid} is malformed: {saved!r}") from None
        return saved, None

    async def _page(self, open_kfid: str, cursor: str | None, token: str | None) -> SyncPage | None:
        try:
            return await self._source.sync_msg(open_kfid, cursor=cursor, token=token, limit=self._limit)
        except MsgTokenInvalid:
            if token is None:
                raise
            self.stats.token_fallbacks += 1
            log.info(
                "sync_msg for %s: the callback's token was refused (95007); pulling without it", open_kfid
            )
            return None

    # ------------------------------------------------------------------ callbacks
    def notify(self, callback: KfCallback) -> asyncio.Task[PullResult | None] | None:
        """Start pulling for ``callback``'s account in the background; None when the account is not
        served. The task never raises: errors are logged and counted in ``stats.failures``."""
        if not self.serves(callback.open_kfid):
            self.stats.ignored_callbacks += 1
            log.info("kf callback for %s, which is not a configured kf account; ignored", callback.open_kfid)
            return None
        task = asyncio.get_running_loop().create_task(self._guarded(callback))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _guarded(self, callback: KfCallback) -> PullResult | None:
        try:
            return await self.pull(callback.open_kfid, callback.token)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.stats.failures += 1
            log.error("sync_msg for %s failed, cursor kept: %s", callback.open_kfid, exc)
            return None

    @property
    def pending(self) -> int:
        return len(self._tasks)

    async def aclose(self, timeout: float = 10.0) -> None:
        """Wait up to ``timeout`` s for pulls in flight, then cancel the rest (their cursors stay saved
        up to the last handled batch)."""
        if self._tasks:
            _done, pending = await asyncio.wait(set(self._tasks), timeout=timeout)
            for t in pending:
                t.cancel()
            if pending:
                await asyncio.wait(pending)
