"""Accuracy of wait-time estimates in the simulator: ``EtaTracker`` and a replay helper.

For every customer who had to wait (still waiting right after the engine handled their arrival) the
Desk (router/core/desk.py) asks ``router.core.estimate.WaitEstimator`` for an arrival estimate, exactly as
in the daemon; the tracker observes the Desk's facts to count them. The estimator remembers the selected prediction and every baseline (``qlen``: n ahead over s*mu, ignoring
abandonment; ``les``; ``hol``) and, when the wait is over, hands back an ``Outcome`` (its listener).

Abandoned customers: their own wait is censored (they left before service). Their *potential* wait -
what they would have waited had they stayed, which is what an estimate promises - is bounded by the
moment a customer behind them in the same group's queue entered service; that bound (exact while the
queue does not empty in between) is used. Abandoners with no later customer served before the run ended
are left out and counted in ``eta_censored``. See docs/estimates.md.

Metrics (``summary()``): ``eta_rrmse`` = RMSE / mean actual wait of the selected estimate,
``eta_bias_s`` = mean(estimate - actual), ``eta_rrmse_qlen`` / ``_les`` / ``_hol`` for the baselines
(and ``_queue`` for the model alone), all over the same customers: those with every predictor finite,
arrived after ``warmup_s``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from kfrouter.router.core.estimate import EngineReader, EstimatorConfig, Outcome, WaitEstimator
from kfrouter.router.core.facts import Assigned, Fact, Left, Queued
from kfrouter.router.core.model import CustomerState

BASELINES = ("qlen", "les", "hol", "queue")


class EtaTracker:
    """Scores the arrival estimates of a ``WaitEstimator`` that a Desk feeds.

    The Desk gives every customer who joins the queue their arrival estimate (``estimate_arrival``), as
    the daemon does; the tracker counts those who still wait after the step that queued them and those of
    them who abandon. Attach it with ``desk.subscribe(tracker.on_fact)`` and hand its
    ``estimator`` to the Desk.
    """

    def __init__(
        self,
        estimator: WaitEstimator | None = None,
        *,
        config: EstimatorConfig | None = None,
        warmup_s: float = 0.0,
    ) -> None:
        if estimator is not None and config is not None:
            raise ValueError("EtaTracker: pass an estimator or a config, not both")
        if not (isinstance(warmup_s, int | float) and math.isfinite(warmup_s) and warmup_s >= 0):
            raise ValueError(f"EtaTracker: warmup_s must be a number >= 0, got {warmup_s!r}")
        self.estimator = estimator if estimator is not None else WaitEstimator(config)
        self._chained = self.estimator.listener
        self.estimator.listener = self._on_outcome
        self.warmup_s = float(warmup_s)
        self.outcomes: list[Outcome] = []
        self.waited = 0  # customers who had to wait and got an estimate on arrival
        self.abandoned = 0  # of those, how many left
        self._tracked: set[str] = set()
        self._engine: EngineReader | None = None

    def watch(self, engine: EngineReader) -> None:
        """The engine whose queue the facts come from (read to see who still waits)."""
        self._engine = engine

    def on_fact(self, fact: Fact, now: float) -> None:
        if isinstance(fact, Queued):
            engine = self._engine
            if engine is not None and engine.state(fact.openid) is CustomerState.WAITING:
                self._tracked.add(fact.openid)
                self.waited += 1
        elif isinstance(fact, Assigned):
            self._tracked.discard(fact.openid)
        elif isinstance(fact, Left) and fact.openid in self._tracked:
            self._tracked.discard(fact.openid)
            if fact.waiting and fact.reason.startswith("left:"):
                self.abandoned += 1

    def _on_outcome(self, outcome: Outcome) -> None:
        self.outcomes.append(outcome)
        if self._chained is not None:
            self._chained(outcome)

    def summary(self) -> dict[str, Any]:
        """The accuracy metrics (see the module docstring), rounded to 6 decimals; None where there
        were no customers to measure (JSON has no NaN)."""
        used = [
            o
            for o in self.outcomes
            if o.arrived_at >= self.warmup_s
            and math.isfinite(o.seconds)
            and all(math.isfinite(o.predictions.get(p, math.inf)) for p in BASELINES)
        ]
        after = [o for o in self.outcomes if o.arrived_at >= self.warmup_s]
        resolved_abandoners = sum(1 for o in self.outcomes if o.abandoned)
        out: dict[str, Any] = {
            "eta_customers": len(used),
            "eta_excluded": len(after) - len(used),
            "eta_abandoned_scored": sum(1 for o in used if o.abandoned),
            "eta_censored": max(0, self.abandoned - resolved_abandoners),
            "eta_mean_wait_s": _r(_mean([o.actual for o in used])),
            "eta_rrmse": _r(rrmse([(o.seconds, o.actual) for o in used])),
            "eta_bias_s": _r(_mean([o.seconds - o.actual for o in used])),
        }
        for p in BASELINES:
            out[f"eta_rrmse_{p}"] = _r(rrmse([(o.predictions[p], o.actual) for o in used]))
        methods: dict[str, int] = {}
        for o in used:
            methods[o.method] = methods.get(o.method, 0) + 1
        out["eta_methods"] = dict(sorted(methods.items()))
        return out


def rrmse(pairs: Iterable[tuple[float, float]]) -> float:
    """Root mean squared error of (predicted, actual) pairs over the mean actual value; NaN when empty."""
    sq = 0.0
    total = 0.0
    n = 0
    for predicted, actual in pairs:
        sq += (predicted - actual) ** 2
        total += actual
        n += 1
    if n == 0 or total <= 0:
        return math.nan
    return math.sqrt(sq / n) / (total / n)


def _r(x: float) -> float | None:
    return None if math.isnan(x) else round(x, 6)


def _mean(values: list[float]) -> float:
    return math.fsum(values) / len(values) if values else math.nan
