"""Affinity against mean wait on one trace: least-load at several overflow timers, best-fit at several
beliefs about unlisted skills, and wechat-native; prints the points and writes a PNG (needs matplotlib).

    kfrouter sim gen --agents 8 --max-sessions 2 --customers 5000 --arrival-rate 0.2 --service-mean 60 \\
        --patience-mean 240 --groups "sales:0.6,support:0.4" --returning 0.3 --seed 1 --out day.jsonl
    python bench/affinity_frontier.py day.jsonl --out docs/img/affinity-frontier.png

Not a test: a figure for docs/simulator.md, made from replays of the trace (deterministic).
"""

from __future__ import annotations

import argparse

from kfrouter.sim.plot import require_matplotlib
from kfrouter.sim.report import metrics
from kfrouter.sim.runner import RunConfig, run_trace

OVERFLOWS = (0.0, 5.0, 10.0, 20.0, 30.0, 60.0)
BELIEFS = (1.0, 0.9, 0.85, 0.75, 0.7, 0.6, 0.5)


def point(trace: str, policy: str, overflow: float) -> tuple[float, float]:
    row = metrics(run_trace(trace, RunConfig(policy=policy, seed=1, overflow_after_s=overflow)))
    return float(row["wait_mean_s"]), float(row["affinity_hit_rate"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("trace")
    ap.add_argument("--out", default="affinity-frontier.png")
    args = ap.parse_args()
    plt = require_matplotlib()
    ll = [point(args.trace, "least-load", o) for o in OVERFLOWS]
    bf = [point(args.trace, f"best-fit(unlisted_skill={q})", 10.0) for q in BELIEFS]
    native = point(args.trace, "wechat-native", 10.0)
    for o, (w, a) in zip(OVERFLOWS, ll, strict=True):
        print(f"least-load overflow {o:g} s: mean wait {w:.3f} s, affinity {a:.4f}")
    for q, (w, a) in zip(BELIEFS, bf, strict=True):
        print(f"best-fit unlisted_skill {q:g}: mean wait {w:.3f} s, affinity {a:.4f}")
    print(f"wechat-native: mean wait {native[0]:.3f} s, affinity {native[1]:.4f}")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot([p[0] for p in ll], [p[1] for p in ll], "o-", label="least-load, overflow after 0-60 s")
    for o, (w, a) in zip(OVERFLOWS, ll, strict=True):
        ax.annotate(f"{o:g}s", (w, a), textcoords="offset points", xytext=(6, -10), fontsize=8)
    ax.plot([p[0] for p in bf], [p[1] for p in bf], "s-", label="best-fit, unlisted_skill 1-0.5")
    for q, (w, a) in zip(BELIEFS, bf, strict=True):
        ax.annotate(f"{q:g}", (w, a), textcoords="offset points", xytext=(-22, 4), fontsize=8)
    ax.plot([native[0]], [native[1]], "k^", label="wechat-native")
    ax.set_xlabel("mean wait of served customers (s)")
    ax.set_ylabel("affinity hit rate")
    ax.set_title("Own-group service against waiting (README trace)")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right")
    fig.savefig(args.out, dpi=110, bbox_inches="tight")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
