"""What matching is worth when who serves matters: issue 18's first claim on its own trace.

Generates (in memory, as ``kfrouter sim gen`` would write it)

    kfrouter sim gen --agents 8 --max-sessions 2 --customers 50000 --arrival-rate 0.2 --service-mean 60 \\
        --patience-mean 240 --groups "sales:0.6,support:0.4" --returning 0.3 --cross-skill 0.6 \\
        --same-agent-factor 0.8 --seed SEED

for each ``--seeds`` value, replays it under best-fit, least-load, sticky and wechat-native (``--overflow-after
10``) and prints each policy's p95 wait as a ratio of wechat-native's and its affinity, then whether the
claim holds (best-fit's p95 at least 30 % below wechat-native's, affinity >= 0.95). Exit 1 when it does
not. Not a test (about 10 s a seed); tests/test_policy_bestfit.py checks the same on 5,000 customers.

    python bench/skills_gain.py --seeds 1 2 3
"""

from __future__ import annotations

import argparse
import sys

from kfrouter.sim.gen import GenParams, generate, header_for, parse_shares
from kfrouter.sim.report import metrics
from kfrouter.sim.runner import RunConfig, Simulation, groups_of

POLICIES = ("best-fit", "least-load", "sticky", "wechat-native")


def params(seed: int, customers: int) -> GenParams:
    return GenParams(
        agents=8,
        max_sessions=2,
        customers=customers,
        arrival_rate=0.2,
        service_mean=60,
        patience_mean=240,
        groups=parse_shares("sales:0.6,support:0.4"),
        returning=0.3,
        cross_skill=0.6,
        same_agent_factor=0.8,
        seed=seed,
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[1])
    ap.add_argument("--customers", type=int, default=50000)
    args = ap.parse_args()
    ok = True
    for seed in args.seeds:
        p = params(seed, args.customers)
        header = header_for(p)
        rows = {}
        for policy in POLICIES:
            cfg = RunConfig(policy=policy, seed=seed, overflow_after_s=10.0)
            rows[policy] = metrics(Simulation(header, generate(p), cfg, groups=groups_of(header)).run())
        native = rows["wechat-native"]["wait_p95_s"]
        print(f"seed {seed}: wechat-native p95 wait {native:.2f} s")
        for policy, r in rows.items():
            print(
                f"  {policy:14s} p95 {r['wait_p95_s']:7.2f} s (x{r['wait_p95_s'] / native:.3f})  "
                f"affinity {r['affinity_hit_rate']:.4f}  handle {r['handle_mean_s']:.2f} s"
            )
        best = rows["best-fit"]
        holds = best["wait_p95_s"] <= 0.7 * native and best["affinity_hit_rate"] >= 0.95
        ok = ok and holds
        print(f"  claim (best-fit p95 <= 0.7 x native, affinity >= 0.95): {'holds' if holds else 'FAILS'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
