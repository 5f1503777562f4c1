"""The messages kfrouter sent to customers (their place in the queue, estimates, who serves them), written
to the store's input log as ``notified`` entries so that ``kfrouter report`` and the supervisor page's
history can count them (``router.traffic`` reads them back).

Rules of this module:

- A daemon observer (router/observe.py): an ``ApiCalled`` for ``message/custom/send`` that succeeded is one
  notification (``openid``, ``kind`` of message, the time it was sent). Failed sends are not counted.
- Written in batches, one transaction per batch, ``flush_after_s`` after the first unwritten one (or at
  ``max_batch``), so a burst of messages costs one commit instead of one fsync each. ``close()`` writes
  what is left (the daemon's shutdown). A crash loses at most the last ``flush_after_s`` of *counts*; no
  customer state lives here.
- A store error is logged, never raised into the daemon.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from kfrouter.router.edges.store import Store
from kfrouter.router.observe import ApiCalled, Observation
from kfrouter.router.traffic import NOTICE_KIND

log = logging.getLogger("kfrouter.notices")

SEND_ENDPOINT = "message/custom/send"


class NoticeLog:
    def __init__(
        self,
        store: Callable[[], Store | None],
        now: Callable[[], float],
        *,
        flush_after_s: float = 5.0,
        max_batch: int = 200,
    ) -> None:
        if not (flush_after_s > 0 and max_batch >= 1):
            raise ValueError("NoticeLog: flush_after_s > 0 and max_batch >= 1 required")
        self._store = store
        self._now = now
        self.flush_after_s = flush_after_s
        self.max_batch = max_batch
        self._pending: list[tuple[float, dict[str, Any]]] = []
        self._timer: asyncio.TimerHandle | None = None
        self.written = 0

    def observe(self, observation: Observation, now: float) -> None:
        """A daemon observer: a ``message/custom/send`` that succeeded is one notification."""
        if not isinstance(observation, ApiCalled):
            return
        call = observation
        if call.endpoint != SEND_ENDPOINT or not call.ok or not call.openid:
            return
        self._pending.append((self._now(), {"openid": call.openid, "kind": call.kind}))
        if len(self._pending) >= self.max_batch:
            self.flush()
        elif self._timer is None:
            try:
                self._timer = asyncio.get_running_loop().call_later(self.flush_after_s, self.flush)
            except RuntimeError:  # no loop (a synchronous caller): write now
                self.flush()

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, self._pending = self._pending, []
        store = self._store()
        if not batch or store is None:
            return
        try:
            with store.transaction():
                for t, entry in batch:
                    store.append_event(t, NOTICE_KIND, entry)
        except Exception:
            log.exception("store: %d notification(s) not recorded", len(batch))
            return
        self.written += len(batch)

    def close(self) -> None:
        self.flush()
