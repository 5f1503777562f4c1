"""Clocks: the one interface the daemon's parts read time through, and the one implementation.

``Clock`` is anything with ``now() -> float`` (unix seconds); tests inject their own. ``SteadyClock``
is unix seconds that never jump: wall time read once at construction (or ``start``), then moved by the
monotonic clock (the event loop's clock too), plus what ``advance()`` added. ``frozen=True`` stops the
monotonic part, so only ``advance()`` moves it (the fake WeChat's deterministic tests). The daemon and the
fake WeChat both use it.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    """Unix seconds: the daemon's is a ``SteadyClock``; tests inject their own."""

    def now(self) -> float: ...


class SteadyClock:
    """See the module docstring."""

    def __init__(self, start: float | None = None, *, frozen: bool = False) -> None:
        self._start = time.time() if start is None else float(start)
        self._mono0 = time.monotonic()
        self._offset = 0.0
        self.frozen = frozen

    def now(self) -> float:
        elapsed = 0.0 if self.frozen else time.monotonic() - self._mono0
        return self._start + elapsed + self._offset

    def advance(self, seconds: object) -> float:
        """Move the clock ``seconds`` (>= 0) forward; the new time."""
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not seconds >= 0:
            raise ValueError(f"advance: seconds must be a number >= 0, got {seconds!r}")
        self._offset += float(seconds)
        return self.now()
