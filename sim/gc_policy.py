"""Garbage-collector settings for a process that replays traces — a choice for the program, not the library.

A replay allocates millions of short-lived objects while keeping tens of thousands alive (customers
waiting, records within the sticky window): with CPython's default thresholds the cyclic collector
rescans that heap again and again (about 9% of a 200,000-customer replay, measured). The programs that own
their process — ``kfrouter sim run``, its worker processes, the benchmarks — call ``tune_for_replay()``
once; ``sim.runner`` itself never changes the process's collector.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

REPLAY_THRESHOLDS = (50_000, 20, 100)


def tune_for_replay() -> None:
    """Raise the collector's thresholds (never lower them) for the rest of this process."""
    old = gc.get_threshold()
    gc.set_threshold(*(max(o, n) for o, n in zip(old, REPLAY_THRESHOLDS, strict=True)))


@contextlib.contextmanager
def replay_gc() -> Iterator[None]:
    """``tune_for_replay()`` for the block, then the thresholds it found (a benchmark timing kfrouter as
    ``kfrouter sim run`` runs it, beside tools that run with their defaults)."""
    old = gc.get_threshold()
    tune_for_replay()
    try:
        yield
    finally:
        gc.set_threshold(*old)
