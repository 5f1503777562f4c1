"""Counting recorded traffic: one ``Tally`` per row of a report (a day, an hour, a group, an agent, a 15-minute
slot), percentiles, and time spans spread over fixed-width slots.

Pure: no I/O, no clock. ``router.report`` feeds it cases read by ``router.traffic``.

Definitions (docs/observability.md, "kfrouter report", repeats them for people):

- a **request** is a case of the session log: one request for a human. ``requests = served + abandoned +
  waiting + superseded``;
- **served**: the customer got an agent (the session started, whether or not it has ended);
- **abandoned**: the case ended without an agent (cancelled, removed by a supervisor, ...), except
  **superseded** (the customer asked again before being served: the newer case counts instead);
- **waiting**: still waiting at the end of the window;
- **wait**: from the request to the session's start, over served customers (p50/p90/p95: linear
  interpolation between the closest ranks);
- **service level at T seconds**: customers served within T s / (served + abandoned); customers still
  waiting and superseded cases are left out;
- **handle time**: from the session's start to its end, over sessions that ended;
- **utilisation**: busy seconds / capacity-seconds, where capacity-seconds are the agents' online seconds
  times their max sessions and busy seconds the session-seconds during which the session's agent was
  online: the share of the agents' session slots that were in use while they were online (1.0 = every
  slot of every online agent busy all the time). ``session_s`` counts every session-second, online or not;
- **notifications**: messages sent to waiting customers (place in the queue, estimates, ...).
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import MutableSequence, Sequence
from typing import Any

ROLE_TIME = "time"  # a day, an hour or a slot: every field applies
ROLE_GROUP = "group"
ROLE_AGENT = "agent"  # requests, abandoned, waiting, superseded and notifications do not apply to an agent
_ROLES = (ROLE_TIME, ROLE_GROUP, ROLE_AGENT)
_NOT_FOR_AGENTS = ("requests", "abandoned", "waiting", "superseded", "notifications")


def percentile(ordered: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0..100) of ``ordered`` (sorted ascending), interpolating linearly between
    the closest ranks (numpy's default, ``statistics.quantiles(method='inclusive')``); None when empty."""
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"q must be within 0..100, got {q!r}")
    n = len(ordered)
    if n == 0:
        return None
    pos = (n - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, n - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def spread(
    start: float, end: float, origin: float, width: float, out: MutableSequence[float], weight: float = 1.0
) -> None:
    """Add ``weight`` times the seconds of ``[start, end)`` that fall in each slot ``[origin + i*width,
    origin + (i+1)*width)`` to ``out[i]``; the parts before slot 0 or after the last slot are dropped."""
    n = len(out)
    if end <= start or n == 0:
        return
    lo = max(start, origin)
    hi = min(end, origin + n * width)
    if hi <= lo:
        return
    i = int((lo - origin) // width)
    last = min(n - 1, int((hi - origin) // width))
    if i == last:
        out[i] += (hi - lo) * weight
        return
    out[i] += (origin + (i + 1) * width - lo) * weight
    for k in range(i + 1, last):
        out[k] += width * weight
    out[last] += (hi - (origin + last * width)) * weight


def _r(x: float | None, digits: int = 3) -> float | None:
    return None if x is None or not math.isfinite(x) else round(x, digits)


class Tally:
    """What one row of a report counts. ``add_case`` for each case requested in the row; seconds and
    notifications are added by the caller; ``summary()`` gives the row's JSON fields."""

    __slots__ = (
        "abandoned",
        "busy_s",
        "capacity_s",
        "direct",
        "handles",
        "left",
        "notifications",
        "online_s",
        "requests",
        "served",
        "session_s",
        "superseded",
        "waiting",
        "waits",
    )

    def __init__(self) -> None:
        self.requests = 0
        self.served = 0
        self.abandoned = 0
        self.waiting = 0
        self.superseded = 0
        self.direct = 0  # sessions kfrouter did not route (no request, no wait)
        self.waits: list[float] = []
        self.handles: list[float] = []
        self.left: dict[str, int] = {}  # abandoned, by why the case ended
        self.session_s = 0.0
        self.busy_s = 0.0  # session seconds while the session's agent was online
        self.online_s = 0.0
        self.capacity_s = 0.0
        self.notifications = 0

    def add_case(
        self,
        direct: bool,
        requested_at: float,
        started_at: float | None,
        ended_at: float | None,
        outcome: str | None,
    ) -> None:
        if direct:
            self.direct += 1
        else:
            self.requests += 1
            if started_at is not None:
                self.served += 1
                self.waits.append(max(0.0, started_at - requested_at))
            elif outcome is None:
                self.waiting += 1
            elif outcome == "superseded":
                self.superseded += 1
            else:
                self.abandoned += 1
                self.left[outcome] = self.left.get(outcome, 0) + 1
        if started_at is not None and ended_at is not None and outcome == "served":
            self.handles.append(max(0.0, ended_at - started_at))

    def merge(self, other: Tally) -> None:
        """Add ``other``'s counts to this one (a day's tally from its hours, say)."""
        self.requests += other.requests
        self.served += other.served
        self.abandoned += other.abandoned
        self.waiting += other.waiting
        self.superseded += other.superseded
        self.direct += other.direct
        self.waits += other.waits
        self.handles += other.handles
        for k, v in other.left.items():
            self.left[k] = self.left.get(k, 0) + v
        self.session_s += other.session_s
        self.busy_s += other.busy_s
        self.online_s += other.online_s
        self.capacity_s += other.capacity_s
        self.notifications += other.notifications

    def service_level(self, threshold_s: float, ordered_waits: Sequence[float] | None = None) -> float | None:
        """Served within ``threshold_s`` / (served + abandoned); None when nobody was served or left."""
        decided = self.served + self.abandoned
        if decided == 0:
            return None
        waits = ordered_waits if ordered_waits is not None else sorted(self.waits)
        return bisect_right(waits, threshold_s) / decided

    def summary(self, threshold_s: float, role: str = ROLE_TIME) -> dict[str, Any]:
        if role not in _ROLES:
            raise ValueError(f"role must be one of {_ROLES}, got {role!r}")
        waits = sorted(self.waits)
        handles = sorted(self.handles)
        decided = self.served + self.abandoned
        out: dict[str, Any] = {
            "requests": self.requests,
            "served": self.served,
            "abandoned": self.abandoned,
            "waiting": self.waiting,
            "superseded": self.superseded,
            "direct_sessions": self.direct,
            "abandon_rate": _r(self.abandoned / decided, 4) if decided else None,
            "wait_mean_s": _r(sum(waits) / len(waits)) if waits else None,
            "wait_p50_s": _r(percentile(waits, 50)),
            "wait_p90_s": _r(percentile(waits, 90)),
            "wait_p95_s": _r(percentile(waits, 95)),
            "wait_max_s": _r(waits[-1]) if waits else None,
            "service_level_20s": _r(self.service_level(20.0, waits), 4),
            "service_level": _r(self.service_level(threshold_s, waits), 4),
            "handle_mean_s": _r(sum(handles) / len(handles)) if handles else None,
            "handle_p50_s": _r(percentile(handles, 50)),
            "handle_p90_s": _r(percentile(handles, 90)),
            "session_s": _r(self.session_s),
            "busy_s": _r(self.busy_s),
            "online_s": _r(self.online_s),
            "capacity_s": _r(self.capacity_s),
            "utilisation": _r(self.busy_s / self.capacity_s, 4) if self.capacity_s > 0 else None,
            "notifications": self.notifications,
            "left": dict(sorted(self.left.items())),
        }
        if role == ROLE_AGENT:
            for key in _NOT_FOR_AGENTS:
                out[key] = None
            out["abandon_rate"] = None
            out["service_level_20s"] = out["service_level"] = None
            out["left"] = None
        return out
