"""Accuracy of kfrouter's wait estimates in the simulator, against theory and against the classic
baselines (queue length without abandonment, LES, HOL). Fixed seeds, moderate sizes (a few seconds)."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable, Iterator

import pytest

from kfrouter.router.core.estimate import Outcome
from kfrouter.sim.eta import EtaTracker, rrmse
from kfrouter.sim.gen import GenParams, Segment, generate, header_for
from kfrouter.sim.runner import RunConfig, run_with_eta
from kfrouter.sim.trace import AgentOnline, Record

SVC = 60.0  # mean session, seconds


def replay(params: GenParams, warmup_s: float, records: Iterable[Record] | None = None) -> EtaTracker:
    tracker = EtaTracker(warmup_s=warmup_s)
    groups = [g for g, _ in params.groups]
    cfg = RunConfig(policy="least-load", overflow_after_s=None)
    run_with_eta(header_for(params), records or generate(params), cfg, tracker, groups=groups)
    return tracker


def used(tracker: EtaTracker) -> list[Outcome]:
    return [o for o in tracker.outcomes if o.arrived_at >= tracker.warmup_s]


def mmc_floor(rho: float, servers: int, mu: float) -> float:
    """Expected relative RMSE of the exact queue-length predictor over the customers who wait in M/M/c.

    A customer who must wait finds N ~ Geometric(1 - rho) customers ahead (PASTA); their wait is then
    Gamma(N + 1, c*mu): mean (N+1)/(c mu), variance (N+1)/(c mu)^2. The predictor E[W|N] leaves the
    conditional variance, so RMSE^2 = E[Var(W|N)] and the floor is sqrt(E[Var(W|N)]) / E[W]."""
    mean = var = 0.0
    for n in range(20_000):
        p = (1 - rho) * rho**n
        mean += p * (n + 1) / (servers * mu)
        var += p * (n + 1) / (servers * mu) ** 2
    return math.sqrt(var) / mean


def test_mmc_estimates_reach_the_queue_length_floor() -> None:
    rho, agents, sessions = 0.8, 5, 2
    c, mu = agents * sessions, 1 / SVC
    lam = rho * c * mu
    n = 15_000
    floor = mmc_floor(rho, c, mu)
    assert floor == pytest.approx(math.sqrt(1 - rho), rel=1e-9)  # the closed form in docs/estimates.md
    outcomes: list[Outcome] = []
    for seed in (1, 2, 3):  # independent replications, pooled
        p = GenParams(
            agents=agents, max_sessions=sessions, customers=n, arrival_rate=lam, service_mean=SVC, seed=seed
        )
        tracker = replay(p, warmup_s=0.05 * n / lam)
        outcomes += used(tracker)
        assert tracker.summary()["eta_censored"] == 0
    assert len(outcomes) > 10_000
    kf = rrmse((o.seconds, o.actual) for o in outcomes)
    oracle = rrmse(((o.ahead + 1) / (c * mu), o.actual) for o in outcomes)  # true mu, same customers
    assert kf == pytest.approx(floor, rel=0.10)
    assert kf <= oracle * 1.05  # learning mu online costs little
    les = rrmse((o.predictions["les"], o.actual) for o in outcomes)
    hol = rrmse((o.predictions["hol"], o.actual) for o in outcomes)
    assert kf < 0.85 * min(les, hol)


def test_mmc_with_abandonment_beats_plain_queue_length_and_les() -> None:
    agents, sessions, rho, patience = 5, 2, 1.1, 120.0
    lam = rho * agents * sessions / SVC
    n = 20_000
    p = GenParams(
        agents=agents,
        max_sessions=sessions,
        customers=n,
        arrival_rate=lam,
        service_mean=SVC,
        patience_mean=patience,
        seed=7,
    )
    tracker = replay(p, warmup_s=0.05 * n / lam)
    s = tracker.summary()
    assert s["eta_customers"] > 5000 and s["eta_abandoned_scored"] > 1000
    assert s["eta_censored"] < 10
    assert s["eta_rrmse"] < 0.95 * s["eta_rrmse_qlen"]
    assert s["eta_rrmse"] < 0.85 * s["eta_rrmse_les"]
    assert abs(s["eta_bias_s"]) < 0.05 * s["eta_mean_wait_s"]
    # the hazard learned from abandonments and censored waits is near the truth
    assert 1 / tracker.estimator.abandon_rate(None) == pytest.approx(patience, rel=0.25)


DAY = (
    Segment(0, 8, 0.012),
    Segment(8, 12, 0.034),
    Segment(12, 17, 0.07),
    Segment(17, 20, 0.036),
    Segment(20, 24, 0.015),
)
SHIFTS = (Segment(20, 9, 0.2), Segment(8, 17, 0.4), Segment(12, 21, 0.4))  # overlapping, never empty


def test_time_varying_day_beats_les_and_hol() -> None:
    p = GenParams(
        agents=10,
        max_sessions=3,
        customers=10_000,
        arrival_rate=None,
        arrival_profile=DAY,
        shifts=SHIFTS,
        service_mean=300.0,
        patience_mean=900.0,
        seed=11,
    )
    s = replay(p, warmup_s=8 * 3600.0).summary()
    assert s["eta_customers"] > 2000
    assert s["eta_excluded"] == 0
    assert s["eta_rrmse"] < 0.85 * min(s["eta_rrmse_les"], s["eta_rrmse_hol"])


def _shared(records: Iterable[Record]) -> Iterator[Record]:
    for rec in records:
        if isinstance(rec, AgentOnline):
            rec = dataclasses.replace(rec, groups=("a", "b"))
        yield rec


def test_selector_follows_measurement_when_the_queue_model_is_wrong() -> None:
    """Every agent serves both groups, so a group-a customer also waits for the group-b customers ahead
    of them, which the per-group queue model does not see. Measured errors move the selector to the
    delay-history predictors."""
    p = GenParams(
        agents=5,
        max_sessions=2,
        customers=15_000,
        arrival_rate=0.9 * 10 / SVC,
        service_mean=SVC,
        groups=(("a", 0.5), ("b", 0.5)),
        seed=3,
    )
    tracker = replay(p, warmup_s=2000.0, records=_shared(generate(p)))
    s = tracker.summary()
    best_history = min(s["eta_rrmse_les"], s["eta_rrmse_hol"])
    assert s["eta_rrmse_queue"] > 1.2 * best_history  # the model really is wrong here
    assert s["eta_rrmse"] < 1.05 * best_history
    assert s["eta_methods"].get("les", 0) + s["eta_methods"].get("hol", 0) > s["eta_customers"] / 2


def test_summary_is_json_safe_without_customers() -> None:
    s = EtaTracker().summary()
    assert s["eta_customers"] == 0 and s["eta_rrmse"] is None and s["eta_bias_s"] is None
    json.dumps(s, allow_nan=False)
    assert math.isnan(rrmse([])) and rrmse([(1.0, 2.0), (3.0, 2.0)]) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="warmup_s"):
        EtaTracker(warmup_s=-1)
