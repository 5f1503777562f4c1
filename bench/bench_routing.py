"""Benchmark: the cost of one routing decision at 100, 1,000 and 10,000 agents with 10,000 customers waiting.

Method. For each pool size N, build an engine with N online agents (capacity 5, 40 groups, every agent
busy at a random load) and 10,000 waiting customers spread over the groups. One *decision* is: a session
closes (one unit of capacity frees up), the engine drains — the policy picks the best waiting customer's
agent through the sorted indices and the engine commits the reservation — and the confirmation arrives
(SessionCreated). We time R such decisions (the queue refills so it stays at 10,000) and report the
median of 5 repetitions per size in µs per decision, and the ratio of 10,000 agents to 100 agents, measured
in the same run. A linear scan over agents would show a ratio near 100x; the goal is within 3x.

Run: python bench/bench_routing.py [--policy least-load] [--decisions 20000]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

from kfrouter.policies.registry import load_all
from kfrouter.router.core import (
    AgentConfigured,
    AgentsSeen,
    CreateSession,
    CustomerRequested,
    Engine,
    EngineConfig,
    Route,
    SessionClosed,
    SessionCreated,
)
from kfrouter.router.core.model import AgentRow

GROUPS = [f"g{i}" for i in range(40)]
WAITING = 10_000
CAPACITY = 5


def build(n_agents: int, policy: str, rng: random.Random) -> tuple[Engine, list[tuple[str, str]]]:
    routes = {g: Route(policy=policy) for g in GROUPS}
    engine = Engine(EngineConfig(default_capacity=CAPACITY, routes=routes), load_all())
    rows = []
    for i in range(n_agents):
        kf = f"agent{i}@shop"
        engine.handle(AgentConfigured(kf_account=kf, groups=frozenset({GROUPS[i % len(GROUPS)]})), 0.0)
        rows.append(AgentRow(kf_account=kf, status=1, accepted_case=0))
    engine.handle(AgentsSeen(rows=rows), 0.0)
    # fill every agent to capacity with sessions, so new customers wait
    sessions: list[tuple[str, str]] = []
    seq = 0
    for i in range(n_agents):
        kf = f"agent{i}@shop"
        for _ in range(CAPACITY):
            seq += 1
            openid = f"busy{seq}"
            engine.handle(SessionCreated(openid=openid, kf_account=kf), 0.0)
            sessions.append((openid, kf))
    for i in range(WAITING):
        engine.handle(CustomerRequested(openid=f"w{i}", group=rng.choice(GROUPS)), 1.0 + i * 1e-3)
    rng.shuffle(sessions)
    return engine, sessions


def run(n_agents: int, policy: str, decisions: int, seed: int) -> float:
    rng = random.Random(seed)
    engine, sessions = build(n_agents, policy, rng)
    now = 100.0
    next_customer = WAITING
    start = time.perf_counter()
    for _ in range(decisions):
        openid, kf = sessions.pop()
        now += 0.001
        out = engine.handle(SessionClosed(openid=openid, kf_account=kf), now)
        for c in out:
            assert isinstance(c, CreateSession)
            engine.handle(SessionCreated(openid=c.openid, kf_account=c.kf_account, source="api"), now)
            sessions.insert(rng.randrange(len(sessions) + 1), (c.openid, c.kf_account))
        engine.handle(CustomerRequested(openid=f"w{next_customer}", group=rng.choice(GROUPS)), now)
        next_customer += 1
    elapsed = time.perf_counter() - start
    assert engine.queue_length() >= WAITING - 1
    return elapsed / decisions * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--policy", default="least-load")
    parser.add_argument("--decisions", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    results = {}
    for n in (100, 1_000, 10_000):
        samples = [run(n, args.policy, args.decisions, seed) for seed in range(args.repeat)]
        results[n] = statistics.median(samples)
        print(
            f"{args.policy:>14}  agents={n:>6}  waiting={WAITING}  {results[n]:8.2f} µs/decision  "
            f"(min {min(samples):.2f}, max {max(samples):.2f})"
        )
    print(f"ratio 10,000 / 100 agents: {results[10_000] / results[100]:.2f}x (goal: within 3x)")


if __name__ == "__main__":
    main()
