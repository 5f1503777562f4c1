"""The agent pool: every agent the engine knows, its capacity accounting, and sorted indices of free agents.

Rules:
- load = open sessions + pending reservations, never a running total of assignments;
- capacity: a locally set ``max_sessions`` wins; else WeChat's ``auto_accept`` when > 0; else the default
  (``_capacity``, the one place);
- an agent is *free* when online, not paused and ``load < capacity``; only free agents are indexed;
- every group an agent belongs to (plus ``None``, meaning "all agents") has one sorted index per order, so
  a policy's pick is O(log n) plus the agents it skips, never a scan of all agents.

Each group's share of the pool (``_Share``: its indices, its capacity and free capacity) is one object, and
each agent holds the shares it is counted in (``where``), so a change walks a short tuple of objects
instead of looking its groups up in tables. The least-load index (``by_load``) is always kept: it *is* the
set of free agents (its length is how many are free); the indices of the other orders (``idle``,
``name``) are kept from the first time a policy asks for them. Index entries are plain tuples (sort
key..., kf_account), made by ``_load_key`` and ``_other_keys``, the one place for each order's key. Each
agent remembers the keys it was indexed under and what it added to its shares' totals, so removal never
depends on the agent's current (already changed) fields, and a change that leaves every key as it was costs
no index work at all. Two steps keep everything in line: ``_update`` after a change of status,
configuration or groups (capacity, membership), ``_load_changed`` after a change of load alone (every
reservation and session end), measured against the capacity recorded by ``_update`` (``cap_in``).
"""

from __future__ import annotations

import math
from bisect import insort
from collections.abc import Iterator
from operator import itemgetter

from kfrouter.router.core.errors import ConfigError, UnknownAgentError
from kfrouter.router.core.model import AgentView
from kfrouter.router.core.policy import Order

IndexKey = tuple[float | int | str, ...]


_account_of = itemgetter(-1)  # an index key's last item is the agent's kf_account


class _Agents(dict[str, "_Agent"]):
    """The pool's agents by kf_account; looking up an unknown one raises ``UnknownAgentError``."""

    __slots__ = ()

    def __missing__(self, kf_account: str) -> _Agent:
        raise UnknownAgentError(kf_account, "agent pool")


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
        "others",
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
        # while free: its least-load key (None while not free), and its keys for the other kept orders
        # (Pool._others' positions)
        self.indexed: IndexKey | None = None
        self.others: tuple[IndexKey, ...] = ()
        self.cap_in = 0  # capacity this agent adds to its groups' totals (0 while offline or paused)
        self.spare_in = 0  # free capacity this agent adds to its groups' totals
        self.placed: frozenset[str] = frozenset()  # the groups ``indexed`` and the totals were applied to
        self.where: tuple[_Share, ...] = ()  # the shares of all agents and of the groups in ``placed``


class _Share:
    """One group's share of the pool (or all agents'): the sorted indices of its free agents, and the
    capacity and free capacity of its serving agents. Only the pool changes it."""

    __slots__ = ("by_load", "capacity", "index", "others", "spare")

    def __init__(self, others: list[Order]) -> None:
        self.by_load: list[IndexKey] = []  # the free agents, least loaded first
        self.others: list[list[IndexKey]] = [[] for _ in others]  # the other kept orders (Pool._others)
        self.index: dict[Order, list[IndexKey]] = {
            "load": self.by_load,
            **dict(zip(others, self.others, strict=True)),
        }
        self.capacity = 0  # sessions, of the online unpaused agents
        self.spare = 0  # free sessions, of the same


class Pool:
    """All agents, keyed by kf_account. Mutated only by the engine; read by policies via PoolView.

    ``everyone`` (the share of all agents: ``everyone.by_load`` lists the free agents) and ``shares``
    (group -> share; None and every group an agent was ever placed in) are there for the engine to read
    without a call; nothing outside the pool changes them."""

    def __init__(self, default_capacity: int) -> None:
        if (
            not isinstance(default_capacity, int)
            or isinstance(default_capacity, bool)
            or default_capacity < 1
        ):
            raise ConfigError(f"default_capacity must be an integer >= 1, got {default_capacity!r}")
        self._default_capacity = default_capacity
        self._agents = _Agents()
        # the orders kept besides least-load's (their indices): those some policy asked for. Plain lists kept
        # sorted with bisect: an index holds only free agents (WeChat allows 100 kf accounts per account),
        # so inserting into or deleting from a list costs less than a SortedList's bookkeeping.
        self._others: list[Order] = []
        self.everyone = _Share(self._others)
        self.shares: dict[str | None, _Share] = {None: self.everyone}

    # ----------------------------------------------------------------- reading (the PoolView protocol)

    def __contains__(self, kf_account: object) -> bool:
        return kf_account in self._agents

    def __len__(self) -> int:
        return len(self._agents)

    def accounts(self) -> list[str]:
        return sorted(self._agents)

    def capacity(self, kf_account: str) -> int:
        return self._capacity(self._agents[kf_account])

    def agent(self, kf_account: str) -> AgentView | None:
        a = self._agents.get(kf_account)
        return None if a is None else self._view(a)

    def views(self) -> list[AgentView]:
        return [self._view(self._agents[k]) for k in sorted(self._agents)]

    def is_free(self, kf_account: str) -> bool:
        a = self._agents.get(kf_account)
        return a is not None and a.indexed is not None  # exactly the free agents are indexed

    def free_count(self, group: str | None = None) -> int:
        """Number of free agents in ``group`` (``None``: all groups). O(1)."""
        share = self.shares.get(group)
        return 0 if share is None else len(share.by_load)

    def capacity_of(self, group: str | None = None) -> tuple[int, int]:
        """(capacity, free capacity), in sessions, of the online unpaused agents of ``group`` (``None``:
        all agents). Kept up to date on every change, so O(1)."""
        share = self.shares.get(group)
        return (0, 0) if share is None else (share.capacity, share.spare)

    def free_agents(
        self, group: str | None = None, order: Order = "load", exclude: frozenset[str] = frozenset()
    ) -> Iterator[str]:
        """Free agents of ``group`` (``None``: any), best first by ``order``, skipping ``exclude``. Lazy:
        taking the first costs O(log n + len(exclude))."""
        if order != "load" and order not in self._others:
            self._add_order(order)
        share = self.shares.get(group)
        if share is None:
            return iter(())
        if not exclude:  # every policy pick: a C-level iterator over the index, no generator frame
            return map(_account_of, share.index[order])
        return (kf for kf in map(_account_of, share.index[order]) if kf not in exclude)

    def first_free(
        self, group: str | None = None, order: Order = "load", exclude: frozenset[str] = frozenset()
    ) -> str | None:
        """The best free agent of ``group`` by ``order`` not in ``exclude``, or None: the head of
        ``free_agents`` without making an iterator when nobody is excluded (every least-load pick)."""
        if exclude:
            return next(self.free_agents(group, order, exclude), None)
        share = self.shares.get(group)
        entries = None if share is None else share.index.get(order)
        if entries is None:  # a group nobody was ever placed in, or an order not kept yet
            return next(self.free_agents(group, order), None)
        return _account_of(entries[0]) if entries else None

    # ----------------------------------------------------------------- mutation (engine only)

    def ensure(self, kf_account: str) -> bool:
        """Create the agent (offline) if unknown; return True when it was created."""
        if kf_account in self._agents:
            return False
        a = self._agents[kf_account] = _Agent(kf_account)
        a.where = (self.everyone,)
        return True

    def update_from_wechat(self, kf_account: str, status: int, accepted_case: int, auto_accept: int) -> None:
        a = self._agents[kf_account]
        a.status = status
        a.sessions = accepted_case
        a.auto_accept = auto_accept
        self._update(a)

    def set_status(self, kf_account: str, status: int) -> None:
        a = self._agents[kf_account]
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
        a = self._agents[kf_account]
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
        a = self._agents[kf_account]
        n = a.sessions + delta
        a.sessions = n if n > 0 else 0
        self._load_changed(a)

    def set_sessions(self, kf_account: str, count: int) -> None:
        a = self._agents[kf_account]
        a.sessions = max(0, count)
        self._load_changed(a)

    def reserve(self, kf_account: str, now: float) -> None:
        a = self._agents[kf_account]
        a.reserved += 1
        a.last_assigned_at = now
        self._load_changed(a)

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
        a.reserved = reserved - 1 if reserved > 0 else 0
        if confirmed:
            a.sessions += 1
        self._load_changed(a)

    def remove(self, kf_account: str) -> None:
        a = self._agents[kf_account]
        self._take_out(a)
        del self._agents[kf_account]

    # ----------------------------------------------------------------- internals

    def _capacity(self, a: _Agent) -> int:
        if a.local_max is not None:
            return a.local_max
        if a.auto_accept > 0:
            return a.auto_accept
        return self._default_capacity

    def _is_free(self, a: _Agent) -> bool:
        return a.status != 0 and not a.paused and a.sessions + a.reserved < self._capacity(a)

    @staticmethod
    def _load_key(a: _Agent) -> IndexKey:
        """The least-load key of the free agent ``a``: load/capacity, load, longest since last assigned,
        account (a free agent serves, so ``cap_in`` is its capacity)."""
        load = a.sessions + a.reserved
        return (load / a.cap_in, load, a.last_assigned_at, a.kf_account)

    def _other_keys(self, a: _Agent) -> tuple[IndexKey, ...]:
        """The keys of the free agent ``a`` for the other kept orders, in ``self._others``' positions."""
        return tuple(
            (a.last_assigned_at, a.kf_account) if o == "idle" else (a.kf_account,) for o in self._others
        )

    def _add_order(self, order: Order) -> None:
        """Start keeping the indices of ``order``: built once from the free agents, O(n log n)."""
        self._others.append(order)
        for share in self.shares.values():
            share.others.append([])
            share.index[order] = share.others[-1]
        for a in self._agents.values():
            if a.indexed is not None:
                a.others = self._other_keys(a)
                key = a.others[-1]
                for share in a.where:
                    insort(share.others[-1], key)

    def _update(self, a: _Agent) -> None:
        """After a change of ``a``'s status, configuration or groups: its groups (taken out and put back
        when they changed), the capacity it serves with (``cap_in``: 0 while offline or paused) in its
        shares' totals, then what its load means (``_load_changed``)."""
        cap = self._capacity(a) if a.status != 0 and not a.paused else 0
        if a.placed is not a.groups and a.placed != a.groups:
            self._take_out(a)
            self._place(a)
        if cap != a.cap_in:
            for share in a.where:
                share.capacity += cap - a.cap_in
            a.cap_in = cap
        self._load_changed(a)

    def _load_changed(self, a: _Agent) -> None:
        """Bring ``a``'s free capacity (``spare_in``) and index entries in line with its load, measured
        against the capacity it serves with (``cap_in``, kept by ``_update``); touches only what changed:
        an agent is indexed exactly while it has free capacity. (When its least-load key stays the same,
        so do the others: they are made of the same fields.)"""
        cap = a.cap_in
        load = a.sessions + a.reserved
        spare = cap - load if load < cap else 0
        gained = spare - a.spare_in
        key = self._load_key(a) if spare else None
        old = a.indexed
        if not gained and key == old:
            return
        a.spare_in = spare
        a.indexed = key
        for share in a.where:
            share.spare += gained
            if old is not None:
                share.by_load.remove(old)  # the very tuple inserted: found by identity
            if key is not None:
                insort(share.by_load, key)
        if self._others:
            self._reindex_others(a, old is not None)

    def _reindex_others(self, a: _Agent, was_indexed: bool) -> None:
        """``_load_changed`` for the indices of the other kept orders."""
        old = a.others
        now_indexed = a.indexed is not None
        keys = a.others = self._other_keys(a) if now_indexed else ()
        for share in a.where:
            if was_indexed:
                for entries, key in zip(share.others, old, strict=True):
                    entries.remove(key)
            if now_indexed:
                for entries, key in zip(share.others, keys, strict=True):
                    insort(entries, key)

    def _place(self, a: _Agent) -> None:
        """Count ``a`` (taken out) in its current groups from now on; make their shares if they are new."""
        a.placed = a.groups
        shares = self.shares
        for group in a.groups:
            if group not in shares:
                shares[group] = _Share(self._others)
        a.where = (self.everyone, *(shares[group] for group in a.groups))

    def _take_out(self, a: _Agent) -> None:
        """Remove what ``a`` added to the indices and totals (as recorded when it was added)."""
        for share in a.where:
            share.capacity -= a.cap_in
            share.spare -= a.spare_in
            if a.indexed is not None:
                share.by_load.remove(a.indexed)
                for entries, key in zip(share.others, a.others, strict=True):
                    entries.remove(key)
        a.cap_in = a.spare_in = 0
        a.indexed = None
        a.others = ()

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
        shares = self.shares
        orders: list[Order] = ["load", *self._others]
        for a in self._agents.values():
            free = self._is_free(a)
            assert (a.indexed is not None) == free, a.kf_account
            assert a.placed == a.groups, a.kf_account
            assert a.where == (self.everyone, *(shares[g] for g in a.placed)), a.kf_account
            if free:
                assert a.indexed == self._load_key(a) and a.others == self._other_keys(a), a.kf_account
                for group in (None, *a.groups):
                    free_count[group] = free_count.get(group, 0) + 1
                    for order, key in zip(orders, (a.indexed, *a.others), strict=True):
                        assert key in shares[group].index[order]
            else:
                assert a.others == (), a.kf_account
            if a.status != 0 and not a.paused:
                cap = self._capacity(a)
                assert a.cap_in == cap, a.kf_account
                for group in (None, *a.groups):
                    t = totals.setdefault(group, [0, 0])
                    t[0] += cap
                    t[1] += max(0, cap - a.sessions - a.reserved)
            else:
                assert a.cap_in == 0, a.kf_account
        assert shares[None] is self.everyone
        for group, share in shares.items():
            assert [share.capacity, share.spare] == totals.get(group, [0, 0]), (group, share.capacity)
            assert list(share.index) == orders, group
            assert share.index["load"] is share.by_load, group
            assert all(x is y for x, y in zip(list(share.index.values())[1:], share.others, strict=True)), (
                group
            )
            for order, entries in share.index.items():
                assert len(entries) == free_count.get(group, 0), (group, order)
                assert entries == sorted(entries), (group, order)
                for entry in entries:
                    kf = entry[-1]
                    assert isinstance(kf, str)
                    a = self._agents[kf]
                    assert a.indexed is not None and (a.indexed, *a.others)[orders.index(order)] == entry
                    assert group is None or group in a.groups
