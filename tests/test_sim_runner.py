"""Replays through the real Engine: every built-in policy with 0 capacity violations and 0 double
assignments, injected latency/failures, ghosts, absorbed arrivals, and the checkers themselves."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from kfrouter.policies.registry import available_policies
from kfrouter.router.core.commands import Command, CreateSession
from kfrouter.router.core.events import CustomerRequested, SessionCreated
from kfrouter.sim.gen import GenParams, generate, header_for, parse_priorities, parse_shares, parse_windows
from kfrouter.sim.report import build_report, strip_nondeterministic, to_json
from kfrouter.sim.runner import RunConfig, RunResult, Simulation, groups_of, run_records
from kfrouter.sim.tally import ABANDONED, SERVED, UNSERVED, ArrivalLog
from kfrouter.sim.trace import AgentOffline, AgentOnline, Arrival, Header, Record

POLICIES = [name for name, origin in available_policies() if origin == "built-in"]

RICH = GenParams(
    agents=6,
    max_sessions=2,
    customers=500,
    arrival_rate=0.01,
    service_mean=600,
    patience_mean=900,
    groups=parse_shares("sales:0.6,support:0.4"),
    priorities=parse_priorities("1:0.2"),
    returning=0.3,
    return_gap=600,
    preferred=0.2,
    shifts=parse_windows("0-10,6-16,12-24", "--shifts", wrap=True, default=1.0),
    seed=5,
)


def replay(params: GenParams, cfg: RunConfig) -> tuple[RunResult, Simulation]:
    header = header_for(params)
    sim = Simulation(header, generate(params), cfg, groups=groups_of(header))
    return sim.run(), sim


def log(res: RunResult) -> ArrivalLog:
    """The run's per-arrival entries (the replays here keep them: RunConfig.arrivals)."""
    assert res.arrivals is not None
    return res.arrivals


def assert_clean(res: RunResult, sim: Simulation) -> None:
    assert res.capacity_violations == 0
    assert res.double_assignments == 0
    outcomes = list(log(res).outcome)
    assert outcomes.count(SERVED) + outcomes.count(ABANDONED) + outcomes.count(UNSERVED) == res.customers
    # the streaming tally the report reads agrees with the per-arrival entries
    arr, tally = log(res), res.tally
    served = [i for i, o in enumerate(outcomes) if o == SERVED]
    assert sorted(tally.waits) == sorted(arr.wait[i] for i in served)
    assert tally.abandoned == outcomes.count(ABANDONED)
    for share, column in (
        (tally.affinity, arr.own_group),
        (tally.sticky, arr.sticky),
        (tally.preference, arr.preferred),
    ):
        applies = [column[i] for i in served if column[i] is not None]
        assert (share.cases, share.hits) == (len(applies), sum(applies))
    for i, o in enumerate(outcomes):
        if o == SERVED:
            assert log(res).agent[i] is not None and log(res).wait[i] >= 0
        else:
            assert log(res).agent[i] is None
    # the engine ends with nobody waiting, reserved or in a session, and agrees with the sim
    assert sim.engine is not None
    assert sim.engine.waiting() == [] or outcomes.count(UNSERVED) > 0
    assert sim.engine.sessions() == {}
    assert all(st.sessions == 0 for st in res.agents.values())


def test_builtin_policies_are_all_there() -> None:
    assert {"least-load", "group-affinity", "sticky", "round-robin", "wechat-native"} <= set(POLICIES)


@pytest.mark.parametrize("policy", POLICIES)
def test_every_policy_replays_cleanly(policy: str) -> None:
    res, sim = replay(RICH, RunConfig(policy=policy, seed=1, check_engine=True, arrivals=True))
    assert_clean(res, sim)
    assert res.customers + res.absorbed_arrivals == RICH.customers
    assert log(res).outcome.count(SERVED) > 0.5 * res.customers
    assert any(st.intervals and st.intervals[0][1] < res.end_t for st in res.agents.values())  # shifts ended


@pytest.mark.parametrize("policy", POLICIES)
def test_every_policy_with_latency_and_failures(policy: str) -> None:
    cfg = RunConfig(
        policy=policy,
        seed=3,
        create_latency_s=20.0,
        create_failure_rate=0.2,
        check_engine=True,
        arrivals=True,
    )
    res, sim = replay(replace(RICH, customers=250), cfg)
    assert_clean(res, sim)
    assert res.api_failures > 0
    assert log(res).outcome.count(SERVED) > 0.5 * res.customers


def test_same_inputs_same_report_other_seed_other_failures() -> None:
    params = replace(RICH, customers=300)

    def report(seed: int) -> str:
        cfg = RunConfig(policy="least-load", seed=seed, create_failure_rate=0.3)
        results = [
            run_records(header_for(params), generate(params), cfg, groups=groups_of(header_for(params)))
        ]
        return to_json(strip_nondeterministic(build_report(results)))

    assert report(1) == report(1)
    assert report(1) != report(2)


@pytest.mark.parametrize("policy", ["sticky", "group-affinity"])
def test_typed_engine_calls_and_events_replay_alike(policy: str) -> None:
    # without the ETA tracker the replay uses the engine's typed calls; with it, events through handle()
    def report(eta: bool) -> dict[str, object]:
        cfg = RunConfig(policy=policy, seed=2, create_failure_rate=0.1, eta=eta)
        entry = build_report(
            [run_records(header_for(RICH), generate(RICH), cfg, groups=groups_of(header_for(RICH)))]
        )
        out = strip_nondeterministic(entry)["policies"][0]
        return {k: v for k, v in out.items() if not k.startswith("eta")}

    plain = report(eta=False)
    assert plain == report(eta=True)
    assert plain["sticky_hit_rate"] is not None and plain["served"] > 0


# ---------------------------------------------------------------------------------------------- small cases


def run(records: list[Record], policy: str = "least-load", **cfg: object) -> tuple[RunResult, Simulation]:
    header = Header(name="hand-made")
    sim = Simulation(
        header,
        records,
        RunConfig(policy=policy, check_engine=True, arrivals=True, **cfg),  # type: ignore[arg-type]
        groups=groups_of(header, records),
    )
    return sim.run(), sim


def agent(name: str, t: float = 0.0, cap: int = 1, groups: tuple[str, ...] = ()) -> AgentOnline:
    return AgentOnline(t=t, agent=name, groups=groups, max_sessions=cap)


def test_waits_and_agents_of_a_tiny_trace() -> None:
    res, sim = run(
        [
            agent("a1@x"),
            agent("a2@x"),
            Arrival(t=0.0, customer="c1", service_s=10.0),
            Arrival(t=0.0, customer="c2", service_s=12.0),
            Arrival(t=5.0, customer="c3", service_s=4.0),
        ]
    )
    assert_clean(res, sim)
    assert log(res).wait == [0.0, 0.0, 5.0]
    assert log(res).agent[2] == log(res).agent[0]  # the agent who freed first at t=10
    assert res.end_t == 14.0
    busy = sorted(st.busy_s for st in res.agents.values())
    assert busy == [12.0, 14.0]


def test_patience_and_abandonment() -> None:
    res, sim = run(
        [
            agent("a1@x"),
            Arrival(t=0, customer="c1", service_s=100),
            Arrival(t=1, customer="c2", service_s=5, patience_s=10),
        ]
    )
    assert_clean(res, sim)
    assert list(log(res).outcome) == [SERVED, ABANDONED]
    assert log(res).wait[1] == 10.0


def test_customer_left_while_reserved_gets_a_ghost_session() -> None:
    res, sim = run(
        [agent("a1@x"), Arrival(t=0, customer="c1", service_s=5, patience_s=1)], create_latency_s=3.0
    )
    assert list(log(res).outcome) == [ABANDONED]
    assert res.ghost_sessions == 1
    assert_clean(res, sim)


def test_arrival_while_still_in_the_system_is_absorbed() -> None:
    res, sim = run(
        [
            agent("a1@x"),
            Arrival(t=0, customer="c1", service_s=50),
            Arrival(t=10, customer="c1", service_s=50),
            Arrival(t=60, customer="c1", service_s=5),
        ]
    )
    assert res.absorbed_arrivals == 1
    assert res.customers == 2 and list(log(res).outcome) == [SERVED, SERVED]
    assert log(res).sticky == [None, True]  # returning, and the only agent served them again
    assert_clean(res, sim)


def test_agent_going_offline_with_a_pending_create() -> None:
    res, sim = run(
        [
            agent("a1@x"),
            agent("a2@x", t=0.5),
            Arrival(t=0.2, customer="c1", service_s=5),
            AgentOffline(t=1.0, agent="a1@x"),
        ],
        create_latency_s=2.0,
    )
    # a1 took the reservation at 0.2; it goes offline at 1.0 and the late create fails (65415)
    assert log(res).agent == ["a2@x"]
    assert res.api_failures == 1
    assert_clean(res, sim)


def test_preferred_agent_is_waited_for() -> None:
    res, sim = run(
        [
            agent("a1@x"),
            agent("a2@x"),
            Arrival(t=0, customer="c1", service_s=30),
            Arrival(t=1, customer="c2", service_s=5, preferred_agent="a1@x"),
        ]
    )
    assert log(res).agent == ["a1@x", "a1@x"]
    assert log(res).preferred == [None, True]
    assert log(res).wait[1] == 29.0
    assert_clean(res, sim)


def test_sticky_returns_to_the_last_agent() -> None:
    records: list[Record] = [
        agent("a1@x"),
        agent("a2@x"),
        Arrival(t=0, customer="c1", service_s=10),
        Arrival(t=100, customer="c9", service_s=10),
        Arrival(t=200, customer="c1", service_s=10),
    ]
    res, _ = run(records, policy="sticky")
    assert log(res).agent[2] == log(res).agent[0] and log(res).sticky[2] is True


def test_agent_names_without_an_at_sign() -> None:
    res, sim = run(
        [
            agent("alice"),
            agent("bob"),
            Arrival(t=0, customer="c1", service_s=1),
            Arrival(t=0, customer="c2", service_s=1),
        ]
    )
    assert sorted(a for a in log(res).agent if a) == ["alice", "bob"]
    assert_clean(res, sim)


def test_groups_and_overflow() -> None:
    records: list[Record] = [
        agent("s1@x", groups=("sales",)),
        agent("p1@x", groups=("support",)),
        Arrival(t=0, customer="c1", service_s=500, group="sales"),
        Arrival(t=1, customer="c2", service_s=5, group="sales"),
    ]
    res, _ = run(records, policy="group-affinity", overflow_after_s=30.0)
    assert log(res).agent == ["s1@x", "p1@x"] and log(res).wait[1] == 30.0
    assert log(res).own_group == [True, False]
    res, _ = run(records, policy="group-affinity", overflow_after_s=None)
    assert log(res).agent == ["s1@x", "s1@x"] and log(res).wait[1] == 499.0
    res, _ = run(records, policy="wechat-native")  # no groups: first agent by name, nobody waits
    assert log(res).agent == ["p1@x", "s1@x"] and log(res).wait == [0.0, 0.0]


# ---------------------------------------------------------------------------------------------- checkers


class GreedyEngine:
    """A broken engine: always assigns to the first agent, and asks twice for the first customer."""

    def __init__(self) -> None:
        self.asked_twice = False

    def handle(self, event: object, now: float) -> list[Command]:
        if isinstance(event, CustomerRequested):
            return [CreateSession(openid=event.openid, kf_account="a1@x")]
        if isinstance(event, SessionCreated) and not self.asked_twice:
            self.asked_twice = True
            return [CreateSession(openid=event.openid, kf_account="a1@x")]
        return []

    def tick(self, now: float) -> list[Command]:
        return []

    def next_deadline(self) -> float:
        return math.inf

    def check(self) -> None:
        pass


def test_checkers_catch_a_broken_engine() -> None:
    records: list[Record] = [agent("a1@x"), agent("a2@x")]
    records += [Arrival(t=float(i), customer=f"c{i}", service_s=100.0) for i in range(3)]
    header = Header()
    sim = Simulation(header, records, RunConfig(policy="least-load", arrivals=True))
    sim._make_engine = GreedyEngine  # type: ignore[assignment,method-assign]
    res = sim.run()
    assert res.double_assignments == 1
    assert res.capacity_violations == 2  # a1 holds 3 sessions with max_sessions 1
    assert log(res).outcome.count(SERVED) == 3


def test_offline_agent_keeps_or_hands_over_sessions() -> None:
    records: list[Record] = [
        agent("a1@x"),
        agent("a2@x", t=5.0),
        Arrival(t=0, customer="c1", service_s=1000),
        AgentOffline(t=10.0, agent="a1@x"),
    ]
    res, sim = run(records)  # keep: a1 finishes the session although offline
    assert res.reassignments == 0 and res.agents["a1@x"].busy_s == 1000.0
    assert_clean(res, sim)
    res, sim = run(records, on_agent_offline="reassign", offline_grace_s=30.0)
    assert res.reassignments == 1 and res.double_assignments == 0
    assert log(res).agent == ["a1@x"] and list(log(res).outcome) == [SERVED]
    assert res.agents["a1@x"].busy_s == 40.0  # offline at 10 + 30 s grace
    assert res.agents["a2@x"].busy_s == 960.0  # the rest of the service
    assert res.end_t == 1000.0
    assert_clean(res, sim)


def test_stale_sessions_are_cut() -> None:
    res, sim = run(
        [
            agent("a1@x"),
            Arrival(t=0, customer="c1", service_s=1000),
            Arrival(t=1, customer="c2", service_s=5),
        ],
        stale_session_s=100.0,
    )
    assert res.sessions_cut == 1 and res.agents["a1@x"].busy_s == 105.0
    assert log(res).wait == [0.0, 99.0]
    assert_clean(res, sim)


def test_customers_are_forgotten_a_sticky_window_after_they_left() -> None:
    # nothing per customer outlives the engine's sticky window (7 days): neither the replay's visitor
    # records nor the engine's table of departures, although the engine never ticks here (no deadlines)
    hour, week = 3600.0, 7 * 86400.0
    records: list[Record] = [agent("a1@x"), agent("a2@x")]
    records += [Arrival(t=i * hour, customer=f"c{i}", service_s=60.0) for i in range(24 * 10)]  # 10 days
    res, sim = run(records)
    assert res.customers == 240 and res.tally.served == 240 and res.ticks == 0
    assert sim.engine is not None
    last_left = 239 * hour + 60.0
    kept = sum(1 for i in range(240) if i * hour + 60.0 >= last_left - week)
    assert kept == 24 * 7 + 1
    assert len(sim._visitors) <= kept + 1 and len(sim.engine._past) <= kept
    assert "c0" not in sim._visitors and "c239" in sim._visitors


def test_a_customer_back_after_the_sticky_window_is_not_returning() -> None:
    day = 86400.0
    records: list[Record] = [
        agent("a1@x"),
        agent("a2@x"),
        Arrival(t=0.0, customer="c1", service_s=10.0),
        Arrival(t=3 * day, customer="c1", service_s=10.0),  # back within the window: returning
        Arrival(t=11 * day, customer="c1", service_s=10.0),  # 8 days after leaving: a new customer
        Arrival(t=11 * day + 1, customer="c2", service_s=10.0),
    ]
    res, sim = run(records, policy="sticky")
    assert log(res).sticky == [None, True, None, None]
    assert res.tally.sticky.cases == 1
    assert_clean(res, sim)
