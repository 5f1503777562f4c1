"""Confidence intervals for the mean of independent replications (``kfrouter sim run --replications``).

``mean_ci95(values)`` is the sample mean and the half-width of its two-sided 95 % Student-t interval,
``t(0.975, n-1) * s / sqrt(n)``. The t quantile is found by bisection on the exact distribution function
for integer degrees of freedom (Abramowitz & Stegun 26.7.3-4: a finite series in θ = atan(t / sqrt(ν))),
so no table and no statistics package are needed; results agree with published tables to 1e-9.

Rules: values must be finite numbers; fewer than two values have no interval (None).
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def t_central(t: float, df: int) -> float:
    """P(|T| <= t) for Student's t with ``df`` >= 1 degrees of freedom and t >= 0."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    theta = math.atan(t / math.sqrt(df))
    s, c2 = math.sin(theta), math.cos(theta) ** 2
    if df % 2 == 0:  # sin θ (1 + 1/2 cos²θ + 1·3/(2·4) cos⁴θ + ... up to cos^(ν-2)θ)
        term = total = 1.0
        for k in range(1, df // 2):
            term *= c2 * (2 * k - 1) / (2 * k)
            total += term
        return s * total
    # 2/π (θ + sin θ cos θ (1 + 2/3 cos²θ + 2·4/(3·5) cos⁴θ + ... up to cos^(ν-3)θ)); ν = 1: 2θ/π
    if df == 1:
        return 2.0 * theta / math.pi
    term = total = 1.0
    for k in range(1, (df - 1) // 2):
        term *= c2 * (2 * k) / (2 * k + 1)
        total += term
    return 2.0 / math.pi * (theta + s * math.cos(theta) * total)


def t_quantile(p: float, df: int) -> float:
    """The ``p`` quantile (0.5 < p < 1) of Student's t with ``df`` degrees of freedom."""
    if not 0.5 < p < 1.0:
        raise ValueError(f"p must be between 0.5 and 1, got {p}")
    central = 2.0 * p - 1.0  # P(|T| <= t)
    lo, hi = 0.0, 1.0
    while t_central(hi, df) < central:
        hi *= 2.0
    for _ in range(200):
        mid = (lo + hi) / 2.0
        if mid in (lo, hi):
            break
        if t_central(mid, df) < central:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2.0


def mean_ci95(values: Sequence[float]) -> tuple[float, float | None]:
    """(mean, half-width of the 95 % interval); the half-width is None for fewer than two values."""
    n = len(values)
    if n == 0:
        raise ValueError("mean of no values")
    for v in values:
        if not math.isfinite(v):
            raise ValueError(f"values must be finite, got {v!r}")
    mean = math.fsum(values) / n
    if n < 2:
        return mean, None
    var = math.fsum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, t_quantile(0.975, n - 1) * math.sqrt(var / n)
