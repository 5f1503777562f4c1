"""WaitEstimator: the queue formula, online learning of mu and theta, LES/HOL, the measured selector,
potential waits of abandoners, and input validation."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kfrouter.policies.registry import load_all
from kfrouter.router.core import (
    AgentConfigured,
    AgentsSeen,
    ConfigError,
    CoreError,
    CustomerLeft,
    CustomerRequested,
    Engine,
    EngineConfig,
    SessionClosed,
    SessionCreated,
    UnknownCustomerError,
)
from kfrouter.router.core.estimate import Estimate, EstimatorConfig, Outcome, WaitEstimator, queue_wait
from kfrouter.router.core.facts import Queued
from kfrouter.router.core.model import AgentRow


def engine_with(*agents: tuple[str, tuple[str, ...], int], online: bool = True) -> Engine:
    e = Engine(EngineConfig(), load_all())
    for kf, groups, cap in agents:
        e.handle(AgentConfigured(kf_account=kf, groups=frozenset(groups), max_sessions=cap), 0.0)
    rows = tuple(AgentRow(kf_account=kf, status=1 if online else 0) for kf, _g, _c in agents)
    e.handle(AgentsSeen(rows=rows, complete=False), 0.0)  # type: ignore[arg-type]  # attrs converter=tuple
    return e


def request(e: Engine, est: WaitEstimator, openid: str, now: float, group: str | None = None) -> list[object]:
    return feed(e, est, CustomerRequested(openid=openid, group=group), now)


def feed(e: Engine, est: WaitEstimator, event: object, now: float) -> list[object]:
    cmds = e.handle(event, now)  # type: ignore[arg-type]
    for fact in e.facts:  # the estimator learns from the engine's facts, as the Desk feeds it
        est.observe_fact(fact, now)
    return cmds  # type: ignore[return-value]


# ----------------------------------------------------------------------------------- the formula


def test_queue_wait_without_abandonment_is_n_plus_one_completions() -> None:
    assert queue_wait(0, 4, 0.01, 0.0) == pytest.approx(25.0)
    assert queue_wait(3, 4, 0.01, 0.0) == pytest.approx(100.0)


def test_queue_wait_with_abandonment_sums_the_stage_means() -> None:
    s, mu, theta = 3, 1 / 60, 1 / 120
    expected = sum(1 / (s * mu + i * theta) for i in range(6))
    assert queue_wait(5, s, mu, theta) == pytest.approx(expected, rel=1e-12)
    assert queue_wait(5, s, mu, theta) < queue_wait(5, s, mu, 0.0)


def test_queue_wait_tail_integral_matches_the_exact_sum() -> None:
    s, mu, theta, n = 10, 1 / 300, 1 / 900, 20_000
    exact = math.fsum(1 / (s * mu + i * theta) for i in range(n + 1))
    assert queue_wait(n, s, mu, theta) == pytest.approx(exact, rel=1e-6)


def test_queue_wait_edge_cases() -> None:
    assert queue_wait(2, 0, 0.01, 0.1) == math.inf
    with pytest.raises(ValueError, match="ahead must be >= 0"):
        queue_wait(-1, 1, 1.0, 0.0)


@given(
    n=st.integers(0, 300),
    s=st.integers(1, 50),
    mu=st.floats(1e-4, 1.0),
    theta=st.floats(0.0, 1.0),
)
def test_queue_wait_is_monotone(n: int, s: int, mu: float, theta: float) -> None:
    w = queue_wait(n, s, mu, theta)
    assert 0 < w <= queue_wait(n, s, mu, 0.0) * (1 + 1e-12)
    assert queue_wait(n + 1, s, mu, theta) > w
    assert queue_wait(n, s + 1, mu, theta) < w


# ----------------------------------------------------------------------------------- learning


def test_service_mean_moves_from_the_prior_to_the_data_and_groups_shrink_to_the_pool() -> None:
    est = WaitEstimator(EstimatorConfig(prior_service_s=300.0, prior_sessions=5, service_window=100))
    assert est.service_mean("a") == 300.0
    for _ in range(95):
        est.observe_session_end("a", 60.0, 0.0)
    # pooled: (95*60 + 5*300) / 100 = 72; group a: (95*60 + 5*72) / 100
    assert est.service_mean("b") == pytest.approx(72.0)
    assert est.service_mean("a") == pytest.approx((95 * 60 + 5 * 72) / 100)
    for _ in range(300):  # the window forgets old sessions
        est.observe_session_end("a", 120.0, 0.0)
    assert est.service_mean("a") == pytest.approx(120.0, rel=0.01)


def test_abandon_rate_is_abandonments_over_observed_waiting_time() -> None:
    est = WaitEstimator(EstimatorConfig(prior_exposure_s=100.0, prior_patience_s=None))
    assert est.abandon_rate("g") == 0.0
    est.observe_abandon("g", 50.0, 0.0)
    est.observe_abandon("g", 150.0, 0.0)
    est.observe_service_start("g", 200.0, 0.0)  # censored exposure of a served customer
    est.observe_service_start("g", 0.0, 0.0)
    assert est.abandon_rate("g") == pytest.approx(2 / (50 + 150 + 200 + 100))
    est2 = WaitEstimator(EstimatorConfig(prior_exposure_s=100.0, prior_patience_s=50.0))
    assert est2.abandon_rate("g") == pytest.approx(1 / 50)


def test_fed_durations_are_validated() -> None:
    est = WaitEstimator()
    with pytest.raises(CoreError, match="duration_s must be a finite number"):
        est.observe_session_end("g", math.nan, 0.0)
    with pytest.raises(CoreError, match="waited_s"):
        est.observe_abandon("g", "5", 0.0)  # type: ignore[arg-type]
    est.observe_service_start("g", -1e-9, 0.0)  # clock jitter counts as zero
    assert est.last_entered_wait("g") == 0.0


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"prior_service_s": 0}, "prior_service_s"),
        ({"service_window": 0}, "service_window"),
        ({"prior_patience_s": -1.0}, "prior_patience_s"),
        ({"predictors": ("queue", "oracle")}, "predictors"),
        ({"predictors": ("les",), "default_predictor": "queue"}, "default_predictor"),
        ({"buckets": (3, 1)}, "buckets"),
        ({"switch_margin": math.inf}, "switch_margin"),
    ],
)
def test_config_errors_name_the_key(kwargs: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError, match=f"estimator.{key}"):
        EstimatorConfig(**kwargs)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------- estimating


def test_estimate_uses_capacity_of_online_unpaused_agents_of_the_group() -> None:
    e = engine_with(("a1@x", ("sales",), 2), ("a2@x", ("sales",), 3), ("b1@x", ("billing",), 5))
    e.handle(AgentConfigured(kf_account="a2@x", paused=True), 0.0)
    est = WaitEstimator(EstimatorConfig(prior_service_s=100.0))
    for i in range(2):
        assert request(e, est, f"busy{i}", 0.0, "sales")  # fills a1's two sessions
    request(e, est, "w1", 1.0, "sales")
    request(e, est, "w2", 2.0, "sales")
    got = est.estimate(e, "w2", 2.0)
    assert (got.ahead, got.servers, got.method) == (1, 2, "queue")
    assert got.seconds == pytest.approx(2 * 100.0 / 2)  # (n+1) / (s mu)
    assert got.candidates["qlen"] == got.seconds
    assert "les" not in got.candidates  # no delay history yet


def test_customer_without_group_counts_every_agent_and_free_capacity_means_no_wait() -> None:
    e = engine_with(("a1@x", ("sales",), 1), ("b1@x", ("billing",), 1))
    est = WaitEstimator(EstimatorConfig(prior_service_s=60.0))
    request(e, est, "c1", 0.0)
    request(e, est, "c2", 0.0)
    request(e, est, "c3", 0.0)
    got = est.estimate(e, "c3", 0.0)
    assert (got.servers, got.ahead) == (2, 0)
    assert got.seconds == pytest.approx(30.0)
    # the preferred-agent rule keeps a customer waiting while another agent is free
    e2 = engine_with(("a1@x", (), 1), ("a2@x", (), 1))
    est2 = WaitEstimator()
    e2.handle(CustomerRequested(openid="p", preferred_agent="a1@x"), 0.0)
    e2.handle(CustomerRequested(openid="q", preferred_agent="a1@x"), 0.0)
    got2 = est2.estimate(e2, "q", 1.0)  # not fed its facts: read from the engine's queue
    assert got2.method == "free" and got2.seconds == 0.0


def test_estimate_of_a_customer_who_is_not_waiting() -> None:
    e = engine_with(("a1@x", (), 1))
    est = WaitEstimator()
    request(e, est, "c1", 0.0)
    assert est.estimate(e, "c1", 0.0) == Estimate(seconds=0.0, method="assigned", ahead=0, servers=0)
    with pytest.raises(UnknownCustomerError, match="ghost"):
        est.estimate(e, "ghost", 0.0)


def test_nobody_online_gives_an_infinite_queue_estimate_but_delay_history_still_answers() -> None:
    e = engine_with(("a1@x", (), 1), online=False)
    est = WaitEstimator()
    request(e, est, "c1", 0.0)
    assert est.estimate(e, "c1", 0.0).seconds == math.inf
    est.observe_service_start(None, 90.0, 1.0)
    request(e, est, "c2", 10.0)
    got = est.estimate(e, "c2", 10.0)
    assert got.method in ("les", "hol") and math.isfinite(got.seconds)
    assert got.candidates["hol"] == pytest.approx(10.0)  # c1 has waited 10 s so far


def test_les_and_hol_come_from_the_delay_history() -> None:
    e = engine_with(("a1@x", (), 1))
    est = WaitEstimator()
    request(e, est, "c0", 0.0)
    feed(e, est, SessionCreated(openid="c0", kf_account="a1@x", source="api"), 0.0)
    request(e, est, "c1", 10.0)
    request(e, est, "c2", 30.0)
    feed(e, est, SessionClosed(openid="c0", kf_account="a1@x"), 100.0)  # c1 reserved at 100
    assert est.service_mean(None) < 300.0  # learned from the 100 s session
    feed(e, est, SessionCreated(openid="c1", kf_account="a1@x", source="api"), 100.0)
    assert est.last_entered_wait(None) == pytest.approx(90.0)
    request(e, est, "c3", 120.0)
    got = est.estimate(e, "c3", 120.0)
    assert got.candidates["les"] == pytest.approx(90.0)
    assert got.candidates["hol"] == pytest.approx(90.0)  # c2 arrived at 30
    later = est.estimate(e, "c3", 150.0)  # delay-history predictions shrink with the time waited
    assert later.candidates["les"] == pytest.approx(60.0)


def test_abandonment_shortens_the_queue_estimate() -> None:
    e = engine_with(("a1@x", (), 1))
    est = WaitEstimator(EstimatorConfig(prior_service_s=100.0, prior_exposure_s=1.0))
    for i in range(5):
        request(e, est, f"c{i}", 0.0)
    before = est.estimate(e, "c4", 0.0)
    for _ in range(20):
        est.observe_abandon(None, 50.0, 1.0)
    after = est.estimate(e, "c4", 1.0)
    assert after.candidates["qlen"] == pytest.approx(before.seconds)
    assert after.seconds < 0.5 * before.seconds


# ----------------------------------------------------------------------------------- selection


def test_selector_switches_to_the_predictor_that_measured_better() -> None:
    cfg = EstimatorConfig(prior_service_s=10.0, min_scored=10, score_window=20, buckets=())
    est = WaitEstimator(cfg)
    e = engine_with(("a1@x", (), 1))
    request(e, est, "blocker", 0.0)  # holds the only session forever
    # Each customer really waits 500 s; the queue model (10 s sessions) says ~10 s; LES says 500 s.
    t = 0.0
    for i in range(15):
        oid = f"c{i}"
        request(e, est, oid, t)
        got = est.estimate_arrival(e, oid, t)
        if i < 11:
            assert got.method == "queue"  # not enough scores yet: the default
        est.observe_service_start(None, 500.0, t + 500.0, openid=oid)
        feed(e, est, CustomerLeft(openid=oid, reason="served elsewhere in this test"), t + 500.0)
        t += 500.0
    scores = est.scores(None)
    assert scores["les"][1] < scores["queue"][1]
    request(e, est, "last", t)
    assert est.estimate(e, "last", t).method in ("les", "hol")


@pytest.mark.parametrize(("margin", "expected"), [(0.5, "queue"), (0.2, "les")])
def test_selector_keeps_the_default_within_the_switch_margin(margin: float, expected: str) -> None:
    est = WaitEstimator(EstimatorConfig(min_scored=1, buckets=(), switch_margin=margin))
    e = engine_with(("a1@x", (), 1))
    request(e, est, "blocker", 0.0)
    est.observe_service_start(None, 100.0, 0.0)
    request(e, est, "c1", 1.0)
    got = est.estimate_arrival(e, "c1", 1.0)  # remembered: scored when c1 is served
    q, les = got.candidates["queue"], got.candidates["les"]
    assert q > les
    # LES is closer (0.45 vs 0.55 of the gap): its squared error is 0.67 of the queue model's
    actual = les + 0.45 * (q - les)
    est.observe_service_start(None, actual, 1.0 + actual, openid="c1")
    request(e, est, "c2", 2.0)
    assert est.estimate(e, "c2", 2.0).method == expected


def test_abandoners_are_scored_on_their_potential_wait() -> None:
    seen: list[Outcome] = []
    est = WaitEstimator(listener=seen.append)
    e = engine_with(("a1@x", (), 1))
    request(e, est, "blocker", 0.0)
    request(e, est, "quitter", 10.0)
    est.estimate_arrival(e, "quitter", 10.0)
    request(e, est, "stayer", 20.0)
    est.estimate_arrival(e, "stayer", 20.0)
    feed(e, est, CustomerLeft(openid="quitter", reason="patience"), 50.0)
    assert seen == []  # censored until someone behind them is served
    feed(e, est, SessionClosed(openid="blocker", kf_account="a1@x"), 200.0)
    feed(e, est, SessionCreated(openid="stayer", kf_account="a1@x", source="api"), 200.0)
    assert [(o.openid, o.actual, o.abandoned) for o in seen] == [
        ("stayer", 180.0, False),
        ("quitter", 190.0, True),
    ]
    assert seen[0].method == "queue" and seen[0].predictions["queue"] == seen[0].seconds


def test_memory_is_bounded() -> None:
    est = WaitEstimator(EstimatorConfig(max_tracked=50))
    for i in range(500):
        est.observe_fact(Queued(f"c{i}", None, 0, float(i)), float(i))
    assert len(est._spells) == 50


@pytest.mark.parametrize("priorities", [True, False])
def test_abandoners_are_resolved_in_the_engines_queue_order(priorities: bool) -> None:
    # Issue 15 item 7: with [engine] priorities = false the engine serves in arrival order, so a
    # high-priority customer who left was *behind* an earlier low-priority one: serving that one says
    # nothing about the leaver's potential wait.
    seen: list[Outcome] = []
    est = WaitEstimator(listener=seen.append)
    e = Engine(EngineConfig(priorities=priorities), load_all())
    e.handle(AgentConfigured(kf_account="a1@x", groups=frozenset(), max_sessions=1), 0.0)
    e.handle(AgentsSeen(rows=(AgentRow(kf_account="a1@x", status=1),), complete=False), 0.0)  # type: ignore[arg-type]
    request(e, est, "blocker", 0.0)
    feed(e, est, SessionCreated(openid="blocker", kf_account="a1@x", source="api"), 0.0)
    request(e, est, "early", 10.0)
    est.estimate_arrival(e, "early", 10.0)
    feed(e, est, CustomerRequested(openid="vip", priority=5), 20.0)
    assert est.estimate_arrival(e, "vip", 20.0).ahead == (0 if priorities else 1)
    feed(e, est, CustomerLeft(openid="vip", reason="patience"), 50.0)
    request(e, est, "late", 60.0)
    feed(e, est, SessionClosed(openid="blocker", kf_account="a1@x"), 200.0)
    feed(e, est, SessionCreated(openid="early", kf_account="a1@x", source="api"), 200.0)
    leavers = [(o.openid, o.actual) for o in seen if o.abandoned]
    if priorities:  # the vip was ahead of early: early's service bounds the vip's potential wait
        assert leavers == [("vip", 180.0)]
        return
    assert leavers == []  # early was ahead of the vip: nothing learned yet
    feed(e, est, SessionClosed(openid="early", kf_account="a1@x"), 400.0)
    feed(e, est, SessionCreated(openid="late", kf_account="a1@x", source="api"), 400.0)
    assert [(o.openid, o.actual) for o in seen if o.abandoned] == [("vip", 380.0)]
