"""Closed forms for the queues the simulator is validated against: Erlang B, Erlang C (M/M/c) and
Erlang A (M/M/c+M, exponential patience), computed with numerically stable recursions and series.

Notation: ``lam`` arrival rate, ``mu`` service rate per server, ``c`` servers, ``theta`` abandonment
rate (1 / mean patience), offered load ``a = lam / mu``, ``rho = a / c``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


def _check(lam: float, mu: float, c: int) -> None:
    if not (lam > 0 and mu > 0 and math.isfinite(lam) and math.isfinite(mu)):
        raise ValueError(f"rates must be finite and > 0, got lam={lam!r}, mu={mu!r}")
    if not isinstance(c, int) or c < 1:
        raise ValueError(f"c must be an integer >= 1, got {c!r}")


def erlang_b(a: float, c: int) -> float:
    """Blocking probability of M/M/c/c with offered load ``a``; the recursion
    ``B(0) = 1, B(k) = a B(k-1) / (k + a B(k-1))`` never overflows (Jagerman 1974)."""
    if a < 0 or c < 0:
        raise ValueError(f"need a >= 0 and c >= 0, got a={a!r}, c={c!r}")
    b = 1.0
    for k in range(1, c + 1):
        b = a * b / (k + a * b)
    return b


@dataclass(frozen=True)
class ErlangC:
    p_wait: float  # P(W > 0), the Erlang C formula C(c, a)
    mean_wait: float  # E[W] over all customers
    mean_wait_if_waiting: float  # E[W | W > 0] = 1 / (c mu - lam)
    utilization: float  # rho

    def p_wait_longer(self, t: float, c: int, mu: float, lam: float) -> float:
        """P(W > t) = C e^{-(c mu - lam) t}."""
        return self.p_wait * math.exp(-(c * mu - lam) * t)


def erlang_c(lam: float, mu: float, c: int) -> ErlangC:
    """M/M/c: ``C(c, a) = c B / (c - a (1 - B))`` with ``B`` = Erlang B; ``E[W] = C / (c mu - lam)``."""
    _check(lam, mu, c)
    a = lam / mu
    if a >= c:
        raise ValueError(f"M/M/c is unstable: offered load {a:.4g} >= c = {c}")
    b = erlang_b(a, c)
    p = c * b / (c - a * (1.0 - b))
    return ErlangC(
        p_wait=p, mean_wait=p / (c * mu - lam), mean_wait_if_waiting=1.0 / (c * mu - lam), utilization=a / c
    )


_BIG = 1e200  # rescale running sums past this, so that heavy overload cannot overflow a float


def _log_a_series(x: float, y: float) -> float:
    """``log A(x, y)`` where ``A(x, y) = x e^y y^-x γ(x, y) = Σ_{k>=0} y^k / ((x+1)(x+2)…(x+k))``
    (γ = lower incomplete gamma; from the series γ(x, y) = y^x e^-y Σ y^k / (x(x+1)…(x+k))).
    Every term is positive; they grow while y > x + k and then fall geometrically, so plain summation
    is stable. The sum is rescaled whenever it passes 1e200 and the scale kept as a logarithm; the
    loop stops when the tail bound ``term · r / (1 - r)``, r = y / (x + k + 1), is below 1e-17 of the sum."""
    total = 1.0
    term = 1.0
    log_scale = 0.0
    k = 0
    while True:
        k += 1
        term *= y / (x + k)
        total += term
        if total > _BIG:
            total /= _BIG
            term /= _BIG
            log_scale += math.log(_BIG)
        r = y / (x + k + 1)
        if r < 1.0 and term * r / (1.0 - r) < total * 1e-17:
            return math.log(total) + log_scale
        if k > 100_000_000:  # pragma: no cover - y would have to be astronomically large
            raise ArithmeticError(f"Erlang A series did not converge for x={x!r}, y={y!r}")


@dataclass(frozen=True)
class ErlangA:
    p_wait: float  # P(W > 0): the customer finds every server busy
    p_abandon: float  # P(Ab): the customer leaves before service
    p_abandon_if_waiting: float  # P(Ab | W > 0)
    mean_wait: float  # E[W]: time in queue (until service or abandonment), over all customers
    utilization: float  # share of server capacity busy: lam (1 - P(Ab)) / (c mu)


def erlang_a(lam: float, mu: float, c: int, theta: float) -> ErlangA:
    """M/M/c+M (Palm/Erlang-A). Formulas of Garnett, Mandelbaum & Reiman, "Designing a call center
    with impatient customers", MSOM 4(3), 2002, as summarised in Mandelbaum & Zeltyn, "The Palm/Erlang-A
    queue, with applications to call centers" (2005), section 2:

        A(x, y)       = x e^y / y^x · γ(x, y),            γ(x, y) = ∫_0^y t^(x-1) e^-t dt
        E             = Erlang B E_{c, lam/mu}
        P(W > 0)      = A(c mu/theta, lam/theta) E / (1 + (A(c mu/theta, lam/theta) - 1) E)
        P(Ab | W > 0) = 1 / (rho A(c mu/theta, lam/theta)) + 1 - 1/rho,     rho = lam / (c mu)
        P(Ab)         = P(Ab | W > 0) P(W > 0),          E[W] = P(Ab) / theta  (Little + abandonment)

    ``A`` is evaluated with the positive series in :func:`_a_series`. Stable for any load (no
    requirement rho < 1: abandonment keeps the queue finite).
    """
    _check(lam, mu, c)
    if not (theta > 0 and math.isfinite(theta)):
        raise ValueError(f"theta must be finite and > 0, got {theta!r}")
    rho = lam / (c * mu)
    e = erlang_b(lam / mu, c)
    log_a = _log_a_series(c * mu / theta, lam / theta)
    inv_a = math.exp(-log_a)  # 1/A, in (0, 1]
    # P(W>0) = A E / (1 + (A - 1) E) = 1 / (1 + (1 - E) / (A E)), written with 1/A so A may be huge
    p_wait = 1.0 / (1.0 + (1.0 - e) * inv_a / e) if e > 0 else 0.0
    p_ab_w = 1.0 - (1.0 - inv_a) / rho  # = 1/(rho A) + 1 - 1/rho
    p_ab = p_ab_w * p_wait
    return ErlangA(
        p_wait=p_wait,
        p_abandon=p_ab,
        p_abandon_if_waiting=p_ab_w,
        mean_wait=p_ab / theta,
        utilization=lam * (1.0 - p_ab) / (c * mu),
    )


def birth_death(lam: float, mu: float, c: int, theta: float = 0.0, *, tol: float = 1e-15) -> ErlangA:
    """The same measures from the stationary distribution of the birth-death chain (birth ``lam``,
    death ``min(k, c) mu + max(k - c, 0) theta``), truncated once the tail is below ``tol``. An
    independent check of :func:`erlang_a` and :func:`erlang_c` (``theta=0``, needs rho < 1)."""
    _check(lam, mu, c)
    if theta == 0 and lam >= c * mu:
        raise ValueError("unstable without abandonment")
    # weights relative to p_c: below c by the downward recursion, above c upward; every running sum is
    # rescaled together past 1e200 so heavy overload cannot overflow
    below_sum = 0.0  # Σ_{k<c} p_k / p_c
    w = 1.0
    for k in range(c, 0, -1):
        w *= (k * mu) / lam
        below_sum += w
    at_c = 1.0
    above_sum = 0.0  # Σ_{k>c} p_k / p_c
    above_q = 0.0  # Σ_{k>c} (k - c) p_k / p_c
    term = 1.0
    k = c
    while True:
        k += 1
        r = lam / (c * mu + (k - c) * theta)
        term *= r
        above_sum += term
        above_q += (k - c) * term
        if term > _BIG:
            term, above_sum, above_q = term / _BIG, above_sum / _BIG, above_q / _BIG
            below_sum, at_c = below_sum / _BIG, at_c / _BIG
        if r < 0.99 and term * (k - c + 1) < tol * (at_c + above_sum) * (1 - r) ** 2:
            break
    norm = below_sum + at_c + above_sum
    p_wait = (at_c + above_sum) / norm  # states k >= c
    mean_q = above_q / norm
    p_ab = theta * mean_q / lam
    mean_wait = mean_q / lam  # Little's law on the queue
    return ErlangA(
        p_wait=p_wait,
        p_abandon=p_ab,
        p_abandon_if_waiting=p_ab / p_wait,
        mean_wait=mean_wait,
        utilization=lam * (1.0 - p_ab) / (c * mu),
    )


def _log_stationary(lam: float, mu: float, c: int, theta: float, tol: float = 1e-16) -> list[float]:
    """Stationary probabilities p_0..p_K of the M/M/c+M birth-death chain (``theta`` > 0), truncated where
    the tail is below ``tol``; computed with logarithms so large ``c`` and heavy load cannot overflow."""
    logs = [0.0] * (c + 1)  # log(p_k / p_c) for k <= c
    for k in range(c, 0, -1):
        logs[k - 1] = logs[k] + math.log(k * mu / lam)
    k = c
    while True:
        k += 1
        r = lam / (c * mu + (k - c) * theta)
        logs.append(logs[-1] + math.log(r))
        if r < 0.99 and logs[-1] - max(logs) < math.log(tol) and k - c > 10:
            break
    top = max(logs)
    weights = [math.exp(x - top) for x in logs]
    total = math.fsum(weights)
    return [w / total for w in weights]


def erlang_a_service_level(lam: float, mu: float, c: int, theta: float, t: float) -> float:
    """P(served within ``t`` seconds of arriving) in M/M/c+M, over all arrivals (abandoners count as not
    served), FCFS. Arrivals see the stationary distribution (PASTA); an arrival finding ``j`` customers
    waiting ahead moves up at rate ``c mu + j theta`` (a service ends, or one ahead abandons) and abandons at
    rate ``theta``; the transient of that chain is computed by uniformization. ``theta = 0`` is Erlang C:
    ``1 - C e^{-(c mu - lam) t}`` (0 when unstable)."""
    _check(lam, mu, c)
    if t < 0 or not math.isfinite(t):
        raise ValueError(f"t must be a finite number >= 0, got {t!r}")
    if theta == 0:
        if lam >= c * mu:
            return 0.0
        return 1.0 - erlang_c(lam, mu, c).p_wait_longer(t, c, mu, lam)
    if not (theta > 0 and math.isfinite(theta)):
        raise ValueError(f"theta must be finite and >= 0, got {theta!r}")
    p = _log_stationary(lam, mu, c, theta)
    served_now = math.fsum(p[:c])
    ahead = p[c:]  # mass of arrivals finding j = 0, 1, ... customers waiting ahead of them
    n_states = len(ahead)
    rate = c * mu + n_states * theta + theta
    steps_mean = rate * t
    n_max = int(steps_mean + 12.0 * math.sqrt(steps_mean) + 30)
    v = list(ahead)
    served = 0.0
    total = 0.0
    log_pois = -steps_mean  # log of Poisson(0; steps_mean)
    for n in range(n_max + 1):
        if n > 0:
            log_pois += math.log(steps_mean / n) if steps_mean > 0 else -math.inf
            new = [0.0] * n_states
            for j in range(n_states):
                m = v[j]
                if m == 0.0:
                    continue
                down = (c * mu + j * theta) / rate
                new[j] += m * (1.0 - down - theta / rate)
                if j == 0:
                    served += m * down
                else:
                    new[j - 1] += m * down
            v = new
        total += math.exp(log_pois) * served if log_pois > -745 else 0.0
        if steps_mean == 0:
            break
    return served_now + total
