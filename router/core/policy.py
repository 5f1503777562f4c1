"""The contract between the engine and a routing policy.

A policy ranks, the engine commits: ``pick`` returns the kf_account it would give this customer, or None
to leave the customer waiting. The engine re-checks that the agent is free and not avoided before it
reserves; a policy that returns an agent that is not free is a bug and raises ``CoreError``.

``pick`` must be cheap: use ``PoolView.first_free(group, order, exclude)`` or ``free_agents(...)`` (sorted
indices), never a scan.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal, Protocol, runtime_checkable

from kfrouter.router.core.model import AgentView, WaitingView

Order = Literal["load", "idle", "name"]


class PoolView(Protocol):
    """Read-only view of the agent pool handed to policies."""

    def agent(self, kf_account: str) -> AgentView | None: ...

    def is_free(self, kf_account: str) -> bool: ...

    def free_count(self, group: str | None = None) -> int: ...

    def free_agents(
        self, group: str | None = None, order: Order = "load", exclude: frozenset[str] = frozenset()
    ) -> Iterator[str]: ...

    def first_free(
        self, group: str | None = None, order: Order = "load", exclude: frozenset[str] = frozenset()
    ) -> str | None: ...


@runtime_checkable
class Policy(Protocol):
    """A routing policy. Optional attributes read by the engine (with these defaults):

    - ``ignores_groups = False``: when True the customer's scope is always ``(None,)`` (any agent);
    - ``honours_priority = True``: informational; the engine's queue order follows ``EngineConfig.priorities``.
    """

    name: str

    def pick(self, pool: PoolView, customer: WaitingView, now: float) -> str | None: ...
