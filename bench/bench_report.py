"""Benchmark: ``kfrouter report`` over 100,000 recorded customers (goal: at most 5 s).

Method. Build a database through the real ``Store`` API (``add_waiting``, ``record_session_start``,
``record_session_end``, ``remove_waiting``, ``append_event``; grouped 1,000 customers to a transaction with
``synchronous=NORMAL`` so the build takes seconds, not the fsyncs of a live daemon): 30 days of traffic, 20
agents in 4 groups going online and offline every day, 12 % of customers leaving before they are served, a
notification for every customer. Then time, best of ``--repeat`` runs each, in the same process:

- the *references*: opening the file read-only and a bare ``SELECT count(*), sum(requested_at) FROM
  sessions`` (SQLite scanning the table), and fetching the columns the report reads (``fetchall``: the
  rows become Python tuples, nothing else);
- reading the traffic (``router.traffic.read_traffic``);
- the whole report as ``kfrouter report --json`` computes it (read + ``build_report`` + JSON);
- the HTML page (``render_html``).

Prints the seconds and the report/reference ratios. Run: ``python bench/bench_report.py [--customers
100000] [--repeat 3] [--db FILE]`` (an existing ``--db`` is reused).
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from collections.abc import Callable
from datetime import UTC
from pathlib import Path
from typing import Any

from kfrouter.router.edges.store import Store, WaitingRow
from kfrouter.router.report import build_report
from kfrouter.router.report_html import render_html
from kfrouter.router.traffic import NOTICE_KIND, connect_readonly, read_traffic

GROUPS = ("sales", "support", "billing", "vip")
AGENTS = [(f"a{i:02d}@bench", GROUPS[i % len(GROUPS)]) for i in range(20)]
DAYS = 30
T0 = 1_796_083_200.0  # 2026-12-01 00:00 UTC
BATCH = 1000


def build(path: Path, customers: int, seed: int = 1) -> None:
    rng = random.Random(seed)
    per_day = customers / DAYS
    with Store(path, synchronous="NORMAL") as s:
        with s.transaction():
            for day in range(DAYS):
                base = T0 + day * 86400
                for kf, g in AGENTS:
                    s.append_event(
                        base + 8 * 3600 + rng.uniform(0, 600),
                        "agent_online",
                        {"agent": kf, "groups": [g], "max_sessions": 3},
                    )
                    s.append_event(base + 20 * 3600 + rng.uniform(0, 600), "agent_offline", {"agent": kf})
        done = 0
        while done < customers:
            with s.transaction():
                for i in range(done, min(customers, done + BATCH)):
                    day, k = divmod(i, int(per_day) + 1)
                    t = T0 + day * 86400 + 8 * 3600 + 12 * 3600 * k / per_day + rng.uniform(0, 5)
                    openid = f"o{i:07d}"
                    group = rng.choice(GROUPS)
                    s.add_waiting(WaitingRow(openid, group, 0, t, text="人工"))
                    s.append_event(t + 0.5, NOTICE_KIND, {"openid": openid, "kind": "queued"})
                    if rng.random() < 0.12:
                        s.remove_waiting(openid, t + rng.expovariate(1 / 60), "cancelled")
                        continue
                    kf = rng.choice([a for a, g in AGENTS if g == group])
                    start = t + rng.expovariate(1 / 15)
                    s.record_session_start(openid, kf, start)
                    s.record_session_end(openid, kf, start + rng.expovariate(1 / 240))
            done = min(customers, done + BATCH)


def best(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    times, result = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
    return min(times), result


def reference(path: Path) -> int:
    db = connect_readonly(path)
    try:
        n: int = db.execute("SELECT count(*), sum(requested_at) FROM sessions").fetchone()[0]
        return n
    finally:
        db.close()


def fetch_rows(path: Path) -> int:
    """The second reference: SQLite hands over the columns the report reads, no Python work per row."""
    db = connect_readonly(path)
    try:
        rows = db.execute(
            "SELECT id, openid, grp, requested_at, kf_account, started_at, ended_at, outcome FROM sessions"
        ).fetchall()
        return len(rows)
    finally:
        db.close()


def report_json(path: Path) -> str:
    return json.dumps(build_report(read_traffic(path), tz=UTC), ensure_ascii=False, indent=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--customers", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--db", type=Path, default=None, help="reuse (or create) this database")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="kfrouter-bench-report-") as tmp:
        path = args.db or Path(tmp) / "kfrouter.db"
        if not path.exists():
            t = time.perf_counter()
            build(path, args.customers)
            print(f"built {path} with {args.customers:,} customers in {time.perf_counter() - t:.1f} s")
        ref_s, n = best(lambda: reference(path), args.repeat)
        fetch_s, _ = best(lambda: fetch_rows(path), args.repeat)
        read_s, traffic = best(lambda: read_traffic(path), args.repeat)
        report_s, text = best(lambda: report_json(path), args.repeat)
        report = json.loads(text)
        html_s, page = best(lambda: render_html(report), args.repeat)
        t = report["totals"]
        print(
            f"cases in the database: {n:,}; requests {t['requests']:,}, served {t['served']:,}, "
            f"abandoned {t['abandoned']:,}, notifications {t['notifications']:,}"
        )
        print(f"reference  SELECT count(*) scan        {ref_s:8.3f} s")
        print(f"reference  fetchall of the columns     {fetch_s:8.3f} s")
        print(f"read_traffic (read-only snapshot)      {read_s:8.3f} s  ({len(traffic.cases):,} cases)")
        print(
            f"report --json (read + compute + JSON)  {report_s:8.3f} s  = {report_s / ref_s:,.0f}x the scan, {report_s / fetch_s:.1f}x the fetch"
        )
        print(f"render_html                            {html_s:8.3f} s  ({len(page):,} characters)")
        verdict = "within" if report_s + html_s <= 5.0 else "OVER"
        print(
            f"report + HTML {report_s + html_s:.2f} s for {args.customers:,} customers: {verdict} the 5 s goal"
        )


if __name__ == "__main__":
    main()
