"""Property tests for the built-in policies: they pick only free (online, unpaused, under capacity),
non-avoided agents in scope, and the best one by their documented order."""

from __future__ import annotations

import hypothesis.strategies as st
from hypothesis import given, settings

from kfrouter.policies.registry import load_all, load_policy
from kfrouter.router.core import (
    AgentConfigured,
    AgentsSeen,
    CreateSession,
    CustomerRequested,
    Engine,
    EngineConfig,
    Route,
    SessionCreated,
)
from kfrouter.router.core.model import AgentRow, WaitingView

GROUPS = ["sales", "support", "vip"]

agent_st = st.fixed_dictionaries(
    {
        "status": st.sampled_from([0, 1, 2, 3]),
        "accepted": st.integers(0, 4),
        "auto": st.integers(0, 4),
        "cap": st.one_of(st.none(), st.integers(1, 4)),
        "paused": st.booleans(),
        "groups": st.frozensets(st.sampled_from(GROUPS), max_size=2),
        "assigned_at": st.one_of(st.none(), st.integers(0, 50)),
    }
)


def build(agents: list[dict[str, object]]) -> Engine:
    e = Engine(EngineConfig(default_capacity=2), load_all())
    rows = []
    for i, a in enumerate(agents):
        kf = f"k{i}@x"
        e.handle(
            AgentConfigured(kf_account=kf, groups=a["groups"], max_sessions=a["cap"], paused=a["paused"]),  # type: ignore[arg-type]
            0.0,
        )
        rows.append(
            AgentRow(kf_account=kf, status=a["status"], accepted_case=a["accepted"], auto_accept=a["auto"])
        )  # type: ignore[arg-type]
    e.handle(AgentsSeen(rows=rows), 0.0)
    for i, a in enumerate(agents):  # give agents distinct last-assignment times through the pool
        if a["assigned_at"] is not None and e.pool.is_free(f"k{i}@x"):
            e.pool.reserve(f"k{i}@x", float(a["assigned_at"]))  # type: ignore[arg-type]
            e.pool.unreserve(f"k{i}@x", confirmed=False)
    return e


def in_scope(e: Engine, kf: str, scope: tuple[str | None, ...]) -> bool:
    view = e.agent(kf)
    assert view is not None
    return any(g is None or g in view.groups for g in scope)


def eligible(e: Engine, w: WaitingView) -> list[str]:
    return [
        v.kf_account
        for v in e.agents()
        if v.free and v.kf_account not in w.avoid and in_scope(e, v.kf_account, w.scope)
    ]


waiting_st = st.builds(
    lambda scope, avoid, last: WaitingView(
        openid="c",
        group=scope[0],
        priority=0,
        arrived_at=0.0,
        preferred_agent=None,
        avoid=frozenset(f"k{i}@x" for i in avoid),
        tags=frozenset(),
        last_agent=None if last is None else f"k{last}@x",
        last_served_at=None if last is None else 0.0,
        scope=scope,
    ),
    scope=st.one_of(
        st.just((None,)),
        st.lists(st.sampled_from(GROUPS), min_size=1, max_size=3, unique=True).map(tuple),
    ),
    avoid=st.frozensets(st.integers(0, 7), max_size=3),
    last=st.one_of(st.none(), st.integers(0, 7)),
)


@settings(max_examples=300, deadline=None)
@given(agents=st.lists(agent_st, min_size=1, max_size=8), w=waiting_st)
def test_every_policy_picks_only_free_eligible_agents(
    agents: list[dict[str, object]], w: WaitingView
) -> None:
    e = build(agents)
    e.pool.check()
    ok = eligible(e, w)
    for name in ["least-load", "group-affinity", "round-robin", "sticky"]:
        kf = load_policy(name).pick(e.pool, w, 100.0)
        if kf is None:
            assert ok == [], (name, ok)
        else:
            assert kf in ok, (name, kf, ok)


@settings(max_examples=300, deadline=None)
@given(agents=st.lists(agent_st, min_size=1, max_size=8), w=waiting_st)
def test_policies_pick_the_best_by_their_order(agents: list[dict[str, object]], w: WaitingView) -> None:
    e = build(agents)
    ok = eligible(e, w)
    if not ok:
        return
    views = {v.kf_account: v for v in e.agents()}

    def load_key(kf: str) -> tuple[object, ...]:
        v = views[kf]
        return (v.load / v.capacity, v.load, v.last_assigned_at, kf)

    assert load_policy("least-load").pick(e.pool, w, 0.0) == min(ok, key=load_key)
    assert load_policy("round-robin").pick(e.pool, w, 0.0) == min(
        ok, key=lambda k: (views[k].last_assigned_at, k)
    )
    # group-affinity: the first group of the scope that has an eligible agent, least loaded within it
    for group in w.scope:
        in_group = [k for k in ok if group is None or group in views[k].groups]
        if in_group:
            assert load_policy("group-affinity").pick(e.pool, w, 0.0) == min(in_group, key=load_key)
            break
    native = load_policy("wechat-native").pick(e.pool, w, 0.0)
    assert native == min(v.kf_account for v in e.agents() if v.free and v.kf_account not in w.avoid)


@settings(max_examples=100, deadline=None)
@given(
    after=st.floats(1.0, 100.0),
    arrivals=st.lists(st.floats(0.0, 200.0), min_size=1, max_size=6),
    checks=st.lists(st.floats(0.0, 400.0), min_size=1, max_size=8),
)
def test_group_affinity_stays_in_group_until_overflow_wait(
    after: float, arrivals: list[float], checks: list[float]
) -> None:
    routes = {"vip": Route(policy="group-affinity", overflow=(("sales", after),))}
    e = Engine(EngineConfig(routes=routes, default_capacity=50), load_all())
    e.handle(AgentConfigured(kf_account="s@x", groups=frozenset({"sales"})), 0.0)
    e.handle(AgentsSeen(rows=[AgentRow(kf_account="s@x", status=1)]), 0.0)
    arrived: dict[str, float] = {}
    events = sorted([(t, "arrive", i) for i, t in enumerate(arrivals)] + [(t, "tick", -1) for t in checks])
    for t, kind, i in events:
        if kind == "arrive":
            arrived[f"v{i}"] = t
            out = e.handle(CustomerRequested(openid=f"v{i}", group="vip"), t)
        else:
            out = e.tick(t)
        for c in out:
            assert isinstance(c, CreateSession)
            assert t - arrived[c.openid] >= after, (c, t, arrived[c.openid])
            e.handle(SessionCreated(openid=c.openid, kf_account=c.kf_account, source="api"), t)
    # and once the wait has passed, the customer does overflow
    last = max(arrivals) + after
    e.tick(last)
    assert e.queue_length() == 0


@settings(max_examples=200, deadline=None)
@given(
    agents=st.lists(agent_st, min_size=1, max_size=8),
    group=st.sampled_from([None, *GROUPS]),
    order=st.sampled_from(["load", "idle", "name"]),
    exclude=st.frozensets(st.integers(0, 7), max_size=3),
)
def test_first_free_is_the_head_of_free_agents(
    agents: list[dict[str, object]], group: str | None, order: str, exclude: frozenset[int]
) -> None:
    e = build(agents)
    avoid = frozenset(f"k{i}@x" for i in exclude)
    for ex in (frozenset(), avoid):
        want = next(e.pool.free_agents(group, order, ex), None)  # type: ignore[arg-type]
        assert e.pool.first_free(group, order, ex) == want  # type: ignore[arg-type]
