"""Several daemons, one PostgreSQL (``[cluster]``, docs/scale-out.md): the host's accounts are started and
stopped by the lease keeper, pushes of accounts served elsewhere are kept in the shared inbox, and each
account served here picks up what the others kept for it.

``Cluster(host, settings, database, leases=...)`` joins (``leases``: a database object of its own for the
keeper, so a renewal never waits behind the daemon's group commit):

- ``router.ownership.LeaseKeeper`` — it calls ``start_account(appid, lease)`` / ``stop_account(appid,
  handover=...)`` here, which start and stop the host's runner of that account with the lease, the
  keeper's gate (``may_act``: checked right before every API request) and the shared access token;
- ``router.shared_inbox`` — the host's ``on_foreign_push`` hook commits a verified push of an account not
  served here (``keep_for_owner``) and answers ``success``; each account served here runs a ``Pickup``
  that hands what waits to the runner's intake, exactly as if the push had come to this daemon — and a
  new owner applies that backlog *before* its start-up recovery reads the store, so a session the old
  owner created (and an agent maybe closed) while the account had no owner is known, not routed again;
- ``kfrouter accounts list``: the host shows each account's lease as the keeper last saw it, and reads
  the counts of the accounts served elsewhere from their stores (``router.edges.store_counts``: a
  connection of its own, read-only, in a worker thread).

Rules: ``run()`` owns the host, the keeper and the pickups; ``stop()`` (SIGTERM) hands every account over
first (stop with hand-over, release the leases, leave the members), then stops the host. A runner that
ends on its own (it failed) has its lease released, so another daemon takes the account. A push applied
from the shared inbox carries no passive reply back (another daemon answered WeChat already) and is
forwarded upstream without the original query string.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any
from urllib.parse import urlencode

from kfrouter.router.cluster_settings import ClusterSettings
from kfrouter.router.daemon import AccountRunner
from kfrouter.router.edges.store import Lease, SharedPush, Store, StoredCounts
from kfrouter.router.edges.store_counts import CountsReader
from kfrouter.router.edges.store_database import Database
from kfrouter.router.host import Host
from kfrouter.router.ownership import LeaseKeeper
from kfrouter.router.shared_inbox import Pickup, keep_for_owner
from kfrouter.router.view import DaemonView
from kfrouter.router.wechat.push import Push, parse_push

log = logging.getLogger("kfrouter.cluster")


class Cluster:
    """See the module docstring. ``host`` is built with ``start=()`` (the keeper starts accounts) and the
    stores of ``database``; ``owner`` is this process's name in the lease table."""

    def __init__(
        self,
        host: Host,
        settings: ClusterSettings,
        database: Database,
        *,
        leases: Database | None = None,
        owner: str | None = None,
        poll_s: float = 2.0,
    ) -> None:
        self.host = host
        self.settings = settings
        self.database = database
        self.leases_database = leases
        self.owner = owner if owner is not None else settings.owner_id()
        self.keeper = LeaseKeeper(
            leases if leases is not None else database, host.configs, settings, self, owner=self.owner
        )
        self._stores = {appid: Store(database, appid=appid) for appid in host.configs}
        # the pickups read the inbox through the keeper's connections (never behind the group commit),
        # in threads of their own, and wait for its NOTIFY there
        reads = leases if leases is not None else database
        self._readers = {appid: Store(reads, appid=appid) for appid in host.configs}
        self._read_threads = ThreadPoolExecutor(2, thread_name_prefix="kfrouter-inbox")
        self._poll_s = poll_s
        self._pickups: dict[str, asyncio.Task[None]] = {}
        self._stopping_here: set[str] = set()
        self._stop = asyncio.Event()
        self.kept = 0  # pushes of accounts served elsewhere, kept for their owner
        host.on_foreign_push = self._keep_foreign
        host.before_local_push = self._in_order
        host.lease_rows = lambda: self.keeper.lease_rows
        url = host.config.store.url
        self._counts = CountsReader(url, keepalive=settings.keepalive()) if url is not None else None
        if self._counts is not None:
            host.stored_counts = self._stored_counts
        self._pickup_of: dict[str, Pickup] = {}
        host.add_listener(self)

    # ------------------------------------------------------------------ lifecycle

    @property
    def listening(self) -> asyncio.Event:
        return self.host.listening

    @property
    def port(self) -> int | None:
        return self.host.port

    def stop(self) -> None:
        """SIGTERM: hand every account over, then stop (idempotent; safe from a signal handler)."""
        self._stop.set()

    async def run(self) -> None:
        """Serve until ``stop()``: the host's web server first (pushes are kept for their owners from the
        start), then the keeper. The database is closed at the end."""
        try:
            async with asyncio.TaskGroup() as tg:
                served = tg.create_task(self.host.run(), name="kfrouter-host")
                await _first(self.host.listening.wait(), served)
                keeping = tg.create_task(self.keeper.run(), name="kfrouter-lease-keeper")
                log.info("cluster: %s keeps leases of %d account(s)", self.owner, len(self.host.configs))
                await _first(self._stop.wait(), served)
                log.info("cluster: stopping; handing the accounts over")
                await self.keeper.hand_over()
                keeping.cancel()
                for task in list(self._pickups.values()):
                    task.cancel()
                self.host.stop()
        finally:
            self.keeper.close()
            self._read_threads.shutdown(wait=False, cancel_futures=True)
            if self._counts is not None:
                await asyncio.to_thread(self._counts.close)
            stop_listening = getattr(self.database, "stop_listening", None)
            if stop_listening is not None:
                with contextlib.suppress(Exception):
                    await stop_listening()
            await asyncio.to_thread(self.database.close)
            if self.leases_database is not None:
                stop_listening = getattr(self.leases_database, "stop_listening", None)
                if stop_listening is not None:
                    with contextlib.suppress(Exception):
                        await stop_listening()
                await asyncio.to_thread(self.leases_database.close)

    # ------------------------------------------------------------------ the keeper's runner interface

    async def start_account(self, appid: str, lease: Lease) -> AccountRunner:
        runner = await self.host.start_account(
            appid, lease, gate=partial(self.keeper.may_act, appid), before_startup=self._catch_up
        )
        store = runner.store
        assert store is not None
        pickup = self._pickup(runner)
        self._pickup_of[appid] = pickup
        task = asyncio.get_running_loop().create_task(pickup.run(), name=f"kfrouter-pickup-{appid}")
        task.add_done_callback(partial(_pickup_ended, appid))
        self._pickups[appid] = task
        return runner

    async def stop_account(self, appid: str, *, handover: bool) -> None:
        self._pickup_of.pop(appid, None)
        task = self._pickups.pop(appid, None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if appid not in self.host.runners:
            return
        self._stopping_here.add(appid)
        try:
            await self.host.stop_account(appid, handover=handover)
        except ValueError:
            pass  # it had stopped already
        finally:
            self._stopping_here.discard(appid)

    # ------------------------------------------------------------------ the host's listener

    def account_added(self, daemon: DaemonView) -> None:
        return

    def account_removed(self, appid: str) -> None:
        """A runner ended: if nobody asked it to (it failed), give the lease up so another daemon takes
        the account."""
        if appid in self._stopping_here or self._stop.is_set():
            return
        if appid in self.keeper.held():
            log.error("cluster: account %s stopped on its own; giving its lease up", appid)
            self.keeper.give_up(appid)

    async def _stored_counts(self, appids: Sequence[str]) -> Mapping[str, StoredCounts | str]:
        assert self._counts is not None
        return await asyncio.to_thread(self._counts.read, appids)

    # ------------------------------------------------------------------ pushes

    async def _keep_foreign(self, appid: str, push: Push, raw: str, query: Mapping[str, str]) -> str | None:
        """A verified push of an account not served here: kept for its owner, then ``success``."""
        await keep_for_owner(
            self._stores[appid], push.dedup_key, raw, received_by=self.owner, query=urlencode(dict(query))
        )
        self.kept += 1
        return None

    async def _in_order(self, appid: str) -> None:
        """Before a push that came here directly: what other daemons kept for the account first (a
        customer's kf_create_session kept elsewhere must not come after their kf_close_session)."""
        pickup = self._pickup_of.get(appid)
        if pickup is not None:
            while await pickup.pick_up():
                pass

    async def _catch_up(self, runner: AccountRunner) -> None:
        """Before a new owner's start-up recovery reads the store, and again before it decides what became
        of the creates the old owner left in flight: apply what the other daemons kept for the account
        while it had no owner (a session its old owner created, and maybe closed since), so recovery does
        not route that customer again. Through the account's pickup once it runs (one pick-up at a time:
        a push is not applied twice at once)."""
        pickup = self._pickup_of.get(runner.appid) or self._pickup(runner)
        before = pickup.handled
        while await pickup.pick_up():
            pass
        if pickup.handled > before:
            log.info(
                "cluster: %s: %d push(es) kept by other daemons applied before recovery",
                runner.appid,
                pickup.handled - before,
            )

    def _pickup(self, runner: AccountRunner) -> Pickup:
        store = runner.store
        assert store is not None
        return Pickup(
            store,
            partial(self._apply, runner),
            poll_s=self._poll_s,
            reader=self._readers[runner.appid],
            executor=self._read_threads,
        )

    async def _apply(self, runner: AccountRunner, shared: SharedPush) -> bool:
        """A push another daemon kept for this account: through the runner's intake, as if it had come
        here (its dedup key decides whether it was applied already); the pickup acknowledges it."""
        push = parse_push(shared.raw)
        await runner.intake.on_push(push, shared.raw)
        return False


async def _first(wanted: Any, guard: asyncio.Task[Any]) -> None:
    """Wait for ``wanted`` (a coroutine), or until ``guard`` ended (then its error is raised)."""
    waiter = asyncio.ensure_future(wanted)
    try:
        await asyncio.wait({waiter, guard}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
    if guard.done() and not waiter.done():
        guard.result()


def _pickup_ended(appid: str, task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("cluster: the shared-inbox pickup of %s failed", appid, exc_info=task.exception())
