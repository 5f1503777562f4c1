"""Garbage-collector settings for a process that replays traces — a choice for the program, not the library.

A replay allocates millions of short-lived objects while keeping tens of thousands alive (customers
waiting, records within the sticky window): with CPython's default thresholds the cyclic collector
rescans that heap again and again (about 9% of a 200,000-customer replay, measured). The programs that own
their process — ``kfrouter sim run``, its worker processes, the benchmarks — call ``tune_for_replay()``
once; ``sim.runner`` itself never changes the process's collector.
"""

from __future__ import annotations

import gc

REPLAY_THRESHOLDS = (50_000, 20, 100)


def tune_for_replay() -> None:
    """Raise the collector's thresholds (never lower them) for the rest of this process."""
    old = gc.get_threshold()
    gc.set_threshold(*(max(o, n) for o, n in zip(old, REPLAY_THRESHOLDS, strict=True)))
