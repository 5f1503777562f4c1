"""The routing engine: ``handle(event, now) -> commands``, ``tick(now)``, ``next_deadline()``.

Sans-I/O. The caller owns the clock, the sockets and the loop; the engine owns the decisions:

- waiting customers sit in one queue ordered by (highest priority, oldest); a customer is never queued twice;
- the policy of the customer's route ranks, the engine commits a *reservation* (one unit of the agent's
  capacity) and emits ``CreateSession``;
- a reservation ends exactly once: confirmed (``SessionCreated``), released (``CreateFailed``, agent offline,
  timeout, agent removed, customer left) or superseded (another agent serves the customer, 65414 or a
  ``SessionCreated`` with another agent). A released customer goes back to its old place in the queue and
  avoids the agent that failed for ``avoid_s`` seconds;
- after every event and tick the queue is drained while any agent is free, so no free eligible agent is
  left idle while an eligible customer waits.

Moving a customer (a manual ``ReassignRequested``, or their agent offline past the group's grace with
``on_agent_offline="reassign"``): the engine emits ``CloseSession`` and routes the customer again only when
WeChat confirms the close (``SessionClosed``, or ``CloseFailed`` 65413), so a customer never holds two
sessions. Sessions open longer than ``stale_session_s`` are closed the same way, without re-routing.

Routing scope: a customer of group ``g`` may be served by agents of ``g``, then, once they have waited
``after_s``, by the overflow groups of ``g``'s route in order. A customer without a group may be served by
any agent. A customer who named a preferred agent waits for that agent alone for ``preferred_wait_s``.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import ClassVar

from attrs import field, frozen
from sortedcontainers import SortedList

from kfrouter.router.core import events as ev
from kfrouter.router.core.commands import CloseSession, Command, SendText, create_session
from kfrouter.router.core.errors import ConfigError, CoreError, UnknownAgentError, UnknownCustomerError
from kfrouter.router.core.facts import (
    AgentOffline,
    AgentOnline,
    Assigned,
    Fact,
    Left,
    Queued,
    Released,
    Requeued,
    Reserved,
    SessionEnded,
)
from kfrouter.router.core.model import AgentView, CustomerState, WaitingView, waiting_view
from kfrouter.router.core.policy import Policy
from kfrouter.router.core.pool import Pool
from kfrouter.router.core.waitqueue import WaitQueue, queue_key

# The customer states as plain module constants: reading an Enum member through its class costs a
# metaclass lookup (about 50 ns on Python 3.11), and the engine compares states many times per customer.
_WAITING = CustomerState.WAITING
_RESERVED = CustomerState.RESERVED
_IN_SESSION = CustomerState.IN_SESSION
_GONE = CustomerState.GONE
_UNKNOWN = CustomerState.UNKNOWN

# WeChat errcodes with a meaning for the engine (spec §3).
ERR_NO_SESSION = 65413
ERR_AGENT_UNAVAILABLE = frozenset({65401, 65402, 65415})  # unknown account, not bound, not online

_NOBODY: frozenset[str] = frozenset()
# every customer's ``avoid`` until they first avoid someone (an empty dict per customer costs memory and
# time); never written to: _avoid gives the customer a dict of their own first
_AVOID_NOBODY: dict[str, float] = {}
_ANY_GROUP: tuple[str | None, ...] = (None,)


# The engine's per-customer records (_Customer, _Past) are slot classes without ``__init__``, filled by one
# function each (_new_customer, _new_past): in Python 3.11 calling a class whose ``__init__`` (or a
# NamedTuple's ``__new__``) is Python code runs it in a second interpreter loop, which costs several times
# the stores themselves, and the engine makes both once per customer.


class _Past:
    """What the engine keeps of a customer who is no longer present (written once, by ``_new_past``, and
    replaced, never changed). ``reason`` is None for history loaded by ``remember()`` alone;
    ``written_at`` orders the forgetting (``sticky_window_s`` later)."""

    __slots__ = ("agent", "ended_at", "openid", "reason", "written_at")
    agent: str | None  # who served them last, if anyone
    ended_at: float  # when that session ended (nan: none)
    reason: str | None  # why they left
    openid: str
    written_at: float


def _new_past(agent: str | None, ended_at: float, reason: str | None, openid: str, written_at: float) -> _Past:
    p = _Past()
    p.agent = agent
    p.ended_at = ended_at
    p.reason = reason
    p.openid = openid
    p.written_at = written_at
    return p


def _avoided(avoid: dict[str, float], now: float) -> frozenset[str]:
    """The agents in ``avoid`` (kf_account -> until) still avoided at ``now``."""
    return frozenset([kf for kf, until in avoid.items() if until > now])


def _check_overflow(_inst: object, _attr: object, value: tuple[tuple[str, float], ...]) -> None:
    for i, item in enumerate(value):
        if (
            not isinstance(item, tuple)
            or len(item) != 2
            or not isinstance(item[0], str)
            or not item[0]
            or not isinstance(item[1], int | float)
            or item[1] < 0
        ):
            raise ConfigError(f"overflow[{i}] must be (group name, seconds >= 0), got {item!r}")


def _one_of(name: str, allowed: tuple[str, ...]) -> Callable[[object, object, str], None]:
    def check(_inst: object, _attr: object, value: str) -> None:
        if value not in allowed:
            raise ConfigError(f"{name} must be one of {list(allowed)}, got {value!r}")

    return check


def _non_negative_number(name: str) -> Callable[[object, object, float], None]:
    def check(_inst: object, _attr: object, value: float) -> None:
        if not isinstance(value, int | float) or isinstance(value, bool) or not value >= 0:
            raise ConfigError(f"{name} must be a number >= 0, got {value!r}")

    return check


def _overflow_tuple(value: Iterable[Iterable[object]]) -> tuple[tuple[str, float], ...]:
    return tuple(tuple(x) for x in value)  # type: ignore[misc]


@frozen(kw_only=True)
class Route:
    """How customers of one group are routed: a policy name and ordered overflow targets."""

    policy: str = "least-load"
    overflow: tuple[tuple[str, float], ...] = field(
        default=(), converter=_overflow_tuple, validator=_check_overflow
    )
    # What happens to this group's open sessions when their agent goes offline: "keep" them (WeChat's
    # default), or "reassign" them after ``offline_grace_s``: close, then create with another agent.
    on_agent_offline: str = field(default="keep", validator=_one_of("on_agent_offline", ("keep", "reassign")))
    offline_grace_s: float = field(default=120.0, validator=_non_negative_number("offline_grace_s"))


def _positive(name: str) -> Callable[[object, object, float], None]:
    def check(_inst: object, _attr: object, value: float) -> None:
        if not isinstance(value, int | float) or isinstance(value, bool) or not value > 0:
            raise ConfigError(f"{name} must be a number > 0, got {value!r}")

    return check


def _capacity(_inst: object, _attr: object, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"default_capacity must be an integer >= 1, got {value!r}")


@frozen(kw_only=True)
class EngineConfig:
    default_capacity: int = field(default=3, validator=_capacity)
    reservation_timeout_s: float = field(default=30.0, validator=_positive("reservation_timeout_s"))
    avoid_s: float = field(default=60.0, validator=_positive("avoid_s"))
    routes: Mapping[str, Route] = field(factory=dict)
    default_route: Route = Route()
    sticky_window_s: float = field(default=7 * 86400.0, validator=_positive("sticky_window_s"))
    preferred_wait_s: float = field(default=120.0, validator=_positive("preferred_wait_s"))
    priorities: bool = True
    # Close sessions open longer than this (None: never), sending ``stale_message`` first if set.
    stale_session_s: float | None = field(default=None)
    stale_message: str | None = None

    def __attrs_post_init__(self) -> None:
        if self.stale_session_s is not None:
            _positive("stale_session_s")(self, None, self.stale_session_s)


class _Customer:
    """The engine's record of a customer present (waiting, reserved or in session); see ``_new_customer``."""

    __slots__ = (
        "anywhere",
        "arrived_at",
        "avoid",
        "closing",
        "entry",
        "group",
        "had_session",
        "last_agent",
        "last_end",
        "openid",
        "policy",
        "preferred_agent",
        "preferred_until",
        "priority",
        "reroute_to",
        "reservation_deadline",
        "route",
        "session_started_at",
        "state",
        "tags",
        "waiting_since",
        "with_agent",
    )

    openid: str
    route: Route
    policy: Policy
    anywhere: bool
    group: str | None
    priority: int
    arrived_at: float
    entry: tuple[tuple[int, int], str]
    preferred_agent: str | None
    preferred_until: float
    tags: frozenset[str]
    avoid: dict[str, float]
    state: CustomerState
    with_agent: str | None
    reservation_deadline: float
    session_started_at: float
    closing: str | None
    reroute_to: str | None
    last_agent: str | None
    last_end: float
    had_session: bool
    waiting_since: float


def _new_customer(
    openid: str,
    route: Route,
    policy: Policy,
    anywhere: bool,
    group: str | None,
    priority: int,
    arrived_at: float,
    entry: tuple[tuple[int, int], str],
    preferred_agent: str | None,
    tags: frozenset[str],
) -> _Customer:
    """A customer who just asked (or whose session WeChat reported), waiting."""
    c = _Customer()
    c.openid = openid
    # the customer's route and its policy (fixed by the group), and whether any agent is in scope
    # (no group, or a policy that ignores groups)
    c.route = route
    c.policy = policy
    c.anywhere = anywhere
    c.group = group
    c.priority = priority
    c.arrived_at = arrived_at
    # the customer's entry in its group's queue, built once: ((-priority or 0, arrival sequence), openid)
    c.entry = entry
    c.preferred_agent = preferred_agent
    c.preferred_until = -math.inf  # waits for preferred_agent alone until then
    c.tags = tags
    c.avoid = _AVOID_NOBODY  # kf_account -> until; a dict of its own once set
    c.state = _WAITING
    c.with_agent = None  # reserved with, or in session with
    c.reservation_deadline = math.inf
    c.session_started_at = math.nan
    # why we sent a CloseSession, if we did: "reroute" (route again once closed) or "stale"
    c.closing = None
    c.reroute_to = None  # ...to this agent (a manual reassignment), if given
    # customer history: who served them last and when that session ended (carried over from an
    # earlier visit, see Engine._past); the sticky window is applied when it is read
    c.last_agent = None
    c.last_end = math.nan
    c.had_session = False  # a session started during this visit (a moved customer waits again)
    c.waiting_since = arrived_at  # start of the current wait: arrival, or being routed again
    return c


class Engine:
    """One Official Account's routing state. Not thread-safe: drive it from one task or thread."""

    def __init__(self, config: EngineConfig, policies: Mapping[str, Policy]) -> None:
        self.config = config
        self._policies = dict(policies)
        for group, route in [("default_route", config.default_route), *config.routes.items()]:
            if route.policy not in self._policies:
                raise ConfigError(
                    f"route {group!r}: unknown policy {route.policy!r} (expected one of "
                    f"{sorted(self._policies)})"
                )
            for target, _after in route.overflow:
                if target == group:
                    raise ConfigError(f"route {group!r}: overflow to itself")
        # Hot-path caches (the policies and the config never change after construction): which policies
        # route across groups, and the pool's own dicts of agents and free counts, read without a call.
        self._ignores_groups = {
            name: bool(getattr(p, "ignores_groups", False)) for name, p in self._policies.items()
        }
        self._routes = config.routes
        self._default_route = config.default_route
        # policies that choose a customer for a free agent (optional ``choose``; see _offer_free_agents), and
        # whether every policy does (then the per-customer pass of _drain has nothing left to do)
        used = [
            self._policies[n]
            for n in dict.fromkeys(r.policy for r in (config.default_route, *config.routes.values()))
        ]
        self._choosers = [p for p in used if callable(getattr(p, "choose", None))]
        self._only_choosers = len(self._choosers) == len(used)
        for p in self._policies.values():  # optional ``attach(reader)``: the policy may read the queue
            attach = getattr(p, "attach", None)
            if callable(attach):
                attach(self)
        self._priorities = config.priorities
        self._pool = Pool(config.default_capacity)
        self._agent_map = self._pool._agents
        self._free_agents = self._pool.everyone.by_load  # every free agent (a list the pool keeps in place)
        self._customers: dict[str, _Customer] = {}
        # Waiting customers, one queue per customer group, entries (key, openid); the global queue order
        # is the merge of these (keys are unique across groups).
        self._group_queues: dict[str | None, WaitQueue] = {}
        self._waiting_count = 0
        self._preferring: dict[str, set[str]] = {}  # preferred agent -> waiting customers who asked for them
        # Pending reservations: openid -> deadline, and a heap of (deadline, openid) for the earliest one.
        # A reservation that ends leaves its heap entry behind unless it is the head (cheaper than a
        # sorted-list removal); entries that no longer match ``_reserved`` are dropped when they reach the
        # top (_reservation_head) or when stale ones outnumber live ones (_end_reservation).
        self._reserved: dict[str, float] = {}
        self._reservation_heap: list[tuple[float, str]] = []
        # times when a waiting customer's scope may widen: a heap (only ever added to and popped from the
        # front, so a heap does what a sorted list did, at a fraction of the cost)
        self._wakeups: list[float] = []
        # kf_account -> openids in session with them (an agent's set stays, empty, between sessions)
        self._sessions_by_agent: dict[str, set[str]] = {}
        self._session_starts: SortedList = SortedList()  # (started_at, openid), kept for stale sessions
        self._offline_since: dict[str, float] = {}  # agents that went offline with sessions open
        # Customers no longer present: openid -> _Past (why they left, who served them last), one table for
        # both so a departure costs one insert into a big table. A customer who comes back keeps their
        # entry (the customers present are looked at first) and it is replaced when they leave again.
        # ``_past_order`` holds the entries in the order they were written; tick() and every departure
        # forget those written more than sticky_window_s ago (an entry no longer in ``_past``, replaced, is
        # just dropped): with no deadline pending tick() may not run for days (the simulator calls it only
        # at deadlines), and the table must not grow with every customer ever seen.
        self._past: dict[str, _Past] = {}
        self._past_order: deque[_Past] = deque()
        self._seq = 0
        # what the last call (handle, tick or a typed call) changed, in order: see router/core/facts.py.
        # handle() and tick() always record them; the typed calls only while ``typed_facts`` (a Desk turns
        # it off while nothing would read them: a fact is an object per change, in the simulator's hot path)
        self.facts: list[Fact] = []
        self.typed_facts = True
        self._recording = True

    # ================================================================= inputs

    def handle(self, event: ev.Event, now: float) -> list[Command]:
        handler = self._HANDLERS.get(type(event))
        if handler is None:
            raise CoreError(f"handle: unsupported event {event!r}")
        self._recording = True
        self.facts = []
        out: list[Command] = []
        handler(self, event, now, out)
        self._settle(now, out)
        return out

    # The three events every customer brings, as typed calls: ``engine.session_closed(openid, kf, now)``
    # is ``engine.handle(SessionClosed(openid=openid, kf_account=kf), now)`` without building the event
    # (same handler, same follow-up, same validation: values a quick type check does not pass go through
    # the event's constructor, which raises its usual message). The simulator uses them: building, checking
    # and dispatching an event object was about a tenth of a replay.

    def customer_requested(
        self,
        openid: str,
        group: str | None,
        priority: int,
        preferred_agent: str | None,
        tags: frozenset[str],
        now: float,
    ) -> list[Command]:
        """``handle(CustomerRequested(openid=..., group=..., priority=..., preferred_agent=..., tags=...), now)``
        (``arrived_at`` is ``now``; the event's ``text`` and ``source`` mean nothing to the engine)."""
        if (
            type(openid) is not str
            or not openid
            or type(priority) is not int
            or (preferred_agent is not None and (type(preferred_agent) is not str or not preferred_agent))
            or type(tags) is not frozenset
        ):
            event = ev.CustomerRequested(
                openid=openid,
                group=group,
                priority=priority,
                preferred_agent=preferred_agent,
                tags=tags,  # type: ignore[arg-type]  # attrs' converter takes any iterable
            )
            return self.handle(event, now)
        self._recording = self.typed_facts
        self.facts = []
        out: list[Command] = []
        self._request(openid, group, priority, now, preferred_agent, tags, now)
        self._settle(now, out)
        return out

    def session_created(self, openid: str, kf_account: str, now: float) -> list[Command]:
        """``handle(SessionCreated(openid=..., kf_account=..., source=...), now)`` (any ``source``: the
        engine does not read it)."""
        if type(openid) is not str or not openid or type(kf_account) is not str or not kf_account:
            return self.handle(ev.SessionCreated(openid=openid, kf_account=kf_account, source="api"), now)
        self._recording = self.typed_facts
        self.facts = []
        out: list[Command] = []
        self._created(openid, kf_account, now)
        self._settle(now, out)
        return out

    def session_closed(self, openid: str, kf_account: str, now: float) -> list[Command]:
        """``handle(SessionClosed(openid=..., kf_account=...), now)``."""
        if type(openid) is not str or not openid or type(kf_account) is not str or not kf_account:
            return self.handle(ev.SessionClosed(openid=openid, kf_account=kf_account), now)
        self._recording = self.typed_facts
        self.facts = []
        out: list[Command] = []
        self._closed(openid, kf_account, now)
        self._settle(now, out)
        return out

    def _settle(self, now: float, out: list[Command]) -> None:
        """After every event: close or move what is due, then route while an agent is free."""
        if self._offline_since:
            self._sweep_sessions(now, out)
        if self._waiting_count and self._free_agents:  # someone waits, and some agent is free
            self._drain(now, out)

    def tick(self, now: float) -> list[Command]:
        """Expire reservations whose deadline passed, then drain (overflow or avoid periods may have ended)."""
        self._recording = True
        self.facts = []
        out: list[Command] = []
        while (head := self._reservation_head()) is not None:
            deadline, openid = head
            if deadline > now:
                break
            self._release(self._customers[openid], now, "timeout")
        while self._wakeups and self._wakeups[0] <= now:
            heapq.heappop(self._wakeups)
        self._forget_past(now - self.config.sticky_window_s)
        self._sweep_sessions(now, out)
        self._drain(now, out)
        return out

    def next_deadline(self) -> float:
        """The earliest time at which ``tick`` has work to do; ``inf`` when none."""
        t = math.inf
        if self._reservation_heap:  # any reservation pending: the earliest one
            head = self._reservation_head()
            if head is not None:
                t, _openid = head
        if self._wakeups and self._wakeups[0] < t:  # the earliest wake-up, if earlier
            t = self._wakeups[0]
        return t

    def _reservation_head(self) -> tuple[float, str] | None:
        """(deadline, openid) of the pending reservation that ends first (ties: by openid), dropping the
        heap entries of reservations that already ended."""
        heap = self._reservation_heap
        live = self._reserved
        while heap:
            deadline, openid = heap[0]
            if live.get(openid) == deadline:
                return heap[0]
            heapq.heappop(heap)
        return None

    def _reservations_sorted(self) -> list[tuple[float, str]]:
        return sorted((deadline, openid) for openid, deadline in self._reserved.items())

    def remember(self, openid: str, kf_account: str, at: float) -> None:
        """Load customer history (who served ``openid`` last), e.g. from the store after a restart."""
        c = self._customers.get(openid)
        if c is not None:
            if c.last_agent is None or c.last_end <= at:
                c.last_agent = kf_account
                c.last_end = at
            return
        prev = self._past.get(openid)
        if prev is None:
            self._write_past(_new_past(kf_account, at, None, openid, at))
        elif prev.agent is None or prev.ended_at <= at:
            # keeps why they left, and is forgotten no earlier than the entry it replaces (entries loaded
            # out of time order only delay tick()'s forgetting of the ones behind them)
            self._write_past(_new_past(kf_account, at, prev.reason, openid, max(prev.written_at, at)))

    # ================================================================= reading

    def agents(self) -> list[AgentView]:
        return self._pool.views()

    def agent(self, kf_account: str) -> AgentView | None:
        return self._pool.agent(kf_account)

    @property
    def pool(self) -> Pool:
        return self._pool

    def waiting(self, now: float | None = None) -> list[WaitingView]:
        """Waiting customers in queue order (scope computed at ``now``, default: arrival time)."""
        return [
            self._waiting_view(self._customers[o], now if now is not None else self._customers[o].arrived_at)
            for _k, o in heapq.merge(*self._group_queues.values())
        ]

    def queue_length(self) -> int:
        return self._waiting_count

    def waiting_in_group(self, group: str | None) -> int:
        """Customers of ``group`` waiting. O(1)."""
        q = self._group_queues.get(group)
        return len(q) if q is not None else 0

    def position(self, openid: str) -> int | None:
        """0-based place in the queue, or None when not waiting. O(log n)."""
        c = self._customers.get(openid)
        if c is None or c.state is not _WAITING:
            return None
        entry = c.entry
        return sum(int(q.bisect_left(entry)) for q in self._group_queues.values())

    def ahead_in_group(self, openid: str) -> int | None:
        """How many customers of the same group are ahead of ``openid`` (priority-aware). O(log n)."""
        c = self._customers.get(openid)
        if c is None or c.state is not _WAITING:
            return None
        return int(self._group_queues[c.group].index(c.entry))

    def group_capacity(self, group: str | None) -> tuple[int, int]:
        """(capacity, free capacity) in sessions of the online unpaused agents of ``group`` (``None``: all). O(1)."""
        return self._pool.capacity_of(group)

    def waiting_view(self, openid: str, now: float) -> WaitingView | None:
        """The waiting customer ``openid`` as a policy would see it at ``now``, or None. O(1)."""
        c = self._customers.get(openid)
        if c is None or c.state is not _WAITING:
            return None
        return self._waiting_view(c, now)

    def reservations(self) -> list[tuple[str, str, float]]:
        """(openid, kf_account, deadline) of pending reservations, earliest deadline first."""
        out = []
        for deadline, openid in self._reservations_sorted():
            c = self._customers[openid]
            assert c.with_agent is not None
            out.append((openid, c.with_agent, deadline))
        return out

    def sessions(self) -> dict[str, str]:
        """openid -> kf_account for the sessions the engine knows of."""
        return {
            o: c.with_agent
            for o, c in self._customers.items()
            if c.state is _IN_SESSION and c.with_agent is not None
        }

    def state(self, openid: str) -> CustomerState:
        c = self._customers.get(openid)
        if c is not None:
            return c.state
        return _UNKNOWN if self.gone_reason(openid) is None else _GONE

    def gone_reason(self, openid: str) -> str | None:
        """Why ``openid`` left, while the engine remembers them (sticky_window_s after they left)."""
        if openid in self._customers:
            return None
        past = self._past.get(openid)
        return None if past is None else past.reason

    def with_agent(self, openid: str) -> str | None:
        c = self._customers.get(openid)
        return None if c is None else c.with_agent

    def history(self, openid: str) -> tuple[str, float] | None:
        """(agent, when) of the customer's current session (agent and start), else of the last one the
        engine saw end (agent and end), until tick() forgets it (sticky_window_s after they left)."""
        c = self._customers.get(openid)
        if c is not None:
            if c.state is _IN_SESSION and c.with_agent is not None:
                return (c.with_agent, c.session_started_at)
            return None if c.last_agent is None else (c.last_agent, c.last_end)
        past = self._past.get(openid)
        return None if past is None or past.agent is None else (past.agent, past.ended_at)

    # ================================================================= event handlers

    def _on_requested(self, e: ev.CustomerRequested, now: float, out: list[Command]) -> None:
        arrived = now if e.arrived_at is None else e.arrived_at
        self._request(e.openid, e.group, e.priority, arrived, e.preferred_agent, e.tags, now)

    def _request(
        self,
        openid: str,
        group: str | None,
        priority: int,
        arrived_at: float,
        preferred_agent: str | None,
        tags: frozenset[str],
        now: float,
    ) -> None:
        c = self._customers.get(openid)
        if c is not None:
            return  # already waiting, reserved or in session: never queued twice
        route = self._default_route if group is None else self._routes.get(group, self._default_route)
        policy = self._policies[route.policy]
        self._seq += 1
        c = _new_customer(
            openid,
            route,
            policy,
            group is None or self._ignores_groups[route.policy],
            group,
            priority,
            arrived_at,
            (queue_key(priority, self._seq, self._priorities), openid),
            preferred_agent,
            tags,
        )
        self._customers[openid] = c
        past = self._past.get(openid)
        if past is not None:
            self._recall(c, past)
        self._enqueue(c)
        if c.preferred_agent is not None:
            c.preferred_until = c.arrived_at + self.config.preferred_wait_s
            heapq.heappush(self._wakeups, c.preferred_until)
        for _group, after in route.overflow:
            if c.arrived_at + after > now:
                heapq.heappush(self._wakeups, c.arrived_at + after)
        if self._recording:
            self.facts.append(Queued(openid, group, priority, arrived_at))

    def _on_agents_seen(self, e: ev.AgentsSeen, now: float, out: list[Command]) -> None:
        seen: set[str] = set()
        for row in e.rows:
            seen.add(row.kf_account)
            was_online = self._online(row.kf_account)
            self._pool.ensure(row.kf_account)
            self._pool.update_from_wechat(row.kf_account, row.status, row.accepted_case, row.auto_accept)
            if row.nickname:
                self._pool.configure(row.kf_account, nickname=row.nickname)
            if row.online:
                self._offline_since.pop(row.kf_account, None)
                if not was_online:
                    view = self._pool.agent(row.kf_account)
                    assert view is not None
                    self.facts.append(
                        AgentOnline(row.kf_account, tuple(sorted(view.groups)), view.capacity, view.nickname)
                    )
            else:
                self._agent_offline(row.kf_account, now, was_online=was_online)
        if e.complete:
            for kf in self._pool.accounts():
                if kf not in seen:
                    was_online = self._online(kf)
                    self._pool.set_status(kf, 0)
                    self._agent_offline(kf, now, was_online=was_online)

    def _online(self, kf: str) -> bool:
        agent = self._agent_map.get(kf)
        return agent is not None and agent.status != 0

    def _agent_offline(self, kf: str, now: float, *, was_online: bool) -> None:
        if was_online:
            self.facts.append(AgentOffline(kf))
        self._release_agent(kf, now)
        if kf not in self._offline_since and self._sessions_by_agent.get(kf):
            self._offline_since[kf] = now
            for route in {self.config.default_route, *self.config.routes.values()}:
                if route.on_agent_offline == "reassign":
                    heapq.heappush(self._wakeups, now + route.offline_grace_s)

    def _on_agent_sessions(self, e: ev.AgentSessionsSeen, now: float, out: list[Command]) -> None:
        kf = self._need_agent(e.kf_account, "AgentSessionsSeen")
        listed = set(e.openids)
        for openid in e.openids:
            self._absorb_session(openid, kf, now, count=False)
        for openid in list(self._sessions_by_agent.get(kf, ())):
            if openid not in listed:  # closed while we were not looking
                self._session_ended(self._customers[openid], kf, now, count=False)
        self._pool.set_sessions(kf, len(listed))

    def _on_created(self, e: ev.SessionCreated, now: float, out: list[Command]) -> None:
        self._created(e.openid, e.kf_account, now)

    def _created(self, openid: str, kf: str, now: float) -> None:
        c = self._customers.get(openid)
        if c is not None and c.state is _RESERVED and c.with_agent == kf:
            # our own create confirmed (the usual case): the reservation becomes the session; the agent
            # is known, as a reservation with an agent ends when the agent is removed
            self._end_reservation(c, confirmed=True)
            self._enter_session(c, kf, now, queued=True)
            return
        self._need_agent(kf, "SessionCreated")
        self._absorb_session(openid, kf, now, count=True)

    def _on_closed(self, e: ev.SessionClosed, now: float, out: list[Command]) -> None:
        self._closed(e.openid, e.kf_account, now)

    def _closed(self, openid: str, kf: str, now: float) -> None:
        self._need_agent(kf, "SessionClosed")
        c = self._customers.get(openid)
        if c is not None and c.state is _IN_SESSION and c.with_agent == kf:
            self._session_ended(c, kf, now, count=self._count_holds(kf, known=True))
        elif (c is None or c.with_agent != kf) and self._count_holds(kf, known=False):
            self._pool.add_sessions(kf, -1)  # a session we never saw open (started before we did)

    def _count_holds(self, kf: str, *, known: bool) -> bool:
        """Whether ``kf``'s session count still holds a session that just closed (``known``: one the engine
        holds by name), so the close drops it: only while the count is above the agent's *other* sessions
        known by name. The count is WeChat's as last taken (``accepted_case``, ``AgentSessionsSeen``), moved
        by what happened since; a close older than that reading (its push delayed, or kept by another
        daemon) was not counted, and dropping the count for it would put the agent over capacity."""
        view = self._pool.agent(kf)
        others = len(self._sessions_by_agent.get(kf, ())) - (1 if known else 0)
        return view is not None and view.sessions > others

    def _on_switched(self, e: ev.SessionSwitched, now: float, out: list[Command]) -> None:
        src = self._need_agent(e.from_account, "SessionSwitched")
        dst = self._need_agent(e.to_account, "SessionSwitched")
        c = self._customers.get(e.openid)
        if c is not None and c.state is _IN_SESSION and c.with_agent == src:
            self._leave_session(c)
            self._enter_session(c, dst, now, queued=False, previous=src)
            self._pool.add_sessions(dst, 1)
        else:
            self._absorb_session(e.openid, dst, now, count=True)
        self._pool.add_sessions(src, -1)

    def _on_create_failed(self, e: ev.CreateFailed, now: float, out: list[Command]) -> None:
        self._need_agent(e.kf_account, "CreateFailed")
        c = self._customers.get(e.openid)
        if c is None or c.state is not _RESERVED or c.with_agent != e.kf_account:
            return  # stale: the reservation already ended (superseded, timed out, customer left)
        if e.errcode == ev.ERR_SERVED_BY_OTHER:
            self._end_reservation(c, confirmed=False)
            self._finish(c, "served_elsewhere", now, waiting=True, kf=e.kf_account)
            return
        if e.errcode in ERR_AGENT_UNAVAILABLE:
            if self._online(e.kf_account):
                self.facts.append(AgentOffline(e.kf_account))
            self._pool.set_status(e.kf_account, 0)  # until the next snapshot says otherwise
            self._release_agent(e.kf_account, now)
            return
        self._release(c, now, "failed")

    def _on_left(self, e: ev.CustomerLeft, now: float, out: list[Command]) -> None:
        c = self._customers.get(e.openid)
        if c is None:
            if self.gone_reason(e.openid) is not None:
                return
            raise UnknownCustomerError(e.openid, "CustomerLeft")
        kf = c.with_agent
        if c.state is _WAITING:
            self._dequeue(c)
        elif c.state is _RESERVED:
            self._end_reservation(c, confirmed=False)
        else:
            return  # already in a session: leaving the queue means nothing now
        self._finish(c, f"left:{e.reason}", now, waiting=True, kf=kf)

    def _on_close_failed(self, e: ev.CloseFailed, now: float, out: list[Command]) -> None:
        kf = self._need_agent(e.kf_account, "CloseFailed")
        c = self._customers.get(e.openid)
        if c is None or c.state is not _IN_SESSION or c.with_agent != kf:
            return
        if e.errcode == ERR_NO_SESSION:  # it was already closed: same as a close
            self._session_ended(c, kf, now, count=self._count_holds(kf, known=True))
            return
        c.closing = None  # try again at the next check (stale or offline agent), not in a loop
        c.reroute_to = None
        heapq.heappush(self._wakeups, now + self.config.avoid_s)

    def _on_reassign(self, e: ev.ReassignRequested, now: float, out: list[Command]) -> None:
        c = self._customers.get(e.openid)
        if c is None or c.state is not _IN_SESSION or c.with_agent is None:
            raise UnknownCustomerError(e.openid, "ReassignRequested (not in a session)")
        if e.to_account is not None:
            self._need_agent(e.to_account, "ReassignRequested")
            if e.to_account == c.with_agent:
                return
        self._close_for_reroute(c, out, to=e.to_account)

    def _on_configured(self, e: ev.AgentConfigured, now: float, out: list[Command]) -> None:
        self._pool.ensure(e.kf_account)
        self._pool.configure(
            e.kf_account,
            groups=e.groups,
            max_sessions=e.max_sessions,
            clear_max_sessions=e.clear_max_sessions,
            paused=e.paused,
            nickname=e.nickname,
            tags=e.tags,
            skills=e.skills,
        )

    def _on_removed(self, e: ev.AgentRemoved, now: float, out: list[Command]) -> None:
        kf = self._need_agent(e.kf_account, "AgentRemoved")
        if self._online(kf):
            self.facts.append(AgentOffline(kf))
        self._release_agent(kf, now)
        self._pool.remove(kf)

    _HANDLERS: ClassVar[dict[type, Callable[[Engine, ev.Event, float, list[Command]], None]]] = {
        ev.CustomerRequested: _on_requested,  # type: ignore[dict-item]
        ev.AgentsSeen: _on_agents_seen,  # type: ignore[dict-item]
        ev.AgentSessionsSeen: _on_agent_sessions,  # type: ignore[dict-item]
        ev.SessionCreated: _on_created,  # type: ignore[dict-item]
        ev.SessionClosed: _on_closed,  # type: ignore[dict-item]
        ev.SessionSwitched: _on_switched,  # type: ignore[dict-item]
        ev.CreateFailed: _on_create_failed,  # type: ignore[dict-item]
        ev.CustomerLeft: _on_left,  # type: ignore[dict-item]
        ev.AgentConfigured: _on_configured,  # type: ignore[dict-item]
        ev.AgentRemoved: _on_removed,  # type: ignore[dict-item]
        ev.CloseFailed: _on_close_failed,  # type: ignore[dict-item]
        ev.ReassignRequested: _on_reassign,  # type: ignore[dict-item]
    }

    # ================================================================= state changes

    def _need_agent(self, kf_account: str, where: str) -> str:
        if kf_account not in self._agent_map:
            raise UnknownAgentError(kf_account, where)
        return kf_account

    def _absorb_session(self, openid: str, kf: str, now: float, *, count: bool) -> None:
        """WeChat says ``openid`` is in a session with ``kf``: confirm, supersede or adopt it."""
        c = self._customers.get(openid)
        if c is not None and c.state is _IN_SESSION:
            if c.with_agent == kf:
                return  # the API answer and the push both confirm the same session
            old = c.with_agent
            if count and old is not None and old in self._pool:
                self._pool.add_sessions(old, -1)
            self._leave_session(c)
            self._enter_session(c, kf, now, queued=False, previous=old)
            if count:
                self._pool.add_sessions(kf, 1)
            return
        queued = c is not None
        if c is None:
            route = self.config.default_route
            self._seq += 1
            entry = (queue_key(0, self._seq, self._priorities), openid)
            c = _new_customer(openid, route, self._policies[route.policy], True, None, 0, now, entry, None, _NOBODY)
            self._customers[openid] = c
            past = self._past.get(openid)
            if past is not None:
                self._recall(c, past)
        elif c.state is _WAITING:
            self._dequeue(c)
        elif c.state is _RESERVED:
            confirmed = c.with_agent == kf
            self._end_reservation(c, confirmed=confirmed)
            if confirmed:
                count = False  # the reservation became the session
        self._enter_session(c, kf, now, queued=queued)
        if count:
            self._pool.add_sessions(kf, 1)

    def _enter_session(
        self, c: _Customer, kf: str, now: float, *, queued: bool, previous: str | None = None
    ) -> None:
        """``queued``: the customer waited in our queue for this session (its wait is known: from arrival,
        or from being routed again); False for a session adopted from WeChat or moved between agents."""
        c.had_session = True
        if self._recording:
            self.facts.append(
                Assigned(c.openid, kf, c.group, now - c.waiting_since if queued else 0.0, queued, previous)
            )
        c.state = _IN_SESSION
        c.with_agent = kf
        c.session_started_at = now
        held = self._sessions_by_agent.get(kf)
        if held is None:
            held = self._sessions_by_agent[kf] = set()
        held.add(c.openid)
        # no history entry while the session lasts: history() answers from the customer itself, and
        # _session_ended records (agent, end) when it is over
        if self.config.stale_session_s is not None:
            self._session_starts.add((now, c.openid))
            heapq.heappush(self._wakeups, now + self.config.stale_session_s)

    @staticmethod
    def _recall(c: _Customer, past: _Past) -> None:
        """``c`` is back: their history from an earlier visit (``past``, the engine's entry for them)."""
        c.last_agent = past.agent
        c.last_end = past.ended_at

    def _forget_past(self, horizon: float) -> None:
        """Forget the departures written before ``horizon`` (now minus the sticky window)."""
        order = self._past_order
        while order and order[0].written_at < horizon:
            old = order.popleft()
            if self._past.get(old.openid) is old:
                del self._past[old.openid]

    def _write_past(self, past: _Past) -> None:
        self._past[past.openid] = past
        self._past_order.append(past)

    def _leave_session(self, c: _Customer) -> None:
        kf = c.with_agent  # c is IN_SESSION (check() asserts the session bookkeeping after every step)
        assert kf is not None
        held = self._sessions_by_agent[kf]
        held.discard(c.openid)  # an emptied set stays for the agent's next session (one per agent)
        if not held and self._offline_since:
            self._offline_since.pop(kf, None)
        if self.config.stale_session_s is not None:
            self._session_starts.discard((c.session_started_at, c.openid))
        c.with_agent = None
        c.session_started_at = math.nan

    def _session_ended(self, c: _Customer, kf: str, now: float, *, count: bool) -> None:
        """The session of ``c`` with ``kf`` is closed: the customer leaves, or is routed again."""
        if count:
            self._pool.add_sessions(kf, -1)
        if self._recording:
            self.facts.append(SessionEnded(c.openid, kf, c.group, now - c.session_started_at))
        self._leave_session(c)
        c.last_agent = kf
        c.last_end = now
        if c.closing != "reroute":
            self._finish(c, "closed_stale" if c.closing == "stale" else "served", now, waiting=False, kf=kf)
            return
        c.waiting_since = now
        if self._recording:
            self.facts.append(Requeued(c.openid, kf, c.group))
        # routed again: back to its old place (so overflow is open at once), away from the agent it leaves,
        # towards the one asked for
        c.closing = None
        c.preferred_agent = c.reroute_to
        c.reroute_to = None
        self._avoid(c, kf, now)
        if c.preferred_agent is not None:
            c.preferred_until = now + self.config.preferred_wait_s
            heapq.heappush(self._wakeups, c.preferred_until)
        self._enqueue(c)

    def _close_for_reroute(self, c: _Customer, out: list[Command], *, to: str | None = None) -> None:
        assert c.with_agent is not None
        if c.closing is not None:
            return
        c.closing = "reroute"
        c.reroute_to = to
        out.append(CloseSession(openid=c.openid, kf_account=c.with_agent))

    def _sweep_sessions(self, now: float, out: list[Command]) -> None:
        """Reassign sessions of agents offline past their group's grace; close stale sessions."""
        for kf, since in list(self._offline_since.items()):
            for openid in sorted(self._sessions_by_agent.get(kf, ())):
                c = self._customers[openid]
                route = c.route
                if route.on_agent_offline == "reassign" and now >= since + route.offline_grace_s:
                    self._close_for_reroute(c, out)
        limit = self.config.stale_session_s
        if limit is None:
            return
        for started, openid in self._session_starts:
            if started + limit > now:
                break
            c = self._customers[openid]
            if c.closing is not None or c.with_agent is None:
                continue
            if self.config.stale_message:
                out.append(SendText(openid=openid, text=self.config.stale_message, kind="stale"))
            c.closing = "stale"
            out.append(CloseSession(openid=openid, kf_account=c.with_agent))

    def _enqueue(self, c: _Customer) -> None:
        c.state = _WAITING
        c.with_agent = None
        self._waiting_count += 1
        q = self._group_queues.get(c.group)
        if q is None:
            q = self._group_queues[c.group] = WaitQueue()
        q.add(c.entry)
        if c.preferred_agent is not None:
            self._preferring.setdefault(c.preferred_agent, set()).add(c.openid)

    def _dequeue(self, c: _Customer) -> None:
        self._waiting_count -= 1
        self._group_queues[c.group].remove(c.entry)
        if c.preferred_agent is not None:
            self._unprefer(c)

    def _unprefer(self, c: _Customer) -> None:
        """``c`` stops waiting: no longer among the customers waiting for its preferred agent."""
        if c.preferred_agent is not None:
            waiting = self._preferring[c.preferred_agent]
            waiting.discard(c.openid)
            if not waiting:
                del self._preferring[c.preferred_agent]

    def _reserve(self, c: _Customer, kf: str, now: float, out: list[Command]) -> None:
        self._dequeue(c)
        self._pool.reserve(kf, now)
        c.state = _RESERVED
        c.with_agent = kf
        deadline = c.reservation_deadline = now + self.config.reservation_timeout_s
        self._reserved[c.openid] = deadline
        heapq.heappush(self._reservation_heap, (deadline, c.openid))
        if self._recording:
            self.facts.append(Reserved(c.openid, kf))
        out.append(create_session(c.openid, kf))

    def _end_reservation(self, c: _Customer, *, confirmed: bool) -> None:
        # c is RESERVED with c.with_agent until c.reservation_deadline (check() asserts it after every step)
        kf = c.with_agent
        assert kf is not None
        del self._reserved[c.openid]
        heap = self._reservation_heap
        if heap[0] == (c.reservation_deadline, c.openid):
            heapq.heappop(heap)  # the earliest one (with instant answers, the only one): drop its entry now
        elif len(heap) > 64 and len(heap) > 4 * len(self._reserved):  # mostly ended ones: rebuild
            self._reservation_heap = [(d, o) for o, d in self._reserved.items()]
            heapq.heapify(self._reservation_heap)
        self._pool.unreserve(kf, confirmed=confirmed)
        c.reservation_deadline = math.inf
        c.with_agent = None

    def _release(self, c: _Customer, now: float, reason: str) -> None:
        """Release a reservation and put the customer back in its old place in the queue, avoiding the
        agent for ``avoid_s``. ``reason``: see ``facts.Released``."""
        kf = c.with_agent
        assert kf is not None
        self._end_reservation(c, confirmed=False)
        self._avoid(c, kf, now)
        if self._recording:
            self.facts.append(Released(c.openid, kf, reason))
        self._enqueue(c)

    def _avoid(self, c: _Customer, kf: str, now: float) -> None:
        """``c`` is not offered to ``kf`` again for ``avoid_s`` seconds."""
        if c.avoid is _AVOID_NOBODY:
            c.avoid = {}
        until = c.avoid[kf] = now + self.config.avoid_s
        heapq.heappush(self._wakeups, until)

    def _release_agent(self, kf: str, now: float) -> None:
        """Release every reservation held with ``kf`` (agent went offline or was removed)."""
        held = [o for _d, o in self._reservations_sorted() if self._customers[o].with_agent == kf]
        for openid in held:
            self._release(self._customers[openid], now, "agent_offline")

    def _finish(self, c: _Customer, reason: str, now: float, *, waiting: bool, kf: str | None) -> None:
        """The visit of ``c`` is over (``facts.Left``): ``waiting`` when no session started, ``kf`` the
        agent they were reserved with or served by."""
        waiting = waiting and not c.had_session  # a moved customer who leaves the queue was served before
        if self._recording:
            self.facts.append(
                Left(c.openid, reason, c.group, waiting, now - c.arrived_at if waiting else 0.0, kf)
            )
        if c.state is _IN_SESSION and c.with_agent is not None:
            self._leave_session(c)
        c.state = _GONE
        c.with_agent = None
        del self._customers[c.openid]
        self._write_past(_new_past(c.last_agent, c.last_end, reason, c.openid, now))
        self._forget_past(now - self.config.sticky_window_s)  # departures past the window: forgotten as we go

    # ================================================================= routing

    def _scope(self, c: _Customer, now: float) -> tuple[str | None, ...]:
        if c.anywhere:
            return _ANY_GROUP
        # compare with the wake-up time itself (arrived + after), so float rounding cannot skip a wake-up
        scope = [c.group]
        for g, after in c.route.overflow:
            if now >= c.arrived_at + after:
                scope.append(g)
        return tuple(scope)

    def _avoid_now(self, c: _Customer, now: float) -> frozenset[str]:
        if not c.avoid:
            return _NOBODY
        avoid = c.avoid
        for kf, until in list(avoid.items()):
            if until <= now:
                del avoid[kf]
        return frozenset(avoid)

    def _waiting_view(
        self,
        c: _Customer,
        now: float,
        scope: tuple[str | None, ...] | None = None,
        avoid: frozenset[str] | None = None,
    ) -> WaitingView:
        """``avoid``: the customer's avoided agents at ``now`` when the caller already has them."""
        if scope is None:
            scope = self._scope(c, now)
        if avoid is None:
            avoid = _avoided(c.avoid, now) if c.avoid else _NOBODY
        last = c.last_agent
        if last is not None and now - c.last_end > self.config.sticky_window_s:
            last = None
        return waiting_view(
            c.openid,
            c.group,
            c.priority,
            c.arrived_at,
            c.preferred_agent,
            c.preferred_until,
            avoid,
            c.tags,
            last,
            None if last is None else c.last_end,
            scope,
        )

    def _pick(self, c: _Customer, now: float) -> str | None:
        # runs once per routing attempt: locals and plain dict reads instead of small helper calls
        policy = c.policy
        avoid = self._avoid_now(c, now) if c.avoid else _NOBODY
        if c.preferred_agent is not None and now < c.preferred_until:
            wanted = c.preferred_agent
            return wanted if wanted not in avoid and self._pool.is_free(wanted) else None
        if c.anywhere:
            scope = _ANY_GROUP
            if not self._free_agents:
                return None
        else:
            scope = self._scope(c, now)
            free_count = self._pool.free_count
            for g in scope:
                if free_count(g):
                    break
            else:
                return None  # cheap skip: nobody in scope is free, so no policy could pick
        # every expired avoid entry was just dropped, so ``avoid`` is what _waiting_view would compute
        kf = policy.pick(self._pool, self._waiting_view(c, now, scope, avoid), now)
        if kf is None:
            return None
        picked = self._agent_map.get(kf)
        if picked is None or picked.indexed is None or kf in avoid:  # only free agents are indexed
            raise CoreError(
                f"policy {policy.name!r} picked {kf!r} for {c.openid!r}, but that agent is not free "
                "or is avoided by this customer (a policy must pick a free agent or None)"
            )
        return kf

    def _drain(self, now: float, out: list[Command]) -> None:
        """Offer waiting customers, best first, to free agents until nobody is free or nobody fits.

        Only the queues of customer groups that could reach a free agent are scanned (merged in queue
        order), so a freed agent of one group does not cost a walk past every other group's customers.
        """
        if self._choosers:
            self._offer_free_agents(now, out)
            if self._only_choosers:
                return
        free = self._free_agents
        group_queues = self._group_queues
        while self._waiting_count and free:
            merged: Iterable[tuple[tuple[int, int], str]]
            if len(group_queues) == 1 and None in group_queues:
                merged = group_queues[None]  # only customers without a group: every agent reaches them
            else:
                queues = self._reachable_queues()
                if not queues:
                    return
                merged = queues[0] if len(queues) == 1 else heapq.merge(*queues)
            for _key, openid in merged:
                c = self._customers[openid]
                kf = self._pick(c, now)
                if kf is not None:
                    self._reserve(c, kf, now, out)
                    break  # the queues changed: look again from the top
            else:
                return

    def _offer_free_agents(self, now: float, out: list[Command]) -> None:
        """For policies with ``choose``: every free agent, least loaded first, is offered the waiting
        customers it may serve (``_candidates``) and picks one, until it is full or picks nobody."""
        pool = self._pool
        taken = True
        while taken and self._waiting_count:  # again after a customer was taken: it may free others' choices
            taken = False
            for kf in list(pool.free_agents(None, "load")):
                while self._waiting_count and pool.is_free(kf):
                    groups = self._agent_map[kf].groups
                    for policy in self._choosers:
                        offered: dict[str, _Customer] = {}
                        candidates = self._candidates(kf, groups, policy, now, offered)
                        openid = policy.choose(pool, kf, candidates, now)  # type: ignore[attr-defined]
                        if openid is None:
                            continue
                        c = offered.get(openid)
                        if c is None:
                            raise CoreError(
                                f"policy {policy.name!r} chose {openid!r} for {kf!r}, a customer it was not "
                                "offered (choose must return the openid of one of its candidates, or None)"
                            )
                        self._reserve(c, kf, now, out)
                        taken = True
                        break
                    else:
                        break  # nobody chosen for this agent

    def _candidates(
        self, kf: str, groups: frozenset[str], policy: Policy, now: float, offered: dict[str, _Customer]
    ) -> Iterator[WaitingView]:
        """The waiting customers of ``policy``'s routes that ``kf`` may serve now, in queue order (lazily;
        each one yielded is recorded in ``offered``)."""
        queues = []
        for g, q in self._group_queues.items():
            if not q:
                continue
            route = self._routes.get(g, self._default_route) if g is not None else self._default_route
            if (
                g is None
                or g in groups
                or self._ignores_groups.get(route.policy, False)
                or any(t in groups for t, _after in route.overflow)
            ):
                queues.append(q)
        merged = queues[0] if len(queues) == 1 else heapq.merge(*queues)
        for _key, openid in merged:
            c = self._customers[openid]
            if c.policy is not policy:
                continue
            if c.preferred_agent is not None and now < c.preferred_until and c.preferred_agent != kf:
                continue
            avoid = self._avoid_now(c, now) if c.avoid else _NOBODY
            if kf in avoid:
                continue
            scope = self._scope(c, now)
            if scope is not _ANY_GROUP and not groups.intersection(scope):
                continue
            offered[openid] = c
            yield self._waiting_view(c, now, scope, avoid)

    def _reachable_queues(self) -> list[WaitQueue]:
        """Queues of customer groups with a free agent in reach (own group, overflow groups, or a free
        preferred agent of one of their customers)."""
        if len(self._group_queues) == 1:
            # only customers without a group have ever waited: their queue is in reach of every agent
            q = self._group_queues.get(None)
            if q is not None:
                return [q] if q else []
        wanted: set[str | None] = set()
        for kf, openids in self._preferring.items():
            if openids and self._pool.is_free(kf):
                wanted.update(self._customers[o].group for o in openids)
        found = []
        free_count = self._pool.free_count
        for group, q in self._group_queues.items():
            if not q:
                continue
            if group is None or group in wanted:
                found.append(q)
                continue
            route = self.config.routes.get(group, self.config.default_route)
            if (
                free_count(group)
                or self._ignores_groups.get(route.policy, False)
                or any(free_count(t) for t, _after in route.overflow)
            ):
                found.append(q)
        return found

    # ================================================================= invariants (for tests)

    def check(self) -> None:
        """Assert internal invariants; O(n). Tests call it after every step."""
        self._pool.check()
        queued = [o for q in self._group_queues.values() for _k, o in q]
        assert len(queued) == len(set(queued)), "customer queued twice"
        assert self._waiting_count == len(queued)
        reserved: dict[str, int] = {}
        for o, c in self._customers.items():
            in_queue = c.entry in self._group_queues.get(c.group, ())
            assert in_queue == (c.state is _WAITING), o
            if c.state is _RESERVED:
                assert c.with_agent is not None and self._reserved.get(o) == c.reservation_deadline
                reserved[c.with_agent] = reserved.get(c.with_agent, 0) + 1
        assert len(self._reserved) == sum(reserved.values())
        assert all((d, o) in self._reservation_heap for o, d in self._reserved.items())
        in_session = [o for o, c in self._customers.items() if c.state is _IN_SESSION]
        assert len(in_session) == sum(len(held) for held in self._sessions_by_agent.values())
        for kf, held in self._sessions_by_agent.items():
            for o in held:
                assert self._customers[o].with_agent == kf, o
        for view in self._pool.views():
            assert view.reserved == reserved.get(view.kf_account, 0), view.kf_account
            assert view.sessions >= 0 and view.reserved >= 0
        ordered = {id(p) for p in self._past_order}  # tick() reaches every remembered departure
        assert all(id(p) in ordered and p.openid == o for o, p in self._past.items())
