"""router.ownership: lease keepers of several "daemons" (each its own connections to a database of the
throw-away PostgreSQL cluster) with simple runners that record what they were told. Short leases keep it
fast; waits are on conditions with bounded timeouts (lease times: the database's clock)."""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import wait_until

from kfrouter.router.cluster_settings import ClusterSettings, parse_cluster
from kfrouter.router.core.errors import ConfigError
from kfrouter.router.edges.store import Lease, Store, StoreError, WaitingRow
from kfrouter.router.edges.store_pg import PgDatabase
from kfrouter.router.ownership import LeaseKeeper, LeaseLost, LeaseTaken

APPIDS = [f"wxacct{i:02d}" for i in range(20)]
FAST = ClusterSettings(daemon_id="t", lease_s=2.0, renew_every_s=0.4)


class Runner:
    """Records starts and stops; ``running`` is what it serves now (appid -> epoch)."""

    def __init__(self) -> None:
        self.running: dict[str, int] = {}
        self.log: list[tuple[str, str, Any]] = []
        self.stopped_at: dict[str, float] = {}

    async def start_account(self, appid: str, lease: Lease) -> None:
        assert appid not in self.running, f"{appid} started twice"
        self.log.append(("start", appid, lease.epoch))
        self.running[appid] = lease.epoch

    async def stop_account(self, appid: str, *, handover: bool) -> None:
        self.log.append(("stop", appid, handover))
        self.running.pop(appid, None)
        self.stopped_at[appid] = time.monotonic()


class Daemon:
    """A keeper, its runner, its own database connections and its task."""

    def __init__(
        self, url: str, name: str, settings: ClusterSettings = FAST, appids: list[str] = APPIDS
    ) -> None:
        self.db = PgDatabase(url)
        self.runner = Runner()
        self.changes: list[LeaseTaken | LeaseLost] = []
        self.keeper = LeaseKeeper(
            self.db, appids, settings, self.runner, owner=name, on_change=self.changes.append
        )
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self.keeper.run())

    async def kill(self) -> None:
        """Like kill -9: the keeper stops without a word; its leases stay until they expire."""
        assert self.task is not None
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        await asyncio.to_thread(self.db.close)

    async def close(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        if not self.db.closed:
            await asyncio.to_thread(self.db.close)


async def until(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    return await wait_until(predicate, timeout=timeout, message=what)


@pytest.fixture
async def cluster(pg_url: str) -> AsyncIterator[Callable[..., Daemon]]:
    made: list[Daemon] = []

    def make(name: str, **kwargs: Any) -> Daemon:
        d = Daemon(pg_url, name, **kwargs)
        made.append(d)
        return d

    try:
        yield make
    finally:
        for d in made:
            await d.close()


def owners(url: str) -> dict[str, tuple[str, int, bool]]:
    with Store(url, appid=APPIDS[0]) as s:
        return {r.appid: (r.owner, r.epoch, r.live) for r in s.leases()}


def spread(daemons: list[Daemon]) -> list[int]:
    return sorted(len(d.runner.running) for d in daemons)


async def test_three_daemons_share_twenty_accounts_and_one_runs_each(
    cluster: Callable[..., Daemon], pg_url: str
) -> None:
    daemons = [cluster(n) for n in ("a", "b", "c")]
    for d in daemons:
        d.start()
    await until(lambda: sum(len(d.runner.running) for d in daemons) == 20, 20, "all 20 accounts to run")
    assert spread(daemons) == [6, 7, 7]  # ceil(20 / 3) = 7 at most
    running = [a for d in daemons for a in d.runner.running]
    assert sorted(running) == APPIDS  # each exactly once
    rows = owners(pg_url)
    for d in daemons:
        assert all(rows[a][0] == d.keeper.owner for a in d.runner.running)
        assert set(d.keeper.held()) == set(d.runner.running)
        assert all(d.keeper.may_act(a) for a in d.runner.running)
        assert not any(d.keeper.may_act(a) for a in APPIDS if a not in d.runner.running)


async def test_a_killed_daemons_accounts_are_taken_over_within_the_lease(
    cluster: Callable[..., Daemon], pg_url: str
) -> None:
    daemons = [cluster(n) for n in ("a", "b", "c")]
    for d in daemons:
        d.start()
    await until(lambda: sum(len(d.runner.running) for d in daemons) == 20, 20, "all 20 accounts to run")
    victim, survivors = daemons[0], daemons[1:]
    theirs = set(victim.runner.running)
    epochs = {a: victim.runner.running[a] for a in theirs}
    await victim.kill()
    killed_at = time.monotonic()
    await until(
        lambda: sum(len(d.runner.running) for d in survivors) == 20, 20, "the survivors to run all 20"
    )
    took = time.monotonic() - killed_at
    assert took <= FAST.lease_s + FAST.renew_every_s + 1.0, took
    assert spread(survivors) == [10, 10]
    for d in survivors:
        for a in theirs & set(d.runner.running):
            assert d.runner.running[a] == epochs[a] + 1  # a new epoch: the dead owner's writes are refused
    assert sorted(a for d in survivors for a in d.runner.running) == APPIDS


async def test_sigterm_hands_over_at_once(cluster: Callable[..., Daemon], pg_url: str) -> None:
    long = ClusterSettings(daemon_id="t", lease_s=60.0, renew_every_s=0.4)  # expiry would take a minute
    a, b = cluster("a", settings=long), cluster("b", settings=long)
    a.start()
    b.start()
    await until(lambda: spread([a, b]) == [10, 10], 20, "10 accounts each")
    theirs = set(a.runner.running)
    started = time.monotonic()
    await a.keeper.hand_over()
    assert a.runner.running == {}
    assert all(("stop", x, True) in a.runner.log for x in theirs)
    rows = owners(pg_url)
    assert all(not rows[x][2] for x in theirs)  # released: expired now
    await until(lambda: len(b.runner.running) == 20, 10, "b to take a's accounts")
    assert time.monotonic() - started < 5  # not the 60 s lease
    assert [c for c in a.changes if isinstance(c, LeaseLost)] and all(
        c.why == "released" for c in a.changes if isinstance(c, LeaseLost)
    )


async def test_a_refused_renewal_stops_the_account_at_once(
    cluster: Callable[..., Daemon], pg_url: str
) -> None:
    appids = APPIDS[:2]
    a = cluster("a", appids=appids)
    a.start()
    await until(lambda: len(a.runner.running) == 2, 10, "a to run both accounts")
    target = appids[0]
    with psycopg.connect(pg_url, autocommit=True) as raw:  # someone else's tenure, behind a's back
        raw.execute(
            "UPDATE kfrouter.leases SET owner = 'thief', epoch = epoch + 1, expires_at = kfrouter.db_now() + 60 "
            "WHERE appid = %s",
            (target,),
        )
    await until(lambda: target not in a.runner.running, 5, "a to stop the stolen account")
    assert ("stop", target, False) in a.runner.log
    assert not a.keeper.may_act(target) and a.keeper.may_act(appids[1])
    assert any(isinstance(c, LeaseLost) and c.appid == target and c.why == "refused" for c in a.changes)


async def test_an_unreachable_database_stops_accounts_before_their_lease_could_expire(
    cluster: Callable[..., Daemon], pg_url: str
) -> None:
    """The lease table is locked by another session (renewals hang, as in a network partition): the
    watchdog stops the account at its local deadline, before the database lets anyone take it."""
    appids = APPIDS[:1]
    a = cluster("a", appids=appids)
    a.start()
    await until(lambda: len(a.runner.running) == 1, 10, "a to run its account")
    with psycopg.connect(pg_url) as raw:
        raw.execute("LOCK TABLE kfrouter.members IN ACCESS EXCLUSIVE MODE")  # the heartbeat hangs
        (expires_at,) = raw.execute(
            "SELECT expires_at FROM kfrouter.leases WHERE appid = %s", (appids[0],)
        ).fetchone()  # type: ignore[misc]
        await until(lambda: not a.runner.running, 10, "the watchdog to stop the account")
        (now,) = raw.execute("SELECT kfrouter.db_now()").fetchone()  # type: ignore[misc]
        assert now < expires_at, "stopped only after the lease could have been taken"
        assert not a.keeper.may_act(appids[0])
        raw.rollback()
    assert ("stop", appids[0], False) in a.runner.log
    assert any(isinstance(c, LeaseLost) and c.why == "unreachable" for c in a.changes)
    await until(
        lambda: len(a.runner.running) == 1, 10, "a to take its account back once the database answers"
    )


async def test_a_daemon_paused_in_the_middle_of_a_write_holds_up_neither_the_takeover_nor_the_others(
    cluster: Callable[..., Daemon], pg_url: str
) -> None:
    """A daemon stopped (SIGSTOP, a long GC) while one of its writes is open keeps the lease row's fence
    lock: the server ends that session once it has been idle in its transaction for lease_s - 2 *
    renew_every_s, so the other daemon takes the account when the lease expires — and its own accounts,
    renewed by the same keeper, are never stopped meanwhile. The paused write is not committed."""
    appids = APPIDS[:4]
    a, b = cluster("a", appids=appids), cluster("b", appids=appids)
    a.start()
    b.start()
    await until(lambda: spread([a, b]) == [2, 2], 20, "two accounts each")
    theirs, own = set(a.runner.running), set(b.runner.running)
    target = sorted(theirs)[0]
    writer = PgDatabase(pg_url, keepalive=FAST.keepalive())  # a's writes, made as a daemon makes them
    store = Store(writer, appid=target)
    store.use_lease(a.keeper.held()[target])
    inside, wake, outcome = threading.Event(), threading.Event(), []

    def paused_write() -> None:
        try:
            with store.transaction():
                store.add_waiting(WaitingRow(openid="paused", group=None, priority=0, arrived_at=1.0))
                inside.set()
                wake.wait(30)  # the process is stopped here, its transaction open
        except StoreError as exc:
            outcome.append(exc)
        else:
            outcome.append("committed")

    thread = threading.Thread(target=paused_write)
    thread.start()
    try:
        assert await asyncio.to_thread(inside.wait, 10)
        assert a.task is not None
        a.task.cancel()  # a is stopped too: nothing renews its leases
        with contextlib.suppress(asyncio.CancelledError):
            await a.task
        paused_at = time.monotonic()
        await until(lambda: set(b.runner.running) == set(appids), 15, "b to take a's accounts")
        took = time.monotonic() - paused_at
        assert took <= FAST.lease_s + 2 * FAST.renew_every_s + 1.0, took
        assert not [x for kind, x, _ in b.runner.log if kind == "stop"], b.runner.log  # own ones kept
        assert own <= set(b.runner.running)
    finally:
        wake.set()
        await asyncio.to_thread(thread.join, 10)
        await asyncio.to_thread(writer.close)
    assert len(outcome) == 1 and isinstance(outcome[0], StoreError), outcome  # the paused write is lost
    with Store(pg_url, appid=target) as s:
        assert "paused" not in {w.openid for w in s.load_state().waiting}


async def test_a_late_joiner_gets_its_share(cluster: Callable[..., Daemon]) -> None:
    a = cluster("a")
    a.start()
    await until(lambda: len(a.runner.running) == 20, 10, "a alone to run all 20")
    b = cluster("b")
    b.start()
    await until(lambda: spread([a, b]) == [10, 10], 20, "10 accounts each")
    handed = [x for kind, x, handover in a.runner.log if kind == "stop"]
    assert len(handed) == 10 and all(("stop", x, True) in a.runner.log for x in handed)


def test_cluster_settings_are_checked_naming_the_key() -> None:
    assert parse_cluster({}).lease_s == 15.0 and parse_cluster({}).renew_every_s == 3.0
    with pytest.raises(ConfigError, match=r"cluster.renew_every_s: must be below lease_s / 2 = 5"):
        parse_cluster({"lease_s": 10, "renew_every_s": 5})
    with pytest.raises(ConfigError, match=r"cluster.lease_s: must be a number from 1 to 300"):
        parse_cluster({"lease_s": 0.5})
    with pytest.raises(ConfigError, match=r"cluster.lease_s"):
        parse_cluster({"lease_s": True})
    with pytest.raises(ConfigError, match=r"cluster.daemon_id: must be 1-64"):
        parse_cluster({"daemon_id": "has space"})
    with pytest.raises(ConfigError, match=r"cluster.lease: unknown key"):
        parse_cluster({"lease": 3})
    edge = parse_cluster({"lease_s": 1, "renew_every_s": 0.49})  # validates, so it must work: see below
    assert math.isclose(edge.stop_margin_s, 0.49)
    owner = edge.owner_id()
    assert owner.startswith(f"{edge.daemon_id}:") and owner != edge.owner_id()


async def test_the_tightest_settings_that_validate_work(cluster: Callable[..., Daemon]) -> None:
    edge = parse_cluster({"daemon_id": "edge", "lease_s": 1, "renew_every_s": 0.49})
    a = cluster("a", settings=edge, appids=APPIDS[:3])
    a.start()
    await until(lambda: len(a.runner.running) == 3, 10, "a to run its accounts")
    looks = a.keeper.looks
    await until(lambda: a.keeper.looks >= looks + 6, 10, "six more looks")
    assert len(a.runner.running) == 3 and not any(kind == "stop" for kind, *_ in a.runner.log)


def test_the_config_file_takes_cluster_and_names_its_keys(tmp_path: Path) -> None:
    from kfrouter.router.config import Config

    def load(**top: Any) -> Config:
        account = {"wechat": {"appid": "wxA", "secret": "s", "token": "tok123"}}
        doc = {"server": {"admin_token": "a" * 16}, "accounts": [account], **top}
        return Config.from_dict(doc, source="k.toml", base_dir=tmp_path, env={})

    url = {"url": "postgresql://kfrouter@db.internal/kf"}
    cfg = load(store=url, cluster={"daemon_id": "kf-1", "lease_s": 10, "renew_every_s": 2})
    assert cfg.cluster == ClusterSettings(daemon_id="kf-1", lease_s=10, renew_every_s=2)
    assert all(a.cluster == cfg.cluster for a in cfg.accounts)
    assert load(store=url).cluster is None
    with pytest.raises(ConfigError) as err:
        load(store=url, cluster={"lease_s": 10, "renew_every_s": 5})
    assert err.value.problems == (
        (
            "cluster.renew_every_s",
            "must be below lease_s / 2 = 5 (two renewals may fail before a lease is lost), got 5",
        ),
    )
    with pytest.raises(ConfigError, match=r"k\.toml: cluster: needs \[store\] url"):
        load(cluster={})
