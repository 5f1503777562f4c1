"""Wait-estimate accuracy figures: relative RMSE of kfrouter's selected estimate and of each predictor
in three scenarios (M/M/c, M/M/c+M, a time-varying day) plus one where the queue model is wrong
(agents shared by two groups). Every scenario is replayed through sim.runner with several seeds and the
customers are pooled. Run: ``python bench/eta_figures.py [--customers N] [--seeds K]``.

rrmse = RMSE / mean actual wait, over customers who had to wait (after a warm-up); abandoners count with
their potential wait (docs/estimates.md). ``floor`` is sqrt(1 - rho), the best a queue-length predictor
can do in M/M/c.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import time
from collections.abc import Callable, Iterable, Iterator

from kfrouter.router.core.estimate import Outcome
from kfrouter.sim.eta import EtaTracker, rrmse
from kfrouter.sim.gen import GenParams, Segment, generate, header_for
from kfrouter.sim.runner import RunConfig, run_with_eta
from kfrouter.sim.trace import AgentOnline, Record

SVC = 60.0
DAY = (
    Segment(0, 8, 0.012),
    Segment(8, 12, 0.034),
    Segment(12, 17, 0.07),
    Segment(17, 20, 0.036),
    Segment(20, 24, 0.015),
)
SHIFTS = (Segment(20, 9, 0.2), Segment(8, 17, 0.4), Segment(12, 21, 0.4))


def _shared(records: Iterable[Record]) -> Iterator[Record]:
    for rec in records:
        if isinstance(rec, AgentOnline):
            rec = dataclasses.replace(rec, groups=("a", "b"))
        yield rec


@dataclasses.dataclass
class Scenario:
    name: str
    params: Callable[[int, int], GenParams]  # (customers, seed) -> params
    warmup_s: Callable[[int], float]
    floor: float | None = None
    transform: Callable[[Iterable[Record]], Iterable[Record]] | None = None


def scenarios() -> list[Scenario]:
    lam_mmc = 0.8 * 10 / SVC
    lam_mmcm = 1.1 * 10 / SVC
    return [
        Scenario(
            "M/M/10 rho=0.8",
            lambda n, s: GenParams(
                agents=5, max_sessions=2, customers=n, arrival_rate=lam_mmc, service_mean=SVC, seed=s
            ),
            lambda n: 0.05 * n / lam_mmc,
            floor=math.sqrt(1 - 0.8),
        ),
        Scenario(
            "M/M/10+M rho=1.1 patience=120s",
            lambda n, s: GenParams(
                agents=5,
                max_sessions=2,
                customers=n,
                arrival_rate=lam_mmcm,
                service_mean=SVC,
                patience_mean=120.0,
                seed=s,
            ),
            lambda n: 0.05 * n / lam_mmcm,
        ),
        Scenario(
            "day profile + shifts, patience=900s",
            lambda n, s: GenParams(
                agents=10,
                max_sessions=3,
                customers=n,
                arrival_rate=None,
                arrival_profile=DAY,
                shifts=SHIFTS,
                service_mean=300.0,
                patience_mean=900.0,
                seed=s,
            ),
            lambda n: 8 * 3600.0,
        ),
        Scenario(
            "agents shared by 2 groups",
            lambda n, s: GenParams(
                agents=5,
                max_sessions=2,
                customers=n,
                arrival_rate=0.9 * 10 / SVC,
                service_mean=SVC,
                groups=(("a", 0.5), ("b", 0.5)),
                seed=s,
            ),
            lambda n: 2000.0,
            transform=_shared,
        ),
    ]


def run(sc: Scenario, customers: int, seeds: int) -> dict[str, object]:
    outcomes: list[Outcome] = []
    methods: dict[str, int] = {}
    t0 = time.perf_counter()
    for seed in range(1, seeds + 1):
        params = sc.params(customers, seed)
        tracker = EtaTracker(warmup_s=sc.warmup_s(customers))
        records: Iterable[Record] = generate(params)
        if sc.transform is not None:
            records = sc.transform(records)
        cfg = RunConfig(policy="least-load", overflow_after_s=None)
        run_with_eta(header_for(params), records, cfg, tracker, groups=[g for g, _ in params.groups])
        got = [
            o
            for o in tracker.outcomes
            if o.arrived_at >= tracker.warmup_s
            and all(math.isfinite(o.predictions.get(p, math.inf)) for p in ("queue", "qlen", "les", "hol"))
        ]
        outcomes += got
        for o in got:
            methods[o.method] = methods.get(o.method, 0) + 1
    row: dict[str, object] = {
        "scenario": sc.name,
        "n": len(outcomes),
        "mean_wait": sum(o.actual for o in outcomes) / max(1, len(outcomes)),
        "floor": sc.floor,
        "kfrouter": rrmse((o.seconds, o.actual) for o in outcomes),
        "bias_s": sum(o.seconds - o.actual for o in outcomes) / max(1, len(outcomes)),
    }
    for p in ("queue", "qlen", "les", "hol"):
        row[p] = rrmse((o.predictions[p], o.actual) for o in outcomes)
    total = sum(methods.values()) or 1
    row["chosen"] = " ".join(f"{k}:{100 * v / total:.0f}%" for k, v in sorted(methods.items()))
    row["wall_s"] = time.perf_counter() - t0
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--customers", type=int, default=60_000, help="customers per replication")
    ap.add_argument("--seeds", type=int, default=5, help="replications per scenario")
    args = ap.parse_args()
    cols = ("n", "mean_wait", "floor", "kfrouter", "queue", "qlen", "les", "hol", "bias_s")
    print(f"{args.seeds} seeds x {args.customers} customers per scenario; rrmse = RMSE / mean wait")
    head = f"{'scenario':<36}" + "".join(f"{c:>10}" for c in cols) + "  chosen"
    print(head)
    print("-" * len(head))
    for sc in scenarios():
        row = run(sc, args.customers, args.seeds)
        cells = []
        for c in cols:
            v = row[c]
            if v is None:
                cells.append(f"{'-':>10}")
            elif isinstance(v, int):
                cells.append(f"{v:>10d}")
            else:
                assert isinstance(v, float)
                cells.append(f"{v:>10.1f}" if c in ("mean_wait", "bias_s") else f"{v:>10.3f}")
        print(f"{sc.name:<36}" + "".join(cells) + f"  {row['chosen']}  ({row['wall_s']:.0f} s)")


if __name__ == "__main__":
    main()
