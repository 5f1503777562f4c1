"""Closed forms: Erlang B/C/A against textbook identities and an independent birth-death computation."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kfrouter.sim.erlang import birth_death, erlang_a, erlang_b, erlang_c


def test_erlang_b_small_cases() -> None:
    assert erlang_b(2.0, 0) == 1.0
    assert erlang_b(2.0, 1) == pytest.approx(2 / 3)
    # B(2, a) = (a^2/2) / (1 + a + a^2/2)
    a = 1.7
    assert erlang_b(a, 2) == pytest.approx((a * a / 2) / (1 + a + a * a / 2))
    assert 0 < erlang_b(1000.0, 1200) < 1e-6  # no overflow at large c


def test_mm1_is_the_textbook_queue() -> None:
    lam, mu = 0.7, 1.0
    c = erlang_c(lam, mu, 1)
    assert c.p_wait == pytest.approx(0.7)
    assert c.mean_wait == pytest.approx(0.7 / (1.0 - 0.7))


def test_erlang_c_from_its_sum_definition() -> None:
    lam, mu, c = 4.0, 1.0, 5
    a = lam / mu
    head = sum(a**k / math.factorial(k) for k in range(c))
    tail = a**c / math.factorial(c) * c / (c - a)
    assert erlang_c(lam, mu, c).p_wait == pytest.approx(tail / (head + tail), rel=1e-12)


def test_unstable_and_bad_arguments() -> None:
    with pytest.raises(ValueError, match="unstable"):
        erlang_c(5.0, 1.0, 5)
    with pytest.raises(ValueError, match="c must be"):
        erlang_c(1.0, 1.0, 0)
    with pytest.raises(ValueError, match="rates"):
        erlang_a(-1.0, 1.0, 2, 1.0)
    with pytest.raises(ValueError, match="theta"):
        erlang_a(1.0, 1.0, 2, 0.0)


@settings(max_examples=200, deadline=None)
@given(
    c=st.integers(1, 60),
    rho=st.floats(0.05, 3.0),
    theta_ratio=st.floats(0.02, 20.0),
)
def test_erlang_a_matches_birth_death(c: int, rho: float, theta_ratio: float) -> None:
    mu = 1.0
    lam = rho * c * mu
    theta = theta_ratio * mu
    closed = erlang_a(lam, mu, c, theta)
    chain = birth_death(lam, mu, c, theta)
    assert closed.p_wait == pytest.approx(chain.p_wait, rel=1e-9, abs=1e-12)
    assert closed.p_abandon == pytest.approx(chain.p_abandon, rel=1e-8, abs=1e-12)
    assert closed.mean_wait == pytest.approx(chain.mean_wait, rel=1e-8, abs=1e-12)
    assert 0.0 <= closed.p_abandon <= closed.p_wait <= 1.0


@settings(max_examples=100, deadline=None)
@given(c=st.integers(1, 80), rho=st.floats(0.05, 0.97))
def test_erlang_c_matches_birth_death(c: int, rho: float) -> None:
    lam = rho * c
    closed = erlang_c(lam, 1.0, c)
    chain = birth_death(lam, 1.0, c)
    assert closed.p_wait == pytest.approx(chain.p_wait, rel=1e-9)
    assert closed.mean_wait == pytest.approx(chain.mean_wait, rel=1e-7)


def test_erlang_a_tends_to_erlang_c_without_abandonment() -> None:
    c = erlang_c(4.0, 1.0, 5)
    a = erlang_a(4.0, 1.0, 5, 1e-7)
    assert a.p_wait == pytest.approx(c.p_wait, rel=1e-5)
    assert a.mean_wait == pytest.approx(c.mean_wait, rel=1e-4)
    assert a.p_abandon < 1e-6


def test_heavy_overload_does_not_overflow() -> None:
    # 3x overload with slow abandonment: the series terms pass 1e300 before they fall
    closed = erlang_a(180.0, 1.0, 60, 0.02)
    chain = birth_death(180.0, 1.0, 60, 0.02)
    assert closed.p_abandon == pytest.approx(2 / 3, rel=1e-6)  # fluid limit: (lam - c mu) / lam
    assert closed.p_abandon == pytest.approx(chain.p_abandon, rel=1e-9)
    assert closed.mean_wait == pytest.approx(chain.mean_wait, rel=1e-9)
