"""The host: one process serving many Official Accounts — one web server, one HTTP client session, one
``AccountRunner`` (router/daemon.py: Desk, store, executor, pollers, inbox loop) per appid.

Interface (what the multi-daemon ownership work, router/ownership.py, builds on; docs/scale-out.md):

- ``Host(config, *, start=None, on_foreign_push=None, name="local", fail_fast=True, ...)``. ``config`` is the
  whole file (``Config.every_account``); ``start`` lists the appids ``run()`` starts (default: every
  account; ``()`` leaves starting to the caller).
- ``await host.run()`` serves until ``host.stop()``; on the way out every running account is stopped with
  ``handover=True``. ``host.listening`` / ``host.port`` once the server listens; ``host.started`` once
  every account of ``start`` routes.
- ``await host.start_account(appid, lease=None) -> AccountRunner``: build (or take the runner made for
  ``start``) and start the account; returns once it accepts pushes (its store is open; recovery and
  routing go on in the background: ``runner.started``). With a ``Lease`` every write of its store carries
  the lease's epoch (``runner.renewed(lease)`` after a renewal). ``gate`` (several daemons,
  router/cluster.py): asked right before each of the account's API requests, and the access token is
  shared through the store (``AccountRunner.gate``); ``before_startup(runner)`` is awaited before its
  start-up recovery reads the store (and again before it decides the creates left in flight). ``ValueError`` for an appid the config does not list
  or one already running.
- ``await host.stop_account(appid, handover=True)``: ``handover=True`` finishes the work in flight and
  releases the lease (the next owner takes over at once); ``handover=False`` steps down at once (the lease
  is lost: nothing more is sent or written). Returns once the runner stopped. A stopped account may be
  started again (a new runner).
- Pushes: ``/wechat/{appid}`` for every configured account, and an account's ``[wechat] callback_path``
  (``/wechat`` by default) when no other account has the same one — so ``/wechat`` keeps working for a
  file of one account. Each configured account has one ``PushReceiver`` for the host's life (verify,
  decrypt, dedup). A push for an account that runs here goes to its runner's intake; one for a
  configured account that does not run here goes to ``host.on_foreign_push(appid, push, raw, query)``
  (the ownership work commits it to the shared inbox and answers "success"); without that hook it is
  answered 503 (WeChat retries). ``host.before_local_push(appid)``, when set, is awaited before a push
  of an account running here is applied (several daemons: what others kept for it comes first). An appid the config does not list: 404 naming it.
- ``host.runners``: the accounts running here, by appid; ``host.runner``: the only one (a file of one
  account, tests); ``host.account_status()``: every configured account with its owner, lease and
  counts (the pages); with several daemons ``host.lease_rows()`` (set by router/cluster.py) gives the
  lease rows the keeper last saw, so an account served elsewhere shows its owner and lease, and
  ``await host.read_account_status()`` (``kfrouter accounts list``) adds the counts of the accounts not
  running here, read from the shared store through ``host.stored_counts`` (set by router/cluster.py).
- ``host.add_listener(listener)``: the pages (admin API, metrics, supervisor) learn of each runner
  before it starts (``account_added``) and when it stops, before its store closes (``account_removed``);
  they never import the host (``router.view.HostView``).
- ``listen(runner, server)``: a set-up ``web.AppRunner`` served on ``[server]`` host and port, and the port
  it got (the WeCom daemon's web server starts the same way).

Rules: the host owns no routing state — a runner owns its account's; every runner task has an owner
(``_tasks``); a runner that fails ends the host when ``fail_fast`` (one account: as before, ``kfrouter run``
exits 1), else it is logged and removed and the others go on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from functools import partial
from typing import Any

import aiohttp
from aiohttp import web

from kfrouter.router.clock import Clock, SteadyClock
from kfrouter.router.config import Config, ServerConfig
from kfrouter.router.daemon import AccountRunner, DaemonOptions, account_receiver
from kfrouter.router.desk_driver import COUNTS, run_status
from kfrouter.router.edges.store import Store, open_database
from kfrouter.router.edges.store_database import Database
from kfrouter.router.edges.store_values import Lease, LeaseRow, StoredCounts
from kfrouter.router.edges.webhook import PushReceiver
from kfrouter.router.inbox import request_query, with_query
from kfrouter.router.view import LOCAL_OWNER, AccountListener, AccountStatus, status_of, with_stored
from kfrouter.router.wechat.push import Push

log = logging.getLogger("kfrouter.daemon")

# appids -> each one's stored counts, or why they could not be read (router/edges/store_counts.py)
ReadCounts = Callable[[Sequence[str]], Awaitable[Mapping[str, StoredCounts | str]]]

CALLBACK_PREFIX = "/wechat"

ForeignPush = Callable[[str, Push, str, Mapping[str, str]], Awaitable[str | None]]
"""``(appid, push, raw_xml, query) -> reply body`` for a verified push of an account not running here."""


async def listen(runner: web.AppRunner, server: ServerConfig) -> int:
    """Serve ``runner`` (set up) on ``[server] host`` and ``port``; the port it listens on (the one the
    system chose when ``port`` is 0)."""
    site = web.TCPSite(runner, server.host, server.port)
    await site.start()
    sockets = getattr(site._server, "sockets", None) or []
    return int(sockets[0].getsockname()[1]) if sockets else server.port


class Host:
    """Serves the accounts of one config file in one process. See the module docstring."""

    def __init__(
        self,
        config: Config,
        *,
        clock: Clock | None = None,
        http_session: aiohttp.ClientSession | None = None,
        options: DaemonOptions | None = None,
        stores: Mapping[str, Store] | None = None,
        start: Iterable[str] | None = None,
        on_foreign_push: ForeignPush | None = None,
        name: str = LOCAL_OWNER,
        fail_fast: bool = True,
    ) -> None:
        self.config = config
        self.options = options if options is not None else DaemonOptions()
        self.clock: Clock = clock if clock is not None else SteadyClock()
        self.name = name
        self.fail_fast = fail_fast
        self.on_foreign_push = on_foreign_push
        # several daemons (router/cluster.py): awaited before a push of an account running here is applied —
        # the pushes other daemons kept for it come first, so a customer's pushes keep WeChat's order
        self.before_local_push: Callable[[str], Awaitable[None]] | None = None
        # several daemons (router/cluster.py): every account's lease row as last seen, for accounts list
        self.lease_rows: Callable[[], Mapping[str, LeaseRow]] | None = None
        # several daemons (router/cluster.py): reads the stored counts of accounts not running here, or why not
        self.stored_counts: ReadCounts | None = None
        self.configs: dict[str, Config] = {c.oa.appid: c for c in config.every_account}
        self.runners: dict[str, AccountRunner] = {}
        self.listening = asyncio.Event()
        self.started = asyncio.Event()
        self.stopped = asyncio.Event()
        self.port: int | None = None
        self.http: aiohttp.ClientSession | None = None
        self._http = http_session
        self._stores = dict(stores or {})
        self._database: Database | None = None
        self._listeners: list[AccountListener] = []
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._stop_event = asyncio.Event()
        self._stopping = False
        self._error: BaseException | None = None
        self._started_at = time.time()
        self._start = tuple(self.configs) if start is None else tuple(start)
        for appid in self._start:
            self._need_configured(appid)
        self.receivers: dict[str, PushReceiver] = {
            appid: account_receiver(cfg, partial(self._on_push, appid)) for appid, cfg in self.configs.items()
        }
        for appid in self._start:
            self.runners[appid] = self._make_runner(appid, None)
        self.app = web.Application()
        self._add_routes()

    # ============================================================ public surface

    @property
    def runner(self) -> AccountRunner:
        """The only account running here (a file of one account); ``LookupError`` otherwise."""
        if len(self.runners) != 1:
            raise LookupError(f"this host runs {len(self.runners)} accounts; choose one of host.runners")
        return next(iter(self.runners.values()))

    @property
    def stopping(self) -> bool:
        return self._stopping

    def stop(self) -> None:
        """Begin a graceful shutdown of every account (idempotent; safe from a signal handler)."""
        self._stop_event.set()

    def add_listener(self, listener: AccountListener) -> None:
        """Tell ``listener`` of the runners made so far and of every later one (and of their end)."""
        self._listeners.append(listener)
        for runner in list(self.runners.values()):
            listener.account_added(runner)

    async def start_account(
        self,
        appid: str,
        lease: Lease | None = None,
        *,
        gate: Callable[[], bool] | None = None,
        before_startup: Callable[[AccountRunner], Awaitable[None]] | None = None,
    ) -> AccountRunner:
        """Start routing ``appid`` (see the module docstring); returns once its pushes are accepted."""
        self._need_configured(appid)
        if self.http is None:
            raise RuntimeError("start_account needs the host running (host.run())")
        if appid in self._tasks:
            raise ValueError(f"account {appid!r} is already running here")
        runner = self.runners.get(appid)
        if runner is None or runner.stopped.is_set() or gate is not None or before_startup is not None:
            runner = self._make_runner(appid, lease, gate, before_startup)
        elif lease is not None:
            runner.renewed(lease)
        task = asyncio.create_task(self._run_account(runner, self.http), name=f"kfrouter-account-{appid}")
        self._tasks[appid] = task
        opened = asyncio.ensure_future(runner.opened.wait())
        try:
            await asyncio.wait({opened, task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            opened.cancel()
        if not runner.opened.is_set():
            raise runner.failure or RuntimeError(f"account {appid!r} did not start (see the log)")
        return runner

    async def stop_account(self, appid: str, *, handover: bool = True) -> None:
        """Stop routing ``appid`` (see the module docstring); returns once its runner stopped."""
        task = self._tasks.get(appid)
        runner = self.runners.get(appid)
        if task is None or runner is None:
            raise ValueError(f"account {appid!r} is not running here")
        runner.stop(handover=handover)
        await asyncio.shield(task)

    def account_status(self) -> list[AccountStatus]:
        """Every configured account, in the config's order (``kfrouter accounts list``); one another daemon
        serves shows that daemon and its lease as the lease keeper last saw them (``lease_rows``)."""
        rows = self.lease_rows() if self.lease_rows is not None else {}
        out = []
        for appid in self.configs:
            runner = self.runners.get(appid) if appid in self._tasks else None
            if runner is None:
                row = rows.get(appid)
                live = row is not None and row.live
                out.append(
                    AccountStatus(
                        appid=appid,
                        running=False,
                        owner=row.owner if row is not None and live else None,
                        lease_epoch=row.epoch if row is not None and live else None,
                        lease_expires_at=row.expires_at if row is not None and live else None,
                        status=f"served by {row.owner}" if row is not None and live else "not running here",
                        waiting=None,
                        sessions=None,
                    )
                )
                continue
            out.append(status_of(runner, self.name))
        return out

    async def read_account_status(self) -> list[AccountStatus]:
        """``account_status()`` with the counts of the accounts not running here as the shared store has
        them (``stored_counts``, several daemons) — or, in their row, why they could not be read."""
        out = self.account_status()
        elsewhere = [s.appid for s in out if not s.running]
        if self.stored_counts is None or not elsewhere:
            return out
        counts = await self.stored_counts(elsewhere)
        return [s if s.running else with_stored(s, counts.get(s.appid, "not read")) for s in out]

    def health(self) -> dict[str, Any]:
        """What ``/healthz`` answers: the accounts' counts summed, and each account's own."""
        each = {appid: r.health() for appid, r in self.runners.items() if appid in self._tasks}
        total = {key: sum(h[key] for h in each.values()) for key in COUNTS}
        polls = [h["last_poll_ok"] for h in each.values()]
        seen = [h["last_poll_at"] for h in each.values() if h["last_poll_at"] is not None]
        return {
            "status": run_status(stopping=self._stopping, started=self.started.is_set()),
            **total,
            "last_poll_ok": None if not polls or None in polls else all(polls),
            "last_poll_at": min(seen) if seen else None,
            "commands_pending": sum(h["commands_pending"] for h in each.values()),
            "uptime_s": round(time.time() - self._started_at, 3),
            "accounts": each,
        }

    # ============================================================ run

    async def run(self) -> None:
        """Serve until ``stop()``; returns after a clean shutdown (raises a runner's error if
        ``fail_fast``)."""
        own_http = self._http is None
        http = self._http if self._http is not None else aiohttp.ClientSession()
        self.http = http
        site_runner: web.AppRunner | None = None
        try:
            first = next(iter(self.receivers.values()))
            site_runner = web.AppRunner(
                self.app, access_log=None, handle_signals=False, logger=first.server_log()
            )
            await site_runner.setup()
            server = self.config.server
            self.port = await listen(site_runner, server)
            self.listening.set()
            log.info(
                "listening on http://%s:%s%s/{appid} (%d account(s) configured: %s)",
                server.host,
                self.port,
                CALLBACK_PREFIX,
                len(self.configs),
                ", ".join(self.configs),
            )
            waiter = asyncio.create_task(self._started_when_routing(), name="kfrouter-host-started")
            try:
                for appid in self._start:
                    if not self._stop_event.is_set():
                        await self.start_account(appid)
                await self._stop_event.wait()
            finally:
                waiter.cancel()
                await self._stop_all()
        finally:
            if site_runner is not None:
                await site_runner.cleanup()
            if own_http:
                await http.close()
            self.http = None
            if self._database is not None:
                self._database.close()
            self.stopped.set()
            log.info("stopped")
        if self._error is not None:
            raise self._error

    async def _started_when_routing(self) -> None:
        for appid in self._start:
            runner = self.runners.get(appid)
            if runner is not None:
                await runner.started.wait()
        self.started.set()

    async def _stop_all(self) -> None:
        self._stopping = True
        if self._tasks:
            log.info("stopping %d account(s)", len(self._tasks))
        for appid in list(self._tasks):
            self.runners[appid].stop(handover=True)
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)

    async def _run_account(self, runner: AccountRunner, http: aiohttp.ClientSession) -> None:
        appid = runner.appid
        try:
            await runner.run(http)
        except Exception as exc:
            runner.failure = exc
            log.exception("account %s failed", appid)
            if self.fail_fast and self._error is None:
                self._error = exc
                self.stop()
        finally:
            self._tasks.pop(appid, None)
            if self.runners.get(appid) is runner:
                del self.runners[appid]

    def _closing(self, appid: str) -> None:
        """An account's runner is stopping, its store still open: the listeners let it go."""
        for listener in list(self._listeners):
            try:
                listener.account_removed(appid)
            except Exception:
                log.exception("listener %r failed on account %s's end", listener, appid)

    def _make_runner(
        self,
        appid: str,
        lease: Lease | None,
        gate: Callable[[], bool] | None = None,
        before_startup: Callable[[AccountRunner], Awaitable[None]] | None = None,
    ) -> AccountRunner:
        cfg = self.configs[appid]
        runner = AccountRunner(
            cfg,
            receiver=self.receivers[appid],
            clock=self.clock,
            options=self.options,
            store=self._stores.get(appid),
            database=None if appid in self._stores else self._shared_database(cfg),
            lease=lease,
            gate=gate,
            before_startup=before_startup,
            on_closing=partial(self._closing, appid),
        )
        self.runners[appid] = runner
        for listener in list(self._listeners):
            listener.account_added(runner)
        return runner

    def _shared_database(self, cfg: Config) -> Database | None:
        """PostgreSQL: one database object (connections, writer) for every account of the process."""
        url = cfg.store.url
        if url is None or len(self.configs) == 1:
            return None
        if self._database is None:
            self._database = open_database(url)
        return self._database

    def _need_configured(self, appid: str) -> None:
        if appid not in self.configs:
            raise ValueError(
                f"account {appid!r} is not in {self.config.source} (configured: {', '.join(self.configs)})"
            )

    # ============================================================ web

    def _add_routes(self) -> None:
        paths: dict[str, list[str]] = {}
        for appid, cfg in self.configs.items():
            paths.setdefault(cfg.oa.callback_path, []).append(appid)
        own = {f"{CALLBACK_PREFIX}/{appid}" for appid in self.configs}
        for path, appids in paths.items():
            if len(appids) == 1 and path not in own:
                handler = partial(self._callback, appids[0])
                self.app.router.add_route("GET", path, handler)
                self.app.router.add_route("POST", path, handler)
        self.app.router.add_route("*", CALLBACK_PREFIX + "/{appid}", self._callback_by_path)
        self.app.router.add_get("/healthz", self._healthz)

    async def _callback_by_path(self, request: web.Request) -> web.StreamResponse:
        return await self._callback(request.match_info["appid"], request)

    async def _callback(self, appid: str, request: web.Request) -> web.StreamResponse:
        receiver = self.receivers.get(appid)
        if receiver is None:
            return web.Response(status=404, text=f"no account {appid[:64]!r} is configured here")
        if request.method == "GET":
            handler = receiver.handle_get
        elif request.method == "POST":
            handler = receiver.handle_post
        else:
            return web.Response(status=405, text="GET or POST")
        runner = self.runners.get(appid) if appid in self._tasks else None
        if runner is not None:
            return await runner.intake.admit(request, handler)
        if self.on_foreign_push is None and request.method == "POST":
            return web.Response(status=503, text=f"account {appid!r} is not served here now; retry later")
        return await with_query(request, handler)

    async def _on_push(self, appid: str, push: Push, raw: str) -> str | None:
        """A verified push of ``appid``: its runner's intake, or the foreign-push hook."""
        runner = self.runners.get(appid) if appid in self._tasks else None
        if runner is not None and runner.opened.is_set() and not runner.intake.closed:
            if self.before_local_push is not None:
                await self.before_local_push(appid)
            return await runner.intake.on_push(push, raw)
        if self.on_foreign_push is None:
            raise RuntimeError(f"account {appid!r} is not served here now")  # answered 424: WeChat retries
        return await self.on_foreign_push(appid, push, raw, request_query() or {})

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response(self.health(), status=503 if self._stopping else 200)
