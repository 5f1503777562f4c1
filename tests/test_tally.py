"""router.tally: percentiles against the standard library, spreading spans over slots (Hypothesis), the
definitions of served / abandoned / superseded / service level, and the history's 15-minute slots."""

from __future__ import annotations

import math
import statistics

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kfrouter.router.report import build_history, online_spans
from kfrouter.router.tally import Tally, percentile, spread
from kfrouter.router.traffic import AgentChange, Case, Traffic

finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)


@given(st.lists(finite, min_size=2, max_size=60), st.integers(min_value=1, max_value=99))
def test_percentile_matches_statistics_quantiles_inclusive(values: list[float], q: int) -> None:
    ordered = sorted(values)
    want = statistics.quantiles(ordered, n=100, method="inclusive")[q - 1]
    got = percentile(ordered, q)
    assert got is not None and math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-6)


def test_percentile_edges() -> None:
    assert percentile([], 50) is None
    assert percentile([7.0], 90) == 7.0
    assert percentile([1.0, 2.0], 0) == 1.0 and percentile([1.0, 2.0], 100) == 2.0
    with pytest.raises(ValueError, match=r"q must be within 0\.\.100"):
        percentile([1.0], 101)


@given(
    st.floats(min_value=-500, max_value=1500, allow_nan=False),
    st.floats(min_value=0, max_value=2000, allow_nan=False),
    st.floats(min_value=-100, max_value=100, allow_nan=False),
    st.floats(min_value=0.5, max_value=300, allow_nan=False),
    st.integers(min_value=1, max_value=20),
    st.floats(min_value=0.1, max_value=5, allow_nan=False),
)
def test_spread_adds_exactly_the_overlap_with_each_slot(
    start: float, length: float, origin: float, width: float, n: int, weight: float
) -> None:
    out = [0.0] * n
    spread(start, start + length, origin, width, out, weight)
    for i, got in enumerate(out):  # each slot, computed on its own
        a, b = origin + i * width, origin + (i + 1) * width
        want = max(0.0, min(b, start + length) - max(a, start)) * weight
        assert math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-6)


def test_tally_definitions() -> None:
    t = Tally()
    t.add_case(False, 0.0, 5.0, 65.0, "served")  # served after 5 s, handled 60 s
    t.add_case(False, 0.0, 25.0, None, None)  # served after 25 s, still in session
    t.add_case(False, 0.0, None, 30.0, "cancelled")
    t.add_case(False, 0.0, None, 10.0, "superseded")  # asked again: not abandoned
    t.add_case(False, 0.0, None, None, None)  # still waiting
    t.add_case(True, 100.0, 100.0, 150.0, "served")  # a session kfrouter did not route
    s = t.summary(30.0)
    assert (s["requests"], s["served"], s["abandoned"], s["superseded"], s["waiting"]) == (5, 2, 1, 1, 1)
    assert s["direct_sessions"] == 1
    assert s["service_level_20s"] == round(1 / 3, 4) and s["service_level"] == round(2 / 3, 4)
    assert s["handle_mean_s"] == 55.0  # 60 and the direct session's 50
    assert s["abandon_rate"] == round(1 / 3, 4) and s["left"] == {"cancelled": 1}
    assert s["utilisation"] is None  # no online time


def test_online_spans_from_changes() -> None:
    changes = [
        AgentChange(0.0, "a", True, ("g",), 2),
        AgentChange(50.0, "a", True, ("g", "h"), 3),  # still online, new settings: a new span
        AgentChange(80.0, "a", False, (), None),
        AgentChange(90.0, "b", True, (), None),  # no capacity recorded: the default
    ]
    spans = online_spans(changes, 10.0, 100.0, default_capacity=4)
    assert [(s.agent, s.start, s.end, s.capacity, s.groups) for s in spans] == [
        ("a", 10.0, 50.0, 2, ("g",)),
        ("a", 50.0, 80.0, 3, ("g", "h")),
        ("b", 90.0, 100.0, 4, ()),
    ]


def test_history_slots_count_waiting_and_in_session_per_group() -> None:
    now = 10_000.0 * 900 + 450  # half-way through a slot
    slot0 = now - 450  # the last slot's start
    cases = [
        # waited the whole previous slot and the first 300 s of the current one, then in session
        Case(1, "o1", "sales", slot0 - 900, "a@t", slot0 + 300, None, None, False),
        # asked in the current slot, left after 60 s
        Case(2, "o2", "sales", slot0 + 100, None, None, slot0 + 160, "cancelled", False),
        # asked in the current slot, served after 10 s, still in session
        Case(3, "o3", None, slot0 + 200, "b@t", slot0 + 210, None, None, False),
    ]
    traffic = Traffic("x", now - 86400, now, cases, [], [], cases[0].requested_at, now)
    h = build_history(traffic, now=now)
    assert h["slots"] == 96 and h["start"] == slot0 - 95 * 900
    sales = next(g for g in h["groups"] if g["group"] == "sales")
    assert sales["waiting"][-2] == 1.0  # one customer during the whole slot
    assert sales["waiting"][-1] == pytest.approx(
        (300 + 60) / 450, abs=1e-3
    )  # the current slot is 450 s long so far
    assert sales["in_session"][-1] == pytest.approx(150 / 450, abs=1e-3)
    assert sales["requests"][-2:] == [1, 1] and sales["abandoned"][-1] == 1
    assert sales["service_level"][-2] == 0.0  # o1 waited 1,200 s
    everyone = h["all"]
    assert everyone["requests"][-1] == 2 and everyone["service_level"][-1] == 0.5  # o3 within 20 s, o2 left
    assert everyone["in_session"][-1] == pytest.approx((150 + 240) / 450, abs=1e-3)
    assert h["all"]["waiting"][0] == 0.0
