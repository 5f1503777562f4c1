"""bench/crossing_bound.py, the exact frontier of own-group service against waiting for two groups: its
solver meets Erlang A at both ends, its "own group first" restriction loses nothing, and a higher price per
crossing never buys more crossings."""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import pytest

np = pytest.importorskip("numpy", reason="the frontier solver needs numpy (installed with .[dev])")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

from crossing_bound import Chain, Model, frontier, least_wait_at  # noqa: E402

from kfrouter.sim.erlang import erlang_a  # noqa: E402

SMALL = Model(
    rate_a=0.04, rate_b=0.03, slots_a=3, slots_b=2, service_mean=60.0, patience_mean=240.0, queue_cap=25
)


def test_free_crossings_make_one_pooled_queue_and_forbidden_ones_two_separate_queues() -> None:
    mu, th = 1 / SMALL.service_mean, 1 / SMALL.patience_mean
    pooled = erlang_a(SMALL.rate_a + SMALL.rate_b, mu, SMALL.slots_a + SMALL.slots_b, th).mean_wait
    a = erlang_a(SMALL.rate_a, mu, SMALL.slots_a, th).mean_wait
    b = erlang_a(SMALL.rate_b, mu, SMALL.slots_b, th).mean_wait
    separate = (SMALL.rate_a * a + SMALL.rate_b * b) / (SMALL.rate_a + SMALL.rate_b)
    free, forbidden = frontier(SMALL, [0.0, 1e9])
    assert free.mean_wait == pytest.approx(pooled, rel=1e-5)
    assert forbidden.mean_wait == pytest.approx(separate, rel=1e-5)
    assert forbidden.affinity == pytest.approx(1.0)
    assert free.affinity < 1.0
    assert free.lost < 1e-9 and forbidden.lost < 1e-9


@pytest.mark.parametrize("eta", [0.0, 60.0])
def test_serving_ones_own_group_first_is_never_worse_than_any_rule_that_may_idle(eta: float) -> None:
    model = Model(0.02, 0.015, 2, 1, 60.0, 240.0, queue_cap=20)
    own, anything = Chain(model, own_first=True), Chain(model, own_first=False)
    assert anything.waiting.size > own.waiting.size  # idling reaches states the restricted rules cannot
    p_own, p_any = (c.evaluate(eta, c.solve(eta)) for c in (own, anything))
    # equal up to what the truncated queue's losses (< 1e-7 of arrivals) can pay an idler
    assert p_own.objective == pytest.approx(p_any.objective, rel=1e-6)
    assert p_own.lost < 1e-7 and p_any.lost < 1e-7


def test_a_higher_price_per_crossing_buys_fewer_crossings_at_more_waiting() -> None:
    points = frontier(SMALL, [0.0, 10.0, 40.0, 160.0, 1e9])
    for cheap, dear in itertools.pairwise(points):
        assert dear.affinity >= cheap.affinity - 1e-12
        assert dear.mean_wait >= cheap.mean_wait - 1e-12
    assert points[-1].mean_wait > points[0].mean_wait * 1.2  # the trade is real on this model


def test_the_bound_is_below_every_rule_and_close_to_the_optimal_ones() -> None:
    rate = SMALL.rate_a + SMALL.rate_b
    points = frontier(SMALL, [0.0, 10.0, 40.0, 160.0, 1e9])
    for p in points:  # each optimal rule is a rule: the bound at its affinity may not exceed its wait
        bound = least_wait_at(points, p.affinity, rate)
        assert bound <= p.mean_wait + 1e-9
        assert bound >= 0.9 * p.mean_wait  # and is not vacuous
    chain = Chain(SMALL)  # a rule that is not optimal (crossing only when 3 of a group wait) is above it too
    table = chain.crossings_on_grid(40.0)
    assert table.shape == (SMALL.slots_a + 1, SMALL.slots_b + 1, SMALL.queue_cap + 1, SMALL.queue_cap + 1)
    assert table[SMALL.slots_a - 1, SMALL.slots_b, 0, 0] == 0  # nobody waits: nothing to give
    assert table.max() >= 1
