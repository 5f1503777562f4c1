"""The least mean wait any routing rule can reach while serving a given share of customers in their own
group: the exact frontier for two groups in the Markov model that ``kfrouter sim gen`` draws from.

    python bench/crossing_bound.py                       # the README's trace's parameters
    python bench/crossing_bound.py --rate 0.2 --shares 0.6,0.4 --slots 10,6 --service-mean 60 --patience-mean 240

The model: customers of group A and B arrive as Poisson streams, sessions last Exp(mean service) whoever
serves them, a waiting customer leaves after Exp(mean patience); group A's agents hold ``slots[0]``
sessions, group B's ``slots[1]``. A routing rule sees how many sessions each group's agents hold and how
many customers of each group wait, and decides, at every change, how many waiting customers to give to the
other group's free sessions (a *crossing*; affinity = 1 − crossings per served customer).

Rules of this module:

- Every non-anticipating rule (one that does not know service times or patience in advance) is covered:
  with exponential times and customers alike within a group, the counts are the whole state, so the
  optimum over counts is the optimum over rules that look at anything else the daemon knows (who waited
  longest, who came back).
- A group's own free session always takes its own waiting customer (``own_first``); ``Chain(model,
  own_first=False)`` also lets a rule keep sessions idle, and finds the same optimum on small models (tests).
- For a price ``eta`` (seconds of waiting one crossing is worth) relative value iteration on the
  uniformised chain finds the rule minimising E[customers waiting] + eta × crossing rate; its stationary
  distribution gives its mean wait (all arrivals, Little's law: E[waiting] / arrival rate) and affinity.
  Sweeping ``eta`` traces the frontier, and each optimum bounds every rule (``least_wait_at``): no rule
  waits less at a given affinity than the best of those bounds.
- Queues are truncated at ``queue_cap`` (an arrival finding it full is lost); the share lost is printed
  and must be negligible for the figures to stand.

Needs numpy. Not a test: the figures of docs/simulator.md (tests/test_crossing_bound.py checks the solver
against Erlang A at both ends).
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

import numpy as np

from kfrouter.sim.erlang import erlang_a


@dataclass(frozen=True)
class Model:
    rate_a: float  # arrivals per second of group A
    rate_b: float
    slots_a: int  # sessions group A's agents can hold together
    slots_b: int
    service_mean: float
    patience_mean: float
    queue_cap: int = 40

    def __post_init__(self) -> None:
        for name in ("rate_a", "rate_b", "service_mean", "patience_mean"):
            v = getattr(self, name)
            if not (v > 0 and math.isfinite(v)):
                raise ValueError(f"{name} must be finite and > 0, got {v!r}")
        for name in ("slots_a", "slots_b", "queue_cap"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")


@dataclass(frozen=True)
class Point:
    eta: float  # the price of a crossing the rule was optimised for (s of waiting)
    mean_wait: float  # E[wait] over all arrivals (s)
    affinity: float  # 1 - crossings per served customer
    lost: float  # share of arrivals lost to the queue cap
    abandon: float  # share of arrivals that left waiting
    objective: float  # what the rule minimised: E[waiting] + eta x crossings per second


Rule = list[tuple[np.ndarray, np.ndarray]]  # per event: the state chosen, the crossings


class Chain:
    """The states a rule can leave the system in, and for each of them where every event leads and what the
    rule may do there. Built on the grid (busy A, busy B, waiting A, waiting B); iterated only over the
    states a decision can lead to (with ``own_first``: a group with customers waiting has no free session)."""

    def __init__(self, m: Model, own_first: bool = True) -> None:
        self.m = m
        ca, cb, q = m.slots_a, m.slots_b, m.queue_cap
        self.shape = (ca + 1, cb + 1, q + 1, q + 1)
        ba, bb, qa, qb = (a.ravel() for a in np.indices(self.shape))
        self.ba, self.bb, self.qa, self.qb = ba, bb, qa, qb
        mu, th = 1.0 / m.service_mean, 1.0 / m.patience_mean
        full_a, full_b = qa >= q, qb >= q
        events = [  # (rate, grid point the event leads to, before the rule decides)
            (np.full(ba.shape, m.rate_a), self.index(ba, bb, np.where(full_a, qa, qa + 1), qb)),
            (np.full(ba.shape, m.rate_b), self.index(ba, bb, qa, np.where(full_b, qb, qb + 1))),
            (ba * mu, self.index(np.maximum(ba - 1, 0), bb, qa, qb)),
            (bb * mu, self.index(ba, np.maximum(bb - 1, 0), qa, qb)),
            (qa * th, self.index(ba, bb, np.maximum(qa - 1, 0), qb)),
            (qb * th, self.index(ba, bb, qa, np.maximum(qb - 1, 0))),
        ]
        choices = self._own_first_choices() if own_first else self._all_choices()
        states = np.unique(np.concatenate([t[ok] for _, t, ok in choices] + [self.index(0, 0, 0, 0)[None]]))
        pos = np.full(ba.shape, -1)
        pos[states] = np.arange(states.size)
        self.states, self._choices, self._pos = states, choices, pos
        self.waiting = (qa + qb)[states].astype(float)
        self.lost_rate = (np.where(full_a, m.rate_a, 0.0) + np.where(full_b, m.rate_b, 0.0))[states]
        total = sum(r[states] for r, _ in events)
        self.uniform = float(np.max(total)) * 1.02  # every state keeps a self-loop: aperiodic
        # per event (the self-loop last): its probability per step, and for every choice at the grid point
        # it leads to, (crossings, the state chosen, whether the choice is allowed there)
        steps = [(r[states] / self.uniform, n[states]) for r, n in events]
        steps.append((1.0 - total / self.uniform, states))
        self.steps = [(p, [(x, pos[t[n]], ok[n]) for x, t, ok in choices]) for p, n in steps]
        # every allowed choice leads to one of the states
        assert all(((i >= 0) | ~ok).all() for _, cs in self.steps for _, i, ok in cs)

    def index(self, ba: np.ndarray, bb: np.ndarray, qa: np.ndarray, qb: np.ndarray) -> np.ndarray:
        return np.ravel_multi_index((ba, bb, qa, qb), self.shape)

    def _own_first_choices(self) -> list[tuple[int, np.ndarray, np.ndarray]]:
        m = self.m
        own_a = np.minimum(self.qa, m.slots_a - self.ba)
        own_b = np.minimum(self.qb, m.slots_b - self.bb)
        ba, qa, bb, qb = self.ba + own_a, self.qa - own_a, self.bb + own_b, self.qb - own_b
        b_to_a = np.minimum(m.slots_a - ba, qb)  # free A sessions and B customers waiting
        a_to_b = np.minimum(m.slots_b - bb, qa)
        out = []
        for x in range(max(m.slots_a, m.slots_b) + 1):
            xa, xb = np.minimum(x, b_to_a), np.minimum(x, a_to_b)
            ok = (xa == x) | (xb == x)
            out.append((x, self.index(ba + xa, bb + xb, qa - xb, qb - xa), ok))
        return out

    def _all_choices(self) -> list[tuple[int, np.ndarray, np.ndarray]]:
        """Every way to start sessions, idling included (for checking ``own_first`` on small models)."""
        m = self.m
        out = []
        for oa, ob, xa, xb in np.ndindex(m.slots_a + 1, m.slots_b + 1, m.slots_a + 1, m.slots_b + 1):
            ba, bb = self.ba + oa + xa, self.bb + ob + xb  # xa: B customers to A sessions
            qa, qb = self.qa - oa - xb, self.qb - ob - xa
            ok = (ba <= m.slots_a) & (bb <= m.slots_b) & (qa >= 0) & (qb >= 0)
            target = self.index(
                np.minimum(ba, m.slots_a), np.minimum(bb, m.slots_b), np.maximum(qa, 0), np.maximum(qb, 0)
            )
            out.append((xa + xb, target, ok))
        return out

    @staticmethod
    def _best(
        value: np.ndarray, eta: float, choices: list[tuple[int, np.ndarray, np.ndarray]]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Among ``choices`` (crossings, state it leads to, allowed?): the least cost-to-go, its state and
        its crossings; ties keep fewer crossings."""
        shape = choices[0][1].shape
        best = np.full(shape, np.inf)
        target = np.zeros(shape, dtype=np.int64)
        cross = np.zeros(shape, dtype=np.int64)
        for x, t, ok in choices:
            v = np.where(ok, value[t] + eta * x, np.inf)
            better = v < best - 1e-12
            best = np.where(better, v, best)
            target = np.where(better, t, target)
            cross = np.where(better, x, cross)
        return best, target, cross

    def _decide(self, value: np.ndarray, eta: float) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Per event: the best choice's cost-to-go, the state it leads to and its crossings."""
        return [self._best(value, eta, cs) for _p, cs in self.steps]

    def solve(self, eta: float) -> Rule:
        """The rule minimising E[waiting] + eta x crossing rate."""
        return [(t, x) for _, t, x in self._decide(self.relative_values(eta), eta)]

    def crossings_on_grid(self, eta: float) -> np.ndarray:
        """For every grid point (busy A, busy B, waiting A, waiting B), how many customers the optimal rule
        gives to the other group's free sessions there (after each group's own free sessions took their own)."""
        pos = self._pos
        choices = [(x, np.maximum(pos[t], 0), ok & (pos[t] >= 0)) for x, t, ok in self._choices]
        return self._best(self.relative_values(eta), eta, choices)[2].reshape(self.shape)

    def relative_values(self, eta: float, tol: float = 1e-9, max_iter: int = 1_000_000) -> np.ndarray:
        """Relative value iteration on the uniformised chain (values relative to the empty system)."""
        value = np.zeros(self.waiting.shape)
        for _ in range(max_iter):
            decided = self._decide(value, eta)
            new = self.waiting / self.uniform + sum(
                p * best for (p, _), (best, _, _) in zip(self.steps, decided, strict=True)
            )
            new -= new[0]
            done = np.max(np.abs(new - value)) < tol
            value = new
            if done:
                break
        else:
            raise RuntimeError(f"value iteration did not converge in {max_iter} steps (eta {eta})")
        return value

    def evaluate(self, eta: float, rule: Rule, tol: float = 1e-14) -> Point:
        """Stationary figures of a rule, by power iteration from the empty system."""
        n = self.waiting.size
        pi = np.zeros(n)
        pi[0] = 1.0
        for _ in range(10_000_000):
            new = sum(
                np.bincount(t, weights=pi * p, minlength=n)
                for (p, _), (t, _) in zip(self.steps, rule, strict=True)
            )
            done = np.max(np.abs(new - pi)) < tol
            pi = new
            if done:
                break
        m = self.m
        arrivals = m.rate_a + m.rate_b
        crossings = self.uniform * float(
            sum(np.dot(pi, p * x) for (p, _), (_, x) in zip(self.steps, rule, strict=True))
        )
        waiting = float(np.dot(pi, self.waiting))
        lost = float(np.dot(pi, self.lost_rate))
        abandoned = waiting / m.patience_mean
        served = arrivals - lost - abandoned
        return Point(
            eta=eta,
            mean_wait=waiting / (arrivals - lost),
            affinity=1.0 - crossings / served,
            lost=lost / arrivals,
            abandon=abandoned / arrivals,
            objective=waiting + eta * crossings,
        )


def frontier(model: Model, etas: list[float]) -> list[Point]:
    chain = Chain(model)
    return [chain.evaluate(eta, chain.solve(eta)) for eta in etas]


def least_wait_at(points: list[Point], affinity: float, arrival_rate: float) -> float:
    """A lower bound on the mean wait (all arrivals) of every rule serving at least ``affinity`` in their own
    group, from optimal rules ``points`` (Lagrangian duality): a rule crossing at rate r has E[waiting] + eta r
    >= the optimum at eta, and affinity ``a`` means r <= (1 - a) x arrival rate; so E[wait] >= (optimum at
    eta - eta (1 - a) rate) / rate for every eta, and the best of them is the bound."""
    crossings = (1.0 - affinity) * arrival_rate
    return max(0.0, *((p.objective - p.eta * crossings) / arrival_rate for p in points))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", type=float, default=0.2)
    ap.add_argument("--shares", default="0.6,0.4")
    ap.add_argument("--slots", default="10,6")
    ap.add_argument("--service-mean", type=float, default=60.0)
    ap.add_argument("--patience-mean", type=float, default=240.0)
    ap.add_argument("--queue-cap", type=int, default=40)
    ap.add_argument("--etas", default="0,5,10,20,40,60,80,90,100,110,120,140,160,1e9")
    ap.add_argument("--affinity", type=float, default=0.9936, help="print the least wait at this affinity")
    args = ap.parse_args()
    sa, sb = (float(x) for x in args.shares.split(","))
    ca, cb = (int(x) for x in args.slots.split(","))
    model = Model(
        args.rate * sa / (sa + sb),
        args.rate * sb / (sa + sb),
        ca,
        cb,
        args.service_mean,
        args.patience_mean,
        args.queue_cap,
    )
    mu, th = 1 / model.service_mean, 1 / model.patience_mean
    pooled = erlang_a(args.rate, mu, ca + cb, th).mean_wait
    split = (
        sa * erlang_a(model.rate_a, mu, ca, th).mean_wait + sb * erlang_a(model.rate_b, mu, cb, th).mean_wait
    ) / (sa + sb)
    print(f"Erlang A: one pooled queue {pooled:.3f} s, separate queues {split:.3f} s (all arrivals)")
    points = frontier(model, [float(e) for e in args.etas.split(",")])
    for p in points:
        print(
            f"price {p.eta:>10g} s/crossing: mean wait {p.mean_wait:7.3f} s  affinity {p.affinity:.4f}  "
            f"abandoned {p.abandon:.4f}  lost {p.lost:.1e}"
        )
    best = least_wait_at(points, args.affinity, args.rate)
    print(
        f"every rule serving >= {args.affinity} in their own group waits >= {best:.3f} s on average "
        f"({best / pooled:.2f} x the pooled queue's {pooled:.3f} s)"
    )


if __name__ == "__main__":
    main()
