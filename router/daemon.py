"""One account's routing: the place where the edges (webhook intake, API client, store, pollers) meet the
engine. A process serves its accounts through ``router.host.Host`` (one web server, one HTTP client, one
``AccountRunner`` per appid, started and stopped at run time).

Structure (docs/daemon.md has the full picture and the public surface):

- ``AccountRunner.run(http)`` owns everything of its account under one ``asyncio.TaskGroup``: the engine
  task, the pollers, the command executor and housekeeping. Every background task has an owner;
  ``CancelledError`` is always re-raised. The host's web server hands it the account's pushes
  (``intake``, behind the host-owned ``PushReceiver`` that verifies and decrypts them).
- The engine is driven from ONE task (``router.inbox.drive``): pushes, API outcomes, poll snapshots and
  ``submit()`` calls all go through the inbox and are applied in order by ``_apply``. That machinery —
  inbox, engine task, logging each event and command, start-up's first step — is ``DeskDriver``
  (router/desk_driver.py), shared with the WeCom daemon; this module adds what is the Official Account's.
- What a customer told us is committed to the store *before* the webhook answers WeChat (a request for a
  human, a cancel, a kf session event, each with its push key), then handed to the inbox.
- Start-up recovery (``_startup``) rebuilds the engine from the store and WeChat before routing: agents
  from the config and stored settings, customer history, WeChat's online agents and each agent's
  sessions, the outcome of every reservation a previous process left in flight (``getsession``, once the
  calls it may still have had in flight have timed out), WeChat's wait list, then the waiting customers.
  Nobody is created twice, nobody is lost — that is what makes ``kill -9`` safe.
- A lease (``lease=``, several daemons sharing PostgreSQL, docs/scale-out.md): every write of the store
  carries its epoch, so a runner that lost its lease writes nothing.
- Stopping (``stop(handover=True)``; SIGTERM/SIGINT in ``kfrouter run``): the account's webhook answers
  503 (WeChat retries later), callbacks in flight finish, pollers stop, API calls already started finish
  under ``shutdown_timeout_s`` (queued ones are dropped: their reservations stay in the store for the
  next start), the lease (if any) is released so the next owner takes over at once, the store is closed.
  ``stop(handover=False)`` steps down at once (the lease is lost): no drain, no further API call.

Logging: ``kfrouter.daemon``, one line per input event and per command; openids yes, tokens never.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from functools import partial
from typing import Any

import aiohttp
from attrs import frozen

from kfrouter.router.clock import Clock
from kfrouter.router.config import Config
from kfrouter.router.core import events as ev
from kfrouter.router.core.commands import Command, CreateSession
from kfrouter.router.core.errors import UnknownAgentError
from kfrouter.router.core.facts import AgentOffline, AgentOnline, Assigned, Fact, Requeued
from kfrouter.router.core.model import AgentRow, CustomerState
from kfrouter.router.desk_driver import DeskDriver
from kfrouter.router.desk_setup import DaemonOptions as DaemonOptions  # its public home: docs/daemon.md
from kfrouter.router.doctor import run_checks
from kfrouter.router.edges.client import WaitEntry, WeChatClient
from kfrouter.router.edges.store import Store, WaitingRow
from kfrouter.router.edges.store_database import Database
from kfrouter.router.edges.store_values import Lease
from kfrouter.router.edges.token import TokenMode
from kfrouter.router.edges.upstream import Upstream
from kfrouter.router.edges.webhook import OnPush, PushReceiver, WebhookConfig
from kfrouter.router.executor import Executor
from kfrouter.router.inbox import Intake, Item, record_session_event
from kfrouter.router.observe import ApiCalled
from kfrouter.router.pollers import (
    AgentPoller,
    LastSnapshot,
    PollSchedule,
    Recovery,
    SnapshotGuard,
    WaitlistPoller,
    waitlist_request,
)
from kfrouter.router.problems import ProblemReporter, log_check_results
from kfrouter.router.wechat.crypto import SafeModeCrypto

log = logging.getLogger("kfrouter.daemon")


@frozen
class _Recheck:
    """A 65414 nobody confirmed, on its way to the engine task: route the customer again if they are
    still waiting in the store and the engine no longer holds them (decided when applied, after the
    ``CreateFailed`` before it)."""

    openid: str


@frozen
class _Snapshot:
    """An agents poll on its way to the engine: rows and the input counter when the poll started."""

    rows: tuple[AgentRow, ...]
    mark: int | None  # None: trusted as is (start-up)


def account_crypto(config: Config) -> SafeModeCrypto | None:
    """The account's safe-mode codec (``[wechat] encoding`` compatible or safe, with a key), else None."""
    w = config.oa
    if w.encoding == "plain" or w.aes_key is None:
        return None
    return SafeModeCrypto(w.token, w.aes_key, w.appid, w.previous_aes_key)


def account_receiver(config: Config, on_push: OnPush) -> PushReceiver:
    """The push receiver of one account's callback URL (verifies, decrypts, parses, dedups; ``on_push``
    gets what is left)."""
    w = config.oa
    encrypted = w.encoding != "plain" and w.aes_key is not None
    return PushReceiver(
        WebhookConfig(
            token=w.token,
            appid=w.appid,
            encoding_aes_key=w.aes_key if encrypted else None,
            previous_aes_key=w.previous_aes_key if encrypted else None,
            accept_plaintext=w.encoding != "safe",
        ),
        on_push,
    )


def open_store(config: Config, database: Database | None = None) -> Store:
    """One account's store: its SQLite file (``[store] path``, already resolved per account by the config),
    or its schema of the PostgreSQL database — ``database`` when the process shares one among its accounts,
    else a connection of its own to ``[store] url``."""
    appid = config.oa.appid
    if database is not None:
        return Store(database, appid=appid)
    sc = config.store
    return Store(sc.url, appid=appid) if sc.url else Store(sc.path, appid=appid)


class AccountRunner(DeskDriver):
    """kfrouter for one Official Account inside a host (router/host.py), on the Desk driver both daemons
    share (router/desk_driver.py). See the module docstring and docs/daemon.md.

    Public surface: ``appid``, ``desk``, ``engine``, ``config``, ``observers`` (router/observe.py),
    ``receiver`` (given by the host), ``intake``, ``opened`` (pushes are accepted), ``started``
    (routing), ``stopped``, ``submit()``, ``stop(handover)``, ``clock``, ``lease``; after ``opened``:
    ``store``, ``client``.
    """

    def __init__(
        self,
        config: Config,
        *,
        receiver: PushReceiver,
        clock: Clock | None = None,
        options: DaemonOptions | None = None,
        store: Store | None = None,
        database: Database | None = None,
        lease: Lease | None = None,
        on_closing: Callable[[], None] | None = None,
        gate: Callable[[], bool] | None = None,
        before_startup: Callable[[AccountRunner], Awaitable[None]] | None = None,
    ) -> None:
        super().__init__(config, clock=clock, options=options, store=store)
        self.appid = config.oa.appid
        self.lease = lease
        # several daemons (router/cluster.py): asked right before every API request — False once this
        # daemon no longer holds the account's lease (router/ownership.py); with it the access token is
        # the one stored in the database, fetched by the owner only (router/edges/token.py SharedTokens)
        self.gate = gate
        # awaited once pushes are accepted and before start-up recovery reads the store (and again before
        # it decides what became of the creates a previous owner left in flight): several daemons apply the
        # pushes other daemons kept for this account meanwhile (router/cluster.py), so recovery sees a
        # session that began — and maybe ended — while the account had no owner
        self._before_startup = before_startup
        self.receiver = receiver
        self.failure: BaseException | None = None  # why run() failed, if it did (set by the host)
        self._on_closing = on_closing  # the host: its pages flush what they keep, the store still open
        self.problems = ProblemReporter()  # operator problems (65400, 40164, ...) told once, in plain words
        self.opened = asyncio.Event()
        self._database = database
        self.client: WeChatClient | None = None
        self.upstream: Upstream | None = None
        self._handover = True
        self._epoch = 0
        self._touched: dict[str, int] = {}
        self._guard = SnapshotGuard()
        self._last_snapshot = LastSnapshot()
        self._crypto = account_crypto(config)
        self.intake = Intake(
            config, self.desk, self._inbox, self.clock, crypto=self._crypto, observe=self._observe
        )
        self._executor: Executor | None = None
        self._agents: AgentPoller | None = None
        self._waitlist: WaitlistPoller | None = None

    # ============================================================ public surface

    def stop(self, *, handover: bool = True) -> None:
        """Begin stopping (idempotent; safe from a signal handler). ``handover``: finish the work in flight
        and release the lease; ``False``: the lease is lost — step down at once, send and write nothing
        more (a later ``stop(handover=False)`` turns a graceful stop into that)."""
        if not handover:
            self._handover = False
        self._stop_event.set()

    def renewed(self, lease: Lease) -> None:
        """The lease was renewed (or is the one to start with): later writes carry it."""
        self.lease = lease
        if self.store is not None:
            self.store.use_lease(lease)

    @property
    def executor(self) -> Executor | None:
        """The command executor (``pending``, ``stats``), once ``run()`` started."""
        return self._executor

    @property
    def agent_poller(self) -> AgentPoller | None:
        """The ``getonlinekflist`` poller (``last_ok``, ``last_at``, ``nicknames``), once started."""
        return self._agents

    @property
    def waitlist_poller(self) -> WaitlistPoller | None:
        """The ``getwaitcase`` poller (``count``: WeChat's own queue length), once started."""
        return self._waitlist

    def _health_more(self) -> dict[str, Any]:
        ap = self._agents
        return {
            "last_poll_ok": None if ap is None else ap.last_ok,
            "last_poll_at": None if ap is None else ap.last_at,
            "commands_pending": 0 if self._executor is None else self._executor.pending,
        }

    # ============================================================ run

    async def run(self, http: aiohttp.ClientSession) -> None:
        """Route the account until ``stop()`` (API calls through ``http``); returns after a clean stop."""
        try:
            if self.store is None:
                self.store = open_store(self.config, self._database)
            if self.lease is not None:
                self.store.use_lease(self.lease)
            self.intake.store = self.store
            self._build_edges(http)
            self.opened.set()
            log.info("account %s: accepting pushes%s", self.appid, self._lease_words())
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                assert self._executor is not None
                self._spawn(self._executor.run(), "executor")
                self._spawn(self._startup(), "startup")
                if self.options.self_check:
                    self._spawn(self._self_check(http), "self-check")
                tg.create_task(self._shutdown_when_asked(), name="kfrouter-shutdown")
        finally:
            self._tg = None
            self.intake.closed = True
            self._fail_pending()
            if self._on_closing is not None:
                try:
                    self._on_closing()
                except Exception:
                    log.exception("account %s: closing hook failed", self.appid)
            if self.store is not None and self._own_store:
                self._release_lease(self.store)
                self.store.close()
            self.stopped.set()
            log.info("account %s: stopped", self.appid)

    def _lease_words(self) -> str:
        lease = self.lease
        return "" if lease is None else f" (lease epoch {lease.epoch}, owner {lease.owner})"

    def _release_lease(self, store: Store) -> None:
        """Handing over: the lease ends now, so the next owner takes over at once."""
        if self.lease is None or not self._handover:
            return
        try:
            store.release_lease(self.lease)
        except Exception:
            log.exception("account %s: the lease could not be released; it expires by itself", self.appid)
        else:
            log.info("account %s: lease released (epoch %d)", self.appid, self.lease.epoch)

    async def _self_check(self, http: aiohttp.ClientSession) -> None:
        """kfrouter doctor's read-only checks, once at start; problems are logged in its words."""
        assert self.client is not None
        try:
            results = await asyncio.wait_for(run_checks(self.config, self.client, http=http), 60.0)
        except TimeoutError:
            log.warning("start-up checks did not finish within 60 s; run `kfrouter doctor` by hand")
            return
        n = log_check_results(results)
        log.info("start-up checks: %d problem(s), %d check(s) in all", n, len(results))

    def _build_edges(self, http: aiohttp.ClientSession) -> None:
        w = self.config.oa
        o = self.options
        mode: TokenMode = "stable" if w.token_mode == "stable" else "basic"
        self.client = WeChatClient(
            http, w.appid, w.secret, w.api_base, mode, retries=o.api_retries, timeout_s=o.api_timeout_s
        )
        if self.gate is not None:
            assert self.store is not None
            self.client.gate = self.gate
            self.client.share_tokens(self.store, owner=self.gate)
        create_client = WeChatClient(
            http,
            w.appid,
            w.secret,
            w.api_base,
            mode,
            retries=0,
            timeout_s=o.create_timeout_s,
            tokens=self.client.tokens,
        )
        self.client.on_error = create_client.on_error = self.problems.on_error
        create_client.gate = self.gate
        self.upstream = Upstream(
            http, self.config.server.upstream_url, self.config.server.upstream_timeout_s, crypto=self._crypto
        )
        self.intake.upstream = self.upstream
        self._executor = Executor(
            self.client,
            create_client,
            outcome=self._on_outcome,
            on_call=self._on_api_call,
            concurrency=o.create_concurrency,
            create_timeout_s=o.create_timeout_s,
            reservation_s=self.engine.config.reservation_timeout_s,
            clock=self.clock.now,
        )
        polling = self.config.polling
        self._agents = AgentPoller(
            self.client,
            PollSchedule.from_config(polling, "online", self._rng),
            publish=self._publish_agents,
            busy=self._busy,
            mark=lambda: self._epoch,
            nickname_refresh_s=o.nickname_refresh_s,
        )
        self._waitlist = WaitlistPoller(
            self.client,
            PollSchedule.from_config(polling, "waitcase", self._rng),
            known=self._known,
            on_waiting=self._on_waitlisted,
            busy=self._busy,
        )
        self._agents.told = self._waitlist.told = self.problems.known

    async def _shutdown_when_asked(self) -> None:
        await self._stop_event.wait()
        self._stopping = True
        self.intake.closed = True
        assert self._executor is not None
        if not self._handover:
            log.warning("account %s: lease lost; stepping down at once (nothing more is sent)", self.appid)
            self._executor.stop()
            for task in list(self._tasks):
                task.cancel()
            return
        timeout = self.options.shutdown_timeout_s
        log.info("stopping: webhook answers 503 from now on; finishing work in flight (up to %gs)", timeout)
        try:
            async with asyncio.timeout(timeout):
                await self.receiver.drain()  # pushes being persisted finish first
        except TimeoutError:
            log.warning("stopping: webhook callbacks still running after %gs", timeout)
        for task in list(self._tasks):
            if task.get_name() in (
                "kfrouter-startup",
                "kfrouter-agents",
                "kfrouter-waitcase",
                "kfrouter-housekeeping",
            ):
                task.cancel()
        self._executor.stop()
        if not await self._executor.drain(timeout):
            log.warning(
                "stopping: %d API call(s) still running after %gs; their reservations stay in the store",
                self._executor.pending,
                timeout,
            )
        if self._engine_running:
            try:
                async with asyncio.timeout(max(1.0, timeout / 4)):
                    await self._barrier()  # outcomes already queued reach the engine (and the store)
            except TimeoutError:
                log.warning("stopping: the engine did not drain its inbox in time")
        for task in list(self._tasks):
            task.cancel()

    async def _barrier(self) -> None:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._inbox.put(None, future=fut)
        await fut

    # ============================================================ start-up recovery

    async def _startup(self) -> None:
        store = self.store
        assert store is not None and self._agents is not None and self._waitlist is not None
        await self._catch_up()
        state = self._restore(store)
        await self._until_ok(self._agents.poll_once, "getonlinekflist")
        assert self.client is not None
        recovery = Recovery(
            engine=self.engine,
            client=self.client,
            store=store,
            config=self.config,
            clock=self.clock.now,
            apply=self._apply_direct,
            create_timeout_s=self.options.create_timeout_s,
            settle=self._catch_up,
        )
        listed = await recovery.sessions(state)
        await recovery.reservations(state.reservations, listed)
        if not await self._waitlist.poll_once():
            log.warning("start-up: getwaitcase failed; WeChat's wait list is read at the next poll")
        restored = recovery.waiting()
        self._start_engine()
        polling = self.config.polling
        self._spawn(self._agents.run(first_delay=polling.online_fast_s), "agents")
        self._spawn(self._waitlist.run(first_delay=polling.waitcase_fast_s), "waitcase")
        self._spawn(self._housekeeping(), "housekeeping")
        self.started.set()
        log.info(
            "routing: %d waiting restored, %d agents online, %d sessions known",
            restored,
            sum(1 for a in self.engine.agents() if a.online),
            len(self.engine.sessions()),
        )

    async def _catch_up(self) -> None:
        """What reached the account while start-up recovery had not read the store yet (``before_startup``:
        the pushes other daemons kept for it) is applied first — before the store is read, and again
        before the outcomes of the creates a previous owner left in flight are decided."""
        if self._before_startup is not None:
            await self._before_startup(self)

    # ============================================================ the engine task

    def _step(self, item: Item, now: float) -> Any:
        payload = item.payload
        if isinstance(payload, _Recheck):
            again = self._requested_again(payload.openid)
            return None if again is None else self._apply(again, now)
        if isinstance(payload, _Snapshot):
            return self._apply_snapshot(payload, now)
        return super()._step(item, now)

    def _apply_snapshot(self, snapshot: _Snapshot, now: float) -> list[Command]:
        """An agents poll, through ``SnapshotGuard``; not applied when it repeats the last one applied and
        the engine is idle (``LastSnapshot``)."""
        rows = snapshot.rows
        if snapshot.mark is not None:
            views = self.engine.agents()
            mark = snapshot.mark
            rows = self._guard.apply(
                rows, {v.kf_account: v for v in views}, lambda kf: self._touched.get(kf, -1) > mark
            )
            if not self._busy() and self._last_snapshot.repeats(rows, views):
                return []
        commands = self._apply(ev.AgentsSeen(rows=rows, complete=True), now)  # type: ignore[arg-type]
        self._last_snapshot.applied(rows, self.engine.agents())
        return commands

    def _apply(self, event: ev.Event, now: float) -> list[Command]:
        """``DeskDriver._apply``, counted (``_epoch``), the agents it names marked for the snapshot guard."""
        self._epoch += 1
        commands = super()._apply(event, now)
        self._touch(event)
        return commands

    def _on_facts(self, facts: Iterable[Fact], now: float) -> None:
        """I/O that follows from what happened: the store and the log."""
        agent_changes: list[tuple[str, dict[str, Any]]] = []
        for fact in facts:
            if isinstance(fact, Assigned):
                log.info("assigned %s -> %s", fact.openid, fact.kf_account)
            elif isinstance(fact, Requeued):
                self._persist_requeued(fact.openid, now)  # moved by kfrouter: closed, then routed again
            elif isinstance(fact, AgentOnline):
                agent_changes.append(
                    (
                        "agent_online",
                        {
                            "agent": fact.kf_account,
                            "groups": list(fact.groups),
                            "max_sessions": fact.capacity,
                            **({"nickname": fact.nickname} if fact.nickname else {}),
                        },
                    )
                )
                log.info(
                    "agent %s online (groups %s, capacity %d)",
                    fact.kf_account,
                    list(fact.groups),
                    fact.capacity,
                )
            elif isinstance(fact, AgentOffline):
                agent_changes.append(("agent_offline", {"agent": fact.kf_account}))
                log.info("agent %s offline", fact.kf_account)
        if agent_changes and self.store is not None:
            try:
                with self.store.transaction():
                    for kind, payload in agent_changes:
                        self.store.append_event(now, kind, payload)
            except Exception:
                log.exception("store: could not log agent changes")

    def _persist_requeued(self, openid: str, now: float) -> None:
        """A customer routed again after kfrouter closed their session: waiting again in the store (with
        the group and priority of their request), so a crash now does not lose them."""
        if self.store is None:
            return
        req = self.desk.request(openid)
        try:
            self.store.add_waiting(
                WaitingRow(
                    openid,
                    req.group if req is not None else None,
                    req.priority if req is not None else 0,
                    now,
                    req.text[:500] if req is not None else "",
                    tags=tuple(sorted(req.tags)) if req is not None else (),
                )
            )
        except Exception:
            log.exception("store: could not record %s as waiting again", openid)

    def _touch(self, event: ev.Event) -> None:
        for name in ("kf_account", "from_account", "to_account"):
            kf = getattr(event, name, None)
            if isinstance(kf, str):
                self._touched[kf] = self._epoch

    def _carry_out(self, cmd: Command, now: float) -> None:
        """Through the executor; a create once its reservation is durable (the next group commit)."""
        assert self._executor is not None
        if isinstance(cmd, CreateSession) and self.store is not None:
            self.store.defer(
                partial(Store.add_reservation, openid=cmd.openid, kf_account=cmd.kf_account, created_at=now),
                f"reservation {cmd.openid} -> {cmd.kf_account}",
                then=partial(self._submit_command, cmd, now),
            )
            return
        self._submit_command(cmd, now)

    def _submit_command(self, cmd: Command, at: float, _stored: BaseException | None = None) -> None:
        """Hand ``cmd`` (made at ``at``) to the executor; a create comes here once its reservation is
        stored (``_stored``: why it was not, already logged by the store)."""
        assert self._executor is not None
        if not self._executor.submit(cmd, at=at):
            log.info("command %s for %s dropped: shutting down", type(cmd).__name__, cmd.openid)

    def _on_step_error(self, item: Item, exc: Exception) -> None:
        if isinstance(exc, UnknownAgentError) and item.attempt == 0 and not self._stopping and self._agents:
            log.info(
                "event %s names unknown agent %s: polling agents, then retrying once",
                type(item.payload).__name__,
                exc.kf_account,
            )
            item.attempt = 1
            self._spawn(self._retry_after_poll(item), "unknown-agent")
            return
        super()._on_step_error(item, exc)

    async def _retry_after_poll(self, item: Item) -> None:
        assert self._agents is not None
        await self._agents.poll_once()
        self._inbox.requeue(item)

    # ============================================================ outcomes, pollers, listeners

    def _on_outcome(self, event: ev.Event) -> None:
        """An API result from the executor: persist it, then hand it to the engine."""
        now = self.clock.now()
        store = self.store
        # a CustomerRequested is a 65414 nobody confirmed: whether to route them again is decided in the
        # engine task, after the CreateFailed that came before it
        payload: Any = _Recheck(event.openid) if isinstance(event, ev.CustomerRequested) else event
        if store is None:
            self._inbox.put(payload)
            return
        store.defer(  # every outcome in order through the next group commit, then to the engine
            partial(record_session_event, event=event, now=now),
            f"outcome {type(event).__name__}",
            then=partial(self._stored_outcome, payload),
        )

    def _stored_outcome(self, payload: Any, _error: BaseException | None) -> None:
        """An API result's write is done (a failure is logged by the store): the engine gets it."""
        self._inbox.put(payload)

    def _requested_again(self, openid: str) -> ev.CustomerRequested | None:
        """The customer's request as the store keeps it, if they are still waiting there (not served or
        cancelled meanwhile) and the engine no longer holds them."""
        if self.store is None or self._known(openid):
            return None
        try:
            row = next(
                (
                    w
                    for w in self.store.load_state(history_since=self.clock.now()).waiting
                    if w.openid == openid
                ),
                None,
            )
        except Exception:
            log.exception("store: could not read %s's request", openid)
            return None
        if row is None:
            log.info("%s: no longer waiting in the store; not routed again", openid)
            return None
        return row.request("recheck", self.engine.pool)

    def _on_api_call(self, info: Mapping[str, Any]) -> None:
        openid = info.get("openid")
        self._observe(
            ApiCalled(
                endpoint=str(info.get("endpoint", "")),
                ok=bool(info.get("ok")),
                errcode=int(info.get("errcode", 0)),
                elapsed_s=float(info.get("elapsed_s", 0.0)),
                openid=openid if isinstance(openid, str) else None,
                kind=str(info.get("kind", "")),
            ),
            self.clock.now(),
        )
        if (
            info.get("endpoint") == "message/custom/send"
            and not info.get("ok")
            and isinstance(info.get("openid"), str)
        ):
            self.desk.on_send_failed(info["openid"], int(info.get("errcode", 0)))

    async def _publish_agents(self, rows: tuple[AgentRow, ...], mark: object) -> None:
        self.problems.clear()  # WeChat answered: the operator problems told so far are over
        if not self._engine_running:
            self._apply_direct(ev.AgentsSeen(rows=rows, complete=True))  # type: ignore[arg-type]
            return
        snapshot = _Snapshot(rows, mark if isinstance(mark, int) else None)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._inbox.put(snapshot, future=fut)
        await fut

    def _known(self, openid: str) -> bool:
        return self.engine.state(openid) in (
            CustomerState.WAITING,
            CustomerState.RESERVED,
            CustomerState.IN_SESSION,
        )

    def _on_waitlisted(self, entry: WaitEntry) -> None:
        """A customer in WeChat's own wait list that the engine does not know: route them — unless they
        cancelled with kfrouter and have not written since (no API removes a wait-list entry)."""
        now = self.clock.now()
        cancelled_at = self.desk.cancelled_since(entry.openid)
        if cancelled_at is not None:
            if entry.latest_time <= cancelled_at + 1:
                log.debug("waitlist: %s cancelled; WeChat's entry ignored", entry.openid)
                return
            self.desk.uncancel(entry.openid)
        req = waitlist_request(self.config.routing, entry.openid)
        preferred = entry.kf_account if entry.kf_account and entry.kf_account in self.engine.pool else None
        arrived = float(entry.latest_time) if entry.latest_time > 0 else now
        arrived = min(arrived, now)
        if self.store is not None:
            with self.store.transaction():
                self.store.add_waiting(
                    WaitingRow(
                        entry.openid,
                        req.group,
                        req.priority,
                        arrived,
                        preferred=preferred,
                        tags=tuple(sorted(req.tags)),
                    )
                )
                self.store.append_event(
                    now,
                    "waitlist",
                    {"openid": entry.openid, "group": req.group, "latest_time": entry.latest_time},
                )
        event = ev.CustomerRequested(
            openid=entry.openid,
            group=req.group,
            priority=req.priority,
            source="waitlist",
            preferred_agent=preferred,
            tags=req.tags,  # type: ignore[arg-type]
            arrived_at=arrived,
        )
        log.info("waitlist: %s found in WeChat's queue (group %s)", entry.openid, req.group)
        self._put(event)

    async def _housekeeping(self) -> None:
        every = self.options.housekeeping_s
        while True:
            await asyncio.sleep(every)
            now = self.clock.now()
            if self.store is not None:
                try:
                    pruned = self.store.prune_processed(now - self.config.store.dedup_keep_s)
                except Exception:
                    log.exception("store: pruning processed push keys failed")
                else:
                    if pruned:
                        log.debug("store: forgot %d processed push keys", pruned)
