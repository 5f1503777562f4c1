"""Store bench: durable push commits per second, one transaction per push (the reference, measured in the
same run) against group commit with many pushes in flight — on SQLite (``synchronous=FULL``, files in
``--workdir``) and, with ``--pg``, on PostgreSQL (a throw-away cluster from tests/pg_cluster.py, or
``--store-url``).

What one push is: the webhook's write unit — claim the push key, queue the customer (waiting row + case),
log the input — committed before the answer.

- **one-by-one**: ``with store.transaction(): ...`` in a loop, one commit (one fsync) per push: what the
  daemon did before group commit.
- **group**: ``--inflight`` coroutines on one event loop, each ``await store.commit(work)`` in a loop (open
  loop per coroutine: the next push starts when the previous one is answered). Reported: pushes/s,
  latency p50/p99 of one ``commit`` (submit to answer), pushes per batch.

No HTTP here: ``bench/load_webhook.py`` measures the daemon end to end. Run:
``python bench/bench_store.py [--pushes 3000] [--inflight 64] [--pg] [--store-url URL]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kfrouter.router.edges.store import Store, WaitingRow

ROOT = Path(__file__).resolve().parent.parent


def step(prefix: str, i: int) -> Callable[[Store], bool]:
    openid = f"{prefix}{i}"

    def work(s: Store) -> bool:
        if not s.claim_push(f"msg:{openid}", float(i)):
            return False
        s.add_waiting(WaitingRow(openid, "general", 0, float(i), "human please"))
        s.append_event(float(i), "customer_requested", {"openid": openid, "group": "general"})
        return True

    return work


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def one_by_one(store: Store, n: int) -> dict[str, Any]:
    latencies = []
    t0 = time.perf_counter()
    for i in range(n):
        t = time.perf_counter()
        with store.transaction():
            step("seq", i)(store)
        latencies.append(time.perf_counter() - t)
    wall = time.perf_counter() - t0
    return {
        "pushes_per_s": round(n / wall, 1),
        "p50_ms": round(percentile(latencies, 50) * 1000, 3),
        "p99_ms": round(percentile(latencies, 99) * 1000, 3),
        "pushes_per_commit": 1.0,
    }


async def group(store: Store, n: int, inflight: int) -> dict[str, Any]:
    latencies: list[float] = []
    before = store.commit_stats

    async def pusher(k: int) -> None:
        for i in range(k, n, inflight):
            t = time.perf_counter()
            await store.commit(step("grp", i))
            latencies.append(time.perf_counter() - t)

    t0 = time.perf_counter()
    await asyncio.gather(*(pusher(k) for k in range(inflight)))
    wall = time.perf_counter() - t0
    after = store.commit_stats
    batches = after.batches - before.batches
    return {
        "pushes_per_s": round(n / wall, 1),
        "p50_ms": round(percentile(latencies, 50) * 1000, 3),
        "p99_ms": round(percentile(latencies, 99) * 1000, 3),
        "pushes_per_commit": round((after.jobs - before.jobs) / batches, 1) if batches else None,
        "largest_batch": after.largest,
    }


def run_backend(name: str, target: str, args: argparse.Namespace) -> dict[str, Any]:
    with Store(target, appid="wx_bench") as store:
        seq = one_by_one(store, args.reference_pushes)
        grp = asyncio.run(group(store, args.pushes, args.inflight))
    ratio = round(grp["pushes_per_s"] / seq["pushes_per_s"], 2)
    print(f"{name:10} one-by-one {_row(seq)}", flush=True)
    print(f"{name:10} group      {_row(grp)}   ratio {ratio}x", flush=True)
    return {"one_by_one": seq, "group": grp, "ratio": ratio}


def _row(r: dict[str, Any]) -> str:
    return (
        f"{r['pushes_per_s']:>8.0f} pushes/s  p50 {r['p50_ms']:>7.2f} ms  p99 {r['p99_ms']:>7.2f} ms  "
        f"{r['pushes_per_commit']} pushes/commit"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--pushes", type=int, default=5000, help="pushes through group commit")
    p.add_argument("--reference-pushes", type=int, default=500, help="pushes one transaction each")
    p.add_argument("--inflight", type=int, default=64, help="pushes in flight at once (group)")
    p.add_argument("--workdir", help="where the SQLite file goes (default: a new temp dir)")
    p.add_argument("--pg", action="store_true", help="also PostgreSQL, in a throw-away cluster")
    p.add_argument("--store-url", help="also PostgreSQL, at this URL (an empty database)")
    p.add_argument("--json", help="also write the result as JSON to this file")
    args = p.parse_args(argv)
    if min(args.pushes, args.reference_pushes, args.inflight) < 1:
        p.error("--pushes, --reference-pushes and --inflight must be >= 1")
    result: dict[str, Any] = {}
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="kfr-store-bench-"))
    result["sqlite"] = run_backend("sqlite", str(workdir / "bench.db"), args)
    cluster = None
    try:
        pg_url = args.store_url
        if pg_url is None and args.pg:
            sys.path.insert(0, str(ROOT / "tests"))
            import pg_cluster

            reason = pg_cluster.unavailable()
            if reason is not None:
                print(f"postgresql: skipped ({reason})")
            else:
                cluster = pg_cluster.PgCluster.start(durable=True)
                pg_url = cluster.new_database("bench")
        if pg_url is not None:
            result["postgresql"] = run_backend("postgresql", pg_url, args)
    finally:
        if cluster is not None:
            cluster.stop()
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
