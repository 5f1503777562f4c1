"""The engine's inbox and the one task that drives the engine.

Everything that happens to the routing state — pushes, API outcomes, poll snapshots, admin actions —
is put into one ``asyncio.Queue`` and applied by one task, so the engine (which is not thread-safe and
not re-entrant) has a single thread of control and every input is applied in arrival order.

``drive()`` is that task's loop. It waits on the inbox with a timeout until the engine's next deadline
(``next_deadline()``, ``inf`` when none) or ``sweep_s`` (a periodic sweep, Chatwoot #10583), whichever
comes first; after every item, and whenever the wait times out or the deadline has passed, it calls
``tick(now)``. An exception from ``step`` is handed to ``on_error`` with its item and the loop goes on
(one bad input must never stop routing); ``CancelledError`` is re-raised, as always.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable
from typing import Any

from attrs import define, field

log = logging.getLogger("kfrouter.daemon")


@define
class Item:
    """One input: ``payload`` (an engine event, or a daemon-internal input the step understands),
    the future of a caller awaiting its result (``submit``), and how often it was retried already."""

    payload: Any
    future: asyncio.Future[Any] | None = None
    attempt: int = 0
    meta: dict[str, Any] = field(factory=dict)


_WAKE = object()  # a no-op item: makes the loop re-check deadlines at once


class Inbox:
    """FIFO of ``Item``s; unbounded (inputs are small and arrive at tens per second at most)."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[Item] = asyncio.Queue()

    def __len__(self) -> int:
        return self._queue.qsize()

    def put(self, payload: Any, *, future: asyncio.Future[Any] | None = None, attempt: int = 0) -> Item:
        item = Item(payload=payload, future=future, attempt=attempt)
        self._queue.put_nowait(item)
        return item

    def requeue(self, item: Item) -> None:
        """Put an item back at the end (e.g. to retry it once after a poll)."""
        self._queue.put_nowait(item)

    def wake(self) -> None:
        """Make the loop look at the engine's deadlines now (after the clock was moved, in tests)."""
        self._queue.put_nowait(Item(payload=_WAKE))

    async def get(self, timeout: float | None) -> Item | None:
        """The next item, or ``None`` when ``timeout`` seconds passed first (``None`` = wait forever)."""
        if self._queue.qsize():
            return self._queue.get_nowait()
        if timeout is not None and timeout <= 0:
            return None
        try:
            async with asyncio.timeout(timeout):
                return await self._queue.get()
        except TimeoutError:
            return None

    def drain_pending(self) -> list[Item]:
        """Take every queued item without processing it (shutdown: fail their futures)."""
        out: list[Item] = []
        while self._queue.qsize():
            out.append(self._queue.get_nowait())
        return out


async def drive(
    inbox: Inbox,
    *,
    step: Callable[[Item, float], Any],
    tick: Callable[[float], Any],
    next_deadline: Callable[[], float],
    now: Callable[[], float],
    on_error: Callable[[Item, Exception], None],
    sweep_s: float = 5.0,
) -> None:
    """Apply inbox items and engine timers forever (see the module docstring). Never returns."""
    while True:
        deadline = next_deadline()
        wait = sweep_s if math.isinf(deadline) else max(0.0, min(deadline - now(), sweep_s))
        item = await inbox.get(wait)
        if item is not None and item.payload is not _WAKE:
            try:
                result = step(item, now())
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                on_error(item, exc)
            else:
                if item.future is not None and not item.future.done():
                    item.future.set_result(result)
        if item is None or item.payload is _WAKE or now() >= next_deadline():
            try:
                tick(now())
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("engine tick failed; routing goes on")
