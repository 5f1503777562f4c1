"""Reports on recorded traffic: ``build_report`` (what ``kfrouter report`` prints: totals, days, hours of
the day, groups, agents) and ``build_history`` (the supervisor page's last 24 hours in 15-minute slots, per
group). Both are computed from a ``router.traffic.Traffic`` read from the store; the definitions of every
figure are in ``router.tally`` and docs/observability.md.

Rules of this module:

- Pure: no I/O, no clock (``now`` and the time zone are arguments).
- A case is counted in the day, hour and slot of its request; session and online seconds are split over
  the days, hours and slots they cover, clipped to the window.
- Agents' online time comes from the ``agent_online`` / ``agent_offline`` entries of the input log (an
  agent's state at the window's start is its last change before it; capacity is the ``max_sessions`` of
  its last ``agent_online``, ``default_capacity`` if that entry has none). An agent with no such entry has
  no online time, so no utilisation. Only the part of a session during which its agent was online counts
  as busy (``busy_s``), so utilisation stays within the slots that were there.
- Group utilisation counts an agent's capacity in every group it serves (so groups do not add up); agents
  without groups (they take anyone) and customers without a group appear only in the totals' utilisation.
- Days and hours are those of ``tz``; hours are 3,600 s apart from the window's first local hour, so the
  hour of a daylight-saving change is named by its local start.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Iterable, Iterator
from datetime import datetime, tzinfo
from typing import Any, NamedTuple

from kfrouter.router.tally import ROLE_AGENT, ROLE_GROUP, ROLE_TIME, Tally, spread
from kfrouter.router.traffic import AgentChange, Case, Notice, Traffic

HOUR_S = 3600.0
SLOT_S = 900.0  # the history's slots: 15 minutes
HISTORY_S = 86400.0  # the history covers the last 24 hours
DEFAULT_THRESHOLD_S = 20.0
MAX_WINDOW_S = 3700 * 86400.0  # ten years: a larger window is a mistake in the dates
NO_GROUP_LABEL = "(no group)"


class ReportError(Exception):
    """The window or an option cannot make a report; the message names it."""


class OnlineSpan(NamedTuple):
    agent: str
    start: float
    end: float
    capacity: int
    groups: tuple[str, ...]


def online_spans(
    changes: Iterable[AgentChange], lo: float, hi: float, default_capacity: int = 3
) -> list[OnlineSpan]:
    """The agents' online periods within ``[lo, hi)`` from their changes (ordered by time)."""
    since: dict[str, AgentChange] = {}
    out: list[OnlineSpan] = []

    def close(c: AgentChange, end: float) -> None:
        start, stop = max(c.t, lo), min(end, hi)
        if stop > start:
            out.append(OnlineSpan(c.agent, start, stop, c.capacity or default_capacity, c.groups))

    for c in changes:
        previous = since.pop(c.agent, None)
        if previous is not None:
            close(previous, c.t)
        if c.online:
            since[c.agent] = c
    for c in since.values():
        close(c, hi)
    return out


def window_of(traffic: Traffic) -> tuple[float, float]:
    """The window a report covers: the one asked for; by default from the first request to the last time
    the database recorded anything (included)."""
    lo, hi = traffic.since, traffic.until
    if not math.isfinite(lo):
        lo = traffic.first_at if traffic.first_at is not None else 0.0
    if not math.isfinite(hi):
        last = traffic.last_at if traffic.last_at is not None else lo
        hi = math.nextafter(max(last, lo), math.inf)  # the window's end is excluded; the last write is not
    if hi < lo:
        raise ReportError(f"the window ends ({hi}) before it starts ({lo})")
    if hi - lo > MAX_WINDOW_S:
        raise ReportError(
            f"the window is {(hi - lo) / 86400:.0f} days long; at most {MAX_WINDOW_S / 86400:.0f} (check the dates)"
        )
    return lo, hi


class _Grid:
    """Local hours from the window's first local hour: for each, its date and hour of the day."""

    def __init__(self, lo: float, hi: float, tz: tzinfo) -> None:
        first = datetime.fromtimestamp(lo, tz).replace(minute=0, second=0, microsecond=0)
        self.origin = first.timestamp()
        n = max(1, math.ceil((hi - self.origin) / HOUR_S))
        self.days: list[str] = []  # distinct dates in order
        self.day_of: list[int] = []  # hour index -> index in days
        self.hour_of: list[int] = []  # hour index -> 0..23
        self.day_start: list[float] = []
        for i in range(n):
            t = self.origin + i * HOUR_S
            local = datetime.fromtimestamp(t, tz)
            date = local.date().isoformat()
            if not self.days or self.days[-1] != date:
                self.days.append(date)
                self.day_start.append(t)
            self.day_of.append(len(self.days) - 1)
            self.hour_of.append(local.hour)
        self.n = n


def build_report(
    traffic: Traffic,
    *,
    tz: tzinfo,
    threshold_s: float = DEFAULT_THRESHOLD_S,
    default_capacity: int = 3,
) -> dict[str, Any]:
    """The report as a JSON-ready object: ``window``, ``totals``, ``days``, ``hours`` (of the day, 0-23,
    over the whole window), ``groups``, ``agents``."""
    if not (isinstance(threshold_s, int | float) and math.isfinite(threshold_s) and threshold_s > 0):
        raise ReportError(f"threshold_s must be a number of seconds > 0, got {threshold_s!r}")
    lo, hi = window_of(traffic)
    grid = _Grid(lo, hi, tz)
    origin = grid.origin
    by_hour = [Tally() for _ in range(grid.n)]  # per hour of the window; days, hours and totals add them up
    groups: dict[str | None, Tally] = {}
    agents: dict[str, Tally] = {}
    session_h = [0.0] * grid.n
    busy_h = [0.0] * grid.n
    online_h = [0.0] * grid.n
    capacity_h = [0.0] * grid.n

    def tally(table: dict[Any, Tally], key: Any) -> Tally:
        t = table.get(key)
        if t is None:
            t = table[key] = Tally()
        return t

    def add_seconds(out: list[float], start: float, stop: float) -> None:
        i = int((start - origin) // HOUR_S)
        if i == int((stop - origin) // HOUR_S):  # within one hour: no need for spread()
            out[i] += stop - start
        else:
            spread(start, stop, origin, HOUR_S, out)

    spans = online_spans(traffic.agent_changes, lo, hi, default_capacity)
    online_of: dict[str, tuple[list[float], list[OnlineSpan]]] = {}  # agent -> span starts, spans
    for span in spans:
        seconds = span.end - span.start
        spread(span.start, span.end, origin, HOUR_S, online_h)
        spread(span.start, span.end, origin, HOUR_S, capacity_h, span.capacity)
        agent = tally(agents, span.agent)
        agent.online_s += seconds
        agent.capacity_s += seconds * span.capacity
        for g in span.groups:
            t = tally(groups, g)
            t.online_s += seconds
            t.capacity_s += seconds * span.capacity
        starts, kept = online_of.setdefault(span.agent, ([], []))
        starts.append(span.start)
        kept.append(span)

    # The loop below runs once per case (100,000 in a few tenths of a second): tuples are unpacked, and a
    # session within one hour and one online span takes the short paths.
    for _id, _openid, group, requested, kf, started, ended, outcome, direct in traffic.cases:
        if lo <= requested < hi:
            by_hour[int((requested - origin) // HOUR_S)].add_case(direct, requested, started, ended, outcome)
            if not direct:
                tally(groups, group).add_case(direct, requested, started, ended, outcome)
            if kf is not None and started is not None:
                tally(agents, kf).add_case(direct, requested, started, ended, outcome)
        if started is None:
            continue
        start = started if started > lo else lo
        stop = hi if ended is None or ended > hi else ended
        if stop <= start:
            continue
        add_seconds(session_h, start, stop)
        seconds = stop - start
        g_tally = None if direct else tally(groups, group)
        a_tally = None if kf is None else tally(agents, kf)
        if g_tally is not None:
            g_tally.session_s += seconds
        if a_tally is not None:
            a_tally.session_s += seconds
        online = None if kf is None else online_of.get(kf)
        if online is None:
            continue
        starts, kept = online
        k = bisect_right(starts, start) - 1
        if k >= 0 and kept[k].end >= stop:  # the usual case: the agent was online all along
            pieces = [(start, stop)]
        else:
            pieces = []
            for span in kept[max(k, 0) :]:
                if span.start >= stop:
                    break
                x, y = max(start, span.start), min(stop, span.end)
                if y > x:
                    pieces.append((x, y))
        for x, y in pieces:
            add_seconds(busy_h, x, y)
            if g_tally is not None:
                g_tally.busy_s += y - x
            if a_tally is not None:
                a_tally.busy_s += y - x

    for n, group in _notices_with_groups(traffic.cases, traffic.notices, lo, hi):
        by_hour[int((n.t - origin) // HOUR_S)].notifications += 1
        if group is not _UNKNOWN:
            tally(groups, group).notifications += 1

    total = Tally()
    days = [Tally() for _ in grid.days]
    hours = [Tally() for _ in range(24)]
    for i, t in enumerate(by_hour):
        t.session_s, t.busy_s = session_h[i], busy_h[i]
        t.online_s, t.capacity_s = online_h[i], capacity_h[i]
        days[grid.day_of[i]].merge(t)
        hours[grid.hour_of[i]].merge(t)
        total.merge(t)

    def summary(t: Tally, role: str = ROLE_TIME) -> dict[str, Any]:
        return t.summary(threshold_s, role)

    return {
        "window": {
            "since": round(lo, 3),
            "until": round(hi, 3),
            "since_local": datetime.fromtimestamp(lo, tz).isoformat(timespec="seconds"),
            "until_local": datetime.fromtimestamp(hi, tz).isoformat(timespec="seconds"),
            "tz": str(tz),
        },
        "threshold_s": threshold_s,
        "database": traffic.path,
        "totals": summary(total),
        "days": [
            {"date": d, "start": round(grid.day_start[i], 3), **summary(days[i])}
            for i, d in enumerate(grid.days)
        ],
        "hours": [{"hour": h, **summary(hours[h])} for h in range(24)],
        "groups": [
            {"group": g, "label": g if g is not None else NO_GROUP_LABEL, **summary(groups[g], ROLE_GROUP)}
            for g in sorted(groups, key=lambda g: (g is None, g or ""))
        ],
        "agents": [{"agent": kf, **summary(agents[kf], ROLE_AGENT)} for kf in sorted(agents)],
    }


_UNKNOWN: Any = object()  # a notification to a customer with no request on record


def _notices_with_groups(
    cases: Iterable[Case], notices: Iterable[Notice], lo: float, hi: float
) -> Iterator[tuple[Notice, Any]]:
    """Each notification in ``[lo, hi)`` with the group of its customer's latest request made at or
    before it (``_UNKNOWN`` when there is none): one pass over both lists, ordered by time."""
    last_group: dict[str, str | None] = {}
    pending = iter(c for c in cases if not c.direct)
    case = next(pending, None)
    for n in notices:
        while case is not None and case.requested_at <= n.t:
            last_group[case.openid] = case.group
            case = next(pending, None)
        if lo <= n.t < hi:
            yield n, last_group.get(n.openid, _UNKNOWN)


# ============================================================================ the page's history


def build_history(
    traffic: Traffic,
    *,
    now: float,
    span_s: float = HISTORY_S,
    slot_s: float = SLOT_S,
    threshold_s: float = DEFAULT_THRESHOLD_S,
) -> dict[str, Any]:
    """The last ``span_s`` before ``now`` in ``slot_s`` slots, per group and for everyone: ``waiting`` and
    ``in_session`` (average number of customers over the slot), ``requests``, ``served``, ``abandoned``,
    ``service_level`` (at ``threshold_s``) and ``abandon_rate`` of the customers who asked in the slot."""
    if not (span_s > 0 and slot_s > 0 and span_s / slot_s <= 10_000):
        raise ReportError(
            f"span_s / slot_s must be a positive number of slots up to 10,000, got {span_s}/{slot_s}"
        )
    n = math.ceil(span_s / slot_s)
    origin = math.floor(now / slot_s) * slot_s - (n - 1) * slot_s  # the last slot holds ``now``
    end = now
    everyone: list[Tally] = [Tally() for _ in range(n)]
    per_group: dict[str | None, list[Tally]] = {}
    waiting: dict[str | None, list[float]] = {}
    in_session: dict[str | None, list[float]] = {}
    all_waiting = [0.0] * n
    all_in_session = [0.0] * n

    def series(table: dict[str | None, list[float]], g: str | None) -> list[float]:
        s = table.get(g)
        if s is None:
            s = table[g] = [0.0] * n
        return s

    for c in traffic.cases:
        if c.direct:
            if c.started_at is not None:
                spread(
                    c.started_at,
                    c.ended_at if c.ended_at is not None else end,
                    origin,
                    slot_s,
                    all_in_session,
                )
            continue
        g = c.group
        if g not in per_group:
            per_group[g] = [Tally() for _ in range(n)]
        if origin <= c.requested_at < end:
            i = int((c.requested_at - origin) // slot_s)
            args = (False, c.requested_at, c.started_at, c.ended_at, c.outcome)
            everyone[i].add_case(*args)
            per_group[g][i].add_case(*args)
        waited_until = (
            c.started_at if c.started_at is not None else (c.ended_at if c.ended_at is not None else end)
        )
        spread(c.requested_at, waited_until, origin, slot_s, all_waiting)
        spread(c.requested_at, waited_until, origin, slot_s, series(waiting, g))
        if c.started_at is not None:
            stop = c.ended_at if c.ended_at is not None else end
            spread(c.started_at, stop, origin, slot_s, all_in_session)
            spread(c.started_at, stop, origin, slot_s, series(in_session, g))

    lengths = [max(0.0, min(slot_s, end - (origin + i * slot_s))) for i in range(n)]

    def average(seconds: list[float]) -> list[float | None]:
        return [round(s / w, 3) if w > 0 else None for s, w in zip(seconds, lengths, strict=True)]

    def rows(tallies: list[Tally]) -> dict[str, list[Any]]:
        sums = [t.summary(threshold_s) for t in tallies]
        return {
            k: [s[k] for s in sums]
            for k in ("requests", "served", "abandoned", "abandon_rate", "service_level")
        }

    groups_out = []
    for g in sorted(per_group, key=lambda g: (g is None, g or "")):
        groups_out.append(
            {
                "group": g,
                "label": g if g is not None else NO_GROUP_LABEL,
                "waiting": average(series(waiting, g)),
                "in_session": average(series(in_session, g)),
                **rows(per_group[g]),
            }
        )
    return {
        "now": round(now, 3),
        "start": round(origin, 3),
        "slot_s": slot_s,
        "slots": n,
        "threshold_s": threshold_s,
        "all": {"waiting": average(all_waiting), "in_session": average(all_in_session), **rows(everyone)},
        "groups": groups_out,
    }
