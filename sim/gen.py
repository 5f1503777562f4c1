"""Synthetic trace generator: agents, shifts, Poisson arrivals (optionally with a daily rate profile),
service and patience times, groups, returning customers and preferred agents, and match-dependent
service (``cross_skill``: every agent's proficiency for the groups other than its own; ``same_agent_factor``
in the header; both left out of the trace when 1, so such traces are the same bytes as before) and
re-contact (``recontact``, ``recontact_gap``: the header's ``recontact`` model, replayed by
``sim/service.py``; left out when ``recontact`` is 0).

Deterministic: everything random comes from one ``random.Random(seed)``, drawn in a fixed order per
arrival, so the same parameters give the same trace byte for byte. Records are produced lazily in
time order, so 200,000 customers never sit in memory at once: ``generate_blocks`` makes the arrivals in
blocks (``sim.trace.Arrivals``, one object per ``BLOCK`` arrivals, what a replay reads), ``generate``
hands out the same trace record by record. Spec strings (``--groups``,
``--arrival-profile``, ``--shifts``, ``--priorities``) are documented in docs/simulator.md.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from bisect import bisect_right
from collections import deque
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from typing import TypeVar

from kfrouter.sim.trace import AgentOffline, AgentOnline, Arrivals, Header, Record

DAY_S = 86400.0
SERVICE_DISTS = ("exp", "lognormal", "const")
_T = TypeVar("_T")


class GenError(ValueError):
    """A generator parameter is invalid; the message names the option."""


@dataclass(frozen=True)
class Segment:
    start_h: float
    end_h: float  # may be <= start_h for a window wrapping past midnight (shifts only)
    value: float


@dataclass(frozen=True)
class GenParams:
    agents: int = 10
    max_sessions: int = 1
    customers: int = 1000
    arrival_rate: float | None = 0.1  # per second; ignored when arrival_profile is set
    arrival_profile: tuple[Segment, ...] = ()
    service_mean: float = 60.0
    service_dist: str = "exp"
    service_cv: float = 1.0  # lognormal only
    patience_mean: float | None = None
    groups: tuple[tuple[str, float], ...] = ()
    priorities: tuple[tuple[int, float], ...] = ()
    returning: float = 0.0
    return_gap: float = 3600.0
    preferred: float = 0.0
    shifts: tuple[Segment, ...] = ()
    cross_skill: float = 1.0  # proficiency of every agent for the groups other than its own
    same_agent_factor: float = 1.0  # a returning customer with their last agent needs this x service_s
    recontact: float = 0.0  # share of sessions with a fully proficient agent that do not resolve
    recontact_gap: float = 1800.0  # mean seconds before an unresolved customer comes back
    seed: int = 0
    name: str = "synthetic"
    agent_domain: str = "sim"
    extra: dict[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.agents < 1:
            raise GenError(f"--agents must be >= 1, got {self.agents}")
        if self.max_sessions < 1:
            raise GenError(f"--max-sessions must be >= 1, got {self.max_sessions}")
        if self.customers < 0:
            raise GenError(f"--customers must be >= 0, got {self.customers}")
        if not self.arrival_profile and (self.arrival_rate is None or not self.arrival_rate > 0):
            raise GenError(f"--arrival-rate must be > 0 (per second), got {self.arrival_rate}")
        if self.arrival_profile and not any(s.value > 0 for s in self.arrival_profile):
            raise GenError("--arrival-profile: at least one window needs a rate > 0")
        if not self.service_mean > 0 or not math.isfinite(self.service_mean):
            raise GenError(f"--service-mean must be > 0, got {self.service_mean}")
        if self.service_dist not in SERVICE_DISTS:
            raise GenError(f"--service-dist must be one of {SERVICE_DISTS}, got {self.service_dist!r}")
        if not self.service_cv > 0:
            raise GenError(f"--service-cv must be > 0, got {self.service_cv}")
        if self.patience_mean is not None and not self.patience_mean > 0:
            raise GenError(f"--patience-mean must be > 0, got {self.patience_mean}")
        for opt, p in (("--returning", self.returning), ("--preferred", self.preferred)):
            if not 0.0 <= p <= 1.0:
                raise GenError(f"{opt} must be a share between 0 and 1, got {p}")
        if not 0.0 < self.cross_skill <= 1.0:
            raise GenError(f"--cross-skill must be a number in (0, 1], got {self.cross_skill}")
        if not 0.0 < self.same_agent_factor < math.inf:
            raise GenError(f"--same-agent-factor must be a finite number > 0, got {self.same_agent_factor}")
        if not 0.0 <= self.recontact <= 1.0:
            raise GenError(f"--recontact must be a share between 0 and 1, got {self.recontact}")
        if not 0.0 < self.recontact_gap < math.inf:
            raise GenError(f"--recontact-gap must be a finite number > 0 (seconds), got {self.recontact_gap}")
        if self.return_gap < 0:
            raise GenError(f"--return-gap must be >= 0, got {self.return_gap}")
        if self.groups and len(self.groups) > self.agents:
            raise GenError(
                f"--groups names {len(self.groups)} groups but there are only {self.agents} agents"
            )
        if self.shifts and len(self.shifts) > self.agents:
            raise GenError(
                f"--shifts names {len(self.shifts)} shifts but there are only {self.agents} agents"
            )
        if sum(p for _, p in self.priorities) > 1.0 + 1e-9:
            raise GenError("--priorities: the shares add up to more than 1")


# ---------------------------------------------------------------------------------------------- specs


def _num(text: str, opt: str, what: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise GenError(f"{opt}: {what} {text!r} is not a number") from None
    if not math.isfinite(v) or v < 0:
        raise GenError(f"{opt}: {what} {text!r} must be a finite number >= 0")
    return v


def parse_shares(spec: str, opt: str = "--groups") -> tuple[tuple[str, float], ...]:
    """``"sales:0.7,support:0.3"`` → normalised ((name, share), ...); a bare name counts 1."""
    out: list[tuple[str, float]] = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        name, _, w = part.partition(":")
        name = name.strip()
        if not name:
            raise GenError(f"{opt}: empty name in {part!r}")
        if any(n == name for n, _ in out):
            raise GenError(f"{opt}: {name!r} appears twice")
        out.append((name, _num(w, opt, f"share of {name!r}") if w else 1.0))
    total = sum(w for _, w in out)
    if not out or total <= 0:
        raise GenError(f"{opt}: expected NAME:SHARE,... with a positive total, got {spec!r}")
    return tuple((n, w / total) for n, w in out)


def parse_priorities(spec: str) -> tuple[tuple[int, float], ...]:
    """``"1:0.1,2:0.01"`` → ((priority, share), ...); the rest of the arrivals get priority 0."""
    out: list[tuple[int, float]] = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        p, sep, w = part.partition(":")
        try:
            prio = int(p)
        except ValueError:
            raise GenError(f"--priorities: priority {p!r} is not an integer") from None
        if not sep:
            raise GenError(f"--priorities: expected PRIORITY:SHARE, got {part!r}")
        out.append((prio, _num(w, "--priorities", f"share of priority {prio}")))
    if sum(w for _, w in out) > 1.0 + 1e-9:
        raise GenError(f"--priorities: shares add up to more than 1 in {spec!r}")
    return tuple(out)


def _hours(text: str, opt: str) -> float:
    h = _num(text, opt, "hour")
    if h > 24:
        raise GenError(f"{opt}: hour {text!r} is past 24")
    return h


def parse_windows(spec: str, opt: str, *, wrap: bool, default: float | None) -> tuple[Segment, ...]:
    """``"0-8:0.2,8-12:1.5"``: daily windows START-END (hours, 0..24) with a value after the colon.
    ``wrap`` allows END <= START (past midnight); ``default`` is the value when none is given."""
    out: list[Segment] = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        rng, sep, val = part.partition(":")
        a, dash, b = rng.partition("-")
        if not dash:
            raise GenError(f"{opt}: expected START-END[:VALUE] in hours, got {part!r}")
        start, end = _hours(a, opt), _hours(b, opt)
        if sep:
            value = _num(val, opt, "value")
        elif default is not None:
            value = default
        else:
            raise GenError(f"{opt}: window {part!r} needs a value after ':'")
        if start == end or (end < start and not wrap):
            raise GenError(f"{opt}: window {part!r} is empty or runs backwards")
        out.append(Segment(start, end, value))
    if not out:
        raise GenError(f"{opt}: no windows in {spec!r}")
    if not wrap:
        spans = sorted((s.start_h, s.end_h) for s in out)
        for (_, e1), (s2, _) in itertools.pairwise(spans):
            if s2 < e1:
                raise GenError(f"{opt}: windows overlap in {spec!r}")
    return tuple(out)


# ---------------------------------------------------------------------------------------------- helpers


def _quota(n: int, shares: list[float]) -> list[int]:
    """Split ``n`` items by ``shares`` (largest remainder), each share getting at least one item
    when n allows."""
    total = sum(shares)
    raw = [n * s / total for s in shares]
    counts = [int(r) for r in raw]
    order = sorted(range(len(shares)), key=lambda i: (-(raw[i] - counts[i]), i))
    for i in order[: n - sum(counts)]:
        counts[i] += 1
    for i, c in enumerate(counts):  # no empty group/shift while another has spare agents
        if c == 0:
            donor = max(range(len(counts)), key=lambda j: (counts[j], -j))
            if counts[donor] > 1:
                counts[donor] -= 1
                counts[i] = 1
    return counts


def _round6(x: float) -> float:
    """``round(x, 6)`` for a float, bit for bit, in a third of the time (round() with digits goes
    through a correctly rounded decimal string and back).

    If y = x * 1e6 is within 0.49 of an integer n, n is also the integer nearest the exact x * 10**6
    (for 0 < y < 7e13 the product is off by at most 2**-8), so round() would produce the decimal n e-6,
    and the float nearest it is n / 1e6 (exact operands, one correctly rounded division). Near-ties,
    zero, negatives, huge values and NaN go to round() itself."""
    y = x * 1e6
    if 0.0 < y < 7e13:
        n = (y + 0.5) // 1.0  # an integer near y, as a float (cheaper than math.floor's int)
        if -0.49 < y - n < 0.49:  # exact: y and n are within a factor of 2, or n == 0
            return n / 1e6
    return round(x, 6)


class _ArrivalClock:
    """Arrival times of a Poisson process whose rate is piecewise constant over the day (exact:
    an Exp(1) amount of integrated rate is spent across window boundaries)."""

    def __init__(self, rng: random.Random, rate: float | None, profile: tuple[Segment, ...]) -> None:
        self._rng = rng
        if profile:
            edges = sorted({0.0, 24.0, *(s.start_h for s in profile), *(s.end_h for s in profile)})
            pieces: list[tuple[float, float, float]] = []
            for a, b in itertools.pairwise(edges):
                r = next((s.value for s in profile if s.start_h <= a and b <= s.end_h), 0.0)
                pieces.append((a * 3600.0, b * 3600.0, r))
            self._pieces = pieces
        else:
            self._pieces = [(0.0, DAY_S, float(rate or 0.0))]

    def times(self, count: int) -> Iterator[float]:
        """The next ``count`` arrival times; one Exp(1) draw from the rng per arrival, made when the
        time is asked for."""
        expovariate = self._rng.expovariate
        t = 0.0
        # The window (end, rate r) that the last arrival landed in, and a time a hair before its end:
        # below it, _advance would find this same window again (the same day and piece), so its first
        # step is done here without the floor and the piece search. Same operations, same floats.
        end = r = 0.0
        fast_until = -1.0
        for _ in range(count):
            need = expovariate(1.0)
            if t < fast_until:
                have = (end - t) * r
                if have >= need:
                    t += need / r
                    yield t
                    continue
            t, end, r = self._advance(t, need)
            fast_until = end - end * 1e-9  # far more than the rounding of t / DAY_S and t - day * DAY_S
            yield t

    def _advance(self, t: float, need: float) -> tuple[float, float, float]:
        """Spend ``need`` of integrated rate from time ``t``: the arrival time, and the end and rate of
        the window it falls in."""
        while True:
            day = math.floor(t / DAY_S)
            tod = t - day * DAY_S
            for piece in self._pieces:
                if tod < piece[1]:
                    b, r = piece[1], piece[2]
                    break
            else:
                raise RuntimeError(f"no rate window holds time of day {tod!r}")
            end = day * DAY_S + b
            have = (end - t) * r
            if have >= need and r > 0:
                return t + need / r, end, r
            need -= have
            t = end if end > t else math.nextafter(t, math.inf)


# ---------------------------------------------------------------------------------------------- main


def _picker(shares: tuple[tuple[_T, float], ...], fallback: _T) -> tuple[list[float], list[_T]]:
    """For ``pick[bisect_right(bounds, u)]``: the first item whose cumulative share exceeds ``u``, or
    ``fallback`` when none does. ``bounds`` are the running sums (added up as ``acc += share``) under a
    running maximum, so that bisect lands on that first item even if a share is negative."""
    bounds: list[float] = []
    acc = 0.0
    for _, share in shares:
        acc += share
        bounds.append(max(acc, bounds[-1]) if bounds else acc)
    return bounds, [item for item, _ in shares] + [fallback]


def agent_names(params: GenParams) -> list[str]:
    width = max(3, len(str(params.agents)))
    return [f"a{i:0{width}d}@{params.agent_domain}" for i in range(1, params.agents + 1)]


def header_for(params: GenParams) -> Header:
    meta = asdict(params)
    meta.pop("seed")
    meta.pop("name")
    meta.pop("extra")
    meta["arrival_profile"] = [[s.start_h, s.end_h, s.value] for s in params.arrival_profile]
    meta["shifts"] = [[s.start_h, s.end_h, s.value] for s in params.shifts]
    meta["groups"] = [list(g) for g in params.groups]
    meta["priorities"] = [list(p) for p in params.priorities]
    extra: dict[str, object] = {}
    for key in ("cross_skill", "same_agent_factor"):  # absent at their default: the header stays as it was
        if meta[key] == 1.0:
            del meta[key]
    if params.same_agent_factor != 1.0:
        extra["same_agent_factor"] = params.same_agent_factor
    if params.recontact == 0.0:  # no re-contact: the header stays as it was
        del meta["recontact"], meta["recontact_gap"]
    else:
        extra["recontact"] = {"rate": params.recontact, "gap_mean_s": params.recontact_gap}
    return Header(
        name=params.name,
        seed=params.seed,
        created_by=GENERATED_BY,
        meta={"params": meta, "groups": [g for g, _ in params.groups], **extra, **params.extra},
    )


GENERATED_BY = "kfrouter sim gen"  # Header.created_by of the traces header_for describes


def params_from_header(header: Header, seed: int | None = None) -> GenParams:
    """The GenParams that :func:`header_for` wrote into ``header`` (a trace made by ``sim gen``), with
    ``seed`` instead of the header's when given: ``generate`` then makes the same trace again, or with
    another seed a replication of it. GenError names the key when the header does not describe one."""
    raw = header.meta.get("params")
    if header.created_by != GENERATED_BY or not isinstance(raw, dict):
        raise GenError(f"the trace was not made by {GENERATED_BY!r} (no 'params' in its header)")
    # header_for leaves these out at their defaults
    optional = {"cross_skill", "same_agent_factor", "recontact", "recontact_gap"}
    known = {f.name for f in fields(GenParams)} - {"seed", "name", "extra"}
    unknown, missing = sorted(set(raw) - known), sorted(known - optional - set(raw))
    if unknown or missing:
        raise GenError(f"header params: unknown keys {unknown}, missing keys {missing}")

    def bad(key: str, expected: str) -> GenError:
        return GenError(f"header params: {key!r} must be {expected}, got {raw[key]!r}")

    def integer(key: str) -> int:
        v = raw[key]
        if type(v) is not int:
            raise bad(key, "an integer")
        return v

    def number(key: str) -> float:
        v = raw[key]
        if type(v) not in (int, float):
            raise bad(key, "a number")
        return float(v)

    def number_or_null(key: str) -> float | None:
        return None if raw[key] is None else number(key)

    def number_or_one(key: str) -> float:
        return number(key) if key in raw else 1.0

    def text(key: str) -> str:
        v = raw[key]
        if type(v) is not str:
            raise bad(key, "a string")
        return v

    def rows(key: str, width: int) -> list[list[object]]:
        v = raw[key]
        if type(v) is not list or not all(type(r) is list and len(r) == width for r in v):
            raise bad(key, f"a list of {width}-item lists")
        return v

    def segments(key: str) -> tuple[Segment, ...]:
        out = []
        for a, b, c in rows(key, 3):
            if not all(type(x) in (int, float) for x in (a, b, c)):
                raise bad(key, "a list of [start_h, end_h, value] numbers")
            out.append(Segment(float(a), float(b), float(c)))  # type: ignore[arg-type]
        return tuple(out)

    groups: list[tuple[str, float]] = []
    for g, w in rows("groups", 2):
        if type(g) is not str or type(w) not in (int, float):
            raise bad("groups", "a list of [name, share]")
        groups.append((g, float(w)))  # type: ignore[arg-type]
    priorities: list[tuple[int, float]] = []
    for prio, w in rows("priorities", 2):
        if type(prio) is not int or type(w) not in (int, float):
            raise bad("priorities", "a list of [priority, share]")
        priorities.append((prio, float(w)))  # type: ignore[arg-type]
    return GenParams(
        agents=integer("agents"),
        max_sessions=integer("max_sessions"),
        customers=integer("customers"),
        arrival_rate=number_or_null("arrival_rate"),
        arrival_profile=segments("arrival_profile"),
        service_mean=number("service_mean"),
        service_dist=text("service_dist"),
        service_cv=number("service_cv"),
        patience_mean=number_or_null("patience_mean"),
        groups=tuple(groups),
        priorities=tuple(priorities),
        returning=number("returning"),
        return_gap=number("return_gap"),
        preferred=number("preferred"),
        shifts=segments("shifts"),
        seed=(header.seed or 0) if seed is None else seed,
        name=header.name,
        agent_domain=text("agent_domain"),
        cross_skill=number_or_one("cross_skill"),
        same_agent_factor=number_or_one("same_agent_factor"),
        recontact=number("recontact") if "recontact" in raw else 0.0,
        recontact_gap=number("recontact_gap") if "recontact_gap" in raw else 1800.0,
        # header_for copies same_agent_factor and recontact to the top level, where the replay reads them
        extra={
            k: v
            for k, v in header.meta.items()
            if k not in ("params", "groups", "same_agent_factor", "recontact")
        },
    )


BLOCK = 2048  # arrivals per block (generate_blocks)
AgentRecord = AgentOnline | AgentOffline


def _due_by(agent_heap: list[tuple[float, int, int, AgentRecord]], t: float) -> bool:
    """Whether the agents' next record (the head of their heap of (t, order, seq, record)) is due by ``t``."""
    if not agent_heap:
        return False
    when, _order, _seq, _record = agent_heap[0]
    return when <= t


class _Columns:
    """The arrivals of the block being made, column by column (``take`` hands them over)."""

    __slots__ = ("customer", "group", "patience_s", "preferred_agent", "priority", "service_s", "t")

    def __init__(self) -> None:
        self.t: list[float] = []
        self.customer: list[str] = []
        self.service_s: list[float] = []
        self.group: list[str | None] = []
        self.priority: list[int] = []
        self.patience_s: list[float | None] = []
        self.preferred_agent: list[str | None] = []

    def take(self) -> Arrivals:
        """The arrivals so far, as a block (no text, no tags); the columns start empty again."""
        n = len(self.t)
        block = Arrivals(
            self.t,
            self.customer,
            self.service_s,
            self.group,
            self.priority,
            self.patience_s,
            [""] * n,
            self.preferred_agent,
            [()] * n,
        )
        self.__init__()  # type: ignore[misc]
        return block


def generate(params: GenParams) -> Iterator[Record]:
    """Yield the records of the trace in time order (the header is :func:`header_for`)."""
    for item in generate_blocks(params):
        if type(item) is Arrivals:
            yield from item.records()
        else:
            yield item  # type: ignore[misc]


def generate_blocks(params: GenParams) -> Iterator[AgentRecord | Arrivals]:
    """The records of the trace in time order, consecutive arrivals in blocks of up to ``BLOCK``."""
    rng = random.Random(params.seed)
    names = agent_names(params)

    # agents → groups (blocks by quota) and, within each group, → shifts (by quota)
    group_of: list[str | None] = [None] * len(names)
    members: dict[str | None, list[str]] = {}
    idx = 0
    if params.groups:
        for (g, _), n in zip(params.groups, _quota(len(names), [s for _, s in params.groups]), strict=True):
            for _ in range(n):
                group_of[idx] = g
                idx += 1
    for name, grp in zip(names, group_of, strict=True):
        members.setdefault(grp, []).append(name)
    shift_of: dict[str, Segment] = {}
    if params.shifts:
        shares = [s.value for s in params.shifts]
        for group_members in members.values():
            k = 0
            for seg, n in zip(params.shifts, _quota(len(group_members), shares), strict=True):
                for name in group_members[k : k + n]:
                    shift_of[name] = seg
                k += n
    everyone = names
    grouped = {g: m for g, m in members.items() if g is not None}

    # agent timeline: a heap of (t, order, seq, record); see push_day for the order at one instant
    agent_heap: list[tuple[float, int, int, AgentRecord]] = []
    seq = 0

    def skills_of(g: str | None) -> tuple[tuple[str, float], ...]:
        if params.cross_skill == 1.0 or g is None:
            return ()
        return tuple(sorted((o, 1.0 if o == g else params.cross_skill) for o, _ in params.groups))

    skills = [skills_of(g) for g in group_of]

    def agent_online(t: float, i: int) -> AgentOnline:
        g = group_of[i]
        return AgentOnline(
            t=t, agent=names[i], groups=(g,) if g else (), max_sessions=params.max_sessions, skills=skills[i]
        )

    last_off: dict[int, float] = {}

    def push_day(i: int, day: int) -> None:
        nonlocal seq
        seg = shift_of[names[i]]
        on = day * DAY_S + seg.start_h * 3600.0
        end_h = seg.end_h if seg.end_h > seg.start_h else seg.end_h + 24.0
        off = day * DAY_S + end_h * 3600.0
        if off > 0:
            # at one instant, other agents' "online" comes before "offline" (no gap in coverage), but an
            # agent whose shift ends exactly when their next one starts goes offline first, then online
            on_order = 2 if last_off.get(i) == on else 0
            heapq.heappush(agent_heap, (max(on, 0.0), on_order, seq, agent_online(max(on, 0.0), i)))
            heapq.heappush(agent_heap, (off, 1, seq + 1, AgentOffline(t=off, agent=names[i])))
            last_off[i] = off
            seq += 2

    next_day = 0
    if params.shifts:
        for i in range(len(names)):
            push_day(i, -1)  # a window wrapping past midnight is already on at t=0
            push_day(i, 0)
        next_day = 1
    else:
        for i in range(len(names)):
            yield agent_online(0.0, i)

    def drain_agents(until: float) -> Iterator[AgentRecord]:
        nonlocal next_day
        while params.shifts:
            while next_day * DAY_S <= until + DAY_S:  # keep a day of shifts ahead of the arrivals
                for i in range(len(names)):
                    push_day(i, next_day)
                next_day += 1
            if not agent_heap:
                return
            when, _order, _seq, record = agent_heap[0]
            if when > until:
                return
            heapq.heappop(agent_heap)
            yield record

    # Everything the loop asks per arrival is read from params once, here.
    uniform = rng.random
    shifts = bool(params.shifts)
    # group and priority: the first cumulative share above a uniform draw, else the last group / priority 0
    last_group: str | None = None
    if params.groups:
        last_group, _share = params.groups[-1]
    group_bounds, group_pick = _picker(params.groups, fallback=last_group)
    prio_bounds, prio_pick = _picker(params.priorities, fallback=0)
    service_dist = params.service_dist
    exp_service_rate = 1.0 / params.service_mean
    if service_dist == "lognormal":
        sigma = math.sqrt(math.log1p(params.service_cv**2))
        mu = math.log(params.service_mean) - sigma * sigma / 2.0
    const_service = round(params.service_mean, 6)  # round() itself: keeps an int service_mean an int
    const_service = const_service if const_service > 1e-6 else 1e-6
    patience_rate = None if params.patience_mean is None else 1.0 / params.patience_mean
    returning, return_gap, preferred_share = params.returning, params.return_gap, params.preferred
    recent: deque[tuple[float, str]] = deque()  # (last arrival, customer), waiting out return_gap
    eligible: list[str] = []  # customers who may come back now
    new_ids = 0
    customer_id = f"u%0{max(6, len(str(params.customers)))}d"  # "u%06d" % n == f"u{n:06d}"

    block = _Columns()
    t = 0.0
    for t_exact in _ArrivalClock(rng, params.arrival_rate, params.arrival_profile).times(params.customers):
        t = _round6(t_exact)
        # drain_agents(t) has something to do only when a shift change is due or a new day is to be queued
        if shifts and (_due_by(agent_heap, t) or next_day * DAY_S <= t + DAY_S):
            if block.t:
                yield block.take()  # the arrivals so far come before the agents' records
            yield from drain_agents(t)
        group: str | None = None
        if group_bounds:
            group = group_pick[bisect_right(group_bounds, uniform())]
        priority = 0
        if prio_bounds:
            priority = prio_pick[bisect_right(prio_bounds, uniform())]
        if service_dist == "exp":
            service = _round6(rng.expovariate(exp_service_rate))
            service = service if service > 1e-6 else 1e-6
        elif service_dist == "lognormal":
            service = _round6(rng.lognormvariate(mu, sigma))
            service = service if service > 1e-6 else 1e-6
        else:
            service = const_service
        patience = None
        if patience_rate is not None:
            patience = _round6(rng.expovariate(patience_rate))
            patience = 1e-6 if patience < 1e-6 else patience  # max(patience, 1e-6)
        customer: str | None = None
        if returning > 0:
            while recent:
                last_t, who = recent[0]
                if last_t > t - return_gap:
                    break
                recent.popleft()
                eligible.append(who)
            if uniform() < returning and eligible:
                j = rng.randrange(len(eligible))
                eligible[j], eligible[-1] = eligible[-1], eligible[j]
                customer = eligible.pop()
        if customer is None:
            new_ids += 1
            customer = customer_id % new_ids
        if returning > 0:
            recent.append((t, customer))
        preferred = None
        if preferred_share > 0 and uniform() < preferred_share:
            pool = grouped.get(group, everyone) if group else everyone
            preferred = pool[rng.randrange(len(pool))]
        block.t.append(t)
        block.customer.append(customer)
        block.service_s.append(service)
        block.group.append(group)
        block.priority.append(priority)
        block.patience_s.append(patience)
        block.preferred_agent.append(preferred)
        if len(block.t) == BLOCK:
            yield block.take()
    if block.t:
        yield block.take()
    # shifts go on for one more day so that customers still waiting at the end can be served
    yield from drain_agents(t + DAY_S)
