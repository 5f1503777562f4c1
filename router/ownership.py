"""The lease keeper: which of the configured accounts this daemon serves when several daemons share one
PostgreSQL (docs/scale-out.md). One per daemon process.

Every ``renew_every_s`` the keeper beats (``Store.heartbeat``: this daemon is a live member), renews the
leases it holds, looks at the lease table and the members, and carries out ``router.lease_plan.plan``:
gives extras up, takes free accounts. What runs an account is not the keeper's business: it calls an
``Accounts`` — ``start_account(appid, lease)`` once it holds a lease, ``stop_account(appid,
handover)`` when it gives one up (``handover=True``: still held, finish work in flight, the lease is
released after the stop returns) or lost it (``handover=False``: stop at once, send nothing, write
nothing — the database refuses the writes anyway).

Rules:

- **Lost means stopped, at once.** A renewal refused (the lease expired or was taken) stops the account
  before anything else. A renewal that cannot reach the database keeps the account until one renewal
  period before the lease could expire — counted on this process's monotonic clock from when the last
  successful renewal was *sent* — and then stops it: by the time another daemon may take the account,
  this one no longer serves it (a network partition costs the account at most ``lease_s`` of service,
  never two owners).
- **The gate.** ``may_act(appid)`` is true only while the lease is held and that local deadline has not
  passed: the executor asks it right before every API call, so a process that was paused (SIGSTOP, a
  long GC, a VM migration) and wakes after its lease sends nothing even before the keeper runs again.
- Starts run as tasks of their own (an account's recovery may take seconds; renewals never wait for
  it); at most one start or stop per account at a time. A start still running when the lease is lost is
  cancelled, then the account is stopped.
- The first look takes nothing: daemons starting together first see each other's heartbeats, then share
  the accounts (otherwise the first one would take them all and give most back).
- ``hand_over()`` (SIGTERM): stop every account with hand-over, release its lease, leave the members —
  the other daemons take the accounts at their next look.
- Database calls run in the keeper's own worker thread: the event loop never blocks on them, and they
  never queue behind the daemon's other threads. Give the keeper a ``Database`` of its own (its own
  connections): a renewal must not wait for the daemon's group commit to drain.
- Times of leases are the database's clock; deadlines here are ``time.monotonic()`` (injectable).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Protocol, TypeVar

from attrs import define, frozen

from kfrouter.router.cluster_settings import ClusterSettings
from kfrouter.router.edges.store import Lease, LeaseRow, Member, Store, StoreError
from kfrouter.router.edges.store_database import Database
from kfrouter.router.lease_plan import LeaseView, Plan, plan

log = logging.getLogger("kfrouter.ownership")
T = TypeVar("T")


class Accounts(Protocol):
    """What serves accounts in this process (the daemon's host; tests pass simple ones)."""

    async def start_account(self, appid: str, lease: Lease) -> object:
        """Serve ``appid`` under ``lease`` (its writes carry the lease's epoch); returns once it does."""

    async def stop_account(self, appid: str, *, handover: bool) -> None:
        """Stop serving ``appid``: with ``handover`` finish what is in flight (the lease is still held);
        without, stop at once (the lease is lost)."""


@frozen
class LeaseTaken:
    """This daemon took ``appid``'s lease (``epoch``) from ``previous_owner`` (None: never leased)."""

    appid: str
    epoch: int
    previous_owner: str | None


@frozen
class LeaseLost:
    """This daemon stopped ``appid``: ``why`` is 'refused' (taken or expired), 'unreachable' (no renewal
    before the local deadline) or 'released' (given up on purpose)."""

    appid: str
    epoch: int
    why: str


@define
class _Held:
    lease: Lease
    deadline: float  # local monotonic: stop before it unless renewed
    task: asyncio.Task[None] | None = None  # the start or the hand-over in progress
    releasing: bool = False


@frozen
class _Look:
    """What one tick read: renewals, the lease rows and the live members."""

    renewed: dict[str, Lease | None]  # appid -> new lease, or None: refused
    rows: tuple[LeaseRow, ...]
    members: tuple[Member, ...]


class LeaseKeeper:
    """See the module docstring. ``database``: the PostgreSQL database shared by the daemons;
    ``appids``: the configured accounts; ``runner``: what starts and stops them."""

    def __init__(
        self,
        database: Database,
        appids: Iterable[str],
        settings: ClusterSettings,
        runner: Accounts,
        *,
        owner: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[LeaseTaken | LeaseLost], None] | None = None,
    ) -> None:
        self.settings = settings
        self.owner = owner if owner is not None else settings.owner_id()
        self.appids = frozenset(appids)
        if not self.appids:
            raise ValueError("LeaseKeeper: appids must name at least one account")
        self._stores = {a: Store(database, appid=a) for a in sorted(self.appids)}
        self._any = self._stores[min(self.appids)]
        self._runner = runner
        self._clock = clock
        self._on_change = on_change
        self._held: dict[str, _Held] = {}
        self._winding_down: set[str] = set()  # lost, their runner still stopping
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="kfrouter-leases")
        self._looks = 0
        self.lease_rows: dict[str, LeaseRow] = {}  # every lease row as the last look saw it (accounts list)
        self._seen_members = False
        self._looking_lock = asyncio.Lock()  # one look at a time; hand_over waits for the one running
        self._stopping = False
        self._wake = asyncio.Event()  # look now
        self._deadlines = asyncio.Event()  # the deadlines changed: the watchdog recomputes
        self.looked = asyncio.Event()  # set after every look (tests wait on it)
        self.last_plan: Plan | None = None

    # ------------------------------------------------------------------ public surface

    def may_act(self, appid: str) -> bool:
        """True while this daemon holds ``appid``'s lease and its local deadline has not passed: the last
        check before an API call (see the module docstring)."""
        held = self._held.get(appid)
        return held is not None and not self._stopping and self._clock() < held.deadline

    def held(self) -> dict[str, Lease]:
        """The leases this daemon holds, by appid."""
        return {a: h.lease for a, h in sorted(self._held.items())}

    def give_up(self, appid: str) -> None:
        """Stop ``appid`` with hand-over and release its lease (its runner failed, an operator's move);
        another daemon takes it at its next look."""
        self._release(appid)

    @property
    def looks(self) -> int:
        """How many times the keeper looked at the lease table."""
        return self._looks

    async def run(self) -> None:
        """Keep the leases until cancelled or ``hand_over()``: the looks, and a watchdog that stops an
        account at its local deadline even while a look hangs on an unreachable database."""
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._looking(), name="kfrouter-lease-looks")
            tg.create_task(self._watchdog(), name="kfrouter-lease-watchdog")

    async def _looking(self) -> None:
        every = self.settings.renew_every_s
        while not self._stopping:
            started = self._clock()
            await self.look()
            self._wake.clear()
            pause = max(0.0, started + every - self._clock())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(pause):
                    await self._wake.wait()

    async def _watchdog(self) -> None:
        while not self._stopping:
            await self._stop_overdue()
            self._deadlines.clear()
            earliest = min((h.deadline for h in self._held.values()), default=None)
            pause = None if earliest is None else max(0.0, earliest - self._clock())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(pause):
                    await self._deadlines.wait()

    def poke(self) -> None:
        """Look again now (tests, an operator's rebalance)."""
        self._wake.set()

    async def look(self) -> None:
        """One tick: beat, renew, read, plan, act."""
        async with self._looking_lock:
            if not self._stopping:
                await self._look()
            self.looked.set()

    async def _look(self) -> None:
        sent = self._clock()
        self._looks += 1
        try:
            look = await self._db_call(self._read, tuple(h.lease for h in self._held.values()))
        except StoreError as exc:
            log.warning(
                "lease keeper: the database cannot be reached (%s); accounts kept until their deadline", exc
            )
            return
        for appid, lease in look.renewed.items():
            held = self._held.get(appid)
            if held is None:
                continue
            if lease is None:
                await self._lose(appid, "refused")
            elif lease.epoch == held.lease.epoch:
                held.lease, held.deadline = lease, sent + lease.ttl_s - self.settings.stop_margin_s
        self._deadlines.set()
        self.lease_rows = {r.appid: r for r in look.rows}
        view = self._view(look)
        if not self._seen_members:  # the first look: see the other daemons' heartbeats before taking
            self._seen_members = True
            return
        decided = plan(view)
        self.last_plan = decided
        for appid in decided.release:
            self._release(appid)
        if decided.acquire:
            await self._acquire(decided, {r.appid: r for r in look.rows})

    async def hand_over(self) -> None:
        """SIGTERM: stop every account with hand-over, release the leases, leave (see the module
        docstring). Idempotent."""
        if self._stopping:
            return
        self._stopping = True
        self._wake.set()
        self._deadlines.set()
        try:  # a look still running finishes first (it may be taking a lease)
            async with asyncio.timeout(self.settings.lease_s):
                await self._looking_lock.acquire()
            self._looking_lock.release()
        except TimeoutError:
            log.warning("lease keeper: a look still hangs on the database; handing over without waiting")
        pending = [h.task for h in self._held.values() if h.task is not None and not h.task.done()]
        for task in pending:
            task.cancel()
        for task in pending:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        held = list(self._held.items())
        results = await asyncio.gather(
            *(self._runner.stop_account(appid, handover=True) for appid, _ in held), return_exceptions=True
        )
        for (appid, _), result in zip(held, results, strict=True):
            if isinstance(result, BaseException):
                log.error("lease keeper: stopping %s for hand-over failed: %s", appid, result)
        leases = [h.lease for _, h in held]
        self._held.clear()
        try:
            async with asyncio.timeout(self.settings.lease_s):
                await self._db_call(self._release_all, leases)
        except (StoreError, TimeoutError) as exc:
            log.warning(
                "lease keeper: releasing the leases failed (%r); they expire in %gs",
                exc,
                self.settings.lease_s,
            )
        for lease in leases:
            self._tell(LeaseLost(lease.appid, lease.epoch, "released"))
        log.info("lease keeper: %d account(s) handed over; %s left", len(leases), self.owner)

    # ------------------------------------------------------------------ database (worker thread)

    async def _db_call(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, partial(fn, *args))

    def close(self) -> None:
        """Stop the keeper's worker thread (after ``run()`` and ``hand_over()``)."""
        self._thread.shutdown(wait=False, cancel_futures=True)

    def _read(self, held: tuple[Lease, ...]) -> _Look:
        store = self._any
        store.heartbeat(self.owner, self.settings.lease_s)
        renewed = {
            lease.appid: self._stores[lease.appid].renew_lease(lease, self.settings.lease_s) for lease in held
        }
        return _Look(renewed, tuple(store.leases()), tuple(store.members()))

    def _release_all(self, leases: list[Lease]) -> None:
        for lease in leases:
            self._stores[lease.appid].release_lease(lease)
        self._any.leave(self.owner)

    # ------------------------------------------------------------------ decisions carried out

    def _view(self, look: _Look) -> LeaseView:
        owners = {r.appid: r.owner for r in look.rows if r.live and r.appid in self.appids}
        mine = frozenset(a for a, h in self._held.items() if not h.releasing)
        for appid in mine:
            owners[appid] = self.owner
        return LeaseView(
            me=self.owner,
            accounts=self.appids,
            owners=owners,
            members=frozenset(m.daemon_id for m in look.members),
            mine=mine,
        )

    async def _acquire(self, decided: Plan, rows: dict[str, LeaseRow]) -> None:
        for appid in decided.acquire:
            if sum(1 for h in self._held.values() if not h.releasing) >= decided.acquire_up_to:
                return
            if appid in self._held or appid in self._winding_down:
                continue
            sent = self._clock()  # the lease runs from when the database granted it, after this
            try:
                lease = await self._db_call(
                    self._stores[appid].acquire_lease, self.owner, self.settings.lease_s
                )
            except StoreError as exc:
                log.warning("lease keeper: taking %s failed: %s", appid, exc)
                return
            if lease is None:
                continue  # another daemon was quicker
            before = rows.get(appid)
            previous = before.owner if before is not None else None
            held = _Held(lease, sent + lease.ttl_s - self.settings.stop_margin_s)
            self._held[appid] = held
            self._deadlines.set()
            log.info(
                "lease keeper: took %s (epoch %d%s)",
                appid,
                lease.epoch,
                f", from {previous}" if previous and previous != self.owner else "",
            )
            self._tell(LeaseTaken(appid, lease.epoch, previous))
            held.task = asyncio.get_running_loop().create_task(
                self._start(appid, lease), name=f"kfrouter-lease-start-{appid}"
            )

    async def _start(self, appid: str, lease: Lease) -> None:
        try:
            await self._runner.start_account(appid, lease)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("lease keeper: starting %s failed; its lease is released", appid)
            self._release(appid)

    def _release(self, appid: str) -> None:
        """Give ``appid`` up: stop it with hand-over (in a task of its own), then release the lease."""
        held = self._held.get(appid)
        if held is None or held.releasing:
            return
        held.releasing = True
        previous = held.task
        held.task = asyncio.get_running_loop().create_task(
            self._hand_over_one(appid, previous), name=f"kfrouter-lease-release-{appid}"
        )

    async def _hand_over_one(self, appid: str, previous: asyncio.Task[None] | None) -> None:
        if previous is not None and not previous.done():
            previous.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await previous
        try:
            await self._runner.stop_account(appid, handover=True)
        except Exception:
            log.exception("lease keeper: stopping %s for hand-over failed", appid)
        held = self._held.pop(appid, None)
        if held is None:
            return
        try:
            await self._db_call(self._stores[appid].release_lease, held.lease)
        except StoreError as exc:
            log.warning("lease keeper: releasing %s failed (%s); it expires by itself", appid, exc)
        log.info("lease keeper: gave %s up (epoch %d)", appid, held.lease.epoch)
        self._tell(LeaseLost(appid, held.lease.epoch, "released"))

    async def _lose(self, appid: str, why: str) -> None:
        """The lease is gone (or about to be): stop the account at once, without hand-over."""
        held = self._held.pop(appid, None)
        if held is None:
            return
        log.warning("lease keeper: lost %s (epoch %d, %s); stopping it now", appid, held.lease.epoch, why)
        self._winding_down.add(appid)  # not taken again before its runner stopped
        try:
            task = held.task
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            try:
                await self._runner.stop_account(appid, handover=False)
            except Exception:
                log.exception("lease keeper: stopping %s failed", appid)
        finally:
            self._winding_down.discard(appid)
        self._tell(LeaseLost(appid, held.lease.epoch, why))

    async def _stop_overdue(self) -> None:
        now = self._clock()
        for appid in [a for a, h in self._held.items() if now >= h.deadline]:
            await self._lose(appid, "unreachable")

    def _tell(self, change: LeaseTaken | LeaseLost) -> None:
        if self._on_change is None:
            return
        try:
            self._on_change(change)
        except Exception:
            log.exception("lease keeper: on_change failed on %s", change)
