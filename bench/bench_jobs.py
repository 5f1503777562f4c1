"""Benchmark: ``kfrouter sim run --jobs 2`` against ``--jobs 1`` on the same trace and policies, in the same
run. Prints the wall clock of each, the speed-up, the CPU time the runs got (on a shared machine a run
that gets less than its share of the cores cannot speed up), and checks that both reports are identical
apart from ``wall_s`` and ``customers_per_s``.

Method: ``kfrouter sim gen`` writes the M/M/10 trace of bench/bench_sim.py (λ = 9/min, μ = 1/min, ρ = 0.9;
200,000 customers by default) to a temporary file; then ``kfrouter sim run TRACE --policy least-load
--policy group-affinity --policy sticky --policy round-robin --no-baseline --json`` runs as a subprocess
with ``--jobs 1`` and with ``--jobs 2``, taking turns for ``--repeat`` rounds (default 2), so a slow spell
of the machine hits both; each variant's best round counts. The clock covers the whole command:
interpreter start-up, spawning the workers, reading the trace in every job, the report.

    python bench/bench_jobs.py                       # 200,000 customers, 4 policies, 2 rounds
    python bench/bench_jobs.py --customers 50000 --repeat 3 --jobs 2
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from kfrouter.sim.report import strip_nondeterministic

POLICIES = ("least-load", "group-affinity", "sticky", "round-robin")


def kfrouter(*args: str) -> list[str]:
    return [sys.executable, "-m", "kfrouter.router.cli", *args]


def children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def timed_run(trace: Path, jobs: int) -> tuple[float, float, dict[str, Any]]:
    """(wall s, CPU s of the command and its workers, report) of one ``sim run``."""
    cmd = kfrouter("sim", "run", str(trace), "--no-baseline", "--json", "--jobs", str(jobs))
    for p in POLICIES:
        cmd += ["--policy", p]
    cpu0 = children_cpu()
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=3600, check=False)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"sim run --jobs {jobs} failed ({done.returncode}): {done.stderr.strip()}")
    return wall, children_cpu() - cpu0, json.loads(done.stdout)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--customers", type=int, default=200_000)
    ap.add_argument("--repeat", type=int, default=2, help="rounds; each variant's best counts")
    ap.add_argument("--jobs", type=int, default=2, help="the parallel variant's --jobs (default 2)")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    if args.customers < 1 or args.repeat < 1 or args.jobs < 2:
        ap.error("--customers and --repeat must be >= 1, --jobs >= 2")
    with tempfile.TemporaryDirectory() as tmp:
        trace = Path(tmp) / "mmc.jsonl"
        gen = kfrouter(
            "sim", "gen", "--agents", "10", "--max-sessions", "1", "--customers", str(args.customers),
            "--arrival-rate", "0.15", "--service-mean", "60", "--seed", str(args.seed), "--out", str(trace),
        )  # fmt: skip
        subprocess.run(gen, check=True, capture_output=True, timeout=3600)
        runs: dict[int, list[tuple[float, float]]] = {1: [], args.jobs: []}
        reports: dict[int, dict[str, Any]] = {}
        load0 = os.getloadavg()[0]
        for _ in range(args.repeat):
            for jobs in runs:
                wall, cpu, report = timed_run(trace, jobs)
                runs[jobs].append((wall, cpu))
                reports[jobs] = report
        load1 = os.getloadavg()[0]
    same = strip_nondeterministic(reports[1]) == strip_nondeterministic(reports[args.jobs])
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(
        f"sim run, {len(POLICIES)} policies ({', '.join(POLICIES)}), M/M/10 rho 0.9, {args.customers} customers; "
        f"{cores} cores; load average {load0:.1f} before, {load1:.1f} after; Python {sys.version.split()[0]}"
    )
    print(f"{'variant':<10}{'best wall s':>13}{'CPU s':>9}{'CPU/wall':>10}   every round (wall s)")
    best = {}
    for jobs, rounds in runs.items():
        wall, cpu = min(rounds)
        best[jobs] = wall
        every = ", ".join(f"{w:.2f}" for w, _ in rounds)
        print(f"--jobs {jobs:<3}{wall:>13.2f}{cpu:>9.2f}{cpu / wall:>10.2f}   {every}")
    print(f"speed-up --jobs {args.jobs} / --jobs 1: {best[1] / best[args.jobs]:.2f}x")
    print(f"reports identical apart from wall_s and customers_per_s: {'yes' if same else 'NO'}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
