"""The supervisor page's history: the last 24 hours of the store in 15-minute slots, per group — waiting and
in session over time, service level and abandonment — as JSON and as SVG charts (``/supervisor/history``).

Rules of this module:

- The store is read through ``router.traffic`` (a read-only connection of its own, one snapshot), in a
  worker thread, so the daemon's loop and its writer never wait for it.
- One computation at a time; its result is kept ``ttl_s`` seconds (every viewer shares it). A page polls
  every minute, so a busy database is read about twice a minute whatever the number of viewers.
- No database (an in-memory store) is a ``LookupError`` with a message the page shows.
- Chart times are the daemon machine's local time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import datetime, tzinfo
from typing import Any

from kfrouter.router.report import HISTORY_S, build_history
from kfrouter.router.report_html import HISTORY_CHARTS, history_chart
from kfrouter.router.traffic import TrafficError, read_traffic


class HistoryCache:
    def __init__(
        self,
        path: Callable[[], str | None],
        now: Callable[[], float],
        *,
        ttl_s: float = 30.0,
        tz: tzinfo | None = None,
    ) -> None:
        self._path = path
        self._now = now
        self.ttl_s = ttl_s
        self.tz = tz
        self._lock = asyncio.Lock()
        self._data: dict[str, Any] | None = None
        self._at = -float("inf")
        self._charts: dict[str, str] = {}
        self.computed = 0  # how many times the store was read (tests, diagnostics)

    async def get(self) -> dict[str, Any]:
        async with self._lock:
            if self._data is None or time.monotonic() - self._at >= self.ttl_s:
                path = self._path()
                if path is None:
                    raise LookupError("no history: this daemon's store is in memory")
                now = self._now()
                try:
                    self._data = await asyncio.to_thread(_compute, path, now)
                except TrafficError as exc:
                    raise LookupError(f"no history: {exc}") from None
                self._at = time.monotonic()
                self._charts = {}
                self.computed += 1
            return self._data

    async def chart(self, name: str) -> str:
        if name not in HISTORY_CHARTS:
            raise KeyError(name)
        data = await self.get()
        svg = self._charts.get(name)
        if svg is None:
            tz = self.tz if self.tz is not None else datetime.now().astimezone().tzinfo
            assert tz is not None
            svg = self._charts[name] = history_chart(data, name, tz)
        return svg

    def invalidate(self) -> None:
        """Forget the cached history (the next request reads the store again)."""
        self._data = None


def _compute(path: str, now: float) -> dict[str, Any]:
    traffic = read_traffic(path, now - HISTORY_S, None)
    return build_history(traffic, now=now)
