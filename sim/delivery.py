"""What both fakes do with their deliveries to the developer's URL (sim/fake_push.py for WeChat's pushes,
sim/wecom_push.py for WeCom's callbacks): one HTTP client session, deliveries of one key (a customer, a kf
account) run one after another so they arrive in order, different keys run concurrently, and a log of
every attempt.

Rules: the tasks are owned here — ``settle()`` waits for them (including ones started meanwhile),
``close()`` cancels what is left and closes the session, ``reset()`` cancels and forgets the log; the log
keeps the newest ``max_log`` attempts (``MAX_LOG`` unless set). A subclass decides how one delivery is made (``_deliver``, which
must first wait for the delivery before it).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine, Hashable
from typing import Any

import aiohttp

MAX_LOG = 10_000  # attempts kept in the log (oldest dropped)

Delivery = Callable[[asyncio.Task[None] | None], Coroutine[Any, Any, None]]


class OrderedDeliveries:
    """Deliveries in order per key (see the module docstring). ``failures``: deliveries that used up
    their attempts."""

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._last: dict[Hashable, asyncio.Task[None]] = {}
        self.log: list[dict[str, Any]] = []
        self.max_log = MAX_LOG
        self.failures = 0

    async def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        return self._session

    def _schedule(self, key: Hashable, delivery: Delivery) -> None:
        """Run ``delivery(previous task of key)`` as a task: it waits for that one, so ``key``'s
        deliveries stay in order."""
        prev = self._last.get(key)
        task = asyncio.get_running_loop().create_task(delivery(prev))
        self._tasks.add(task)
        self._last[key] = task

        def done(t: asyncio.Task[None]) -> None:
            self._tasks.discard(t)
            if self._last.get(key) is t:
                del self._last[key]

        task.add_done_callback(done)

    @property
    def pending(self) -> int:
        return len(self._tasks)

    async def settle(self, timeout: float = 30.0) -> bool:
        """Wait until no delivery is in flight (including ones started meanwhile); False on timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._tasks:
            left = deadline - loop.time()
            if left <= 0:
                return False
            await asyncio.wait(set(self._tasks), timeout=left)
        return True

    async def close(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        for t in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        if self._session is not None:
            await self._session.close()
            self._session = None

    def reset(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        self.log.clear()
        self.failures = 0

    def _append(self, entry: dict[str, Any]) -> None:
        self.log.append(entry)
        if len(self.log) > self.max_log:
            del self.log[: len(self.log) - self.max_log]
