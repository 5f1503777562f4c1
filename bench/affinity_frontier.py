"""Affinity against mean wait on one trace: how far routing by group can go without making customers wait.

    kfrouter sim gen --agents 8 --max-sessions 2 --customers 5000 --arrival-rate 0.2 --service-mean 60 \\
        --patience-mean 240 --groups "sales:0.6,support:0.4" --returning 0.3 --seed 1 --out day.jsonl
    python bench/affinity_frontier.py day.jsonl --out docs/img/affinity-frontier.png

Replays the trace (deterministic) under

- least-load with ``--overflow-after`` 0, 5, 10, 20, 30, 60 s, and never (separate queues);
- best-fit at several beliefs about unlisted skills (``unlisted_skill``: 1 is work-conserving);
- a wider family of work-conserving rules, defined here only: a freed agent serves its own group's
  oldest customer first, and another group's customer only while that group has at least ``k[g]``
  customers waiting (per-group backlog thresholds; k = 1 everywhere is best-fit's default);
- the optimal rules of the two-group Markov model the trace is drawn from (bench/crossing_bound.py: for a
  price per crossing, the rule that minimises waiting + price × crossings), replayed on the trace;
- wechat-native;

prints every point, the Erlang A figures for one pooled queue and two separate ones, the model's frontier
(the least mean wait any rule can have at the affinity least-load reaches at 60 s), and whether one point
dominates every least-load point (as high an affinity at no more mean wait); writes a PNG (needs
matplotlib, and so numpy). Not a test: the figure and table of docs/simulator.md.
"""

from __future__ import annotations

import argparse
import itertools
from collections.abc import Sequence

import numpy as np
from crossing_bound import Chain, Model, frontier, least_wait_at

from kfrouter.policies.bestfit import BestFit
from kfrouter.router.core.model import WaitingView
from kfrouter.router.core.policy import PoolView
from kfrouter.sim.erlang import erlang_a
from kfrouter.sim.gen import params_from_header
from kfrouter.sim.plot import require_matplotlib
from kfrouter.sim.report import metrics
from kfrouter.sim.runner import RunConfig, Simulation, groups_of
from kfrouter.sim.trace import Header, Record, read_trace

OVERFLOWS: tuple[float | None, ...] = (0.0, 5.0, 10.0, 20.0, 30.0, 60.0, None)
BELIEFS = (1.0, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6, 0.55, 0.5, 0.4)
THRESHOLDS = (1, 2, 3, 5, 8, 100)  # k per group; 100: never served by the other group
PRICES = (10.0, 20.0, 40.0, 80.0, 100.0, 120.0)  # s of waiting per crossing (bench/crossing_bound.py)


class BacklogThreshold(BestFit):
    """best-fit without skills, except that a customer goes to another group's agent only while at
    least ``k[group]`` customers of their group wait (themselves included)."""

    def __init__(self, k: dict[str, int]) -> None:
        super().__init__()
        self.k = k

    def _worth_now(self, pool: PoolView, customer: WaitingView, rank: tuple[float, bool, bool]) -> bool:
        if not rank[1] or customer.group is None or self._reader is None:
            return True  # their own group's agent (or no group): always
        return self._reader.waiting_in_group(customer.group) >= self.k.get(customer.group, 1)


class PricedCrossing(BestFit):
    """best-fit without skills, except that a customer goes to another group's agent only where the optimal
    rule of the two-group Markov model crosses (bench/crossing_bound.py, at a price of ``eta`` seconds of
    waiting per crossing): it reads the sessions held by each group's agents and the customers of each
    group waiting, as the model's rule does."""

    def __init__(self, groups: tuple[str, str], table: np.ndarray) -> None:
        super().__init__()
        self.groups, self.table = groups, table

    def _worth_now(self, pool: PoolView, customer: WaitingView, rank: tuple[float, bool, bool]) -> bool:
        if not rank[1] or customer.group is None or self._reader is None:
            return True  # their own group's agent (or no group): always
        state = []
        for g in self.groups:
            capacity, spare = pool.capacity_of(g)  # type: ignore[attr-defined]
            state.append(capacity - spare)
        state += [self._reader.waiting_in_group(g) for g in self.groups]
        index = tuple(min(v, n - 1) for v, n in zip(state, self.table.shape, strict=True))
        return bool(self.table[index] >= 1)


class Point:
    def __init__(self, family: str, label: str, row: dict[str, object]) -> None:
        self.family, self.label = family, label
        self.wait = float(row["wait_mean_s"])  # type: ignore[arg-type]
        self.affinity = float(row["affinity_hit_rate"])  # type: ignore[arg-type]
        self.abandoned = int(row["abandoned"])  # type: ignore[call-overload]

    def dominates(self, other: Point) -> bool:
        return self.wait <= other.wait and self.affinity >= other.affinity


def replay(
    header: Header, records: Sequence[Record], policy: str, overflow: float | None, obj: BestFit | None = None
) -> dict[str, object]:
    sim = Simulation(
        header, records, RunConfig(policy=policy, seed=1, overflow_after_s=overflow), groups=groups_of(header)
    )
    if obj is not None:
        sim.policy = obj  # a rule defined in this bench, not an installed policy
    return metrics(sim.run())


def group_model(header: Header) -> tuple[list[tuple[str, float, int]], Model]:
    """Per group of the trace's params (name, arrival rate, sessions its agents hold), and the two-group
    Markov model of bench/crossing_bound.py."""
    p = params_from_header(header)
    lam = p.arrival_rate or 0.0
    # the generator's split of agents: largest remainder, at least one each (sim/gen.py)
    shares = [w for _, w in p.groups]
    total = sum(shares)
    exact = [p.agents * w / total for w in shares]
    counts = [int(x) for x in exact]
    for i in sorted(range(len(exact)), key=lambda i: exact[i] - counts[i], reverse=True)[
        : p.agents - sum(counts)
    ]:
        counts[i] += 1
    groups = [(g, lam * w / total, n * p.max_sessions) for (g, w), n in zip(p.groups, counts, strict=True)]
    (_, rate_a, slots_a), (_, rate_b, slots_b) = groups  # the README's trace has two groups
    return groups, Model(rate_a, rate_b, slots_a, slots_b, p.service_mean, p.patience_mean or 1e9)


def erlang_figures(header: Header) -> list[str]:
    """Mean wait (all arrivals) of one pooled M/M/c+M queue and of one per group, from the trace's params."""
    p = params_from_header(header)
    mu = 1.0 / p.service_mean
    theta = 1.0 / p.patience_mean if p.patience_mean else 1e-9
    lam = p.arrival_rate or 0.0
    servers = p.agents * p.max_sessions
    pooled = erlang_a(lam, mu, servers, theta)
    lines = [f"Erlang A, one queue of {servers} servers: mean wait {pooled.mean_wait:.2f} s"]
    waits = []
    for g, rate, slots in group_model(header)[0]:
        r = erlang_a(rate, mu, slots, theta)
        waits.append(r.mean_wait * rate / lam)
        lines.append(f"  {g}: {slots} servers, load {r.utilization:.3f}, mean wait {r.mean_wait:.2f} s")
    lines.append(f"Erlang A, separate queues (affinity 1): mean wait {sum(waits):.2f} s")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("trace")
    ap.add_argument("--out", default="affinity-frontier.png")
    args = ap.parse_args()
    plt = require_matplotlib()
    header, records, _ = read_trace(args.trace)
    groups = sorted(groups_of(header, records))
    ll = [
        Point("least-load", "never" if o is None else f"{o:g}s", replay(header, records, "least-load", o))
        for o in OVERFLOWS
    ]
    bf = [
        Point("best-fit", f"{q:g}", replay(header, records, f"best-fit(unlisted_skill={q})", 10.0))
        for q in BELIEFS
    ]
    th = []
    for ks in itertools.product(THRESHOLDS, repeat=len(groups)):
        k = dict(zip(groups, ks, strict=True))
        label = ",".join(f"{g}>={n}" for g, n in k.items())
        th.append(Point("thresholds", label, replay(header, records, "best-fit", 10.0, BacklogThreshold(k))))
    names, model = group_model(header)
    chain = Chain(model)
    pr = [
        Point(
            "model-optimal",
            f"{eta:g}",
            replay(
                header,
                records,
                "best-fit",
                10.0,
                PricedCrossing((names[0][0], names[1][0]), chain.crossings_on_grid(eta)),
            ),
        )
        for eta in PRICES
    ]
    native = Point("wechat-native", "", replay(header, records, "wechat-native", 10.0))
    for p in (*ll, *bf, *pr, native):
        print(
            f"{p.family:14s} {p.label:6s} mean wait {p.wait:6.3f} s  affinity {p.affinity:.4f}  abandoned {p.abandoned}"
        )
    targets = [p for p in ll if p.label != "never"]
    for p in th:
        print(f"thresholds {p.label:26s} mean wait {p.wait:6.3f} s  affinity {p.affinity:.4f}")
    for line in erlang_figures(header):
        print(line)
    need_wait = min(p.wait for p in targets)
    need_aff = max(p.affinity for p in targets)
    bound = frontier(model, [0.0, 5.0, 10.0, 20.0, 40.0, 60.0, 80.0, 100.0, 120.0, 160.0, 1e9])
    least = least_wait_at(bound, need_aff, model.rate_a + model.rate_b)
    print(
        f"the model's frontier (bench/crossing_bound.py): any rule at affinity >= {need_aff:.4f} waits "
        f">= {least:.3f} s on average, {least / bound[0].mean_wait:.2f} x what one pooled queue waits "
        f"({bound[0].mean_wait:.3f} s, all arrivals)"
    )
    every = [*bf, *th, *pr]
    winners = [p for p in every if all(p.dominates(t) for t in targets)]
    print(
        f"to dominate every least-load point: mean wait <= {need_wait:.3f} s and affinity >= {need_aff:.4f}"
    )
    best_fast = max((p for p in every if p.wait <= need_wait), key=lambda p: p.affinity, default=None)
    best_aff = min((p for p in every if p.affinity >= need_aff), key=lambda p: p.wait, default=None)
    if best_fast is not None:
        print(
            f"  highest affinity at that wait: {best_fast.family} {best_fast.label}: {best_fast.affinity:.4f}"
        )
    if best_aff is not None:
        print(f"  least wait at that affinity: {best_aff.family} {best_aff.label}: {best_aff.wait:.3f} s")
    print("  dominated by:", ", ".join(f"{p.family} {p.label}" for p in winners) or "no point")
    for t in targets:
        cover = min((p for p in bf if p.dominates(t)), key=lambda p: p.wait, default=None)
        print(
            f"  least-load {t.label}: "
            + (f"dominated by best-fit {cover.label}" if cover else "not dominated")
        )

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    ax.scatter(
        [p.wait for p in th], [p.affinity for p in th], s=10, c="0.7", label="per-group backlog thresholds"
    )
    ax.plot(
        [p.wait for p in ll], [p.affinity for p in ll], "o-", label="least-load, overflow after 0-60 s, never"
    )
    for p in ll:
        ax.annotate(p.label, (p.wait, p.affinity), textcoords="offset points", xytext=(6, -10), fontsize=8)
    ax.plot([p.wait for p in bf], [p.affinity for p in bf], "s-", label="best-fit, unlisted_skill 1-0.4")
    for p in bf:
        ax.annotate(p.label, (p.wait, p.affinity), textcoords="offset points", xytext=(-22, 4), fontsize=8)
    ax.plot(
        [p.wait for p in pr],
        [p.affinity for p in pr],
        "d-",
        label="optimal rules of the Markov model, replayed",
    )
    ax.plot([native.wait], [native.affinity], "k^", label="wechat-native")
    ax.axvline(need_wait, color="r", lw=0.8, ls=":")
    ax.axhline(need_aff, color="r", lw=0.8, ls=":")
    ax.annotate(
        "needed to dominate\nevery least-load point",
        (need_wait, need_aff),
        textcoords="offset points",
        xytext=(4, -30),
        fontsize=8,
        color="r",
    )
    ax.set_xlabel("mean wait of served customers (s)")
    ax.set_ylabel("affinity hit rate")
    ax.set_title("Own-group service against waiting (README trace)")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.savefig(args.out, dpi=110, bbox_inches="tight")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
