"""The built-in routing policies. Each picks from the pool's sorted indices of free agents, never a scan.

- ``least-load``: lowest load/capacity, then lowest load, then longest since last assignment, then id;
  across every group of the customer's current scope.
- ``group-affinity``: the scope's groups in order (own group first, then overflow groups once their wait
  has passed): the least-loaded free agent of the first group that has one.
- ``sticky``: the agent who served this customer last (within the engine's sticky window), if free and
  in the customer's current scope; otherwise the fallback policy (least-load by default).
- ``round-robin``: the free agent longest since their last assignment.
- ``wechat-native``: the simulator's baseline imitating WeChat's own auto-accept: no groups, no priorities,
  the first agent (by account) with room under their auto_accept.
- ``best-fit`` (``policies/bestfit.py``): work-conserving, best proficiency match and last agent first,
  overflow decided from the expected wait; a free agent chooses among the waiting customers.
"""

from __future__ import annotations

from collections.abc import Iterable

from kfrouter.router.core.model import WaitingView
from kfrouter.router.core.policy import Order, Policy, PoolView


def _best(pool: PoolView, scope: Iterable[str | None], order: Order, exclude: frozenset[str]) -> str | None:
    """The best free agent across ``scope`` by ``order``: the head of each group's index, compared by key."""
    best: tuple[tuple[object, ...], str] | None = None
    for group in scope:
        kf = pool.first_free(group, order, exclude)
        if kf is None:
            continue
        key = _sort_key(pool, kf, order)
        if best is None or key < best[0]:
            best = (key, kf)
    return None if best is None else best[1]


def _sort_key(pool: PoolView, kf: str, order: Order) -> tuple[object, ...]:
    a = pool.agent(kf)
    assert a is not None
    if order == "load":
        return (a.load / a.capacity, a.load, a.last_assigned_at, kf)
    if order == "idle":
        return (a.last_assigned_at, kf)
    return (kf,)


class LeastLoad:
    name = "least-load"

    def pick(self, pool: PoolView, customer: WaitingView, now: float) -> str | None:
        if len(customer.scope) == 1:
            return pool.first_free(customer.scope[0], "load", customer.avoid)
        return _best(pool, customer.scope, "load", customer.avoid)


class GroupAffinity:
    name = "group-affinity"

    def pick(self, pool: PoolView, customer: WaitingView, now: float) -> str | None:
        for group in customer.scope:
            kf = pool.first_free(group, "load", customer.avoid)
            if kf is not None:
                return kf
        return None


class Sticky:
    name = "sticky"

    def __init__(self, fallback: Policy | None = None) -> None:
        self.fallback: Policy = fallback if fallback is not None else LeastLoad()

    def pick(self, pool: PoolView, customer: WaitingView, now: float) -> str | None:
        last = customer.last_agent
        if last is not None and last not in customer.avoid and pool.is_free(last):
            agent = pool.agent(last)
            assert agent is not None
            if None in customer.scope or agent.groups.intersection(customer.scope):
                return last
        return self.fallback.pick(pool, customer, now)


class RoundRobin:
    name = "round-robin"

    def pick(self, pool: PoolView, customer: WaitingView, now: float) -> str | None:
        if len(customer.scope) == 1:
            return pool.first_free(customer.scope[0], "idle", customer.avoid)
        return _best(pool, customer.scope, "idle", customer.avoid)


class WeChatNative:
    name = "wechat-native"
    ignores_groups = True
    honours_priority = False

    def pick(self, pool: PoolView, customer: WaitingView, now: float) -> str | None:
        return pool.first_free(None, "name", customer.avoid)


def _builtins() -> dict[str, type]:
    from kfrouter.policies.bestfit import BestFit

    return {cls.name: cls for cls in (LeastLoad, GroupAffinity, Sticky, RoundRobin, WeChatNative, BestFit)}


BUILTINS: dict[str, type] = _builtins()
