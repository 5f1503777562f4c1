"""Benchmark: one M/M/c workload through kfrouter's simulator (the full Engine, a policy and the WeChat
model) and, in the same run, through Ciw and SimPy models of the same queue when they are installed
(``pip install 'kfrouter[bench]'``). Prints customers per second of each and the ratios, the mean wait of
each next to Erlang C (so a fast but wrong model shows), and with ``--profile`` where kfrouter's time goes.

Method: each tool simulates the same queue (c servers, Poisson arrivals, exponential service, FIFO, no
abandonment) until N customers are done; the clock covers building the model, running it and collecting
per-customer waits, and excludes interpreter start-up and imports. kfrouter generates its trace lazily
in the same process, arrivals in blocks as ``kfrouter sim run`` does for a generated trace
(``--via-file`` also times writing and reading a trace file). Each tool's best of
``--repeat`` rounds (default 3), the tools taking turns within a round.

    python bench/bench_sim.py                     # 10 agents, 9/min, 1/min, 200,000 customers
    python bench/bench_sim.py --customers 50000 --breakdown --profile
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import json
import pstats
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kfrouter.sim.erlang import erlang_c
from kfrouter.sim.gc_policy import replay_gc
from kfrouter.sim.gen import GenParams, generate, generate_blocks, header_for
from kfrouter.sim.runner import RunConfig, groups_of, run_records, run_trace
from kfrouter.sim.trace import write_trace

Result = dict[str, Any]


def run_kfrouter(c: int, lam: float, mu: float, n: int, seed: int, policy: str, via_file: bool) -> Result:
    params = GenParams(
        agents=c, max_sessions=1, customers=n, arrival_rate=lam, service_mean=1 / mu, seed=seed
    )
    cfg = RunConfig(policy=policy, seed=seed)
    t0 = time.perf_counter()
    if via_file:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "mmc.jsonl"
            write_trace(path, header_for(params), generate(params))
            with replay_gc():  # as `kfrouter sim run` runs it (sim/gc_policy.py); the other tools: defaults
                res = run_trace(str(path), cfg)
    else:
        header = header_for(params)
        with replay_gc():  # as `kfrouter sim run` runs it (sim/gc_policy.py); the other tools: defaults
            res = run_records(header, generate_blocks(params), cfg, groups=groups_of(header))
    wall = time.perf_counter() - t0
    waits = res.tally.waits  # nobody leaves: every customer is served
    assert res.customers == n == len(waits) and res.capacity_violations == 0 and res.double_assignments == 0
    return {
        "wall_s": wall,
        "customers": n,
        "mean_wait": statistics.fmean(waits),
        "p_wait": sum(1 for w in waits if w > 0) / n,
        "events": res.events + res.ticks,
    }


def run_ciw(c: int, lam: float, mu: float, n: int, seed: int) -> Result:
    import ciw

    t0 = time.perf_counter()
    ciw.seed(seed)
    network = ciw.create_network(
        arrival_distributions=[ciw.dists.Exponential(lam)],
        service_distributions=[ciw.dists.Exponential(mu)],
        number_of_servers=[c],
    )
    sim = ciw.Simulation(network)
    sim.simulate_until_max_customers(n, method="Finish")
    recs = sim.get_all_records()
    waits = [r.waiting_time for r in recs]
    wall = time.perf_counter() - t0
    return {
        "wall_s": wall,
        "customers": len(waits),
        "mean_wait": statistics.fmean(waits),
        "p_wait": sum(1 for w in waits if w > 0) / len(waits),
    }


def run_simpy(c: int, lam: float, mu: float, n: int, seed: int) -> Result:
    import random

    import simpy

    t0 = time.perf_counter()
    rng = random.Random(seed)
    env = simpy.Environment()
    servers = simpy.Resource(env, capacity=c)
    waits: list[float] = []
    done = env.event()

    def customer(service: float) -> Any:
        arrived = env.now
        with servers.request() as req:
            yield req
            waits.append(env.now - arrived)
            yield env.timeout(service)
        if len(waits) >= n and servers.count == 0 and not servers.queue and not done.triggered:
            done.succeed()

    def source() -> Any:
        for _ in range(n):
            yield env.timeout(rng.expovariate(lam))
            env.process(customer(rng.expovariate(mu)))

    env.process(source())
    env.run(until=done)
    wall = time.perf_counter() - t0
    return {
        "wall_s": wall,
        "customers": len(waits),
        "mean_wait": statistics.fmean(waits),
        "p_wait": sum(1 for w in waits if w > 0) / len(waits),
    }


def best_of_rounds(repeat: int, tools: dict[str, Callable[[], Result]]) -> dict[str, Result]:
    """Each tool's fastest of ``repeat`` runs, the tools taking turns within a round (kfrouter, ciw,
    simpy, kfrouter, ...): a slow spell of a shared machine then hits every tool, not just one."""
    runs: dict[str, list[Result]] = {name: [] for name in tools}
    for _ in range(repeat):
        for name, fn in tools.items():
            gc.collect()  # start each run without the previous one's garbage
            runs[name].append(fn())
    out = {}
    for name, results in runs.items():
        best = min(results, key=lambda r: r["wall_s"])
        best["customers_per_s"] = best["customers"] / best["wall_s"]
        out[name] = best
    return out


_GROUPS = (
    ("engine (router/core)", ("router/core/",)),
    ("policies", ("policies/",)),
    ("sortedcontainers", ("sortedcontainers",)),
    ("attrs-generated __init__ (events, views)", ("<attrs generated",)),
    ("WeChat model (sim/wechat_model, fake_options)", ("sim/wechat_model", "sim/fake_options")),
    ("replay (sim/runner)", ("sim/runner",)),
    ("trace generation (sim/gen, random)", ("sim/gen", "random.py")),
)


def profile_kfrouter(c: int, lam: float, mu: float, n: int, seed: int, policy: str) -> None:
    prof = cProfile.Profile()
    prof.enable()
    run_kfrouter(c, lam, mu, n, seed, policy, via_file=False)
    prof.disable()
    stats = pstats.Stats(prof)
    totals: dict[str, float] = {}
    grand = 0.0
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    for (filename, _line, _func), (_cc, _nc, tottime, _ct, _callers) in raw.items():
        grand += tottime
        label = next(
            (g for g, keys in _GROUPS if any(k in filename for k in keys)), "other (builtins, heapq, ...)"
        )
        totals[label] = totals.get(label, 0.0) + tottime
    print(
        f"\nwhere kfrouter's time goes (cProfile self time, {n} customers, {grand:.2f} s under the profiler):"
    )
    for label, t in sorted(totals.items(), key=lambda kv: -kv[1]):
        print(f"  {t / grand * 100:5.1f}%  {label}")
    print("\ntop functions by self time:")
    stats.sort_stats("tottime").print_stats(15)


def breakdown(c: int, lam: float, mu: float, n: int, seed: int, policy: str) -> dict[str, float]:
    """Wall-clock split of one kfrouter replay (no profiler, whose per-call cost distorts small
    functions): the engine alone is timed by feeding a fresh engine the exact calls the replay made;
    the WeChat model alone by the same sequence of transfer/create/close calls on a fresh model."""
    import random

    from kfrouter.router.core.engine import Engine
    from kfrouter.sim.runner import Simulation
    from kfrouter.sim.wechat_replay import ReplayWeChat

    params = GenParams(
        agents=c, max_sessions=1, customers=n, arrival_rate=lam, service_mean=1 / mu, seed=seed
    )
    header = header_for(params)
    gc.collect()  # not the leftovers of the tools measured before
    t0 = time.perf_counter()
    records = list(generate(params))
    gen_s = time.perf_counter() - t0
    cfg = RunConfig(policy=policy, seed=seed)
    t0 = time.perf_counter()
    run_records(header, records, cfg, groups=groups_of(header))
    run_s = time.perf_counter() - t0

    # every call the replay makes into the engine: handle, tick and the typed per-customer calls
    entry_points = ("handle", "tick", "customer_requested", "session_created", "session_closed")
    originals = {name: getattr(Engine, name) for name in entry_points}
    calls: list[tuple[str, tuple[Any, ...]]] = []

    def recorder(name: str) -> Callable[..., Any]:
        def record(self: Engine, *args: Any) -> Any:
            calls.append((name, args))
            return originals[name](self, *args)

        return record

    for name in entry_points:
        setattr(Engine, name, recorder(name))
    try:
        run_records(header, records, cfg, groups=groups_of(header))
    finally:
        for name, fn in originals.items():
            setattr(Engine, name, fn)
    engine = Simulation(header, [], cfg, groups=groups_of(header))._make_engine()
    bound = {name: getattr(engine, name) for name in entry_points}
    t0 = time.perf_counter()
    for name, args in calls:
        bound[name](*args)
    engine_s = time.perf_counter() - t0

    wechat = ReplayWeChat(random.Random(seed), cfg.create_failure_rate, cfg.create_failure_errcode)
    for i in range(c):
        wechat.set_agent(f"a{i}@sim", 0.0, status=1, auto_accept=1)
    t0 = time.perf_counter()
    for i in range(n):
        openid = f"u{i}"
        wechat.transfer(openid, float(i))
        wechat.create(f"a{i % c}@sim", openid, float(i))
        wechat.close(f"a{i % c}@sim", openid, float(i))
    model_s = time.perf_counter() - t0
    return {
        "generate": gen_s,
        "replay (excluding generation)": run_s,
        "engine (handle, tick, typed calls)": engine_s,
        "WeChat model": model_s,
        "replay itself (events, heap, bookkeeping)": run_s - engine_s - model_s,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--agents", type=int, default=10)
    ap.add_argument("--arrivals-per-min", type=float, default=9.0)
    ap.add_argument("--services-per-min", type=float, default=1.0)
    ap.add_argument("--customers", type=int, default=200_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--policy", default="least-load")
    ap.add_argument(
        "--repeat", type=int, default=3, help="best of this many runs per tool, the tools taking turns"
    )
    ap.add_argument("--via-file", action="store_true", help="kfrouter also writes and reads a trace file")
    ap.add_argument("--profile", action="store_true", help="profile kfrouter's run and group the time")
    ap.add_argument("--breakdown", action="store_true", help="wall-clock split of kfrouter's time")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    c, lam, mu, n = args.agents, args.arrivals_per_min / 60.0, args.services_per_min / 60.0, args.customers
    theory = erlang_c(lam, mu, c)

    tools: dict[str, Callable[[], Result]] = {
        "kfrouter": lambda: run_kfrouter(c, lam, mu, n, args.seed, args.policy, via_file=False)
    }
    if args.via_file:
        tools["kfrouter (trace file)"] = lambda: run_kfrouter(
            c, lam, mu, n, args.seed, args.policy, via_file=True
        )
    skipped: dict[str, Result] = {}
    for name, fn in (("ciw", run_ciw), ("simpy", run_simpy)):
        try:
            __import__(name)
        except ImportError:
            skipped[name] = {"skipped": f"{name} is not installed (pip install 'kfrouter[bench]')"}
            continue
        tools[name] = lambda fn=fn: fn(c, lam, mu, n, args.seed)  # type: ignore[misc]
    results = {**best_of_rounds(args.repeat, tools), **skipped}

    ours = results["kfrouter"]["customers_per_s"]
    for r in results.values():
        if "customers_per_s" in r:
            r["kfrouter_speed_ratio"] = ours / r["customers_per_s"]
    if args.json:
        print(
            json.dumps(
                {
                    "workload": {
                        "c": c,
                        "lam_per_s": lam,
                        "mu_per_s": mu,
                        "customers": n,
                        "erlang_c_mean_wait": theory.mean_wait,
                        "erlang_c_p_wait": theory.p_wait,
                    },
                    "python": sys.version.split()[0],
                    "results": results,
                },
                indent=2,
            )
        )
    else:
        print(
            f"M/M/{c}: lambda {args.arrivals_per_min}/min, mu {args.services_per_min}/min, {n} customers "
            f"(rho {theory.utilization:.2f}); Erlang C mean wait {theory.mean_wait:.2f} s, "
            f"P(wait>0) {theory.p_wait:.4f}; Python {sys.version.split()[0]}"
        )
        print(
            f"{'tool':<24}{'wall s':>9}{'customers/s':>14}{'kfrouter x':>12}{'mean wait s':>13}{'P(wait>0)':>11}"
        )
        for name, r in results.items():
            if "skipped" in r:
                print(f"{name:<24}  skipped: {r['skipped']}")
                continue
            print(
                f"{name:<24}{r['wall_s']:>9.2f}{r['customers_per_s']:>14,.0f}{r['kfrouter_speed_ratio']:>12.2f}"
                f"{r['mean_wait']:>13.2f}{r['p_wait']:>11.4f}"
            )
        print("(kfrouter x = kfrouter's customers/s divided by the tool's; above 1 means kfrouter is faster)")
    if args.breakdown:
        split = breakdown(c, lam, mu, n, args.seed, args.policy)
        run_s = split["replay (excluding generation)"]
        print(
            f"\nwall-clock split of kfrouter ({n} customers; engine and model timed apart, see breakdown()):"
        )
        for label, secs in split.items():
            share = (
                ""
                if label in ("generate", "replay (excluding generation)")
                else f" {secs / run_s * 100:5.1f}%"
            )
            print(f"  {label:<44}{secs:7.2f} s  {secs / n * 1e6:6.1f} us/customer{share}")
    if args.profile:
        profile_kfrouter(c, lam, mu, min(n, 50_000), args.seed, args.policy)
    return 0


if __name__ == "__main__":
    sys.exit(main())
