"""Discrete-event replay of a trace through the real routing Engine and the pure WeChat model.

The clock is virtual. Trace records (and arrivals in blocks, ``sim.trace.Arrivals``) are streamed; before
each one, ``_run_until`` carries out what is due earlier: the heap of ``(t, priority, seq, item)`` holding
what the replay itself schedules — create answers (when a latency is injected), session ends (``service_s``
after the session is created), patience expiries and, when the trace models re-contact (``sim/service.py``),
the arrivals of customers whose session did not resolve — and the engine's own deadlines
(``Engine.next_deadline()`` → ``Engine.tick``, asked before every step). At equal times the order is:
create answers, session ends, trace records, patience expiries, engine ticks, re-contacts. Everything the engine asks for
is applied to ``sim.wechat_model.WeChatModel`` (the same model the fake HTTP server wraps), whose answers
become the engine's next events (``SessionCreated``/``CreateFailed``, ``SessionClosed``/``CloseFailed``); with no
latency a create is answered at once, before the next item. docs/simulator.md describes the semantics.

Resources and errors: the run owns nothing but memory; a record the engine refuses (``CoreError``) or a
model refusal the replay cannot explain raises :class:`SimError` naming the virtual time and the item.
Memory: what a customer is owed lives on their ``_Visitor`` while they are present; once an arrival is
settled (first session, or gone) its facts go to ``sim.tally.Tally`` (streaming; ``ArrivalLog`` keeps one
entry per arrival only with ``RunConfig.arrivals``), and a visitor is forgotten ``sticky_window_s`` after
they left (the engine's window: a customer back later is a new customer to the sticky metric too).
Checked as the run goes: ``capacity_violations`` (an agent holding more sessions than its
``max_sessions``) and ``double_assignments`` (a create for an arrival that already has a session).
"""

from __future__ import annotations

import dataclasses
import heapq
import math
import random
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from typing import Any, NamedTuple

from kfrouter.policies.registry import load_policy
from kfrouter.router.core import events as ev
from kfrouter.router.core.commands import CloseSession, Command, CreateSession, SendText
from kfrouter.router.core.desk import Desk
from kfrouter.router.core.engine import Engine, EngineConfig, Route
from kfrouter.router.core.errors import CoreError
from kfrouter.router.core.estimate import WaitEstimator
from kfrouter.router.core.model import AgentRow, CustomerState
from kfrouter.router.core.notify import Notifier, NotifyConfig
from kfrouter.sim.eta import EtaTracker
from kfrouter.sim.service import ServiceModel
from kfrouter.sim.tally import ABANDONED, SERVED, ArrivalLog, Tally
from kfrouter.sim.trace import AgentOffline, AgentOnline, Arrival, Arrivals, Header, Record, TraceReader
from kfrouter.sim.wechat_replay import ReplayWeChat

# heap priorities at equal times
P_ANSWER, P_END, P_TRACE, P_PATIENCE, P_TICK, P_RECONTACT = 0, 1, 2, 3, 4, 5

_NO_TAGS: frozenset[str] = frozenset()


class SimError(RuntimeError):
    """The replay cannot go on; the message names the virtual time and what was being processed."""


@dataclass(frozen=True)
class RunConfig:
    """How one replay runs. ``policy`` is a policy name (``load_policy``). ``overflow_after_s``: a
    customer of a group may be served by agents of every other group once they have waited this long
    (None: never). ``create_latency_s``: virtual seconds before a ``kfsession/create`` answer arrives;
    ``create_failure_rate``: share of creates answered with ``create_failure_errcode`` (drawn with the
    model's Random, seeded with ``seed``). ``on_agent_offline`` / ``offline_grace_s`` (every group's route)
    and ``stale_session_s`` are the engine's settings of the same names. ``check_engine``: call ``Engine.check()`` after every step
    (slow, for tests). ``timeline``: record (t, waiting customers) for plots. ``eta``: estimate the wait of
    every customer who has to wait and score it (``sim.eta.EtaTracker``; ``RunResult.eta``); off by
    default because it doubles the cost of a replay. ``notify``: the Desk's notifier plans the texts to
    waiting customers (router/core/notify.py, default budget; every arrival is a message from the
    customer, which opens WeChat's window), as the daemon would send them; ``RunResult`` counts them and
    checks each against the budget. ``arrivals``: also keep one entry per arrival (``RunResult.arrivals``,
    ``sim.tally.ArrivalLog``; tests and batch means; costs memory per customer)."""

    policy: str
    seed: int = 0
    default_capacity: int = 3
    reservation_timeout_s: float = 30.0
    overflow_after_s: float | None = 60.0
    preferred_wait_s: float = 120.0
    create_latency_s: float = 0.0
    create_failure_rate: float = 0.0
    create_failure_errcode: int = -1
    on_agent_offline: str = "keep"
    offline_grace_s: float = 120.0
    stale_session_s: float | None = None
    check_engine: bool = False
    timeline: bool = False
    eta: bool = False
    notify: bool = False
    notify_config: NotifyConfig | None = None  # the notifier's settings (None: its defaults)
    record_texts: bool = False  # keep every text (RunResult.texts), e.g. to compare with the daemon's
    arrivals: bool = False

    def __post_init__(self) -> None:
        if self.create_latency_s < 0 or not math.isfinite(self.create_latency_s):
            raise ValueError(f"create_latency_s must be >= 0, got {self.create_latency_s!r}")
        if not 0.0 <= self.create_failure_rate <= 1.0:
            raise ValueError(f"create_failure_rate must be in [0, 1], got {self.create_failure_rate!r}")
        if self.on_agent_offline not in ("keep", "reassign"):
            raise ValueError(f"on_agent_offline must be 'keep' or 'reassign', got {self.on_agent_offline!r}")
        if self.overflow_after_s is not None and self.overflow_after_s < 0:
            raise ValueError(f"overflow_after_s must be >= 0 or None, got {self.overflow_after_s!r}")


class SentText(NamedTuple):
    """A text the replay's Desk sent (``RunConfig.record_texts``)."""

    t: float
    openid: str
    kind: str
    text: str


@dataclass
class AgentStats:
    groups: tuple[str, ...] = ()
    max_sessions: int = 1
    online_since: float | None = None
    intervals: list[tuple[float, float, int]] = field(default_factory=list)  # (on, off, max_sessions)
    sessions: int = 0
    busy_s: float = 0.0  # session-seconds
    served: int = 0


@dataclass
class RunResult:
    """Raw outcome of one replay; ``sim.report`` turns it into metrics."""

    policy: str
    config: RunConfig
    header: Header
    customers: int = 0  # arrivals (absorbed ones excluded)
    tally: Tally = field(default_factory=Tally)  # served waits, abandonments, hit rates (streaming)
    arrivals: ArrivalLog | None = None  # one entry per arrival, with RunConfig.arrivals
    agents: dict[str, AgentStats] = field(default_factory=dict)
    absorbed_arrivals: int = 0  # arrivals of customers still in the system (the engine absorbs them)
    texts: list[SentText] = field(default_factory=list)  # RunConfig.record_texts
    messages_per_customer_max: int = 0  # most texts one customer got in one waiting spell (RunConfig.notify)
    notify_budget_violations: int = (
        0  # texts past the budget: outside the window, over a spell's or window's quota
    )
    ghost_sessions: int = 0  # sessions created for customers who had already left
    reassignments: int = 0  # sessions after the first for one arrival (the engine moved the customer)
    sessions_cut: int = 0  # sessions the engine closed before the service was over, not resumed
    capacity_violations: int = 0
    double_assignments: int = 0
    api_calls: int = 0
    api_failures: int = 0
    texts_sent: int = 0
    recontacts: int = 0  # sessions that did not resolve: the customer came back (trace header's recontact)
    events: int = 0
    ticks: int = 0
    end_t: float = 0.0  # last customer event (arrival, session end, abandonment)
    wall_s: float = 0.0
    skipped: dict[str, int] = field(default_factory=dict)
    timeline: list[tuple[float, int]] = field(default_factory=list)
    unrouted_groups: set[str] = field(default_factory=set)  # arrival groups missing from ``groups``
    eta: dict[str, Any] | None = None  # wait-estimate accuracy (sim.eta.EtaTracker.summary)


def engine_config(policy_obj: object, cfg: RunConfig, groups: Iterable[str]) -> EngineConfig:
    """One route per group, all using the run's policy; overflow to every other group after
    ``cfg.overflow_after_s``. Queue priorities follow the policy's ``honours_priority``."""
    name = getattr(policy_obj, "name", cfg.policy)
    all_groups = sorted(set(groups))
    routes: dict[str, Route] = {}
    for g in all_groups:
        overflow: tuple[tuple[str, float], ...] = ()
        if cfg.overflow_after_s is not None:
            overflow = tuple((o, float(cfg.overflow_after_s)) for o in all_groups if o != g)
        routes[g] = Route(
            policy=name,
            overflow=overflow,
            on_agent_offline=cfg.on_agent_offline,
            offline_grace_s=cfg.offline_grace_s,
        )
    return EngineConfig(
        default_capacity=cfg.default_capacity,
        reservation_timeout_s=cfg.reservation_timeout_s,
        preferred_wait_s=cfg.preferred_wait_s,
        stale_session_s=cfg.stale_session_s,
        routes=routes,
        default_route=Route(
            policy=name, on_agent_offline=cfg.on_agent_offline, offline_grace_s=cfg.offline_grace_s
        ),
        priorities=bool(getattr(policy_obj, "honours_priority", True)),
    )


class _Visitor:
    """The replay's record of one customer (one table lookup per step instead of one per question; made by
    ``_new_visitor``), kept
    while they are present and ``sticky_window_s`` after they left (``Simulation._forget``).
    ``idx``: index of their current arrival (-1: not in the system), with what that arrival brought:
    ``arrived``, ``group``, ``preferred`` (the agent named), ``remaining`` (service still owed) and
    ``started`` (had a session); ``sid`` (0: none; else the heap sequence number of the session's end),
    ``agent``, ``start``, ``sess_idx``: their open session and the arrival it serves (-1: a ghost session,
    opened after they left); ``outcome`` and ``last_agent``: of their last finished arrival and last
    session (None before any); ``left``: when they last left (an arrival settled, a ghost session ended).
    ``rec``, ``first_t``, ``attempt``: their current arrival's record, the time of the trace arrival it
    follows up and how many re-contacts came before it (0: the trace's own arrival)."""

    __slots__ = (
        "agent",
        "arrived",
        "attempt",
        "first_t",
        "group",
        "idx",
        "last_agent",
        "left",
        "openid",
        "outcome",
        "preferred",
        "rec",
        "remaining",
        "sess_idx",
        "sid",
        "start",
        "started",
        "texts",
        "window_start",
        "window_texts",
    )

    openid: str
    texts: int
    window_start: float
    window_texts: int
    idx: int
    sid: int
    agent: str
    start: float
    sess_idx: int
    outcome: int | None
    last_agent: str | None
    arrived: float
    group: str | None
    preferred: str | None
    remaining: float
    started: bool
    left: float
    rec: Arrival | None
    first_t: float
    attempt: int


def _new_visitor(openid: str) -> _Visitor:
    """A customer the replay has not seen lately. (No ``__init__``: in Python 3.11 a class whose
    ``__init__`` is Python code runs it in a second interpreter loop, and the replay makes one per
    customer.)"""
    v = _Visitor()
    v.openid = openid
    # texts received (RunConfig.notify): in the current waiting spell, and since their last message
    v.texts = 0
    v.window_start = -math.inf
    v.window_texts = 0
    v.idx = -1
    v.sid = 0
    v.agent = ""
    v.start = 0.0
    v.sess_idx = -1
    v.outcome = None
    v.last_agent = None
    v.arrived = 0.0
    v.group = None
    v.preferred = None
    v.remaining = 0.0
    v.started = False
    v.left = math.nan
    v.rec = None
    v.first_t = 0.0
    v.attempt = 0
    return v


TraceItem = Record | Arrivals  # what a replay reads: records, and arrivals in blocks (sim.gen.generate_blocks)


def _read_ahead(items: Iterator[TraceItem], size: int = 2048) -> Iterator[list[TraceItem]]:
    """``items``, ``size`` at a time. The trace's source (generator or file reader) then runs for a whole
    run of records at once instead of between every two engine steps, which keeps each one's code and data
    in the CPU's caches (about 10% of a replay's time on the M/M/c benchmark, before arrivals came in
    blocks; blocks of arrivals have that by themselves)."""
    while True:
        chunk = list(islice(items, size))
        if not chunk:
            return
        yield chunk


class _EventCalls:
    """The Desk's three typed calls for a stand-in engine (tests) that only has ``handle``: each builds its
    event and hands it over."""

    def __init__(self, handle: Callable[[ev.Event, float], list[Command]]) -> None:
        self._handle = handle

    def customer_requested(
        self,
        openid: str,
        group: str | None,
        priority: int,
        preferred_agent: str | None,
        tags: frozenset[str],
        now: float,
    ) -> list[Command]:
        event = ev.CustomerRequested(
            openid=openid,
            group=group,
            priority=priority,
            preferred_agent=preferred_agent,
            tags=tags,  # type: ignore[arg-type]  # attrs' converter takes any iterable
            source="trace",
        )
        return self._handle(event, now)

    def session_created(self, openid: str, kf_account: str, now: float) -> list[Command]:
        return self._handle(ev.SessionCreated(openid=openid, kf_account=kf_account, source="api"), now)

    def session_closed(self, openid: str, kf_account: str, now: float) -> list[Command]:
        return self._handle(ev.SessionClosed(openid=openid, kf_account=kf_account), now)


class Simulation:
    """One replay of one trace under one policy. ``run()`` consumes the records and returns the result."""

    def __init__(
        self,
        header: Header,
        records: Iterable[TraceItem],
        cfg: RunConfig,
        *,
        groups: Iterable[str] = (),
        progress: Callable[[], None] | None = None,
        skipped: Callable[[], dict[str, int]] | None = None,
    ) -> None:
        self.cfg = cfg
        self._items = _read_ahead(iter(records))
        self._skipped = skipped
        self._progress = progress
        self.policy = load_policy(cfg.policy)
        self._groups = set(groups)
        self._rng = random.Random(cfg.seed)
        self.wechat = ReplayWeChat(self._rng, cfg.create_failure_rate, cfg.create_failure_errcode)
        self.res = RunResult(policy=cfg.policy, config=cfg, header=header)
        self._service = ServiceModel.from_header(header)  # session lengths by who serves (sim/service.py)
        self.engine: Engine | None = None
        self.desk: Desk | None = None  # drives the engine (None for a stand-in engine in tests)
        self._typed: Desk | _EventCalls  # the three calls every customer makes (set by _bind_engine)
        # what the replay itself scheduled: (t, priority, sequence number, item), read by unpacking
        self._heap: list[tuple[float, int, int, Any]] = []
        self._seq = 0
        self._visitors: dict[str, _Visitor] = {}  # customers present, and those who left lately
        # (when they left, visitor) in order of leaving: _forget drops visitors sticky_window_s after that
        self._left: deque[tuple[float, _Visitor]] = deque()
        self._window = math.inf  # the engine's sticky_window_s (set by _run)
        self._tally = self.res.tally
        self._log = self.res.arrivals = ArrivalLog() if cfg.arrivals else None
        self._n = 0  # arrivals so far
        self._waiting = 0
        self.now = 0.0
        self.eta = EtaTracker() if cfg.eta else None
        self._check_engine = cfg.check_engine
        self._timeline = cfg.timeline

    # ------------------------------------------------------------------------------------ engine

    def _make_engine(self) -> Engine:
        return Engine(engine_config(self.policy, self.cfg, self._groups), {self.policy.name: self.policy})

    def _bind_engine(self, engine: Engine) -> None:
        """The three calls every customer makes (``self._typed``): the Desk's typed ones (no event object
        built), or, for a stand-in engine (tests), ones that build the event and hand it to ``handle``."""
        if isinstance(engine, Engine):
            notifier = Notifier(self.cfg.notify_config or NotifyConfig()) if self.cfg.notify else None
            estimator = self.eta.estimator if self.eta is not None else None
            if notifier is not None and estimator is None:
                estimator = WaitEstimator()  # the queue message carries an estimate
            desk = self.desk = Desk(engine, estimator=estimator, notifier=notifier)
            if self.eta is not None:
                self.eta.watch(engine)
                desk.subscribe(self.eta.on_fact)
            self._typed = desk
        else:
            self._typed = _EventCalls(engine.handle)

    def _handle(self, event: ev.Event, now: float) -> list[Command]:
        if self.desk is not None:
            return self.desk.handle(event, now).commands
        assert self.engine is not None
        return self.engine.handle(event, now)

    def _tick(self, now: float) -> list[Command]:
        if self.desk is not None:
            return self.desk.tick(now).commands
        assert self.engine is not None
        return self.engine.tick(now)

    def _feed(self, event: ev.Event, now: float, what: str, arg: object = None) -> None:
        """Hand ``event`` to the engine and carry out its commands. ``what`` names the cause in an error,
        formatted with ``arg`` only then (``str.format``)."""
        try:
            cmds = self._handle(event, now)
        except CoreError as exc:
            raise SimError(f"t={now:.6f}: the engine refused {what.format(arg)}: {exc}") from exc
        self._took(cmds, now)

    def _took(self, cmds: list[Command], now: float) -> None:
        """The engine took one event: carry out its commands."""
        self.res.events += 1
        if cmds:
            self._apply(cmds, now)
        if self._check_engine:
            assert self.engine is not None
            self.engine.check()

    def _apply(self, cmds: list[Command], now: float) -> None:
        """Carry out commands; instant create answers feed back until nothing is left to do."""
        pending = cmds  # the engine's own fresh list: extended in place with what the answers lead to
        i = 0
        latency = self.cfg.create_latency_s
        res = self.res
        visitors = self._visitors
        typed = self._typed
        while i < len(pending):
            cmd = pending[i]
            i += 1
            res.api_calls += 1
            event: ev.Event | None
            if type(cmd) is CreateSession:
                openid = cmd.openid
                agent = cmd.kf_account
                v = visitors.get(openid)
                if v is None or v.sid or (v.idx < 0 and v.outcome != ABANDONED):
                    # a second session at once, or one for an arrival already served (or never seen);
                    # a create for a customer who just left is a race, answered and counted as a ghost
                    res.double_assignments += 1
                if latency > 0:
                    self._push(now + latency, P_ANSWER, (openid, agent))
                    continue
                code = self._answer_create(openid, agent, now, v)
                if code != 0:
                    event = ev.CreateFailed(openid=openid, kf_account=agent, errcode=code)
                else:
                    try:
                        more = typed.session_created(openid, agent, now)
                    except CoreError as exc:
                        raise SimError(
                            f"t={now:.6f}: the engine refused {openid!r}'s session: {exc}"
                        ) from exc
                    res.events += 1
                    if more:
                        pending.extend(more)
                    continue
            elif type(cmd) is CloseSession:
                event = self._close_by_api(cmd.openid, cmd.kf_account, now)
            elif type(cmd) is SendText:
                self._text_sent(cmd, now)
                continue
            else:  # pragma: no cover - the Command union is closed
                raise SimError(f"t={now:.6f}: unknown command {cmd!r}")
            try:
                more = self._handle(event, now)
            except CoreError as exc:
                raise SimError(f"t={now:.6f}: the engine refused {event!r}: {exc}") from exc
            res.events += 1
            if type(event) is ev.SessionClosed:
                self._after_api_close(event.openid, now)
            if more:
                pending.extend(more)

    def _text_sent(self, cmd: SendText, now: float) -> None:
        """A text to a customer: counted, and checked against the budget the notifier promises (inside the
        window their last message opened, at most ``per_window`` per window and ``max_per_customer`` per
        waiting spell: from their arrival, or from being routed again) — an independent check of the production notifier, which must never trip it."""
        res = self.res
        res.texts_sent += 1
        if self.cfg.record_texts:
            res.texts.append(SentText(now, cmd.openid, cmd.kind, cmd.text))
        v = self._visitor(cmd.openid)
        v.texts += 1
        v.window_texts += 1
        if v.texts > res.messages_per_customer_max:
            res.messages_per_customer_max = v.texts
        budget = self.cfg.notify_config or NotifyConfig()
        if (
            now - v.window_start >= budget.window_s
            or v.texts > budget.max_per_customer
            or v.window_texts > budget.per_window
        ):
            res.notify_budget_violations += 1

    def _answer_create(self, openid: str, agent: str, now: float, v: _Visitor | None = None) -> int:
        """WeChat's answer to a create (its errcode); on success the sim's record of the session starts.
        ``v``: the customer's record, when the caller has it."""
        code = self.wechat.create(agent, openid, now)
        if code != 0:
            self.res.api_failures += 1
            return code
        if v is None:
            v = self._visitor(openid)
        if not v.sid:
            self._start_session(v, agent, now)
        return 0

    def _visitor(self, openid: str) -> _Visitor:
        v = self._visitors.get(openid)
        if v is None:
            v = self._visitors[openid] = _new_visitor(openid)
        return v

    def _close_by_api(self, openid: str, agent: str, now: float) -> ev.Event:
        code = self.wechat.close(agent, openid, now)
        if code != 0:
            self.res.api_failures += 1
            return ev.CloseFailed(openid=openid, kf_account=agent, errcode=code)
        self._end_session(self._visitors[openid], now)
        return ev.SessionClosed(openid=openid, kf_account=agent)

    def _after_api_close(self, openid: str, now: float) -> None:
        """The engine closed a session itself: if it routes the customer again (reassignment) the arrival
        stays in the system and keeps the service it is still owed; otherwise (a stale session) it ends."""
        v = self._visitors.get(openid)
        if v is None or v.idx < 0 or v.sid:
            return
        idx = v.idx
        state = getattr(self.engine, "state", None)
        if state is not None and state(openid) in (
            CustomerState.WAITING,
            CustomerState.RESERVED,
            CustomerState.IN_SESSION,
        ):
            v.texts = 0  # routed again: a new waiting spell, with a quota of its own
            return
        if v.remaining > 1e-9:
            self.res.sessions_cut += 1
        self._finish_arrival(v, idx, SERVED, now)

    # ------------------------------------------------------------------------------------ sessions

    def _start_session(self, v: _Visitor, agent: str, now: float) -> None:
        res = self.res
        st = res.agents.get(agent)
        if st is None:
            raise SimError(
                f"t={now:.6f}: WeChat accepted a session with {agent!r}, an agent the trace never had"
            )
        st.sessions += 1
        if st.sessions > st.max_sessions:
            res.capacity_violations += 1
        # the session's id is the sequence number of its end in the heap: the end is stale if the
        # customer's session has changed since (closed through the API, maybe reopened)
        idx = v.idx
        v.agent = agent
        v.start = now
        v.sess_idx = idx
        if idx < 0:
            # the customer is no longer here (a create answer arrived after their patience ran out):
            # the agent finds nobody and the session ends at once
            res.ghost_sessions += 1
            v.sid = self._push(now, P_END, v)
            return
        service = self._service
        if service.active and not v.started:  # the session's length depends on who serves it
            v.remaining = service.length(v.remaining, v.group, agent, v.last_agent)
        v.sid = self._push(now + v.remaining, P_END, v)
        if v.started:
            res.reassignments += 1  # moved by the engine: the service goes on with this agent
            return
        # the arrival is settled: its facts go to the tally (v.last_agent is still their previous visit's)
        v.started = True
        wait = now - v.arrived
        g = v.group
        own = None if g is None else g in st.groups
        last = v.last_agent
        sticky = None if last is None else last == agent
        named = v.preferred
        preferred = None if named is None else named == agent
        self._tally.add_served(wait, own, sticky, preferred)
        if self._log is not None:
            self._log.served(idx, wait, agent, own, sticky, preferred)
        self._waiting -= 1
        if self._timeline:
            self._mark_timeline(now)

    def _end_session(self, v: _Visitor, now: float) -> int:
        """Close the sim's record of ``v``'s session; returns the arrival index (-1: a ghost)."""
        agent, start, idx = v.agent, v.start, v.sess_idx
        v.sid = 0
        res = self.res
        st = res.agents[agent]
        st.sessions -= 1
        st.busy_s += now - start
        if idx >= 0:
            st.served += 1
            v.last_agent = agent
            v.remaining -= now - start
            if now > res.end_t:  # the last customer event so far
                res.end_t = now
        return idx

    def _finish_arrival(self, v: _Visitor, idx: int, outcome: int, now: float) -> None:
        if v.idx == idx:
            v.idx = -1
        v.outcome = outcome
        self._idle(v, now)

    def _idle(self, v: _Visitor, now: float) -> None:
        """``v`` left the system at ``now`` (forgotten after the sticky window unless they come back)."""
        v.left = now
        self._left.append((now, v))

    def _forget(self, now: float) -> None:
        """Drop the visitors who left more than ``sticky_window_s`` before ``now`` and have not been back
        (nor have a session open) since: nothing per customer outlives the engine's sticky window."""
        left = self._left
        visitors = self._visitors
        horizon = now - self._window
        while left:
            t, v = left[0]
            if t >= horizon:
                return
            left.popleft()
            if v.left == t and v.idx < 0 and not v.sid and visitors.get(v.openid) is v:
                del visitors[v.openid]

    def _on_session_end(self, sid: int, v: _Visitor, now: float) -> None:
        """A session's service is over: WeChat closes it, the arrival it served is done."""
        if v.sid != sid:
            return  # closed earlier through the API
        openid = v.openid
        agent = v.agent
        code = self.wechat.close(agent, openid, now)
        if code != 0:
            raise SimError(f"t={now:.6f}: WeChat refused to close {openid!r} with {agent!r} (errcode {code})")
        idx = self._end_session(v, now)
        if idx >= 0:
            self._finish_arrival(v, idx, SERVED, now)
            if self._service.recontact is not None:
                self._maybe_recontact(v, agent, now)
        else:
            self._idle(v, now)  # a ghost session ended: the customer is idle again
        try:
            cmds = self._typed.session_closed(openid, agent, now)
        except CoreError as exc:
            raise SimError(f"t={now:.6f}: the engine refused the end of {openid}'s session: {exc}") from exc
        self._took(cmds, now)

    def _maybe_recontact(self, v: _Visitor, agent: str, now: float) -> None:
        """``v``'s session with ``agent`` is over: if it did not resolve (``Recontact.comes_back``), their
        next arrival is scheduled."""
        model = self._service.recontact
        rec = v.rec
        assert model is not None and rec is not None
        gap = model.comes_back(
            self.cfg.seed, v.openid, v.first_t, v.attempt, self._service.proficiency(agent, v.group)
        )
        if gap is None:
            return
        self.res.recontacts += 1
        again = Arrival(
            now + gap, rec.customer, rec.service_s, rec.group, rec.priority, rec.patience_s, rec.text, None, rec.tags
        )
        self._push(again.t, P_RECONTACT, (again, v.first_t, v.attempt + 1))

    # ------------------------------------------------------------------------------------ trace records

    def _on_arrival(
        self,
        now: float,
        customer: str,
        service_s: float,
        group: str | None,
        priority: int,
        patience_s: float | None,
        preferred: str | None,
        tags: tuple[str, ...],
        first_t: float | None = None,
        attempt: int = 0,
    ) -> None:
        """An arrival (the fields of ``Arrival``; ``now`` is its ``t``): from the trace, or (``attempt`` > 0)
        a re-contact following up the trace arrival at ``first_t``."""
        res = self.res
        self._forget(now)
        v = self._visitors.get(customer)
        if v is None:
            v = self._visitors[customer] = _new_visitor(customer)
        elif v.idx >= 0:
            res.absorbed_arrivals += 1
            return
        idx = self._n
        self._n = idx + 1
        v.idx = idx
        v.arrived = now
        v.group = group
        v.preferred = preferred
        v.remaining = service_s
        v.started = False
        if self._service.recontact is not None:  # the arrival, to come back with if unresolved
            v.rec = Arrival(now, customer, service_s, group, priority, patience_s, "", preferred, tags)
            v.first_t = now if first_t is None else first_t
            v.attempt = attempt
        if self._log is not None:  # a returning customer: v.last_agent is set
            self._log.arrived(idx, now, group, v.last_agent is not None, preferred)
        self._waiting += 1
        if self._timeline:
            self._mark_timeline(now)
        if now > res.end_t:  # the last customer event so far
            res.end_t = now
        if group is not None and group not in self._groups:
            res.unrouted_groups.add(group)
        if patience_s is not None:
            self._push(now + patience_s, P_PATIENCE, (idx, v))
        self.wechat.transfer(customer, now)
        if self.cfg.notify:  # the customer wrote: WeChat's window opens, a new visit's texts begin
            v.texts = v.window_texts = 0
            v.window_start = now
            if self.desk is not None:
                self.desk.on_user_message(customer, now)
        try:
            cmds = self._typed.customer_requested(
                customer, group, priority, preferred, _NO_TAGS if not tags else frozenset(tags), now
            )
        except CoreError as exc:
            raise SimError(f"t={now:.6f}: the engine refused the arrival of {customer!r}: {exc}") from exc
        self._took(cmds, now)

    def _on_patience(self, idx: int, v: _Visitor, now: float) -> None:
        if v.started or v.idx != idx:
            return
        openid = v.openid
        res = self.res
        self._tally.add_abandoned()
        if self._log is not None:
            self._log.abandoned(idx, now - v.arrived)
        res.end_t = max(res.end_t, now)
        self._finish_arrival(v, idx, ABANDONED, now)
        self._waiting -= 1
        self._mark_timeline(now)
        self.wechat.leave(openid)
        self._feed(ev.CustomerLeft(openid=openid, reason="patience"), now, "{!r} leaving", openid)

    def _on_agent_online(self, rec: AgentOnline, now: float) -> None:
        st = self.res.agents.get(rec.agent)
        if st is None:
            st = self.res.agents[rec.agent] = AgentStats()
        st.groups = rec.groups
        if st.online_since is not None and st.max_sessions != rec.max_sessions:
            st.intervals.append((st.online_since, now, st.max_sessions))
            st.online_since = now
        st.max_sessions = rec.max_sessions
        if st.online_since is None:
            st.online_since = now
        self.wechat.set_agent(rec.agent, now, status=1, auto_accept=rec.max_sessions)
        self._service.agent_online(rec.agent, rec.skills)
        assert self.engine is not None
        self._feed(
            ev.AgentConfigured(
                kf_account=rec.agent,
                groups=rec.groups,
                max_sessions=rec.max_sessions,
                skills=rec.skills,
                nickname=rec.nickname or None,
            ),
            now,
            "agent {!r} coming online",
            rec.agent,
        )
        row = AgentRow(
            kf_account=rec.agent, status=1, accepted_case=st.sessions, auto_accept=rec.max_sessions
        )
        seen = ev.AgentsSeen(rows=[row], complete=False)  # type: ignore[list-item]
        self._feed(seen, now, "agent {!r} coming online", rec.agent)

    def _on_agent_offline(self, rec: AgentOffline, now: float) -> None:
        st = self.res.agents.get(rec.agent)
        if st is None:
            raise SimError(f"t={now:.6f}: agent_offline for {rec.agent!r}, who never came online")
        if st.online_since is not None:
            st.intervals.append((st.online_since, now, st.max_sessions))
            st.online_since = None
        self.wechat.set_agent(rec.agent, now, status=0, auto_accept=st.max_sessions)
        row = AgentRow(kf_account=rec.agent, status=0, accepted_case=st.sessions, auto_accept=st.max_sessions)
        seen = ev.AgentsSeen(rows=[row], complete=False)  # type: ignore[list-item]
        self._feed(seen, now, "agent {!r} going offline", rec.agent)

    # ------------------------------------------------------------------------------------ the loop

    def _push(self, t: float, prio: int, item: object) -> int:
        """Schedule ``item`` at ``t``; returns its sequence number."""
        seq = self._seq = self._seq + 1
        heapq.heappush(self._heap, (t, prio, seq, item))
        return seq

    def _mark_timeline(self, now: float) -> None:
        if self.cfg.timeline:
            self.res.timeline.append((now, self._waiting))

    def run(self) -> RunResult:
        wall0 = time.perf_counter()
        self.engine = self._make_engine()
        if not isinstance(self.engine, Engine):
            self.eta = None  # a stand-in engine (tests) has no read API to estimate from
        engine = self.engine
        self._bind_engine(engine)
        # visitors are kept as long as the engine remembers a customer (a stand-in engine: for the run)
        self._window = getattr(getattr(engine, "config", None), "sticky_window_s", math.inf)
        self._next_deadline = self.desk.next_deadline if self.desk is not None else engine.next_deadline
        progress = self._progress
        run_until = self._run_until
        on_arrival = self._on_arrival
        # Each trace item in order, after what is due before it (``_run_until``): a record at ``t`` goes
        # after what the replay scheduled for an earlier time, or for ``t`` with a lower priority.
        for chunk in self._items:
            for item in chunk:
                if isinstance(item, Arrivals):
                    for t, customer, service_s, group, priority, patience_s, _text, preferred, tags in zip(
                        *item, strict=True
                    ):
                        run_until((t, P_TRACE))
                        self.now = t
                        on_arrival(t, customer, service_s, group, priority, patience_s, preferred, tags)
                    continue
                now = item.t
                run_until((now, P_TRACE))
                self.now = now
                if type(item) is Arrival:
                    on_arrival(
                        now,
                        item.customer,
                        item.service_s,
                        item.group,
                        item.priority,
                        item.patience_s,
                        item.preferred_agent,
                        item.tags,
                    )
                elif type(item) is AgentOnline:
                    self._on_agent_online(item, now)
                else:
                    assert type(item) is AgentOffline
                    self._on_agent_offline(item, now)
            if progress is not None:
                progress()
        run_until((math.inf, P_ANSWER))  # everything left
        self._finish()
        self.res.wall_s = time.perf_counter() - wall0
        return self.res

    def _run_until(self, key: tuple[float, int]) -> None:
        """Carry out, in time order, what is due before ``key`` (a trace record's ``(t, P_TRACE)``): what
        the replay scheduled (the heap: ``(t, priority, sequence number, item)``), and the engine's timers
        (``tick`` at its next deadline, after everything else due at that time: ``P_TICK``)."""
        heap = self._heap
        heappop = heapq.heappop
        next_deadline = self._next_deadline
        while True:
            deadline = next_deadline()
            tick = (deadline, P_TICK)
            if heap and heap[0] < key and heap[0] < tick:
                now, prio, seq, item = heappop(heap)
                self.now = now
                if prio == P_END:
                    self._on_session_end(seq, item, now)
                elif prio == P_PATIENCE:
                    idx, visitor = item
                    self._on_patience(idx, visitor, now)
                elif prio == P_RECONTACT:
                    again, first, attempt = item
                    self._on_arrival(
                        now,
                        again.customer,
                        again.service_s,
                        again.group,
                        again.priority,
                        again.patience_s,
                        again.preferred_agent,
                        again.tags,
                        first,
                        attempt,
                    )
                else:
                    assert prio == P_ANSWER
                    who, agent = item
                    code = self._answer_create(who, agent, now)
                    answer: ev.Event = (
                        ev.CreateFailed(openid=who, kf_account=agent, errcode=code)
                        if code
                        else ev.SessionCreated(openid=who, kf_account=agent, source="api")
                    )
                    self._feed(answer, now, "the create answer for {!r}", who)
            elif tick < key:
                self.now = deadline
                cmds = self._tick(deadline)
                self.res.ticks += 1
                if cmds:
                    self._apply(cmds, deadline)
            else:
                return

    def _finish(self) -> None:
        res = self.res
        res.customers = self._n
        end = res.end_t
        for st in res.agents.values():
            if st.online_since is not None:
                st.intervals.append((st.online_since, max(end, st.online_since), st.max_sessions))
                st.online_since = None
        if self._skipped is not None:
            res.skipped = dict(self._skipped())
        if self.eta is not None:
            res.eta = self.eta.summary()


def run_records(
    header: Header,
    records: Iterable[TraceItem],
    cfg: RunConfig,
    *,
    groups: Iterable[str] = (),
    progress: Callable[[], None] | None = None,
) -> RunResult:
    """Replay ``records`` (in time order: records, and arrivals in blocks such as
    ``sim.gen.generate_blocks`` makes) under ``cfg``. ``groups``: groups known up front (the engine gets
    one route per group; groups first seen later fall back to the default route)."""
    return Simulation(header, records, cfg, groups=groups, progress=progress).run()


def groups_of(header: Header, records: Iterable[Record] | None = None) -> set[str]:
    """The groups a trace uses: the header's ``groups`` list when present (written by ``sim gen``),
    else every group named by an ``agent_online`` or ``arrival`` in ``records``."""
    listed = header.meta.get("groups")
    if isinstance(listed, list) and all(isinstance(g, str) and g for g in listed):
        return set(listed)
    found: set[str] = set()
    for rec in records or ():
        if type(rec) is Arrival:
            if rec.group is not None:
                found.add(rec.group)
        elif type(rec) is AgentOnline:
            found.update(rec.groups)
    return found


def run_trace(
    path: str,
    cfg: RunConfig,
    *,
    progress: Callable[[float], None] | None = None,
) -> RunResult:
    """Replay the trace file at ``path`` (streamed; scanned once first for its groups when the header
    does not list them). ``progress`` receives the share of the file read so far, 0..1."""
    with TraceReader(path) as reader:
        header = reader.header
        groups = None if "groups" in header.meta else groups_of(header, reader)
    with TraceReader(path) as reader:
        if groups is None:
            groups = groups_of(header)
        tick = None if progress is None else (lambda: progress(reader.fraction()))
        sim = Simulation(
            reader.header, reader, cfg, groups=groups, progress=tick, skipped=lambda: reader.skipped
        )
        return sim.run()


def run_with_eta(
    header: Header,
    records: Iterable[TraceItem],
    cfg: RunConfig,
    tracker: EtaTracker,
    *,
    groups: Iterable[str] = (),
) -> RunResult:
    """Replay ``records`` under ``cfg`` with ``tracker`` (e.g. one with a warm-up or its own estimator
    config) scoring the Desk's arrival estimates; returns the ``RunResult``, whose ``eta`` is
    ``tracker.summary()``."""
    sim = Simulation(header, records, dataclasses.replace(cfg, eta=True), groups=groups)
    sim.eta = tracker
    return sim.run()
