"""``kfrouter sim staff``: how many agents each hour of the day needs to meet a target, from a trace.

Rules (docs/simulator.md, "Staffing"):

- the target is ``service_level_<N>s>=X`` (share of arrivals served within N seconds) or
  ``abandon_rate<=X``;
- from the trace's arrivals, per hour of the day (every day of the trace pooled): the arrival rate
  (arrivals / seconds of that hour the trace covers, up to its last arrival), the mean ``service_s``
  (the hour's own mean when it has at least 30 arrivals, else the trace's), and one abandonment rate for
  the trace (1 / the mean ``patience_s`` given; none given: nobody leaves, Erlang C);
- an agent holds ``max_sessions`` sessions at once (default: the trace's most common value), each a server
  of its own: the start is the fewest agents whose ``agents × max_sessions`` servers meet the target in
  Erlang A (M/M/c+M, ``sim.erlang``) at the hour's rates;
- then the trace's arrivals are replayed with those agents (the trace's own agent lines are ignored;
  agent i is online in every hour that needs more than i agents; with groups, agents are given groups in
  the arrivals' shares) under the chosen policy, and every hour that misses the target in the replay gets
  one agent more, until every hour meets it or ``max_rounds`` replays were made (corrections only add).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from kfrouter.sim.erlang import erlang_a, erlang_a_service_level
from kfrouter.sim.runner import RunConfig, RunResult, Simulation
from kfrouter.sim.tally import ABANDONED, SERVED
from kfrouter.sim.trace import AgentOffline, AgentOnline, Arrival, Header, Record, TraceReader

HOUR_S = 3600.0
DAY_S = 86400.0
MIN_HOUR_SAMPLE = 30  # arrivals an hour needs for its own mean service time
MAX_AGENTS = 10_000


class StaffError(ValueError):
    """A bad target, option or trace for staffing; the message names it."""


@dataclass(frozen=True)
class StaffTarget:
    metric: str  # "service_level" or "abandon_rate"
    seconds: float  # service level threshold (0 for abandon_rate)
    value: float

    def __str__(self) -> str:
        if self.metric == "abandon_rate":
            return f"abandon_rate<={self.value:g}"
        return f"service_level_{self.seconds:g}s>={self.value:g}"

    def holds(self, achieved: float) -> bool:
        return achieved <= self.value if self.metric == "abandon_rate" else achieved >= self.value


_SL = re.compile(r"^\s*service_level_(\d+(?:\.\d+)?)s\s*>=\s*(\S+)\s*$")
_AB = re.compile(r"^\s*abandon_rate\s*<=\s*(\S+)\s*$")


def parse_target(text: str) -> StaffTarget:
    """``service_level_20s>=0.8`` or ``abandon_rate<=0.05``; StaffError names the expression."""
    m = _SL.match(text)
    if m is not None:
        seconds, num = float(m.group(1)), m.group(2)
        metric = "service_level"
    else:
        m = _AB.match(text)
        if m is None:
            raise StaffError(
                f"--target {text!r}: expected service_level_<N>s>=X or abandon_rate<=X (X a share in [0, 1])"
            )
        seconds, num, metric = 0.0, m.group(1), "abandon_rate"
    try:
        value = float(num)
    except ValueError:
        raise StaffError(f"--target {text!r}: {num!r} is not a number") from None
    if not 0.0 <= value <= 1.0:
        raise StaffError(f"--target {text!r}: {num!r} must be a share in [0, 1]")
    if metric == "service_level" and value >= 1.0:
        raise StaffError(f"--target {text!r}: a service level of 1 cannot be met with abandonment or waiting")
    return StaffTarget(metric, seconds, value)


@dataclass
class HourLoad:
    hour: int
    arrivals: int = 0
    exposure_s: float = 0.0  # seconds of this hour of the day the trace covers
    service_sum: float = 0.0

    @property
    def rate(self) -> float:
        return self.arrivals / self.exposure_s if self.exposure_s > 0 else 0.0


@dataclass
class Workload:
    """What staffing reads from a trace."""

    hours: list[HourLoad]
    service_mean_s: float
    patience_mean_s: float | None
    max_sessions: int
    groups: dict[str, int] = field(default_factory=dict)  # arrivals per group
    end_s: float = 0.0

    def service_of(self, h: HourLoad) -> float:
        if h.arrivals >= MIN_HOUR_SAMPLE:
            return h.service_sum / h.arrivals
        return self.service_mean_s


def read_workload(path: str | Path) -> Workload:
    """Arrival rates per hour of the day, service and patience means, and sessions per agent of a trace."""
    hours = [HourLoad(h) for h in range(24)]
    n = 0
    service = 0.0
    patience_n = 0
    patience = 0.0
    caps: Counter[int] = Counter()
    groups: Counter[str] = Counter()
    end = 0.0
    with TraceReader(path) as reader:
        for rec in reader:
            if type(rec) is Arrival:
                h = hours[int((rec.t % DAY_S) // HOUR_S)]
                h.arrivals += 1
                h.service_sum += rec.service_s
                n += 1
                service += rec.service_s
                if rec.patience_s is not None:
                    patience_n += 1
                    patience += rec.patience_s
                if rec.group is not None:
                    groups[rec.group] += 1
                end = rec.t
            elif type(rec) is AgentOnline:
                caps[rec.max_sessions] += 1
    if n == 0:
        raise StaffError(f"{path}: the trace has no arrivals")
    # seconds of each hour of the day within [0, end]
    full_days, rest = divmod(end, DAY_S)
    for h in hours:
        lo = h.hour * HOUR_S
        h.exposure_s = full_days * HOUR_S + min(max(rest - lo, 0.0), HOUR_S)
    cap = max(caps.items(), key=lambda kv: (kv[1], -kv[0]))[0] if caps else 1
    return Workload(
        hours=hours,
        service_mean_s=service / n,
        patience_mean_s=patience / patience_n if patience_n else None,
        max_sessions=cap,
        groups=dict(groups),
        end_s=end,
    )


def erlang_measure(target: StaffTarget, lam: float, mu: float, servers: int, theta: float) -> float:
    """The target's measure in M/M/c+M (M/M/c when ``theta`` is 0)."""
    if target.metric == "service_level":
        return erlang_a_service_level(lam, mu, servers, theta, target.seconds)
    if theta == 0:
        return 0.0 if lam < servers * mu else 1.0  # without patience nobody leaves (unstable: unbounded)
    return erlang_a(lam, mu, servers, theta).p_abandon


def erlang_agents(
    target: StaffTarget, lam: float, service_s: float, patience_s: float | None, sessions: int
) -> int:
    """The fewest agents (``sessions`` servers each) meeting ``target`` at arrival rate ``lam``."""
    if lam <= 0:
        return 0
    mu = 1.0 / service_s
    theta = 0.0 if patience_s is None else 1.0 / patience_s
    n = 1
    if theta == 0:  # Erlang C needs a stable queue first
        n = max(1, math.floor(lam / mu / sessions) + 1)
    while n <= MAX_AGENTS:
        if target.holds(erlang_measure(target, lam, mu, n * sessions, theta)):
            return n
        n += 1
    raise StaffError(f"more than {MAX_AGENTS} agents would be needed at {lam * HOUR_S:.0f} arrivals per hour")


# ---------------------------------------------------------------------------------------------- replay


def _group_sequence(groups: dict[str, int], count: int) -> list[str | None]:
    """Groups of agents 0..count-1 such that every first k agents are split as close to the arrival shares as
    can be (each next agent goes to the group furthest below its share)."""
    if not groups:
        return [None] * count
    total = sum(groups.values())
    names = sorted(groups)
    have = dict.fromkeys(names, 0)
    out: list[str | None] = []
    for k in range(1, count + 1):
        g = max(names, key=lambda n: (groups[n] / total * k - have[n], -names.index(n)))
        have[g] += 1
        out.append(g)
    return out


def _agent_lines(plan: Sequence[int], end: float, sessions: int, groups: dict[str, int]) -> Iterator[Record]:
    """agent_online / agent_offline lines for ``plan`` (agents per hour of the day), repeated every day up to
    ``end`` plus a day (so customers still waiting at the end are served). Agent i serves in every hour that
    needs more than i agents."""
    top = max(plan) if plan else 0
    width = max(3, len(str(top)))
    names = [f"s{i + 1:0{width}d}@staff" for i in range(top)]
    group_of = _group_sequence(groups, top)
    online = [False] * top
    slots = int(end // HOUR_S) + 25
    for slot in range(slots):
        t = slot * HOUR_S
        need = plan[slot % 24]
        for i in range(top):
            if online[i] and i >= need:
                online[i] = False
                yield AgentOffline(t=t, agent=names[i])
        for i in range(top):
            if not online[i] and i < need:
                online[i] = True
                g = group_of[i]
                yield AgentOnline(t=t, agent=names[i], groups=(g,) if g else (), max_sessions=sessions)


def _merged(path: str | Path, plan: Sequence[int], load: Workload) -> Iterator[Record]:
    """The trace's arrivals merged in time with the plan's agent lines (agent lines first at equal times)."""
    agents = _agent_lines(plan, load.end_s, load.max_sessions, load.groups)
    pending = next(agents, None)
    with TraceReader(path) as reader:
        for rec in reader:
            if type(rec) is not Arrival:
                continue
            while pending is not None and pending.t <= rec.t:
                yield pending
                pending = next(agents, None)
            yield rec
    while pending is not None:
        yield pending
        pending = next(agents, None)


def simulate(
    path: str | Path, plan: Sequence[int], load: Workload, cfg: RunConfig, header: Header
) -> RunResult:
    """Replay the trace's arrivals with the agents of ``plan``, keeping every arrival's entry (the
    measures are per hour of the day: ``achieved``)."""
    return Simulation(
        header, _merged(path, plan, load), replace(cfg, arrivals=True), groups=set(load.groups)
    ).run()


def achieved(res: RunResult, target: StaffTarget) -> list[float | None]:
    """The target's measure per hour of the day in a replay (None: no arrival in that hour)."""
    if res.arrivals is None:
        raise ValueError("achieved: the replay kept no per-arrival entries (RunConfig.arrivals)")
    log = res.arrivals
    n = [0] * 24
    hit = [0] * 24
    for t, wait, outcome in zip(log.arrival_t, log.wait, log.outcome, strict=True):
        h = int((t % DAY_S) // HOUR_S)
        n[h] += 1
        if target.metric == "abandon_rate":
            hit[h] += outcome == ABANDONED
        else:
            hit[h] += outcome == SERVED and wait <= target.seconds
    return [hit[h] / n[h] if n[h] else None for h in range(24)]


@dataclass
class StaffPlan:
    target: StaffTarget
    policy: str
    load: Workload
    erlang: list[int]  # agents per hour, Erlang A
    erlang_measure: list[float | None]
    agents: list[int]  # agents per hour after the replays
    measure: list[float | None]  # the target's measure per hour in the last replay
    rounds: int
    met: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": str(self.target),
            "policy": self.policy,
            "max_sessions": self.load.max_sessions,
            "service_mean_s": round(self.load.service_mean_s, 6),
            "patience_mean_s": None
            if self.load.patience_mean_s is None
            else round(self.load.patience_mean_s, 6),
            "replays": self.rounds,
            "met": self.met,
            "hours": [
                {
                    "hour": h.hour,
                    "arrivals_per_hour": round(h.rate * HOUR_S, 3),
                    "erlang_agents": self.erlang[h.hour],
                    "erlang_measure": _r(self.erlang_measure[h.hour]),
                    "agents": self.agents[h.hour],
                    "measure": _r(self.measure[h.hour]),
                }
                for h in self.load.hours
            ],
        }


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 6)


def staff(
    path: str | Path,
    target: StaffTarget,
    cfg: RunConfig,
    *,
    max_sessions: int | None = None,
    patience_mean_s: float | None = None,
    max_rounds: int = 12,
) -> StaffPlan:
    """Erlang A per hour, then replays adding an agent to every hour that misses the target."""
    load = read_workload(path)
    if max_sessions is not None:
        load.max_sessions = max_sessions
    if patience_mean_s is not None:
        load.patience_mean_s = patience_mean_s
    with TraceReader(path) as reader:
        header = reader.header
    theta = 0.0 if load.patience_mean_s is None else 1.0 / load.patience_mean_s
    erlang: list[int] = []
    erlang_m: list[float | None] = []
    for h in load.hours:
        service = load.service_of(h)
        n = erlang_agents(target, h.rate, service, load.patience_mean_s, load.max_sessions)
        erlang.append(n)
        erlang_m.append(
            erlang_measure(target, h.rate, 1.0 / service, n * load.max_sessions, theta)
            if h.rate > 0
            else None
        )
    plan = list(erlang)
    measure: list[float | None] = [None] * 24
    rounds = 0
    met = False
    while rounds < max_rounds:
        rounds += 1
        measure = achieved(simulate(path, plan, load, cfg, header), target)
        missing = [i for i, m in enumerate(measure) if m is not None and not target.holds(m)]
        if not missing:
            met = True
            break
        for i in missing:
            plan[i] += 1
    return StaffPlan(target, cfg.policy, load, erlang, erlang_m, plan, measure, rounds, met)


def table(plan: StaffPlan) -> str:
    what = "abandon rate" if plan.target.metric == "abandon_rate" else f"served in {plan.target.seconds:g}s"
    lines = [
        f"target {plan.target}; {plan.load.max_sessions} session(s) per agent; mean service "
        f"{plan.load.service_mean_s:.1f} s; mean patience "
        + (
            "none (nobody leaves)"
            if plan.load.patience_mean_s is None
            else f"{plan.load.patience_mean_s:.1f} s"
        )
        + f"; policy {plan.policy}",
        f"{'hour':>5} {'arrivals/h':>11} {'Erlang A':>9} {what + ' (A)':>18} {'simulated':>10} {what + ' (sim)':>20}",
    ]
    for h in plan.load.hours:
        if h.arrivals == 0 and plan.agents[h.hour] == 0:
            continue
        ea = plan.erlang_measure[h.hour]
        sm = plan.measure[h.hour]
        lines.append(
            f"{h.hour:>2}-{h.hour + 1:<2} {h.rate * HOUR_S:>11.1f} {plan.erlang[h.hour]:>9} "
            f"{'-' if ea is None else f'{ea:.3f}':>18} {plan.agents[h.hour]:>10} {'-' if sm is None else f'{sm:.3f}':>20}"
        )
    lines.append(
        f"agent-hours per day: Erlang A {sum(plan.erlang)}, simulated {sum(plan.agents)}; "
        f"{plan.rounds} replay(s); "
        + (
            "every hour meets the target"
            if plan.met
            else "some hours still miss the target (raise --max-rounds)"
        )
    )
    return "\n".join(lines)


def write_plot(plan: StaffPlan, out: str | Path) -> Path:
    """A PNG chart: agents per hour (Erlang A and after the replays) and the measure reached per hour."""
    from kfrouter.sim.plot import require_matplotlib

    plt = require_matplotlib()
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(10, 4.5))
    xs = list(range(24))
    ax.bar([x - 0.2 for x in xs], plan.erlang, width=0.4, label="Erlang A")
    ax.bar([x + 0.2 for x in xs], plan.agents, width=0.4, label=f"simulated ({plan.policy})")
    ax.set_xlabel("hour of the day")
    ax.set_ylabel("agents")
    ax.set_xticks(xs)
    ax2 = ax.twinx()
    pts = [(x, m) for x, m in zip(xs, plan.measure, strict=True) if m is not None]
    ax2.plot([p[0] for p in pts], [p[1] for p in pts], "k.-", label="reached (simulated)")
    ax2.axhline(plan.target.value, color="k", linestyle=":", linewidth=0.8)
    ax2.set_ylim(0, 1.02)
    ax2.set_ylabel(str(plan.target).split("=")[0].rstrip("<>"))
    ax.set_title(f"Agents needed per hour for {plan.target}")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=3)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
