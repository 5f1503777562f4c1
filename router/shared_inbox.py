"""The shared push inbox at the daemon level: a push that reached a daemon which does not own the account
is kept in the database for the owner, and the owner picks it up (docs/scale-out.md).

Behind a load balancer WeChat's pushes reach any daemon. The one that receives a push for an account it
does not serve has verified and decrypted it (it knows every account's credentials) and calls
``keep_for_owner``: one insert through the store's group commit (not fenced: anyone may receive), then it
answers WeChat ``success`` — within WeChat's 5-second deadline, whoever owns the account and whatever it
is doing. The owner runs one ``Pickup`` per account it serves:

- **order**: a customer's pushes may reach different daemons (a create at one, the close at another);
  the owner applies what waits in the inbox before each push that comes to it directly (``pick_up``),
  so they are applied in the order WeChat sent them;
- it reads what waits (oldest first), hands each push to ``handle`` and acknowledges it; it then waits
  for ``NOTIFY kfrouter_push`` (one LISTEN connection per process, ``Store.wait_shared_pushes``) or at most
  ``poll_s`` — the polling fallback for a notification lost while that connection was down;
- **nothing lost**: a push leaves the inbox only by an acknowledgement, which is fenced (a stale owner's
  is refused, and the push stays for the new owner); a push whose handling failed stays and is tried
  again at the next poll (``max_attempts`` times in this process, then left for an operator — logged);
- **nothing handled twice**: ``handle`` applies the push under its dedup key (``Store.claim_push`` in the
  same write unit: the processed-keys table, fenced too) and may acknowledge in that same unit (it then
  returns True); otherwise the pickup acknowledges after it — a crash in between leaves the push in the
  inbox, and the next owner's ``claim_push`` finds the key and applies nothing. The same holds for a
  WeChat retry kept again after the owner took the first delivery (the inbox's own uniqueness covers
  only what still waits).
- ``StaleLease`` from ``handle`` or an acknowledgement ends ``run()``: this daemon lost the account (the
  lease keeper stops it).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from functools import partial

from kfrouter.router.edges.store import SharedPush, StaleLease, Store, StoreError

log = logging.getLogger("kfrouter.shared_inbox")

Handle = Callable[[SharedPush], Awaitable[bool]]


async def keep_for_owner(
    store: Store, dedup_key: str, raw: str, *, received_by: str, query: str = "", now: float | None = None
) -> bool:
    """Commit a verified, decrypted push of ``store``'s account for its owner (the next group commit);
    ``False`` if that push was already kept (WeChat's retry). Answer WeChat once this returned."""
    at = time.time() if now is None else now
    kept: bool = await store.commit(
        partial(
            Store.put_shared_push,
            dedup_key=dedup_key,
            raw=raw,
            received_at=at,
            received_by=received_by,
            query=query,
        )
    )
    return kept


class Pickup:
    """The owner's side for one account (see the module docstring). ``handle(push)`` applies one push and
    returns True if it acknowledged it itself (``Store.ack_shared_push`` in its write unit)."""

    def __init__(
        self,
        store: Store,
        handle: Handle,
        *,
        poll_s: float = 2.0,
        batch: int = 100,
        max_attempts: int = 5,
        reader: Store | None = None,
        executor: Executor | None = None,
    ) -> None:
        if not poll_s > 0:
            raise ValueError(f"poll_s must be > 0, got {poll_s!r}")
        if batch < 1 or max_attempts < 1:
            raise ValueError(f"batch and max_attempts must be >= 1, got {batch!r}, {max_attempts!r}")
        self.store = store
        # what the inbox is read through: ``store`` by default; a store of a database object of its own
        # lets a read skip the daemon's group-commit queue (a store's read first commits what is queued)
        self.reader = reader if reader is not None else store
        self._executor = executor  # the threads that read (None: asyncio's default)
        self._handle = handle
        self._poll_s = poll_s
        self._batch = batch
        self._max_attempts = max_attempts
        self._failures: dict[int, int] = {}
        self._lock = asyncio.Lock()  # one pick-up at a time: the task's and a direct push's (``pick_up``)
        self.handled = 0  # pushes applied and acknowledged by this pickup
        self.woken = 0  # waits ended by a notification (not the poll timeout)

    async def run(self) -> None:
        """Pick up until cancelled or the lease is lost (``StaleLease``: returns)."""
        try:
            while True:
                full = await self.pick_up()
                if not full and await self.reader.wait_shared_pushes(self._poll_s):
                    self.woken += 1
        except StaleLease as exc:
            log.warning(
                "shared inbox of %s: this daemon lost the account (%s); pickup stopped", self.store.appid, exc
            )

    async def pick_up(self) -> bool:
        """Handle what waits now; True if a whole batch was read (more may wait). The owner also calls it
        before it applies a push that came to it directly: a customer's earlier pushes that went to
        another daemon are applied first (WeChat sends a customer's next push only once the previous one
        was answered, so those are in the inbox by then)."""
        async with self._lock:
            return await self._pick_up()

    async def _pick_up(self) -> bool:
        try:
            pushes = await asyncio.get_running_loop().run_in_executor(
                self._executor, self.reader.shared_pushes, self._batch
            )
        except StaleLease:
            raise
        except StoreError as exc:
            log.warning("shared inbox of %s: cannot read (%s); trying again later", self.store.appid, exc)
            return False
        todo = [p for p in pushes if self._failures.get(p.id, 0) < self._max_attempts]
        for push in todo:
            await self._one(push)
        return len(pushes) == self._batch and bool(todo)

    async def _one(self, push: SharedPush) -> None:
        try:
            acked = await self._handle(push)
            if not acked:
                await self.store.commit(partial(Store.ack_shared_push, push_id=push.id))
        except (StaleLease, asyncio.CancelledError):
            raise
        except Exception as exc:
            n = self._failures[push.id] = self._failures.get(push.id, 0) + 1
            if n >= self._max_attempts:
                log.error(
                    "shared inbox of %s: push %s (%s) failed %d times (%s); left in the inbox",
                    push.appid,
                    push.id,
                    push.dedup_key,
                    n,
                    exc,
                )
            else:
                log.warning(
                    "shared inbox of %s: push %s failed (%s); tried again later", push.appid, push.id, exc
                )
            return
        self._failures.pop(push.id, None)
        self.handled += 1
