"""Pollers: reconcile the engine with WeChat's truth (who is online, who waits in WeChat's own queue,
and — once, at start-up — what a previous process left unfinished).

- ``AgentPoller``: ``getonlinekflist`` → ``AgentsSeen(complete=True)``, with nicknames from
  ``getkflist`` refreshed every ``nickname_refresh_s``. ``poll_once()`` can be called at any time (the
  daemon does when a kf event names an agent the engine has never seen); calls are serialised.
- ``WaitlistPoller``: ``getwaitcase`` → a request for every listed customer the engine does not know
  (``waitlist_request`` gives their group and priority from the routing config), arrival =
  ``latest_time``.
- ``PollSchedule`` (pure): the interval is ``fast`` while customers wait or reservations are pending,
  ``slow`` when idle; after an error (45009 / 45011 rate limits included) it doubles each time up to
  ``max_backoff``, and one success brings it back to normal. Every interval gets ±``jitter``.
- ``SnapshotGuard``: keeps a snapshot's session counts from undoing inputs applied while it was in flight.
- ``LastSnapshot``: tells a snapshot that would change nothing in the engine (WeChat answered what was
  applied last, and the engine's agents are still as that left them), so it is not applied again.
- ``Recovery``: the start-up steps (sessions, reservations in flight, stored waiting customers).

Each poller's ``run()`` loops until cancelled: poll, sleep the scheduled interval (or until
``trigger()``), repeat. A failed poll is logged and never ends the loop; cancellation is re-raised.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping

import attrs

from kfrouter.router.config import Config, PollingConfig
from kfrouter.router.core import events as ev
from kfrouter.router.core.engine import Engine
from kfrouter.router.core.model import AgentRow, AgentView, CustomerState
from kfrouter.router.core.rules import RoutingConfig
from kfrouter.router.edges.client import SessionInfo, WaitEntry, WeChatClient
from kfrouter.router.edges.errors import RateLimited, WeChatError
from kfrouter.router.edges.store import Reservation, Store, StoredState

log = logging.getLogger("kfrouter.daemon")


class PollSchedule:
    """The next poll interval from the last outcome (see the module docstring). Pure but for ``rng``."""

    def __init__(
        self,
        fast_s: float,
        slow_s: float,
        max_backoff_s: float,
        jitter: float = 0.0,
        rng: random.Random | None = None,
    ) -> None:
        if not (0 < fast_s <= slow_s <= max_backoff_s):
            raise ValueError(
                f"need 0 < fast_s <= slow_s <= max_backoff_s, got {fast_s!r}, {slow_s!r}, {max_backoff_s!r}"
            )
        if not 0 <= jitter < 1:
            raise ValueError(f"jitter must be in [0, 1), got {jitter!r}")
        self.fast_s = fast_s
        self.slow_s = slow_s
        self.max_backoff_s = max_backoff_s
        self.jitter = jitter
        self._rng = rng if rng is not None else random.Random()
        self.failures = 0

    @classmethod
    def from_config(cls, polling: PollingConfig, kind: str, rng: random.Random | None = None) -> PollSchedule:
        """``kind``: 'online' or 'waitcase' (the ``[polling]`` keys ``<kind>_fast_s`` / ``<kind>_slow_s``)."""
        return cls(
            getattr(polling, f"{kind}_fast_s"),
            getattr(polling, f"{kind}_slow_s"),
            polling.max_backoff_s,
            polling.jitter,
            rng,
        )

    def base(self, busy: bool) -> float:
        return self.fast_s if busy else self.slow_s

    def next_delay(self, *, ok: bool, busy: bool) -> float:
        """Record the outcome of the poll just made and return the wait before the next one."""
        if ok:
            self.failures = 0
            delay = self.base(busy)
        else:
            self.failures += 1
            delay = min(self.max_backoff_s, self.fast_s * 2.0 ** min(self.failures, 60))
        if self.jitter:
            delay *= self._rng.uniform(1 - self.jitter, 1 + self.jitter)
        return min(delay, self.max_backoff_s)


class _Loop:
    """Shared run loop: poll, then sleep the scheduled interval or until ``trigger()``."""

    name = "poll"

    def __init__(self, schedule: PollSchedule, busy: Callable[[], bool]) -> None:
        self.schedule = schedule
        self._busy = busy
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self.last_ok: bool | None = None
        self.last_at: float | None = None  # wall time of the last completed poll
        self.last_error: str | None = None
        self.polls = 0
        # errcodes already explained to the operator (router.problems): logged at debug, not every poll
        self.told: Callable[[int], bool] = lambda errcode: False

    def trigger(self) -> None:
        """Poll now instead of waiting for the interval to pass."""
        self._wake.set()

    async def poll_once(self) -> bool:
        """One poll; ``True`` on success. Never raises (but ``CancelledError``): failures are logged
        and recorded in ``last_ok`` / ``last_error``."""
        async with self._lock:
            try:
                await self._poll()
            except WeChatError as exc:
                self._record(False, f"errcode {exc.errcode}")
                level = logging.WARNING if not isinstance(exc, RateLimited) else logging.INFO
                if self.told(exc.errcode):
                    level = logging.DEBUG
                log.log(level, "%s poll failed: %s", self.name, exc)
                return False
            except Exception as exc:  # a bug or a store failure must not end the poller (nor the daemon)
                self._record(False, type(exc).__name__)
                log.exception("%s poll failed unexpectedly", self.name)
                return False
            self._record(True, None)
            return True

    def _record(self, ok: bool, error: str | None) -> None:
        self.polls += 1
        self.last_ok = ok
        self.last_at = time.time()
        self.last_error = error

    async def _poll(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    async def run(self, *, first_delay: float = 0.0) -> None:
        """Poll forever (until cancelled); see the module docstring."""
        delay = first_delay
        while True:
            if delay > 0:
                try:
                    async with asyncio.timeout(delay):
                        await self._wake.wait()
                except TimeoutError:
                    pass
            self._wake.clear()
            ok = await self.poll_once()
            delay = self.schedule.next_delay(ok=ok, busy=self._busy())


class AgentPoller(_Loop):
    """``getonlinekflist`` (+ ``getkflist`` nicknames) → ``publish(rows, mark)``.

    ``publish`` is awaited with the rows (status, accepted_case, auto_accept, nickname) and the value
    ``mark()`` returned just before the request (the daemon's event counter, so it can tell which
    engine inputs the snapshot may have missed); it is expected to hand an ``AgentsSeen(complete=True)``
    to the engine. ``clock`` is monotonic seconds (nickname refresh timing).
    """

    name = "agents"

    def __init__(
        self,
        client: WeChatClient,
        schedule: PollSchedule,
        *,
        publish: Callable[[tuple[AgentRow, ...], object], Awaitable[object]],
        busy: Callable[[], bool],
        mark: Callable[[], object] = lambda: None,
        nickname_refresh_s: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(schedule, busy)
        self._client = client
        self._publish = publish
        self._mark = mark
        self._nickname_refresh_s = nickname_refresh_s
        self._clock = clock
        self._nicknames: dict[str, str] = {}
        self._nicknames_at = -math.inf
        self.rows: tuple[AgentRow, ...] = ()  # the last answer, named
        self._answered: tuple[AgentRow, ...] | None = None  # the last answer as WeChat gave it
        self._named_with: Mapping[str, str] | None = None  # the nicknames ``rows`` were named with

    @property
    def nicknames(self) -> Mapping[str, str]:
        """kf_account -> nickname, as of the last ``getkflist``."""
        return self._nicknames

    async def _poll(self) -> None:
        mark = self._mark()
        rows = await self._client.get_online_kf_list()
        if self._clock() - self._nicknames_at >= self._nickname_refresh_s:
            try:
                accounts = await self._client.get_kf_list()
            except WeChatError as exc:
                log.info("getkflist failed (%s); nicknames kept as they were", exc)
            else:
                self._nicknames = {a.kf_account: a.nickname for a in accounts if a.nickname}
                self._nicknames_at = self._clock()
        answered = tuple(rows)
        if answered != self._answered or self._named_with is not self._nicknames:
            # the rows are named again only when WeChat's answer or the nicknames changed
            self.rows = tuple(
                attrs.evolve(r, nickname=self._nicknames[r.kf_account])
                if not r.nickname and r.kf_account in self._nicknames
                else r
                for r in answered
            )
            self._answered, self._named_with = answered, self._nicknames
        await self._publish(self.rows, mark)


class WaitlistPoller(_Loop):
    """``getwaitcase`` → ``on_waiting(entry)`` for each listed customer ``known(openid)`` denies."""

    name = "waitcase"

    def __init__(
        self,
        client: WeChatClient,
        schedule: PollSchedule,
        *,
        known: Callable[[str], bool],
        on_waiting: Callable[[WaitEntry], object],
        busy: Callable[[], bool],
    ) -> None:
        super().__init__(schedule, busy)
        self._client = client
        self._known = known
        self._on_waiting = on_waiting
        self.count = 0  # WeChat's own queue length at the last poll

    async def _poll(self) -> None:
        case = await self._client.get_wait_case()
        self.count = case.count
        for entry in case.entries:
            if not self._known(entry.openid):
                self._on_waiting(entry)


@attrs.frozen
class WaitlistRequest:
    group: str | None
    priority: int
    tags: frozenset[str]


def waitlist_request(routing: RoutingConfig, openid: str) -> WaitlistRequest:
    """Group, priority and tags of a customer found in WeChat's wait list: their customer entry's group
    (else ``default_group``), the larger of the group's and the entry's priority, the entry's tags —
    the same as ``router.rules.classify`` gives a request without a matching rule."""
    entry = routing.customers.get(openid)
    group = (entry.group if entry is not None else None) or routing.default_group
    priority = routing.group_priorities.get(group, 0) if group is not None else 0
    if entry is not None and entry.priority is not None:
        priority = max(priority, entry.priority)
    return WaitlistRequest(
        group=group, priority=priority, tags=entry.tags if entry is not None else frozenset()
    )


class SnapshotGuard:
    """Guards periodic ``getonlinekflist`` snapshots against the races of their own flight time.

    ``accepted_case`` is WeChat's session count when it answered, while pushes and API answers keep
    moving the engine's own count. Taken blindly, a snapshot answered just before a close push is
    processed makes the agent look one session freer than they are (an over-booking), and one taken
    while a create is landing counts that session twice. So for an agent whose count differs from the
    engine's:

    - with reservations pending, or touched by an input applied since the poll started
      (``touched_after``), the engine's count is kept: the snapshot cannot be trusted;
    - otherwise the difference must be seen in two consecutive snapshots (same WeChat count, same
      engine count) before WeChat's count is taken: real drift (a session closed in the agent's own
      client while a push was lost) heals one poll later. Pushes may still be on their way after two
      polls (a busy host, the shared inbox): a late close of a session WeChat no longer counted does not
      drop the count again (the engine's ``_count_holds``).

    Status, auto_accept and nickname are always taken. Agents the engine does not know pass unchanged.
    """

    def __init__(self) -> None:
        self._suspect: dict[str, tuple[int, int]] = {}  # kf_account -> (WeChat count, engine count)

    def apply(
        self,
        rows: tuple[AgentRow, ...],
        views: Mapping[str, AgentView],
        touched_after: Callable[[str], bool],
    ) -> tuple[AgentRow, ...]:
        out = []
        for row in rows:
            kf = row.kf_account
            view = views.get(kf)
            if view is None or row.accepted_case == view.sessions:
                self._suspect.pop(kf, None)
                out.append(row)
                continue
            seen = (row.accepted_case, view.sessions)
            if view.reserved > 0 or touched_after(kf):
                self._suspect.pop(kf, None)
            elif self._suspect.get(kf) == seen:
                del self._suspect[kf]
                log.info(
                    "agent %s: WeChat counts %d sessions, kfrouter %d, in two polls: taking WeChat's",
                    kf,
                    row.accepted_case,
                    view.sessions,
                )
                out.append(row)
                continue
            else:
                self._suspect[kf] = seen
            out.append(attrs.evolve(row, accepted_case=view.sessions))
        return tuple(out)


class LastSnapshot:
    """The agents snapshot applied last and the engine's agents right after it: a snapshot that repeats
    it would write nothing new, so the daemon need not apply it again.

    ``repeats(rows, views)`` is true when ``rows`` (as ``SnapshotGuard`` passed them) are the rows applied
    last and ``views`` (the engine's agents now) are the views ``applied()`` recorded right after that
    application: every status, session count, ``auto_accept`` and nickname the rows carry is already the
    engine's, and nothing the engine holds about its agents changed since (a push, an API outcome, a
    timer or a configuration change shows in the views, and the next snapshot is applied). The
    comparison is on the raw values, nothing is skipped on a guess.

    Skipping changes nothing but the work done: the poll still counts as a success (``_Loop.poll_once``),
    ``SnapshotGuard`` still sees every snapshot first (its two-poll rule is unchanged: a row it corrects
    carries the engine's own count, and the poll where it takes WeChat's count differs from the rows
    applied last, so it is applied), and the caller applies every snapshot while the engine is busy
    (someone waits or a reservation is pending: the drain that follows each input may route).
    """

    def __init__(self) -> None:
        self._last: tuple[tuple[AgentRow, ...], tuple[AgentView, ...]] | None = None

    def repeats(self, rows: tuple[AgentRow, ...], views: Iterable[AgentView]) -> bool:
        last = self._last
        return last is not None and last[0] == rows and last[1] == tuple(views)

    def applied(self, rows: tuple[AgentRow, ...], views: Iterable[AgentView]) -> None:
        """``rows`` were just applied; ``views`` are the engine's agents right after."""
        self._last = (rows, tuple(views))


class Recovery:
    """Start-up reconciliation: what a previous process left in the store, checked against WeChat.

    The daemon calls the steps in this order, after the agents are known (configured and polled):

    1. ``sessions(state)``: ``getsessionlist`` for every agent the engine knows → ``AgentSessionsSeen``;
       the store's session log follows (sessions started or closed while kfrouter was away).
    2. ``reservations(...)``: for each ``kfsession/create`` the previous process left in flight, wait
       until that call would have timed out (``create_timeout_s`` after it started, at most that long
       from now), apply what reached the account meanwhile (``settle``: the pushes other daemons kept),
       then ask ``getsession``: in a session → ``SessionCreated(source='poll')``, else the customer waits
       again — unless the store no longer holds the reservation by then: a push of its session (the
       create had succeeded; the session may have ended since, which ``getsession`` cannot tell) or of
       its failure settled it, and that push is on its way to the engine. A create is never re-issued
       blindly, so nobody is created twice.
    3. ``waiting()``: every customer waiting in the store *now* (a push may have served one since the
       state was read) that the engine does not know yet → ``CustomerRequested(source='restore',
       arrived_at=stored)`` (their place in the queue is kept).

    ``apply(event)`` hands an event to the engine (the daemon applies it directly: the engine task
    starts after recovery). WeChat errors are logged; a step never raises them.
    """

    def __init__(
        self,
        *,
        engine: Engine,
        client: WeChatClient,
        store: Store,
        config: Config,
        clock: Callable[[], float],
        apply: Callable[[ev.Event], object],
        create_timeout_s: float,
        settle: Callable[[], Awaitable[object]] | None = None,
    ) -> None:
        self._engine = engine
        self._settle = settle
        self._client = client
        self._store = store
        self._groups_config = config.groups
        self._default_group = config.routing.default_group
        self._now = clock
        self._apply = apply
        self.create_timeout_s = create_timeout_s

    async def sessions(self, state: StoredState) -> dict[str, str]:
        """``getsessionlist`` for every agent the engine knows: who is in a session right now."""
        listed: dict[str, str] = {}
        polled: set[str] = set()
        for view in self._engine.agents():
            kf = view.kf_account
            try:
                entries = await self._client.get_session_list(kf)
            except WeChatError as exc:
                log.info("start-up: getsessionlist %s failed (%s); its sessions are learnt later", kf, exc)
                continue
            polled.add(kf)
            openids = [e.openid for e in entries]
            self._apply(ev.AgentSessionsSeen(kf_account=kf, openids=openids))  # type: ignore[arg-type]
            now = self._now()
            for openid in openids:
                listed[openid] = kf
                if state.in_session.get(openid, ("",))[0] != kf:
                    self._store.record_session_start(openid, kf, now)
        now = self._now()
        for openid, (kf, _started) in state.in_session.items():
            if openid not in listed and kf in polled:
                self._store.record_session_end(openid, kf, now)  # closed while we were away
        return listed

    async def reservations(self, reservations: list[Reservation], listed: Mapping[str, str]) -> None:
        """The outcome of each ``kfsession/create`` a previous process left in flight."""
        open_ = [r for r in reservations if r.openid not in listed]
        for r in reservations:
            if r.openid in listed:
                self._store.end_reservation(r.openid)
        if not open_:
            return
        # A call the previous process made may still land: wait until it would have timed out.
        latest = max(r.created_at for r in open_)
        margin = self.create_timeout_s + 1.0
        wait = min(margin, latest + margin - self._now())
        if wait > 0:
            log.info(
                "start-up: %d reservation(s) of the previous run; waiting %.1fs for their calls",
                len(open_),
                wait,
            )
            await asyncio.sleep(wait)
        if self._settle is not None:
            await self._settle()
        for r in open_:
            info = await self._get_session(r.openid)
            now = self._now()
            if self._store.reservation(r.openid) != r:
                log.info(
                    "start-up: reservation %s -> %s was settled by a push meanwhile", r.openid, r.kf_account
                )
            elif info is None:
                log.warning(
                    "start-up: outcome of the reservation %s -> %s unknown; the customer waits again",
                    r.openid,
                    r.kf_account,
                )
                self._store.end_reservation(r.openid)
            elif info.kf_account:
                kf = info.kf_account
                if kf not in self._engine.pool:
                    self._apply(
                        ev.AgentsSeen(rows=[AgentRow(kf_account=kf, status=0)], complete=False)  # type: ignore[list-item]
                    )
                self._store.record_session_start(r.openid, kf, now)
                self._apply(ev.SessionCreated(openid=r.openid, kf_account=kf, source="poll"))
                log.info("start-up: reservation %s -> %s had succeeded (with %s)", r.openid, r.kf_account, kf)
            else:
                self._store.end_reservation(r.openid)
                log.info(
                    "start-up: reservation %s -> %s had not succeeded; waiting again", r.openid, r.kf_account
                )

    async def _get_session(self, openid: str) -> SessionInfo | None:
        assert self._client is not None
        for attempt in range(3):
            try:
                return await self._client.get_session(openid)
            except WeChatError as exc:
                log.info("start-up: getsession %s failed (%s), attempt %d/3", openid, exc, attempt + 1)
                await asyncio.sleep(0.5 * 2**attempt)
        return None

    def waiting(self) -> int:
        groups = {g.name for g in self._groups_config}
        n = 0
        for row in self._store.load_state(history_since=self._now()).waiting:
            if self._engine.state(row.openid) not in (CustomerState.UNKNOWN, CustomerState.GONE):
                continue
            if row.group is not None and row.group not in groups:
                log.warning(
                    "start-up: %s waited for group %r, which is no longer configured; default group used",
                    row.openid,
                    row.group,
                )
                row = dataclasses.replace(row, group=self._default_group)
            self._apply(row.request("restore", self._engine.pool))
            n += 1
        return n
