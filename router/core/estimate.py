"""Wait-time estimates for waiting customers, learned online per group (docs/estimates.md).

Rules:

- Pure: no clock, no I/O, no randomness. The caller (daemon or simulator) feeds what happened, either
  through ``observe_event(event, now)`` (the engine's own inputs) or the primitives
  ``observe_service_start`` / ``observe_session_end`` / ``observe_abandon``, and asks ``estimate``.
- Learned per group: the per-session service rate mu (windowed mean session duration, so agents coming
  and going do not disturb it), the abandonment hazard theta (abandonments / observed waiting time over
  a window; the waits of served customers count as censored exposure) and the delay history (LES: the
  wait of the last customer to enter service; HOL: the wait so far of the oldest waiting customer).
- Predictors, all giving the *remaining* wait: ``queue`` (n ahead, s sessions of capacity, rates mu and
  theta: sum_{i=0..n} 1/(s*mu + i*theta)), ``qlen`` (the same with theta = 0), ``les`` and ``hol``.
- The selector is measured, not assumed: the estimate made at a customer's arrival is scored against
  the wait that followed (for a customer who left, the potential wait: see ``_Pending``), per group and
  per bucket of customers ahead, as an exponentially weighted mean squared error; the predictor with the
  lowest recent error in that situation is used. Before enough scores exist, ``queue`` is used.
- Memory is bounded: tracked customers and pending abandoners are capped (oldest dropped first).
"""

from __future__ import annotations

import bisect
import math
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from typing import Protocol

from attrs import field, frozen

from kfrouter.router.core.errors import ConfigError, CoreError, UnknownCustomerError
from kfrouter.router.core.facts import Assigned, Fact, Left, Queued, SessionEnded
from kfrouter.router.core.model import CustomerState, WaitingView
from kfrouter.router.core.waitqueue import queue_key

PREDICTORS = ("queue", "qlen", "les", "hol")
_EXACT_TERMS = 4096  # beyond this many customers ahead the sum's tail is integrated (error < 1e-6 rel.)


class _QueueOrder(Protocol):
    @property
    def priorities(self) -> bool: ...


class EngineReader(Protocol):
    """The engine reads an estimate needs (``router.core.engine.Engine`` satisfies it)."""

    @property
    def config(self) -> _QueueOrder: ...  # ``priorities``: the engine's queue order (``queue_key``)

    def ahead_in_group(self, openid: str) -> int | None: ...

    def group_capacity(self, group: str | None) -> tuple[int, int]: ...

    def state(self, openid: str) -> CustomerState: ...

    def waiting_view(self, openid: str, now: float) -> WaitingView | None: ...


def _number(name: str, *, low: float, strict: bool) -> Callable[[object, object, float], None]:
    def check(_inst: object, _attr: object, value: float) -> None:
        ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        if not ok or (value <= low if strict else value < low):
            op = ">" if strict else ">="
            raise ConfigError(f"estimator.{name} must be a finite number {op} {low}, got {value!r}")

    return check


def _count(name: str, low: int = 1) -> Callable[[object, object, int], None]:
    def check(_inst: object, _attr: object, value: int) -> None:
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ConfigError(f"estimator.{name} must be an integer >= {low}, got {value!r}")

    return check


def _check_patience(_inst: object, _attr: object, value: float | None) -> None:
    if value is not None and (
        not isinstance(value, int | float) or isinstance(value, bool) or not (0 < value < math.inf)
    ):
        raise ConfigError(f"estimator.prior_patience_s must be a number > 0 or None, got {value!r}")


def _check_predictors(_inst: object, _attr: object, value: tuple[str, ...]) -> None:
    if not value or any(p not in PREDICTORS for p in value) or len(set(value)) != len(value):
        raise ConfigError(
            f"estimator.predictors must be distinct names from {PREDICTORS}, at least one, got {value!r}"
        )


def _check_buckets(_inst: object, _attr: object, value: tuple[int, ...]) -> None:
    if any(not isinstance(b, int) or isinstance(b, bool) or b < 1 for b in value) or list(value) != sorted(
        set(value)
    ):
        raise ConfigError(f"estimator.buckets must be increasing integers >= 1, got {value!r}")


@frozen(kw_only=True)
class EstimatorConfig:
    """Priors and windows of the estimator. Priors act as pseudo-observations, so the first real data
    moves the estimate smoothly instead of jumping."""

    prior_service_s: float = field(default=300.0, validator=_number("prior_service_s", low=0, strict=True))
    prior_sessions: int = field(default=5, validator=_count("prior_sessions", 0))
    service_window: int = field(default=1000, validator=_count("service_window"))
    prior_patience_s: float | None = field(default=None, validator=_check_patience)
    prior_exposure_s: float = field(default=600.0, validator=_number("prior_exposure_s", low=0, strict=True))
    abandon_window: int = field(default=2000, validator=_count("abandon_window"))
    predictors: tuple[str, ...] = field(
        default=("queue", "les", "hol"), converter=tuple, validator=_check_predictors
    )
    default_predictor: str = "queue"
    buckets: tuple[int, ...] = field(default=(1, 3, 10), converter=tuple, validator=_check_buckets)
    score_window: int = field(default=200, validator=_count("score_window"))
    min_scored: int = field(default=30, validator=_count("min_scored"))
    switch_margin: float = field(default=0.05, validator=_number("switch_margin", low=0, strict=False))
    max_tracked: int = field(default=100_000, validator=_count("max_tracked"))

    def __attrs_post_init__(self) -> None:
        if self.default_predictor not in self.predictors:
            raise ConfigError(
                f"estimator.default_predictor {self.default_predictor!r} must be one of predictors "
                f"{self.predictors!r}"
            )


@frozen(kw_only=True)
class Estimate:
    """An estimate of a waiting customer's remaining wait.

    ``seconds``: the selected prediction (``inf`` when nobody can serve the group and there is no delay
    history); ``method``: the predictor used (one of ``PREDICTORS``, ``'free'`` when free capacity
    exceeds the customers ahead, ``'assigned'`` when the customer is no longer waiting);
    ``ahead``: customers of the same group ahead; ``servers``: sessions' worth of capacity of the online,
    unpaused agents able to serve the group; ``candidates``: every predictor's value, for comparison.
    """

    seconds: float
    method: str
    ahead: int
    servers: int
    candidates: Mapping[str, float] = field(factory=dict)


@frozen(kw_only=True)
class Outcome:
    """The arrival estimate of one waiting spell set against the wait that followed.

    ``actual``: the wait until service; for a customer who left (``abandoned``), the potential wait (an
    upper bound: when a customer behind them entered service). ``predictions``: every predictor's value
    at arrival; ``method`` / ``seconds``: what the estimator selected then.
    """

    openid: str
    group: str | None
    arrived_at: float
    ahead: int
    method: str
    seconds: float
    predictions: Mapping[str, float]
    actual: float
    abandoned: bool


OutcomeListener = Callable[[Outcome], None]


class _Window:
    """The last ``size`` values with their running sum: O(1) per update (amortised)."""

    __slots__ = ("_adds", "_size", "_sum", "_values")

    def __init__(self, size: int) -> None:
        self._values: deque[float] = deque(maxlen=size)
        self._size = size
        self._sum = 0.0
        self._adds = 0

    def add(self, value: float) -> None:
        if len(self._values) == self._size:
            self._sum -= self._values[0]
        self._values.append(value)
        self._sum += value
        self._adds += 1
        if self._adds % self._size == 0:
            self._sum = math.fsum(self._values)  # re-anchor once per window against rounding drift

    def __len__(self) -> int:
        return len(self._values)

    @property
    def total(self) -> float:
        return self._sum


class _Score:
    """Exponentially weighted mean squared error: exact mean for the first ``window`` samples."""

    __slots__ = ("count", "mse")

    def __init__(self) -> None:
        self.count = 0
        self.mse = 0.0

    def add(self, sq_err: float, window: int) -> None:
        self.count += 1
        alpha = 1.0 / min(self.count, window)
        self.mse += alpha * (sq_err - self.mse)


class _Group:
    """What the estimator has learned about one customer group."""

    __slots__ = ("durations", "left", "les", "order", "pending", "scores", "waits")

    def __init__(self, config: EstimatorConfig) -> None:
        self.durations = _Window(config.service_window)
        self.waits = _Window(config.abandon_window)  # every finished waiting spell's observed wait
        self.left = _Window(config.abandon_window)  # 1.0 for a spell that ended in abandonment
        self.les: float | None = None
        self.order: deque[tuple[int, str]] = deque()  # (spell seq, openid) in arrival order, for HOL
        self.pending: list[_Spell] = []  # abandoners awaiting their potential wait, by queue key
        self.scores: dict[int | None, dict[str, _Score]] = {}  # bucket (None: all) -> predictor -> score


class _Spell:
    """One customer's current waiting spell."""

    __slots__ = (
        "ahead",
        "arrived_at",
        "bucket",
        "chosen",
        "group",
        "openid",
        "predictions",
        "priority",
        "seq",
    )

    def __init__(self, openid: str, group: str | None, priority: int, arrived_at: float, seq: int) -> None:
        self.openid = openid
        self.group = group
        self.arrived_at = arrived_at
        self.seq = seq
        self.priority = priority  # with seq, the engine's queue order within a group (``queue_key``)
        self.predictions: dict[str, float] | None = None  # made at the first estimate
        self.chosen: tuple[str, float] = ("", math.nan)  # (method, seconds) selected at the first estimate
        self.ahead = 0
        self.bucket = 0


def queue_wait(ahead: int, servers: float, mu: float, theta: float) -> float:
    """Expected wait of a customer with ``ahead`` customers in front when ``servers`` sessions, each
    completing at rate ``mu``, are all busy and each waiting customer abandons at rate ``theta``:
    sum_{i=0..ahead} 1 / (servers*mu + i*theta). ``inf`` when nobody serves."""
    if ahead < 0:
        raise ValueError(f"ahead must be >= 0, got {ahead}")
    base = servers * mu
    if base <= 0:
        return math.inf
    if theta <= 0:
        return (ahead + 1) / base
    exact = min(ahead, _EXACT_TERMS)
    total = math.fsum(1.0 / (base + i * theta) for i in range(exact + 1))
    if ahead > exact:  # midpoint-rule integral of the remaining terms i = exact+1 .. ahead
        lo, hi = base + (exact + 0.5) * theta, base + (ahead + 0.5) * theta
        total += math.log(hi / lo) / theta
    return total


class WaitEstimator:
    """Online wait-time estimator for one engine (one Official Account). Not thread-safe."""

    def __init__(
        self, config: EstimatorConfig | None = None, *, listener: OutcomeListener | None = None
    ) -> None:
        """``listener`` receives an :class:`Outcome` whenever an arrival estimate is settled (for metrics
        and the simulator's accuracy report)."""
        self.config = config if config is not None else EstimatorConfig()
        self.listener = listener
        self._groups: dict[str | None, _Group] = {}
        self._all = _Group(self.config)  # pooled over groups: the fallback prior of a new group
        self._spells: OrderedDict[str, _Spell] = OrderedDict()
        self._sessions: OrderedDict[str, tuple[str | None, float]] = OrderedDict()  # openid -> (group, start)
        self._seq = 0
        self._priorities = True  # the engine's queue order, read from it at every arrival estimate

    # ================================================================= feeding: primitives

    def observe_service_start(
        self, group: str | None, waited_s: float, now: float, *, openid: str | None = None
    ) -> None:
        """A customer of ``group`` entered service after waiting ``waited_s``. With ``openid`` (and an
        estimate made for them earlier) the estimate is scored and pending abandoners are resolved."""
        waited_s = _non_negative("waited_s", waited_s)
        g = self._group(group)
        for target in (g, self._all):
            target.les = waited_s
            target.waits.add(waited_s)
            target.left.add(0.0)
        spell = self._spells.pop(openid, None) if openid is not None else None
        if spell is None:
            return
        self._score(spell, waited_s, abandoned=False)
        self._resolve_pending(g, spell, now)

    def observe_session_end(self, group: str | None, duration_s: float, now: float) -> None:
        """A session of a ``group`` customer ended after ``duration_s`` seconds."""
        duration_s = _non_negative("duration_s", duration_s)
        self._group(group).durations.add(duration_s)
        self._all.durations.add(duration_s)

    def observe_abandon(
        self, group: str | None, waited_s: float, now: float, *, openid: str | None = None
    ) -> None:
        """A waiting customer of ``group`` left after ``waited_s``."""
        waited_s = _non_negative("waited_s", waited_s)
        g = self._group(group)
        for target in (g, self._all):
            target.waits.add(waited_s)
            target.left.add(1.0)
        spell = self._spells.pop(openid, None) if openid is not None else None
        if spell is not None and spell.predictions is not None:
            bisect.insort(g.pending, spell, key=self._key)
            if len(g.pending) > self.config.max_tracked:
                g.pending.pop(0)

    # ================================================================= feeding: the engine's facts

    def observe_fact(self, fact: Fact, now: float) -> None:
        """Learn from what the engine did (call it for every fact of every step, in order)."""
        if isinstance(fact, Queued):
            if fact.openid not in self._spells:
                self._start_spell(fact.openid, fact.group, fact.priority, fact.arrived_at)
        elif isinstance(fact, Assigned):
            if fact.queued:  # a session whose start we saw, after a wait we know
                self._session_started(fact.openid, now)
        elif isinstance(fact, SessionEnded):
            # only sessions whose start was seen: an adopted one's duration would be biased; a session
            # moved between agents keeps its start
            sess = self._sessions.pop(fact.openid, None)
            if sess is not None:
                self.observe_session_end(sess[0], now - sess[1], now)
        elif isinstance(fact, Left):
            if fact.waiting and fact.reason.startswith("left:"):
                self.observe_abandon(fact.group, fact.waited_s, now, openid=fact.openid)
            else:
                self._spells.pop(fact.openid, None)  # served elsewhere (wait unknown) or done: not scored

    # ================================================================= reading

    def service_mean(self, group: str | None) -> float:
        """Mean session duration (seconds) for ``group``: its window, shrunk towards the pooled mean."""
        c = self.config
        k = c.prior_sessions
        pooled = c.prior_service_s
        if len(self._all.durations):
            pooled = (self._all.durations.total + pooled * k) / (len(self._all.durations) + k)
        g = self._groups.get(group)
        if g is None or len(g.durations) == 0:
            return pooled
        return (g.durations.total + pooled * k) / (len(g.durations) + k)

    def abandon_rate(self, group: str | None) -> float:
        """Abandonment hazard (per second) for ``group``: abandonments / observed waiting time."""
        c = self.config
        prior_rate = 0.0 if c.prior_patience_s is None else 1.0 / c.prior_patience_s
        g = self._groups.get(group)
        if g is None or len(g.waits) == 0:
            g = self._all
        return (g.left.total + prior_rate * c.prior_exposure_s) / (g.waits.total + c.prior_exposure_s)

    def last_entered_wait(self, group: str | None) -> float | None:
        """LES: the wait of the last customer of ``group`` to enter service, if any."""
        g = self._groups.get(group)
        return None if g is None else g.les

    def scores(self, group: str | None, bucket: int | None = None) -> dict[str, tuple[int, float]]:
        """predictor -> (samples, recent mean squared error) for ``group`` and a bucket (None: all)."""
        g = self._groups.get(group)
        if g is None:
            return {}
        return {name: (s.count, s.mse) for name, s in g.scores.get(bucket, {}).items()}

    def bucket(self, ahead: int) -> int:
        """The situation bucket of a customer with ``ahead`` customers in front (0 = nobody ahead)."""
        return bisect.bisect_right(self.config.buckets, ahead)

    # ================================================================= estimating

    def estimate(self, engine: EngineReader, openid: str, now: float) -> Estimate:
        """The remaining wait of ``openid`` (a pure query: nothing is remembered). Raises
        ``UnknownCustomerError`` for a customer not in the engine's queue."""
        spell = self._spells.get(openid)
        if spell is None:
            view = engine.waiting_view(openid, now)
            if view is not None:
                spell = _Spell(openid, view.group, view.priority, view.arrived_at, 0)
        return self._estimate(engine, openid, spell, now)

    def estimate_arrival(self, engine: EngineReader, openid: str, now: float) -> Estimate:
        """``estimate()`` for a customer who just joined the queue, remembered as the estimate of their
        waiting spell: it is scored against the wait that follows (``Outcome``, predictor selection)."""
        self._priorities = engine.config.priorities  # abandoners are resolved in the engine's queue order
        spell = self._spells.get(openid)
        if spell is None:
            spell = self._adopt(engine, openid, now)
        est = self._estimate(engine, openid, spell, now)
        if spell.predictions is None and est.method != "assigned":
            spell.predictions = dict(est.candidates)
            spell.chosen = (est.method, est.seconds)
            spell.ahead = est.ahead
            spell.bucket = self.bucket(est.ahead)
        return est

    def has_arrival_estimate(self, openid: str) -> bool:
        """True when ``openid``'s waiting spell has its arrival estimate remembered (to be scored)."""
        spell = self._spells.get(openid)
        return spell is not None and spell.predictions is not None

    def _estimate(self, engine: EngineReader, openid: str, spell: _Spell | None, now: float) -> Estimate:
        state = engine.state(openid)
        if state in (CustomerState.RESERVED, CustomerState.IN_SESSION):
            return Estimate(seconds=0.0, method="assigned", ahead=0, servers=0)
        ahead = engine.ahead_in_group(openid)
        if state is not CustomerState.WAITING or ahead is None:
            raise UnknownCustomerError(openid, f"estimate (customer is {state.value}, not waiting)")
        if spell is None:
            raise UnknownCustomerError(openid, "estimate (not found in the engine's queue)")
        group = spell.group
        servers, free = engine.group_capacity(group)
        elapsed = max(0.0, now - spell.arrived_at)
        mu = 1.0 / max(self.service_mean(group), 1e-9)
        theta = self.abandon_rate(group)
        left = ahead - free
        cands: dict[str, float] = {}
        if left < 0:
            cands["queue"] = cands["qlen"] = 0.0
        else:
            cands["queue"] = queue_wait(left, servers, mu, theta)
            cands["qlen"] = queue_wait(left, servers, mu, 0.0)
        les = self.last_entered_wait(group)
        if les is not None:
            cands["les"] = max(0.0, les - elapsed)
            hol = self._hol(engine, group, openid, now)
            cands["hol"] = max(0.0, (les if hol is None else hol) - elapsed)
        bucket = self.bucket(ahead)
        if left < 0:
            method, seconds = "free", 0.0
        else:
            method = self._select(group, bucket, cands)
            seconds = cands.get(method, math.inf)
        return Estimate(seconds=seconds, method=method, ahead=ahead, servers=servers, candidates=cands)

    # ================================================================= internals

    def _group(self, group: str | None) -> _Group:
        g = self._groups.get(group)
        if g is None:
            g = self._groups[group] = _Group(self.config)
        return g

    def _start_spell(self, openid: str, group: str | None, priority: int, arrived_at: float) -> _Spell:
        self._seq += 1
        spell = _Spell(openid, group, priority, arrived_at, self._seq)
        self._spells[openid] = spell
        order = self._group(group).order
        order.append((spell.seq, openid))
        while len(self._spells) > self.config.max_tracked:
            self._spells.popitem(last=False)
        while order:  # forget arrivals whose spell ended (else it grows when no estimate is ever asked)
            seq, head = order[0]
            current = self._spells.get(head)
            if current is not None and current.seq == seq:
                break
            order.popleft()
        return spell

    def _adopt(self, engine: EngineReader, openid: str, now: float) -> _Spell:
        """A waiting customer we were not told about: read group, priority and arrival from the engine."""
        view = engine.waiting_view(openid, now)
        if view is None:
            raise UnknownCustomerError(openid, "estimate (not found in the engine's queue)")
        return self._start_spell(openid, view.group, view.priority, view.arrived_at)

    def _session_started(self, openid: str, now: float) -> None:
        spell = self._spells.get(openid)
        if spell is not None:
            self.observe_service_start(spell.group, now - spell.arrived_at, now, openid=openid)
            group: str | None = spell.group
        elif openid in self._sessions:
            return  # already known (the API answer and the push both confirm it)
        else:
            return  # a session we did not see start: its duration would be biased, so not tracked
        self._sessions[openid] = (group, now)
        while len(self._sessions) > self.config.max_tracked:
            self._sessions.popitem(last=False)

    def _hol(self, engine: EngineReader, group: str | None, openid: str, now: float) -> float | None:
        """Wait so far of the oldest customer of ``group`` still waiting, other than ``openid``."""
        g = self._groups.get(group)
        if g is None:
            return None
        order = g.order
        while order:
            seq, head = order[0]
            spell = self._spells.get(head)
            if spell is None or spell.seq != seq or engine.state(head) not in _QUEUED:
                order.popleft()
                continue
            break
        for seq, other in order:  # normally the first entry; reserved customers are skipped
            if other == openid:
                return None
            spell = self._spells.get(other)
            if spell is not None and spell.seq == seq and engine.state(other) is CustomerState.WAITING:
                return now - spell.arrived_at
        return None

    def _select(self, group: str | None, bucket: int, cands: Mapping[str, float]) -> str:
        c = self.config
        usable = [p for p in c.predictors if math.isfinite(cands.get(p, math.inf))]
        if not usable:
            return c.default_predictor
        default = c.default_predictor if c.default_predictor in usable else usable[0]
        g = self._groups.get(group)
        if g is None:
            return default
        for key in (bucket, None):
            scores = g.scores.get(key, {})
            ready = {p: scores[p].mse for p in usable if p in scores and scores[p].count >= c.min_scored}
            if default not in ready or len(ready) < 2:
                continue
            best = min(ready, key=lambda p: (ready[p], c.predictors.index(p)))
            if ready[best] < ready[default] * (1.0 - c.switch_margin):
                return best
            return default
        return default

    def _score(self, spell: _Spell, actual: float, *, abandoned: bool) -> None:
        if spell.predictions is None:
            return
        if self.listener is not None:
            self.listener(
                Outcome(
                    openid=spell.openid,
                    group=spell.group,
                    arrived_at=spell.arrived_at,
                    ahead=spell.ahead,
                    method=spell.chosen[0],
                    seconds=spell.chosen[1],
                    predictions=spell.predictions,
                    actual=actual,
                    abandoned=abandoned,
                )
            )
        g = self._group(spell.group)
        window = self.config.score_window
        for key in (spell.bucket, None):
            table = g.scores.setdefault(key, {})
            for name, predicted in spell.predictions.items():
                if math.isfinite(predicted):
                    table.setdefault(name, _Score()).add((predicted - actual) ** 2, window)

    def _key(self, spell: _Spell) -> tuple[int, int]:
        return queue_key(spell.priority, spell.seq, self._priorities)

    def _resolve_pending(self, g: _Group, served: _Spell, now: float) -> None:
        """A customer behind an abandoner (in queue order) entered service at ``now``: had the abandoner
        stayed, it would have entered service by then. That upper bound is its potential wait (exact
        while the queue does not empty in between)."""
        while g.pending and self._key(g.pending[0]) < self._key(served):
            spell = g.pending.pop(0)
            self._score(spell, now - spell.arrived_at, abandoned=True)


_QUEUED = (CustomerState.WAITING, CustomerState.RESERVED)


def _non_negative(name: str, value: float) -> float:
    """Validate a fed duration; tiny negatives (clock jitter between two reads) count as zero."""
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        raise CoreError(f"{name} must be a finite number of seconds, got {value!r}")
    return max(0.0, float(value))
