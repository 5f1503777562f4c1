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

    Optional methods (a policy without them works as before):

    - ``choose(pool, kf_account, candidates, now) -> openid | None``: whenever the engine drains its queue
      it first offers every free agent (least loaded first) the waiting customers of this policy's routes
      that the agent may serve now (``candidates``: an iterator of ``WaitingView`` in queue order, built
      lazily, so read only as many as needed); the policy returns the openid of the one the agent should
      take, or None. With ``choose``, the agent picks among waiting customers instead of the first waiting
      customer picking an agent; when every policy of the engine has ``choose`` the engine skips its
      per-customer pass, so ``pick`` is then not called while customers wait (see ChooserPolicy);
    - ``attach(reader)``: called once by the engine with a ``QueueReader`` the policy may keep and read
      (e.g. to weigh how many customers of a group wait).
    """

    name: str

    def pick(self, pool: PoolView, customer: WaitingView, now: float) -> str | None: ...


class QueueReader(Protocol):
    """What ``attach`` hands a policy: read-only questions about the waiting queue."""

    def waiting_in_group(self, group: str | None) -> int: ...

    def ahead_in_group(self, openid: str) -> int | None: ...


@runtime_checkable
class ChooserPolicy(Policy, Protocol):
    """A policy that also chooses among waiting customers for a free agent (``Policy``'s optional method)."""

    def choose(
        self, pool: PoolView, kf_account: str, candidates: Iterator[WaitingView], now: float
    ) -> str | None: ...
