"""The Desk: one account's whole customer journey, pure — the engine decides, the Desk follows through.

``Desk.handle(event, now)`` and ``Desk.tick(now)`` return a ``Step``: the commands to carry out (the
engine's, plus the texts and closes that follow from what happened) and the facts of the step
(router/core/facts.py). The daemon and the simulator drive the same Desk, so notifications, their budget
and the wait estimates are the same production code in both.

What the Desk adds to the engine, all driven by facts (never by diffing the engine's state):

- the wait estimator learns from every fact; a customer who joins the queue gets their arrival estimate
  (remembered and scored later: ``WaitEstimator.estimate_arrival``); ``estimate()`` is a pure query;
- the notifier: the queue message with place and estimate (or the chosen agent's wait), the agent's
  name when a session starts, silence for a moved customer until their new agent is announced, and
  every ``sweep_every_s`` while customers wait, an update to those whose estimate changed materially
  (a Desk timer: ``next_deadline()``/``tick()`` cover it); all within the budget the notifier keeps;
- cancels: a customer who cancelled while a create was in flight has the session that lands anyway
  closed at once; a cancel is remembered for a while, so WeChat's own wait list (which lags) does not
  bring them back (``cancelled_since``);
- the requests of the customers present (``request()``), so a moved customer can be saved as waiting
  again with the group and priority they asked with;
- a repeated ``SessionClosed`` for a session already closed (the API answer and the push both report it)
  is dropped before it reaches the engine;
- the intake's rules (router/core/intake.py): ``consider(inbound, now)`` says what a customer's message
  means — a request for a human, a cancel, the list of agents to choose from, or not for kfrouter — and
  keeps the lists of agents it sent; an event that can change the agents' names (``ROSTER_EVENTS``)
  tells the rules to build them again.

Rules: pure (no I/O, no clock: ``now`` is an argument); not thread-safe — one task drives it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

from kfrouter.router.core import events as ev
from kfrouter.router.core.choice import agent_wait, display_name
from kfrouter.router.core.commands import CloseSession, Command
from kfrouter.router.core.engine import Engine
from kfrouter.router.core.errors import CoreError
from kfrouter.router.core.estimate import Estimate, WaitEstimator
from kfrouter.router.core.facts import Assigned, Fact, Left, Queued, Released, Requeued
from kfrouter.router.core.intake import ROSTER_EVENTS, Answer, IntakeRules
from kfrouter.router.core.model import CustomerState
from kfrouter.router.core.notify import Notifier, NotifyConfig
from kfrouter.router.core.rules import Inbound, RoutingConfig

CLOSE_MEMORY_S = 120.0  # a second SessionClosed for the same pair within this is a duplicate
CANCEL_MEMORY_S = 3600.0  # WeChat's wait-list entry of a customer who cancelled is ignored this long

FactObserver = Callable[[Fact, float], None]


class IntakeSettings(NamedTuple):
    """What the intake's rules need: the ``[routing]`` settings, the texts of passive replies (also when
    notifications are off) and how long a list of agents sent stays valid."""

    routing: RoutingConfig
    texts: NotifyConfig
    choice_ttl_s: float = 300.0


class Step(NamedTuple):
    """What one Desk call produced: commands to carry out, facts of what changed."""

    commands: list[Command]
    facts: list[Fact]


_NOTHING = Step([], [])


class Desk:
    """One account's engine, estimator and notifier, and the rules that join them. See the module doc."""

    def __init__(
        self,
        engine: Engine,
        *,
        estimator: WaitEstimator | None = None,
        notifier: Notifier | None = None,
        sweep_every_s: float = 30.0,
        intake: IntakeSettings | None = None,
    ) -> None:
        if not (
            isinstance(sweep_every_s, int | float) and math.isfinite(sweep_every_s) and sweep_every_s > 0
        ):
            raise CoreError(f"Desk: sweep_every_s must be a number > 0, got {sweep_every_s!r}")
        self.engine = engine
        self.estimator = estimator
        self.notifier = notifier
        self.sweep_every_s = float(sweep_every_s)
        self._sweeps = notifier is not None and estimator is not None
        self._next_sweep = math.inf  # while customers wait: the next estimate sweep
        # next_deadline(): the earliest time at which ``tick`` has work to do, ``inf`` when none — the
        # engine's timers, and the estimate sweep when there is one (else the engine's own, called as is:
        # the simulator asks after every step)
        self.next_deadline: Callable[[], float] = (
            self._deadline_with_sweeps if self._sweeps else engine.next_deadline
        )
        self.intake = (
            IntakeRules(
                engine, intake.routing, intake.texts, estimator=estimator, choice_ttl_s=intake.choice_ttl_s
            )
            if intake is not None
            else None
        )
        self._observers: list[FactObserver] = []  # see subscribe()
        self._requests: dict[str, ev.CustomerRequested] = {}  # customers present: their request
        self._cancelled: dict[str, float] = {}  # openid -> when they cancelled
        # openid -> agent: they cancelled while a kfsession/create to this agent was in flight
        self._cancelled_creates: dict[str, str] = {}
        self._recent_closes: dict[tuple[str, str], float] = {}
        self._bound_quiet: bool | None = None  # the state the typed calls are bound for (_bind)
        self._bind()

    # ================================================================= inputs

    def handle(self, event: ev.Event, now: float) -> Step:
        """Apply ``event``; raises what the engine raises (``CoreError``) with nothing changed by the Desk."""
        if isinstance(event, ev.SessionClosed) and self._duplicate_close(event, now):
            return _NOTHING
        if self.intake is not None and isinstance(event, ROSTER_EVENTS):
            self.intake.roster_changed()  # the names customers use for agents are built again
        commands = self.engine.handle(event, now)
        if isinstance(event, ev.CustomerRequested | ev.CreateFailed):
            self._cancelled_creates.pop(event.openid, None)  # asked again, or the late create failed
        step = self._follow(commands, now, event)
        self._bind()
        return step

    def tick(self, now: float) -> Step:
        """The engine's timers (reservations, overflow, stale sessions), followed through; then the
        estimate sweep, when it is due."""
        self._forget(now)
        step = self._follow(self.engine.tick(now), now, None)
        if now >= self._next_sweep:
            self._next_sweep = math.inf
            step = Step(step.commands + self.sweep_estimates(now), step.facts)
            self._schedule_sweep(now)
        self._bind()
        return step

    def _deadline_with_sweeps(self) -> float:
        return min(self.engine.next_deadline(), self._next_sweep)

    def _schedule_sweep(self, now: float) -> None:
        if self._sweeps and self._next_sweep == math.inf and self.engine.queue_length():
            self._next_sweep = now + self.sweep_every_s

    # The simulator's typed calls: ``handle`` for the three events every customer brings, without building
    # the event (the engine's typed calls), followed through the same way. They return the commands alone;
    # the step's facts are ``facts`` until the next call. While nothing could read a typed call's facts
    # (``quiet``), the three names are bound to the engine's own calls and the engine records no facts for
    # them: the choice is made when the Desk's state changes (``_bind``), not at every call.

    customer_requested: Callable[[str, str | None, int, str | None, frozenset[str], float], list[Command]]
    session_created: Callable[[str, str, float], list[Command]]
    session_closed: Callable[[str, str, float], list[Command]]

    @property
    def facts(self) -> list[Fact]:
        """The facts of the last call."""
        return self.engine.facts

    @property
    def quiet(self) -> bool:
        """Whether a typed call's facts could change nothing: no estimator, notifier or observer reads them,
        and no cancel or request is remembered (those calls bring no cancel)."""
        return (
            self.estimator is None
            and self.notifier is None
            and not self._observers
            and not self._cancelled_creates
            and not self._requests
        )

    def _bind(self) -> None:
        """Bind the typed calls for the Desk's current state: straight to the engine's (which then records
        no facts for them) while ``quiet``, else to the ones that follow the facts through. Called whenever
        what ``quiet`` reads may have changed."""
        quiet = self.quiet
        if quiet == self._bound_quiet:
            return
        self._bound_quiet = quiet
        engine = self.engine
        engine.typed_facts = not quiet
        if quiet:
            self.customer_requested = engine.customer_requested
            self.session_created = engine.session_created
            self.session_closed = engine.session_closed
        else:
            self.customer_requested = self._requested_followed
            self.session_created = self._created_followed
            self.session_closed = self._closed_followed

    def _requested_followed(
        self,
        openid: str,
        group: str | None,
        priority: int,
        preferred_agent: str | None,
        tags: frozenset[str],
        now: float,
    ) -> list[Command]:
        commands = self.engine.customer_requested(openid, group, priority, preferred_agent, tags, now)
        self._cancelled_creates.pop(openid, None)
        request = ev.CustomerRequested(
            openid=openid,
            group=group,
            priority=priority,
            preferred_agent=preferred_agent,
            tags=tags,  # type: ignore[arg-type]  # attrs' converter takes any iterable
            arrived_at=now,
        )
        commands = self._follow(commands, now, request).commands
        self._bind()
        return commands

    def _created_followed(self, openid: str, kf_account: str, now: float) -> list[Command]:
        commands = self._follow(self.engine.session_created(openid, kf_account, now), now, None).commands
        self._bind()
        return commands

    def _closed_followed(self, openid: str, kf_account: str, now: float) -> list[Command]:
        commands = self._follow(self.engine.session_closed(openid, kf_account, now), now, None).commands
        self._bind()
        return commands

    def subscribe(self, observer: FactObserver) -> None:
        """Call ``observer(fact, now)`` with every fact from now on, in order, after the Desk itself
        followed it (metrics, pages, trackers)."""
        self._observers.append(observer)
        self._bind()

    @property
    def observers(self) -> tuple[FactObserver, ...]:
        """The observers subscribed (``subscribe``)."""
        return tuple(self._observers)

    def consider(self, inbound: Inbound, now: float) -> Answer:
        """What the customer's message means and what to do (router/core/intake.py). Reads the engine and
        keeps the agent lists sent; call it between steps (the intake does, on the daemon's event loop)."""
        if self.intake is None:
            raise CoreError("Desk.consider: this Desk was built without intake settings")
        return self.intake.consider(inbound, now)

    def on_user_message(self, openid: str, now: float) -> None:
        """The customer wrote to the account (WeChat's message window opens: notifications may go out)."""
        if self.notifier is not None:
            self.notifier.on_user_message(openid, now)

    def on_send_failed(self, openid: str, errcode: int) -> None:
        """A text the Desk asked for failed with ``errcode`` (some close the customer's window)."""
        if self.notifier is not None:
            self.notifier.on_send_failed(openid, errcode)

    def sweep_estimates(self, now: float) -> list[Command]:
        """Fresh estimates for the customers waiting; a text to those whose wait changed materially."""
        if self.notifier is None or self.estimator is None:
            return []
        out: list[Command] = []
        for view in self.engine.waiting(now):
            if view.preferred_agent is not None and view.preferred_until > now:
                continue  # told their chosen agent's wait; the group's applies after the fallback
            try:
                estimate = self.estimator.estimate(self.engine, view.openid, now)
            except CoreError:
                continue
            out += self.notifier.on_estimate(view.openid, estimate, now)
        return out

    def _forget(self, now: float) -> None:
        """Drop cancels and closes remembered longer than their memory, and agent lists past their time."""
        if self.intake is not None:
            self.intake.forget(now)
        for openid, at in list(self._cancelled.items()):
            if now - at > CANCEL_MEMORY_S:
                del self._cancelled[openid]
                self._cancelled_creates.pop(openid, None)
        for key, at in list(self._recent_closes.items()):
            if now - at > CLOSE_MEMORY_S:
                del self._recent_closes[key]

    # ================================================================= reading

    def estimate(self, openid: str, now: float) -> Estimate | None:
        """The remaining wait of a waiting customer (a pure query), or None (no estimator, not waiting)."""
        if self.estimator is None:
            return None
        try:
            return self.estimator.estimate(self.engine, openid, now)
        except CoreError:
            return None

    def request(self, openid: str) -> ev.CustomerRequested | None:
        """The request of a customer present (waiting, reserved or in session), as they asked."""
        return self._requests.get(openid)

    def cancelled_since(self, openid: str) -> float | None:
        """When ``openid`` cancelled their wait, while that is remembered (``CANCEL_MEMORY_S``)."""
        return self._cancelled.get(openid)

    def uncancel(self, openid: str) -> None:
        """``openid`` wrote again after cancelling: their next wait-list entry counts."""
        self._cancelled.pop(openid, None)

    # ================================================================= following the facts

    def _follow(self, commands: list[Command], now: float, event: ev.Event | None) -> Step:
        facts = self.engine.facts
        out = commands
        estimator = self.estimator
        for fact in facts:
            if estimator is not None:
                estimator.observe_fact(fact, now)
            if isinstance(fact, Queued):
                if isinstance(event, ev.CustomerRequested) and event.openid == fact.openid:
                    self._requests[fact.openid] = event
                out = out + self._queued(fact.openid, now)
            elif isinstance(fact, Released):
                self._estimate_arrival(fact.openid, now)  # routed at once, then back: still their first wait
            elif isinstance(fact, Assigned):
                out = out + self._assigned(fact, now)
            elif isinstance(fact, Requeued):
                if self.notifier is not None:  # the agent who takes over is announced
                    self.notifier.on_moved(fact.openid, now, group=fact.group)
            elif isinstance(fact, Left):
                self._left(fact, now)
        if self._sweeps and self._next_sweep == math.inf:
            self._schedule_sweep(now)
        for observer in self._observers:
            for fact in facts:
                observer(fact, now)
        return Step(out, facts)

    def _queued(self, openid: str, now: float) -> list[Command]:
        """The customer joined the queue: their arrival estimate, and the message with their place and
        estimate — or, waiting for the agent they chose, that agent's wait and how long they wait for
        them alone."""
        engine, estimator, notifier = self.engine, self.estimator, self.notifier
        estimate = self._estimate_arrival(openid, now)
        if estimator is None or estimate is None or notifier is None:
            return []
        ahead = engine.ahead_in_group(openid)
        view = engine.waiting_view(openid, now)
        if ahead is None or view is None:
            return []
        if view.preferred_agent is not None and view.preferred_until > now:
            wait = agent_wait(engine, estimator, view.preferred_agent, now, exclude=openid)
            agent = engine.agent(view.preferred_agent)
            name = display_name(agent) if agent is not None else view.preferred_agent
            return list(
                notifier.on_preferred(
                    openid,
                    name,
                    math.inf if wait is None else wait,
                    view.preferred_until - now,
                    now,
                    group=view.group,
                )
            )
        return list(notifier.on_queued(openid, ahead + 1, estimate, now, group=view.group))

    def _estimate_arrival(self, openid: str, now: float) -> Estimate | None:
        """The estimate of a customer who (again) waits for the first time in this visit, remembered by
        the estimator to be scored against their wait (none while they are reserved or served)."""
        if self.estimator is None:
            return None
        try:
            return self.estimator.estimate_arrival(self.engine, openid, now)
        except CoreError:
            return None

    def _assigned(self, fact: Assigned, now: float) -> list[Command]:
        if self._cancelled_creates.get(fact.openid) == fact.kf_account:
            # they cancelled while this create was in flight: it landed anyway; honour the cancel
            del self._cancelled_creates[fact.openid]
            return [CloseSession(openid=fact.openid, kf_account=fact.kf_account)]
        if self.notifier is None:
            return []
        view = self.engine.agent(fact.kf_account)
        nickname = view.nickname if view is not None else ""
        return list(self.notifier.on_assigned(fact.openid, nickname, now, kf_account=fact.kf_account))

    def _left(self, fact: Left, now: float) -> None:
        self._requests.pop(fact.openid, None)
        if fact.reason == "left:cancelled":
            self._cancelled[fact.openid] = now
            if fact.kf_account is not None:  # they were reserved: a create to this agent is in flight
                self._cancelled_creates[fact.openid] = fact.kf_account
        if self.notifier is not None:
            self.notifier.on_left(fact.openid, now)

    def _duplicate_close(self, e: ev.SessionClosed, now: float) -> bool:
        key = (e.openid, e.kf_account)
        engine = self.engine
        if engine.state(e.openid) is CustomerState.IN_SESSION and engine.with_agent(e.openid) == e.kf_account:
            self._recent_closes[key] = now
            return False
        at = self._recent_closes.get(key)
        return at is not None and now - at <= CLOSE_MEMORY_S
