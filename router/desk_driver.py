"""What the Official Account runner (router/daemon.py) and the WeCom daemon (router/wecom_daemon.py) share:
one account's Desk, driven from ONE task.

``DeskDriver`` holds the account's Desk (``router.desk_setup.build_desk``), its inbox, observers and store,
and what a daemon's life is read by (``started``, ``stopped``, ``stopping``, ``status``). Every input is
applied in order by the engine task (``router.inbox.drive``, started by ``_start_engine``): ``_apply`` runs
an event through the Desk, logs it (``_log_event``), hands its facts to ``_on_facts`` and each command,
logged once here, to ``_carry_out``; ``_tick`` does the same for the Desk's timers. Before the engine task
runs, start-up applies inputs itself (``_apply_direct``: one the engine refuses is logged and skipped);
``_put`` takes the way that fits. ``_restore(store)`` is start-up's common first step (the configured
agents, their local settings from the store, the customers' last agents), ``_until_ok`` its retry of the
first agents poll.

Public surface of both daemons: ``submit()``, ``wake()``, ``stopping``, ``status``, ``inbox_length()``,
``health()`` (the engine's counts, ``COUNTS``, with what ``_health_more()`` adds).

Rules: a subclass names its logger and its tasks (``log``, ``task_prefix``) and says how facts and commands
become I/O (``_on_facts``, ``_carry_out``); background tasks are started with ``_spawn`` while ``run()``'s
``TaskGroup`` (``_tg``) is open; ``CancelledError`` is always re-raised.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Iterable
from typing import Any

from kfrouter.router.clock import Clock, SteadyClock
from kfrouter.router.config import Config
from kfrouter.router.core import events as ev
from kfrouter.router.core.commands import CloseSession, Command, CreateSession, SendText
from kfrouter.router.core.errors import CoreError
from kfrouter.router.core.facts import Fact
from kfrouter.router.desk_setup import DaemonOptions, build_desk
from kfrouter.router.edges.store import Store, StoredState
from kfrouter.router.inbox import Inbox, Item, drive
from kfrouter.router.logs import words
from kfrouter.router.observe import Observation, Observer, Stepped

COUNTS = ("inbox", "queue", "reservations", "sessions", "agents_online", "agents_free")
"""The engine's counts in ``health()`` (a host answers their sums over its accounts)."""


def run_status(*, stopping: bool, started: bool) -> str:
    """``starting`` (recovering), ``running`` (routing) or ``stopping``."""
    return "stopping" if stopping else ("running" if started else "starting")


class DeskDriver:
    """One account's Desk and the task that drives it; see the module docstring."""

    log = logging.getLogger("kfrouter.daemon")
    task_prefix = "kfrouter-"

    def __init__(
        self,
        config: Config,
        *,
        clock: Clock | None = None,
        options: DaemonOptions | None = None,
        store: Store | None = None,
    ) -> None:
        self.config = config
        self.options = options if options is not None else DaemonOptions()
        self.clock: Clock = clock if clock is not None else SteadyClock()
        self.desk = build_desk(config, self.options)
        self.engine = self.desk.engine
        self.estimator = self.desk.estimator
        self.notifier = self.desk.notifier
        self.observers: list[Observer] = []
        self.started = asyncio.Event()
        self.stopped = asyncio.Event()
        self.store: Store | None = store
        self._own_store = store is None
        self._inbox = Inbox()
        self._stop_event = asyncio.Event()
        self._stopping = False
        self._engine_running = False
        self._tg: asyncio.TaskGroup | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._rng = random.Random(self.options.seed)
        self._started_at = time.time()

    # ============================================================ public surface

    async def submit(self, event: ev.Event) -> list[Command]:
        """Apply ``event`` through the inbox (after everything queued before it) and return the commands
        the engine emitted (they are carried out as usual). Raises what the engine raised."""
        fut: asyncio.Future[list[Command]] = asyncio.get_running_loop().create_future()
        self._inbox.put(event, future=fut)
        return await fut

    def wake(self) -> None:
        """Make the engine task check its timers now (after a test moved the clock)."""
        self._inbox.wake()

    @property
    def stopping(self) -> bool:
        """True from the moment a shutdown began."""
        return self._stopping

    @property
    def status(self) -> str:
        """``starting`` (recovering), ``running`` (routing) or ``stopping``."""
        return run_status(stopping=self._stopping, started=self.started.is_set())

    def inbox_length(self) -> int:
        """Inputs queued for the engine task."""
        return len(self._inbox)

    def health(self) -> dict[str, Any]:
        """What ``/healthz`` answers: the status, the engine's counts (``COUNTS``), what the daemon adds
        (``_health_more``) and the uptime."""
        agents = self.engine.agents()
        return {
            "status": self.status,
            "inbox": len(self._inbox),
            "queue": self.engine.queue_length(),
            "reservations": len(self.engine.reservations()),
            "sessions": len(self.engine.sessions()),
            "agents_online": sum(1 for a in agents if a.online),
            "agents_free": sum(1 for a in agents if a.free),
            **self._health_more(),
            "uptime_s": round(time.time() - self._started_at, 3),
        }

    def _health_more(self) -> dict[str, Any]:
        return {}

    # ============================================================ tasks

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        """A background task of ``run()`` (named ``task_prefix + name``), cancelled with the others."""
        assert self._tg is not None, "background tasks are only started while run() is running"
        task = self._tg.create_task(coro, name=f"{self.task_prefix}{name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _start_engine(self) -> None:
        """From now on every input goes through the inbox and the engine task applies it."""
        self._engine_running = True
        self._spawn(
            drive(
                self._inbox,
                step=self._step,
                tick=self._tick,
                next_deadline=self.desk.next_deadline,
                now=self.clock.now,
                on_error=self._on_step_error,
                sweep_s=self.options.sweep_s,
            ),
            "engine",
        )

    def _fail_pending(self) -> None:
        """Shutting down: callers still waiting for a queued input are told it will not be applied."""
        for item in self._inbox.drain_pending():
            if item.future is not None and not item.future.done():
                item.future.set_exception(RuntimeError("kfrouter is shutting down"))

    # ============================================================ start-up

    def _restore(self, store: Store) -> StoredState:
        """Start-up's first step: the configured agents, their local settings from the store and the
        customers' last agents (for stickiness) go to the engine; the stored state is returned for the rest
        of the recovery."""
        now = self.clock.now()
        state = store.load_state(history_since=now - self.engine.config.sticky_window_s)
        self.log.info(
            "start-up: store has %d waiting, %d reservations, %d open sessions, %d agents with local settings",
            len(state.waiting),
            len(state.reservations),
            len(state.in_session),
            len(state.agents),
        )
        for event in self.config.agent_events():
            self._apply_direct(event)
        for s in state.agents.values():
            self._apply_direct(
                ev.AgentConfigured(
                    kf_account=s.kf_account,
                    groups=frozenset(s.groups) if s.groups is not None else None,
                    max_sessions=s.max_sessions,
                    paused=s.paused,
                    nickname=s.nickname,
                    tags=frozenset(s.tags) if s.tags is not None else None,
                )
            )
        for h in state.history.values():
            self.engine.remember(h.openid, h.kf_account, h.at)
        return state

    async def _until_ok(self, attempt: Callable[[], Any], what: str) -> None:
        """Await ``attempt()`` until it answers true, backing off up to ``startup_backoff_max_s``."""
        delay = 0.5
        while not await attempt():
            self.log.warning("start-up: %s failed; retrying in %.1fs before routing starts", what, delay)
            await asyncio.sleep(delay)
            delay = min(self.options.startup_backoff_max_s, delay * 2)

    # ============================================================ the engine task

    def _busy(self) -> bool:
        """Work in hand (someone waits, or a create is in flight): polls run at their fast rate."""
        return self.engine.queue_length() > 0 or bool(self.engine.reservations())

    def _put(self, event: ev.Event) -> None:
        """An input for the engine: through the inbox once the engine task runs, else applied now."""
        if self._engine_running:
            self._inbox.put(event)
        else:
            self._apply_direct(event)

    def _apply_direct(self, event: ev.Event) -> list[Command]:
        """Apply an event from the start-up task (before the engine task runs)."""
        assert not self._engine_running
        try:
            return self._apply(event, self.clock.now())
        except CoreError as exc:
            self.log.error("start-up: %s refused: %s", type(event).__name__, exc)
            return []

    def _step(self, item: Item, now: float) -> Any:
        """One inbox item in the engine task (``None``: a barrier, nothing to apply)."""
        if item.payload is None:
            return None
        return self._apply(item.payload, now)

    def _tick(self, now: float) -> None:
        step = self.desk.tick(now)
        self._on_facts(step.facts, now)
        if step.facts or step.commands:
            self._observe(Stepped(None, tuple(step.facts), tuple(step.commands)), now)
        self._dispatch(step.commands, now)

    def _apply(self, event: ev.Event, now: float) -> list[Command]:
        """Apply one input through the Desk, hand its facts and commands on; the commands."""
        step = self.desk.handle(event, now)
        self._log_event(event)
        self._on_facts(step.facts, now)
        self._observe(Stepped(event, tuple(step.facts), tuple(step.commands)), now)
        self._dispatch(step.commands, now)
        return step.commands

    def _log_event(self, event: ev.Event) -> None:
        if isinstance(event, ev.AgentsSeen):
            if self.log.isEnabledFor(logging.DEBUG):  # counted only when the line is written
                self.log.debug("event AgentsSeen: %d online", sum(1 for r in event.rows if r.online))
            return
        if isinstance(event, ev.CustomerRequested) and event.source == "push":
            # the intake wrote the push's line, with what matched (router/inbox.py; the WeCom daemon's
            # _customer_message)
            return
        if self.log.isEnabledFor(logging.INFO):  # the line is formatted only when it is written
            self.log.info("event %s %s", type(event).__name__, words(event))

    def _on_facts(self, facts: Iterable[Fact], now: float) -> None:
        """I/O that follows from what happened (the store, the log): the daemon's own."""
        raise NotImplementedError

    def _dispatch(self, commands: Iterable[Command], now: float) -> None:
        """Each command logged, then carried out (``_carry_out``); no session is created once stopping."""
        for cmd in commands:
            if isinstance(cmd, CreateSession):
                if self._stopping:
                    self.log.info(
                        "command CreateSession %s -> %s not started: shutting down",
                        cmd.openid,
                        cmd.kf_account,
                    )
                    continue
                self.log.info("command CreateSession %s -> %s", cmd.openid, cmd.kf_account)
            elif isinstance(cmd, CloseSession):
                self.log.info("command CloseSession %s (%s)", cmd.openid, cmd.kf_account)
            elif isinstance(cmd, SendText):
                self.log.info("command SendText %s (%s)", cmd.openid, cmd.kind)
            self._carry_out(cmd, now)

    def _carry_out(self, cmd: Command, now: float) -> None:
        """Make ``cmd`` (emitted at ``now``) happen through the daemon's API client."""
        raise NotImplementedError

    def _on_step_error(self, item: Item, exc: Exception) -> None:
        """An input the engine refused or failed on: logged, and its caller (if any) gets the error."""
        name = type(item.payload).__name__
        if isinstance(exc, CoreError):
            self.log.error("event %s refused: %s", name, exc)
        else:
            self.log.error("event %s failed", name, exc_info=exc)
        if item.future is not None and not item.future.done():
            item.future.set_exception(exc)

    def _observe(self, observation: Observation, now: float) -> None:
        for observer in list(self.observers):
            try:
                observer(observation, now)
            except Exception:
                self.log.exception("observer %r failed on %s", observer, type(observation).__name__)
