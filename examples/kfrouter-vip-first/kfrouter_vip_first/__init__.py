"""Example kfrouter policy plug-in.

Customers tagged ``vip`` go to the least-loaded free agent tagged ``senior`` within their scope, if any;
everyone else (and VIPs when no senior is free) is routed by least load. It reads the pool only through
``PoolView`` and picks through its sorted indices.
"""

from __future__ import annotations

from kfrouter.policies.builtin import LeastLoad
from kfrouter.router.core.model import WaitingView
from kfrouter.router.core.policy import PoolView


class VipFirst:
    name = "vip-first"

    def __init__(self) -> None:
        self._fallback = LeastLoad()

    def pick(self, pool: PoolView, customer: WaitingView, now: float) -> str | None:
        if "vip" in customer.tags:
            for group in customer.scope:
                for kf in pool.free_agents(group, "load", customer.avoid):
                    agent = pool.agent(kf)
                    if agent is not None and "senior" in agent.tags:
                        return kf
        return self._fallback.pick(pool, customer, now)
