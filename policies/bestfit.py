"""``best-fit``: a work-conserving policy that matches customers to the agents who serve them best, and
decides overflow from the expected wait instead of a fixed timer.

Rules (docs/simulator.md, "The best-fit policy"):

- every agent may serve every customer (``ignores_groups``); how well is the agent's proficiency for the
  customer's group (``AgentView.proficiency``: its ``skills``, 1.0 when not listed). A session is
  expected to take ``1 / proficiency`` times the full-proficiency time, times ``same_agent_factor`` (the
  policy's belief, default 1) when the agent served the customer last;
- costs are in units of the mean full-proficiency session, so no time scale has to be known: taking free
  agent ``a`` now costs ``slowdown_weight × handle(a)``; waiting for an agent of the customer's own group
  costs ``waiting_in_group / capacity_of_group + slowdown_weight × 1`` (the backlog that group's agents
  must clear first, at one full-proficiency session per unit of capacity). A customer is given the best
  free agent when that costs no more than waiting; so with equal proficiencies nobody ever waits while an
  agent is free (work-conserving), and a slow match is taken only once the own group's backlog makes
  waiting dearer;
- ranking free agents for a customer: lowest expected handle, then an agent of the customer's group, then
  the customer's last agent, then least loaded (the pool's load order);
- when an agent is free the engine offers it the waiting customers (``choose``): it takes, among the
  first ``horizon`` it may serve and for whom it is the best free choice worth taking now, the one it
  serves best (lowest handle, then its own group, then its own returning customer), oldest first; a
  customer who named this agent and still waits for it alone comes first.

Pure and deterministic: no clock, no randomness; ties break on the pool's order and the queue order.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

from kfrouter.router.core.errors import ConfigError
from kfrouter.router.core.model import AgentView, WaitingView
from kfrouter.router.core.policy import PoolView, QueueReader

# rank of a free agent for a customer, lower is better: (handle, not of their group, not their last agent)
_Rank = tuple[float, bool, bool]


class BestFit:
    name = "best-fit"
    ignores_groups = True  # every agent is considered; the customer's group counts through proficiency

    def __init__(
        self,
        slowdown_weight: float = 1.0,
        same_agent_factor: float = 1.0,
        unlisted_skill: float = 1.0,
        horizon: int = 16,
    ) -> None:
        if not (isinstance(slowdown_weight, int | float) and 0 <= slowdown_weight < math.inf):
            raise ConfigError(f"best-fit: slowdown_weight must be a number >= 0, got {slowdown_weight!r}")
        if not (isinstance(same_agent_factor, int | float) and 0 < same_agent_factor < math.inf):
            raise ConfigError(f"best-fit: same_agent_factor must be a number > 0, got {same_agent_factor!r}")
        if not (isinstance(unlisted_skill, int | float) and 0 < unlisted_skill <= 1):
            raise ConfigError(f"best-fit: unlisted_skill must be a number in (0, 1], got {unlisted_skill!r}")
        if not isinstance(horizon, int) or isinstance(horizon, bool) or horizon < 1:
            raise ConfigError(f"best-fit: horizon must be an integer >= 1, got {horizon!r}")
        self.slowdown_weight = float(slowdown_weight)
        self.same_agent_factor = float(same_agent_factor)
        self.unlisted_skill = float(unlisted_skill)
        self.horizon = horizon
        self._reader: QueueReader | None = None

    def attach(self, reader: QueueReader) -> None:
        self._reader = reader

    # ------------------------------------------------------------------ the rule

    def _proficiency(self, agent: AgentView, group: str | None) -> float:
        if group is None or group in agent.groups or self.unlisted_skill == 1.0:
            return agent.proficiency(group)
        for g, p in agent.skills:
            if g == group:
                return p
        return self.unlisted_skill

    def _handle(self, agent: AgentView, customer: WaitingView) -> float:
        h = 1.0 / self._proficiency(agent, customer.group)
        return h * self.same_agent_factor if agent.kf_account == customer.last_agent else h

    def _rank(self, agent: AgentView, customer: WaitingView) -> _Rank:
        return (
            self._handle(agent, customer),
            customer.group not in agent.groups,
            agent.kf_account != customer.last_agent,
        )

    def _best_free(
        self, pool: PoolView, customer: WaitingView, views: dict[str, AgentView]
    ) -> tuple[str, _Rank] | None:
        """The customer's best free agent and its rank (None: nobody free). ``views``: the agents' views
        already made during this decision (the pool does not change while the policy decides)."""
        last = customer.last_agent
        # the best rank possible: their last agent of their group at full proficiency, else (their last agent
        # is not free) any agent of their group at full proficiency
        if last is not None and last not in customer.avoid and pool.is_free(last):
            top: _Rank = (min(1.0, self.same_agent_factor), False, False)
        else:
            top = (1.0, False, True)
        best: tuple[str, _Rank] | None = None
        for kf in pool.free_agents(None, "load", customer.avoid):
            agent = views.get(kf)
            if agent is None:
                agent = views[kf] = pool.agent(kf)  # type: ignore[assignment]
                assert agent is not None
            rank = self._rank(agent, customer)
            if best is None or rank < best[1]:
                best = (kf, rank)
                if rank <= top:
                    break  # nobody can rank higher
        return best

    def _wait_cost(self, pool: PoolView, customer: WaitingView) -> float:
        """Expected cost of waiting for an agent of the customer's own group (inf: there is none)."""
        group = customer.group
        if group is None or self._reader is None:
            return math.inf
        capacity_of = getattr(pool, "capacity_of", None)
        cap = capacity_of(group)[0] if capacity_of is not None else pool.free_count(group)
        if cap <= 0:
            return math.inf
        backlog = max(1, self._reader.waiting_in_group(group))
        return backlog / cap + self.slowdown_weight

    def _worth_now(self, pool: PoolView, customer: WaitingView, rank: _Rank) -> bool:
        return self.slowdown_weight * rank[0] <= self._wait_cost(pool, customer) + 1e-12

    # ------------------------------------------------------------------ the protocol

    def pick(self, pool: PoolView, customer: WaitingView, now: float) -> str | None:
        best = self._best_free(pool, customer, {})
        if best is None or not self._worth_now(pool, customer, best[1]):
            return None
        return best[0]

    def choose(
        self, pool: PoolView, kf_account: str, candidates: Iterator[WaitingView], now: float
    ) -> str | None:
        agent = pool.agent(kf_account)
        if agent is None:
            return None
        views = {kf_account: agent}
        chosen: tuple[_Rank, int, str] | None = None
        for i, customer in enumerate(candidates):
            if i >= self.horizon:
                break
            if customer.preferred_agent == kf_account and now < customer.preferred_until:
                return (
                    customer.openid
                )  # they wait for this agent by name (the engine offers them to it alone)
            rank = self._rank(agent, customer)
            if chosen is not None and (rank, i) >= chosen[:2]:
                continue  # cannot beat the one already chosen
            best = self._best_free(pool, customer, views)
            if best is None or best[0] != kf_account or not self._worth_now(pool, customer, rank):
                continue
            chosen = (rank, i, customer.openid)
        return None if chosen is None else chosen[2]
