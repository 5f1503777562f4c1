"""Several daemons, one PostgreSQL: 200 accounts over 2 daemons at 0.2 customers/s each (issue 17).

What it runs (``tests/cluster_rig.py``): a throw-away PostgreSQL cluster with the server's durable
defaults, ``--daemons`` ``kfrouter run`` subprocesses sharing it with ``[cluster]``, the fake WeChat in
this process serving every account — pushes to the daemons in turn, as a load balancer does (so about
half of them reach a daemon that does not own the account and go through the shared inbox) — and agents
closing each session 1–3 s after it began.

What it prints, for the cluster and for the **reference measured in the same run** (one daemon holding
every account, the same load):

- CPU seconds per daemon per second of the measured window (``/proc/<pid>/stat``), and the ratio;
- the push answer time (the webhook's answer as the fake measured it: p50/p99);
- assignments per second (successful ``kfsession/create`` in the window) and customers served;
- how the accounts were spread (leases per daemon).

    python bench/bench_cluster.py                      # 200 accounts, 2 daemons, 0.2/s each, 60 s
    python bench/bench_cluster.py --accounts 40 --seconds 20   # a quick look
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import _harness as h
import cluster_rig as cr
import pg_cluster


async def measure(
    pg: pg_cluster.PgCluster, workdir: Path, *, daemons: int, accounts: int, rate: float, seconds: float
) -> dict[str, Any]:
    url = pg.new_database(f"bench{daemons}")
    async with cr.ClusterRig(
        workdir, url, daemons=daemons, accounts=accounts, lease_s=15.0, renew_every_s=3.0
    ) as rig:
        await cr.until(
            lambda: sum(len(v) for v in rig.owners_by_daemon().values()) == accounts,
            120,
            "every account to be leased",
            every=0.5,
        )
        spread = {k: len(v) for k, v in rig.owners_by_daemon().items()}
        # warm-up: one customer per account, all served, before the window opens
        await rig.arrivals(accounts, rate * accounts, prefix="warm")
        await cr.until(rig.everyone_served, 120, "the warm-up customers to be served", every=0.25)
        pids = [d.proc.pid for d in rig.daemons]  # type: ignore[union-attr]
        cpu0 = [h.cpu_seconds(p) or 0.0 for p in pids]
        log0 = len(rig.deliveries())
        served0 = sum(rig.served().values())
        t0 = time.monotonic()
        n = max(1, round(rate * accounts * seconds))
        await rig.arrivals(n, rate * accounts, prefix="c")
        window = time.monotonic() - t0
        cpu1 = [h.cpu_seconds(p) or 0.0 for p in pids]
        served1 = sum(rig.served().values())
        await cr.until(rig.everyone_served, 120, "every customer to be served", every=0.25)
        answers = [
            d["elapsed_s"]
            for d in rig.deliveries()[log0:]
            if d.get("outcome") == "handled" and "elapsed_s" in d
        ]
        doubles = [k for k, v in rig.served().items() if v > 1]
        over = cr.agents_over_capacity(rig.creates())
        return {
            "daemons": daemons,
            "accounts": accounts,
            "spread": spread,
            "customers": n,
            "window_s": round(window, 2),
            "cpu_per_daemon_s_per_s": [round((b - a) / window, 4) for a, b in zip(cpu0, cpu1, strict=True)],
            "push_answer_ms": {
                "p50": round(h.percentile(answers, 50) * 1000, 2),
                "p99": round(h.percentile(answers, 99) * 1000, 2),
                "n": len(answers),
            },
            "assignments_per_s": round((served1 - served0) / window, 2),
            "served_twice": len(doubles),
            "over_capacity": len(over),
        }


async def main(args: argparse.Namespace) -> int:
    reason = pg_cluster.unavailable()
    if reason is not None:
        print(f"bench_cluster: {reason}", file=sys.stderr)
        return 2
    pg = pg_cluster.PgCluster.start(durable=True)
    try:
        with tempfile.TemporaryDirectory(prefix="kfr-bench-cluster-") as tmp:
            base = Path(tmp)
            (base / "cluster").mkdir()
            (base / "reference").mkdir()
            common = {"accounts": args.accounts, "rate": args.rate, "seconds": args.seconds}
            cluster = await measure(pg, base / "cluster", daemons=args.daemons, **common)
            reference = await measure(pg, base / "reference", daemons=1, **common)
    finally:
        pg.stop()
    ref_cpu = reference["cpu_per_daemon_s_per_s"][0] or 1e-9
    cpu = cluster["cpu_per_daemon_s_per_s"]
    print(json.dumps({"cluster": cluster, "reference": reference}, indent=2))
    print()
    print(f"{args.accounts} accounts, {args.rate:g} customers/s each, {args.seconds:g} s window")
    print(f"{'':24}{'cluster':>24}{'reference (1 daemon)':>24}")
    print(f"{'daemons':24}{cluster['daemons']:>24}{1:>24}")
    print(
        f"{'leases per daemon':24}{list(cluster['spread'].values())!s:>24}{list(reference['spread'].values())!s:>24}"
    )
    print(f"{'CPU s/s per daemon':24}{cpu!s:>24}{ref_cpu:>24}")
    print(f"{'  ratio to reference':24}{[round(c / ref_cpu, 2) for c in cpu]!s:>24}{1.0:>24}")
    print(
        f"{'push answer p50 ms':24}{cluster['push_answer_ms']['p50']:>24}{reference['push_answer_ms']['p50']:>24}"
    )
    print(
        f"{'push answer p99 ms':24}{cluster['push_answer_ms']['p99']:>24}{reference['push_answer_ms']['p99']:>24}"
    )
    print(f"{'assignments/s':24}{cluster['assignments_per_s']:>24}{reference['assignments_per_s']:>24}")
    print(
        f"{'served twice / over cap':24}{(cluster['served_twice'], cluster['over_capacity'])!s:>24}"
        f"{(reference['served_twice'], reference['over_capacity'])!s:>24}"
    )
    return 0 if cluster["served_twice"] == 0 and cluster["over_capacity"] == 0 else 1


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--accounts", type=int, default=200)
    p.add_argument("--daemons", type=int, default=2)
    p.add_argument("--rate", type=float, default=0.2, help="customers per second per account")
    p.add_argument("--seconds", type=float, default=60.0, help="the measured window")
    return p.parse_args(argv)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse())))
