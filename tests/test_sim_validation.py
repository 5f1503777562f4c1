"""The simulator against queueing theory: replaying M/M/c traces through the real Engine must reproduce
Erlang C (mean wait, P(wait > 0)) and M/M/c+M traces Erlang A (P(abandon), mean wait), each within a
99% confidence interval from batch means. Closed forms come from sim.erlang, computed here."""

from __future__ import annotations

import math
import statistics

import pytest

from kfrouter.sim.erlang import erlang_a, erlang_c
from kfrouter.sim.gen import GenParams, generate, header_for
from kfrouter.sim.runner import RunConfig, RunResult, groups_of, run_records
from kfrouter.sim.tally import ABANDONED

BATCHES = 20
CONFIDENCE = 0.99


def student_t_quantile(p: float, df: int) -> float:
    """Quantile of Student's t by bisection on its CDF, the density integrated with Simpson's rule."""
    const = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(df * math.pi)

    def density(t: float) -> float:
        return float(const * (1 + t * t / df) ** (-(df + 1) / 2))

    def cdf(x: float, n: int = 2000) -> float:
        h = x / n
        s = density(0) + density(x) + sum((4 if i % 2 else 2) * density(i * h) for i in range(1, n))
        return 0.5 + s * h / 3

    lo, hi = 0.0, 20.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cdf(mid) < p else (lo, mid)
    return float((lo + hi) / 2)


def test_t_quantile_is_right() -> None:
    # sanity of the helper against the normal limit and a known value (t_{0.975, 1} = tan(0.475 pi))
    assert student_t_quantile(0.975, 1) == pytest.approx(math.tan(0.475 * math.pi), rel=1e-4)
    assert student_t_quantile(0.975, 2000) == pytest.approx(1.96, abs=2e-3)


def batch_ci(values: list[float], warmup: int) -> tuple[float, float]:
    """(mean, half-width) of a CONFIDENCE interval from BATCHES batch means after a warm-up."""
    data = values[warmup:]
    size = len(data) // BATCHES
    means = [statistics.fmean(data[i * size : (i + 1) * size]) for i in range(BATCHES)]
    t = student_t_quantile(1 - (1 - CONFIDENCE) / 2, BATCHES - 1)
    return statistics.fmean(means), t * statistics.stdev(means) / math.sqrt(BATCHES)


def replay(params: GenParams) -> RunResult:
    header = header_for(params)
    res = run_records(
        header,
        generate(params),
        RunConfig(policy="least-load", seed=params.seed, arrivals=True),
        groups=groups_of(header),
    )
    assert res.customers == params.customers
    assert res.capacity_violations == 0 and res.double_assignments == 0
    assert res.arrivals is not None  # per-arrival entries, in arrival order, for the batch means
    return res


def test_mmc_reproduces_erlang_c() -> None:
    c, lam, mu = 5, 4.0, 1.0  # rho = 0.8
    params = GenParams(
        agents=c,
        max_sessions=1,
        customers=100_000,
        arrival_rate=lam,
        service_mean=1 / mu,
        service_dist="exp",
        seed=2024,
    )
    res = replay(params)
    theory = erlang_c(lam, mu, c)
    assert res.arrivals is not None
    waits = res.arrivals.wait  # nobody leaves, so every arrival is served
    assert all(not math.isnan(w) for w in waits)
    mean, half = batch_ci(waits, warmup=2_000)
    assert abs(mean - theory.mean_wait) <= half, (mean, half, theory.mean_wait)
    assert half < 0.2 * theory.mean_wait  # the interval is narrow enough to mean something
    p, p_half = batch_ci([1.0 if w > 0 else 0.0 for w in waits], warmup=2_000)
    assert abs(p - theory.p_wait) <= p_half, (p, p_half, theory.p_wait)
    assert p_half < 0.03


def test_mmc_plus_m_reproduces_erlang_a() -> None:
    c, lam, mu, theta = 5, 5.0, 1.0, 1.0  # rho = 1: only abandonment keeps the queue finite
    params = GenParams(
        agents=c,
        max_sessions=1,
        customers=40_000,
        arrival_rate=lam,
        service_mean=1 / mu,
        patience_mean=1 / theta,
        seed=77,
    )
    res = replay(params)
    theory = erlang_a(lam, mu, c, theta)
    abandoned = [1.0 if o == ABANDONED else 0.0 for o in res.arrivals.outcome]
    p, half = batch_ci(abandoned, warmup=1_000)
    assert abs(p - theory.p_abandon) <= half, (p, half, theory.p_abandon)
    assert half < 0.2 * theory.p_abandon
    # time in queue (until served or until leaving) over every arrival: E[W] = P(Ab) / theta
    w, w_half = batch_ci(res.arrivals.wait, warmup=1_000)
    assert abs(w - theory.mean_wait) <= w_half, (w, w_half, theory.mean_wait)
