"""The agent pool: every agent the engine knows, its capacity accounting, and sorted indices of free agents.

Rules:
- load = open sessions + pending reservations, never a running total of assignments;
- capacity: a locally set ``max_sessions`` wins; else WeChat's ``auto_accept`` when > 0; else the default;
- an agent is *free* when online, not paused and ``load < capacity``; only free agents are indexed;
- every group an agent belongs to (plus ``None``, meaning "all agents") has one sorted index per order, so
  a policy's pick is O(log n) plus the agents it skips, never a scan of all agents.

Index entries are plain tuples (sort key..., kf_account). Each agent remembers the tuples it was indexed
under (one per kept order, in the pool's order list) and the groups it was counted in, so removal never
depends on the agent's current (already changed) fields, and a change that leaves every key as it was costs
no index work at all (a reservation confirmed into a session does not even look). An order's indices are
built the first time a policy asks for that order, so a deployment that only uses least-load keeps one
sorted list per group, not three. With least-load's index the only one kept, the two changes of nearly
every customer (an agent takes its last free unit; a full agent gets one unit back) are applied inline by
``reserve`` and ``add_sessions`` from the capacity and free capacity recorded for the agent; every other
change goes through ``_update``, the one place that works out what an agent's fields mean.
"""

from __future__ import annotations

import math
from bisect import bisect_left, insort
from collections.abc import Iterator
from operator import itemgetter

from kfrouter.router.core.errors import ConfigError, UnknownAgentError
from kfrouter.router.core.model import AgentView
from kfrouter.router.core.policy import Order

IndexKey = tuple[float | int | str, ...]


_account_of = itemgetter(-1)  # an index key's last item is the agent's kf_account


def _remove(lst: list[IndexKey], key: IndexKey) -> None:
    """Remove ``key`` from the sorted ``lst``; ValueError when it is not there."""
    i = bisect_left(lst, key)
    if i == len(lst) or lst[i] != key:
        raise ValueError(f"{key!r} not in index")
    del lst[i]


class _Agent:
    """Mutable bookkeeping for one agent; never leaves the pool (policies get AgentView)."""

    __slots__ = (
        "auto_accept",
        "cap_in",
        "groups",
        "indexed",
        "kf_account",
        "last_assigned_at",
        "local_max",
        "nickname",
        "paused",
        "placed",
        "reserved",
        "sessions",
        "skills",
        "spare_in",
        "status",
        "tags",
        "where",
    )

    def __init__(self, kf_account: str) -> None:
        self.kf_account = kf_account
        self.nickname = ""
        self.status = 0
        self.auto_accept = 0
        self.local_max: int | None = None
        self.paused = False
        self.groups: frozenset[str] = frozenset()
        self.tags: frozenset[str] = frozenset()
        self.skills: tuple[tuple[str, float], ...] = ()  # (group, proficiency), sorted; unlisted: 1.0
        self.sessions = 0
        self.reserved = 0
        self.last_assigned_at = -math.inf
        # keys it is indexed under when free, one per order of Pool._orders (same positions)
        self.indexed: tuple[IndexKey, ...] | None = None
        self.cap_in = 0  # capacity this agent adds to its groups' totals
        self.spare_in = 0  # free capacity this agent adds to its groups' totals
        self.placed: frozenset[str] = frozenset()  # the groups ``indexed`` and the totals were applied to
        self.where: tuple[str | None, ...] = (None,)  # None (all agents) and the groups in ``placed``


class Pool:
    """All agents, keyed by kf_account. Mutated only by the engine; read by policies via PoolView."""

    def __init__(self, default_capacity: int) -> None:
        if (
            not isinstance(default_capacity, int)
            or isinstance(default_capacity, bool)
            or default_capacity < 1
        ):
            raise ConfigError(f"default_capacity must be an integer >= 1, got {default_capacity!r}")
        self._default_capacity = default_capacity
        self._agents: dict[str, _Agent] = {}
        self._orders: list[Order] = []  # the orders some policy has asked for (their indices are kept)
        self._load_only = False  # _orders == ["load"]: _update makes the one key itself
        # group -> order -> sorted list of index keys. Plain lists kept sorted with bisect: an index holds
        # only free agents (WeChat allows 100 kf accounts per account), so inserting into or deleting from
        # a list costs less than a SortedList's bookkeeping.
        self._index: dict[str | None, dict[Order, list[IndexKey]]] = {None: {}}
        self._free: dict[str | None, int] = {None: 0}  # group -> number of free agents
        self._totals: dict[str | None, list[int]] = {None: [0, 0]}  # group -> [capacity, free capacity]
        # (of the serving agents). None and every group an agent was ever placed in have their entry in all
        # three from then on (made by _place), so the hot paths index them directly.

    # ----------------------------------------------------------------- reading (the PoolView protocol)

    def __contains__(self, kf_account: object) -> bool:
        return kf_account in self._agents

    def __len__(self) -> int:
        return len(self._agents)

    def accounts(self) -> list[str]:
        return sorted(self._agents)

    def capacity(self, kf_account: str) -> int:
        return self._capacity(self._require(kf_account, "capacity"))

    def agent(self, kf_account: str) -> AgentView | None:
        a = self._agents.get(kf_account)
        return None if a is None else self._view(a)

    def views(self) -> list[AgentView]:
        return [self._view(self._agents[k]) for k in sorted(self._agents)]

    def is_free(self, kf_account: str) -> bool:
        a = self._agents.get(kf_account)
        if a is None:
            return False
        # _is_free and _capacity inline: the engine asks after every pick
        if a.status == 0 or a.paused:
            return False
        cap = a.local_max
        if cap is None:
            cap = a.auto_accept if a.auto_accept > 0 else self._default_capacity
        return a.sessions + a.reserved < cap

    def free_count(self, group: str | None = None) -> int:
        """Number of free agents in ``group`` (``None``: all groups). O(1)."""
        return self._free.get(group, 0)

    def capacity_of(self, group: str | None = None) -> tuple[int, int]:
        """(capacity, free capacity), in sessions, of the online unpaused agents of ``group`` (``None``:
        all agents). Kept up to date on every change, so O(1)."""
        t = self._totals.get(group)
        return (0, 0) if t is None else (t[0], t[1])

    def free_agents(
        self, group: str | None = None, order: Order = "load", exclude: frozenset[str] = frozenset()
    ) -> Iterator[str]:
        """Free agents of ``group`` (``None``: any), best first by ``order``, skipping ``exclude``. Lazy:
        taking the first costs O(log n + len(exclude))."""
        if order not in self._orders:
            self._add_order(order)
        idx = self._index.get(group)
        if idx is None:
            return iter(())
        if not exclude:  # every policy pick: a C-level iterator over the index, no generator frame
            return map(_account_of, idx[order])
        return (kf for kf in map(_account_of, idx[order]) if kf not in exclude)

    def first_free(
        self, group: str | None = None, order: Order = "load", exclude: frozenset[str] = frozenset()
    ) -> str | None:
        """The best free agent of ``group`` by ``order`` not in ``exclude``, or None: the head of
        ``free_agents`` without making an iterator when nobody is excluded (every least-load pick)."""
        if exclude:
            return next(self.free_agents(group, order, exclude), None)
        try:
            entries = self._index[group][order]
        except KeyError:  # a group nobody was ever placed in, or an order not kept yet
            return next(self.free_agents(group, order), None)
        return entries[0][-1] if entries else None  # type: ignore[return-value]

    # ----------------------------------------------------------------- mutation (engine only)

    def ensure(self, kf_account: str) -> bool:
        """Create the agent (offline) if unknown; return True when it was created."""
        if kf_account in self._agents:
            return False
        self._agents[kf_account] = _Agent(kf_account)
        return True

    def update_from_wechat(self, kf_account: str, status: int, accepted_case: int, auto_accept: int) -> None:
        a = self._agents[kf_account]
        a.status = status
        a.sessions = accepted_case
        a.auto_accept = auto_accept
        self._update(a)

    def set_status(self, kf_account: str, status: int) -> None:
        a = self._require(kf_account, "set_status")
        a.status = status
        self._update(a)

    def configure(
        self,
        kf_account: str,
        *,
        groups: frozenset[str] | None = None,
        max_sessions: int | None = None,
        clear_max_sessions: bool = False,
        paused: bool | None = None,
        nickname: str | None = None,
        tags: frozenset[str] | None = None,
        skills: tuple[tuple[str, float], ...] | None = None,
    ) -> None:
        a = self._require(kf_account, "configure")
        if skills is not None:
            a.skills = skills
        if groups is not None:
            a.groups = groups
        if clear_max_sessions:
            a.local_max = None
        if max_sessions is not None:
            a.local_max = max_sessions
        if paused is not None:
            a.paused = paused
        if nickname is not None:
            a.nickname = nickname
        if tags is not None:
            a.tags = tags
        self._update(a)

    def add_sessions(self, kf_account: str, delta: int) -> None:
        a = self._agents.get(kf_account)  # _require without the call: once per session end
        if a is None:
            raise UnknownAgentError(kf_account, "add_sessions")
        n = a.sessions + delta
        if n < 0:
            n = 0
        a.sessions = n
        cap = a.cap_in
        if a.spare_in or n + a.reserved != cap - 1 or not self._load_only:
            self._update(a)
            return
        # A full agent is left with exactly one free unit (a session ended) and least-load's is the only index
        # kept: what _update would do, inline (see _update's note on cap_in and spare_in).
        load = cap - 1
        key = (load / cap, load, a.last_assigned_at, a.kf_account)
        a.indexed = (key,)
        a.spare_in = 1
        for group in a.where:
            self._totals[group][1] += 1
            self._free[group] += 1
            insort(self._index[group]["load"], key)

    def set_sessions(self, kf_account: str, count: int) -> None:
        a = self._require(kf_account, "set_sessions")
        a.sessions = max(0, count)
        self._update(a)

    def reserve(self, kf_account: str, now: float) -> None:
        a = self._agents.get(kf_account)  # _require without the call: once per routed customer
        if a is None:
            raise UnknownAgentError(kf_account, "reserve")
        a.reserved += 1
        a.last_assigned_at = now
        if a.spare_in != 1 or not self._load_only:
            self._update(a)
            return
        # It took its last free unit and least-load's is the only index kept: what _update would do, inline
        # (see _update's note on spare_in).
        key = a.indexed[0]  # type: ignore[index]
        a.indexed = None
        a.spare_in = 0
        for group in a.where:
            self._totals[group][1] -= 1
            self._free[group] -= 1
            lst = self._index[group]["load"]
            if lst[0] is key:  # least-load reserves the head it picked (the index holds this very tuple)
                del lst[0]
            else:
                _remove(lst, key)

    def unreserve(self, kf_account: str, *, confirmed: bool) -> None:
        """End one reservation; when ``confirmed`` it turns into an open session."""
        a = self._agents.get(kf_account)
        if a is None:  # the agent was removed while the reservation was pending
            return
        reserved = a.reserved
        if confirmed and reserved > 0:
            # the reservation becomes a session: load, capacity and keys stay as they are
            a.reserved = reserved - 1
            a.sessions += 1
            return
        a.reserved = a.reserved - 1 if a.reserved > 0 else 0
        if confirmed:
            a.sessions += 1
        self._update(a)

    def remove(self, kf_account: str) -> None:
        a = self._require(kf_account, "remove")
        self._take_out(a)
        del self._agents[kf_account]

    # ----------------------------------------------------------------- internals

    def _require(self, kf_account: str, where: str) -> _Agent:
        a = self._agents.get(kf_account)
        if a is None:
            raise UnknownAgentError(kf_account, where)
        return a

    def _capacity(self, a: _Agent) -> int:
        if a.local_max is not None:
            return a.local_max
        if a.auto_accept > 0:
            return a.auto_accept
        return self._default_capacity

    def _is_free(self, a: _Agent) -> bool:
        return a.status != 0 and not a.paused and a.sessions + a.reserved < self._capacity(a)

    def _keys(self, a: _Agent) -> tuple[IndexKey, ...]:
        """The index keys of ``a`` for every kept order, in ``self._orders``' positions."""
        keys: list[IndexKey] = []
        for order in self._orders:
            if order == "load":
                load = a.sessions + a.reserved
                keys.append((load / self._capacity(a), load, a.last_assigned_at, a.kf_account))
            elif order == "idle":
                keys.append((a.last_assigned_at, a.kf_account))
            else:
                keys.append((a.kf_account,))
        return tuple(keys)

    def _add_order(self, order: Order) -> None:
        """Start keeping the indices of ``order``: built once from the free agents, O(n log n)."""
        self._orders.append(order)
        self._load_only = self._orders == ["load"]
        for idx in self._index.values():
            idx[order] = []
        for a in self._agents.values():
            if a.indexed is not None:
                a.indexed = self._keys(a)
                key = a.indexed[-1]
                for group in a.where:
                    insort(self._index[group][order], key)

    def _update(self, a: _Agent) -> None:
        """Bring the indices and totals in line with ``a``'s current fields, touching only what changed.
        Runs on every change the fast paths of reserve and add_sessions do not cover, hence _capacity and
        (least-load alone) _keys inline.

        What it leaves behind, and those fast paths rely on: ``cap_in`` is ``a``'s capacity while it serves
        (0 otherwise), ``spare_in`` its free capacity, and ``spare_in > 0`` exactly when it is indexed. Only
        configure and update_from_wechat change capacity, status or groups, and both call _update, so a
        change of load alone can be applied from ``cap_in`` and ``spare_in`` without recomputing anything."""
        if a.status != 0 and not a.paused:
            cap = a.local_max
            if cap is None:
                cap = a.auto_accept if a.auto_accept > 0 else self._default_capacity
            load = a.sessions + a.reserved
            spare = cap - load if load < cap else 0
        else:
            cap = spare = 0
        if a.placed is not a.groups and a.placed != a.groups:
            # group membership changed: take everything out, put it back
            self._take_out(a)
            self._place(a)
        if cap != a.cap_in or spare != a.spare_in:
            totals = self._totals
            for group in a.where:
                t = totals[group]
                t[0] += cap - a.cap_in
                t[1] += spare - a.spare_in
            a.cap_in = cap
            a.spare_in = spare
        keys: tuple[IndexKey, ...] | None
        if not spare:
            keys = None
        elif self._load_only:
            keys = ((load / cap, load, a.last_assigned_at, a.kf_account),)
        else:
            keys = self._keys(a)
        old = a.indexed
        if keys == old:
            return
        free = self._free
        load_only = self._load_only
        for group in a.where:
            idx = self._index[group]
            if old is None:
                free[group] += 1
            elif keys is None:
                free[group] -= 1
            if load_only:  # the loop below, for the one order least-load keeps, _remove inline
                lst = idx["load"]
                if old is not None:
                    i = bisect_left(lst, old[0])
                    if i == len(lst) or lst[i] != old[0]:
                        raise ValueError(f"{old[0]!r} not in index")
                    del lst[i]
                if keys is not None:
                    insort(lst, keys[0])
                continue
            for i, order in enumerate(self._orders):
                lst = idx[order]
                if old is not None:
                    _remove(lst, old[i])
                if keys is not None:
                    insort(lst, keys[i])
        a.indexed = keys

    def _place(self, a: _Agent) -> None:
        """Count ``a`` (taken out) in its current groups from now on; make their entries if they are new."""
        a.placed = a.groups
        a.where = (None, *a.groups)
        for group in a.groups:
            if group not in self._index:
                self._index[group] = {order: [] for order in self._orders}
                self._free[group] = 0
                self._totals[group] = [0, 0]

    def _take_out(self, a: _Agent) -> None:
        """Remove what ``a`` added to the indices and totals (as recorded when it was added)."""
        if a.cap_in or a.spare_in:
            for group in a.where:
                t = self._totals[group]
                t[0] -= a.cap_in
                t[1] -= a.spare_in
            a.cap_in = a.spare_in = 0
        if a.indexed is not None:
            for group in a.where:
                self._free[group] -= 1
                idx = self._index[group]
                for order, key in zip(self._orders, a.indexed, strict=True):
                    _remove(idx[order], key)
            a.indexed = None

    def _view(self, a: _Agent) -> AgentView:
        return AgentView(
            kf_account=a.kf_account,
            nickname=a.nickname,
            online=a.status != 0,
            status=a.status,
            paused=a.paused,
            groups=a.groups,
            tags=a.tags,
            skills=a.skills,
            capacity=self._capacity(a),
            sessions=a.sessions,
            reserved=a.reserved,
            last_assigned_at=a.last_assigned_at,
        )

    def check(self) -> None:
        """Assert the index invariants (for tests): exactly the free agents are indexed, with current keys
        for every kept order, in every group they belong to; counts and totals match a recount."""
        free_count: dict[str | None, int] = {}
        totals: dict[str | None, list[int]] = {}
        for a in self._agents.values():
            free = self._is_free(a)
            assert (a.indexed is not None) == free, a.kf_account
            # (equal groups may iterate in another order than those ``where`` was made from)
            assert a.placed == a.groups and a.where[0] is None and set(a.where[1:]) == a.groups, a.kf_account
            if free:
                assert a.indexed == self._keys(a), a.kf_account
                for group in (None, *a.groups):
                    free_count[group] = free_count.get(group, 0) + 1
                    for i, order in enumerate(self._orders):
                        assert a.indexed[i] in self._index[group][order]
            if a.status != 0 and not a.paused:
                cap = self._capacity(a)
                for group in (None, *a.groups):
                    t = totals.setdefault(group, [0, 0])
                    t[0] += cap
                    t[1] += max(0, cap - a.sessions - a.reserved)
        for group, t in self._totals.items():
            assert t == totals.get(group, [0, 0]), (group, t, totals.get(group))
        for group, n in self._free.items():
            assert n == free_count.get(group, 0), (group, n)
        for group, idx in self._index.items():
            assert set(idx) == set(self._orders), group
            for order, entries in idx.items():
                assert len(entries) == self._free.get(group, 0), (group, order)
                for entry in entries:
                    kf = entry[-1]
                    assert isinstance(kf, str)
                    a = self._agents[kf]
                    assert a.indexed is not None and a.indexed[self._orders.index(order)] == entry
                    assert group is None or group in a.groups
