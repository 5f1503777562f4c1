"""router.edges.store beyond one account's rows, on both backends (a SQLite file; a database of the
throw-away PostgreSQL cluster): group commit, leases with fencing, the shared push inbox and the shared
access token. Waits are on conditions with bounded timeouts (lease expiry: the database's clock)."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from kfrouter.router.edges.store import StaleLease, Store, StoreError, WaitingRow
from kfrouter.router.edges.store_pg import PgDatabase

APPID = "wx_shared_test"
BACKENDS = ["sqlite", "postgresql"]


@pytest.fixture(params=BACKENDS)
def target(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return str(tmp_path / "kf.db")
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def stores(target: str) -> Iterator[Callable[[], Store]]:
    """Opens stores of the same account on ``target``, each with its own connections (a daemon each);
    all closed at teardown."""
    opened: list[Store] = []

    def open_one() -> Store:
        s = Store(target, appid=APPID)
        opened.append(s)
        return s

    try:
        yield open_one
    finally:
        for s in opened:
            s.close()


def row(openid: str, at: float = 1.0) -> WaitingRow:
    return WaitingRow(openid=openid, group="general", priority=0, arrived_at=at)


def push_step(openid: str, at: float) -> Callable[[Store], bool]:
    """What the webhook commits for a request: claim the key, queue the customer, log the input."""

    def work(s: Store) -> bool:
        if not s.claim_push(f"msg:{openid}", at):
            return False
        s.add_waiting(row(openid, at))
        s.append_event(at, "customer_requested", {"openid": openid})
        return True

    return work


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, message: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {message}; last value {value!r}")
        time.sleep(0.01)


class Gate:
    """A job that holds the writer inside a batch until released: what queues meanwhile forms the next
    batch, deterministically."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, s: Store) -> str:
        self.entered.set()
        if not self.release.wait(10):
            raise RuntimeError("gate never released")
        return "gate"


# ---------------------------------------------------------------------------------------------- group commit


async def test_concurrent_commits_share_batches_and_all_land(stores: Callable[[], Store]) -> None:
    s = stores()
    results = await asyncio.gather(*(s.commit(push_step(f"o{i}", float(i))) for i in range(200)))
    assert results == [True] * 200
    stats = s.commit_stats
    assert stats.jobs == 200 and stats.failed == 0
    assert stats.batches < 200  # the loop submitted them together: they shared transactions
    other = stores()  # another connection: committed means visible to everyone
    state = other.load_state()
    assert len(state.waiting) == 200 and len(other.session_log()) == 200
    assert all(other.is_processed(f"msg:o{i}") for i in range(200))


def test_what_queues_during_a_commit_is_the_next_batch(stores: Callable[[], Store]) -> None:
    s = stores()
    gate = Gate()
    first = s.submit(gate)
    assert gate.entered.wait(10)
    queued = [s.submit(push_step(f"o{i}", float(i))) for i in range(50)]
    assert s.database.commits.pending() == 50
    gate.release.set()
    assert first.result(10) == "gate"
    assert [f.result(10) for f in queued] == [True] * 50
    stats = s.commit_stats
    assert (stats.batches, stats.jobs, stats.largest) == (2, 51, 50)  # 50 customers, one transaction


def test_a_failing_job_rolls_back_alone(stores: Callable[[], Store]) -> None:
    s = stores()
    gate = Gate()
    s.submit(gate)
    assert gate.entered.wait(10)

    def half_then_fail(st: Store) -> None:
        st.add_waiting(row("bad", 2.0))
        raise ValueError("the push turned out to be malformed")

    good1 = s.submit(push_step("good1", 1.0))
    bad = s.submit(half_then_fail)
    good2 = s.submit(push_step("good2", 3.0))
    gate.release.set()
    assert good1.result(10) and good2.result(10)
    with pytest.raises(ValueError, match="malformed"):
        bad.result(10)
    assert {w.openid for w in s.load_state().waiting} == {"good1", "good2"}
    assert s.commit_stats.batches == 2  # the three shared one transaction
    assert s.database.commits.reruns == 1  # run without savepoints first, then again with them


def test_a_batch_of_refused_jobs_gives_each_its_own_refusal(stores: Callable[[], Store]) -> None:
    """Jobs refused when they enter their write unit (a stale lease), in one batch: each gets the
    refusal, nothing of theirs is written, and the writer goes on."""
    a, b = stores(), stores()
    la = a.acquire_lease("daemon-a", 0.3)
    assert la is not None
    a.use_lease(la)
    expire(a, la)
    lb = b.acquire_lease("daemon-b", 30)
    assert lb is not None
    gate = Gate()
    a.submit(gate)
    assert gate.entered.wait(10)
    refused = [a.submit(push_step(f"stale{i}", float(i))) for i in range(3)]
    gate.release.set()
    for f in refused:
        with pytest.raises(StaleLease):
            f.result(10)
    assert a.database.commits.reruns == 1  # one batch of three, run again with a savepoint each
    assert not any(b.is_processed(f"msg:stale{i}") for i in range(3))
    b.use_lease(lb)
    assert b.add_waiting(row("by-b"))


def test_jobs_commit_in_order_and_direct_writes_do_not_overtake_them(stores: Callable[[], Store]) -> None:
    s = stores()
    gate = Gate()
    s.submit(gate)
    assert gate.entered.wait(10)
    futures = [s.submit(lambda st, i=i: st.append_event(float(i), "queued", {"i": i})) for i in range(5)]
    direct: dict[str, Any] = {}

    def direct_write() -> None:  # a thread writing directly while jobs are queued
        direct["seq"] = s.append_event(99.0, "direct", {})

    t = threading.Thread(target=direct_write)
    t.start()
    gate.release.set()
    t.join(10)
    seqs = [f.result(10) for f in futures]
    assert seqs == sorted(seqs)
    assert direct["seq"] > seqs[-1]


def test_a_direct_read_sees_every_write_submitted_before_it(stores: Callable[[], Store]) -> None:
    s = stores()
    for i in range(20):
        s.defer(push_step(f"o{i}", float(i)), f"customer o{i}")
    assert len(s.load_state().waiting) == 20  # no wait, no flush: the read commits the queue first


def test_close_commits_what_was_deferred_and_refuses_more(target: str) -> None:
    s = Store(target, appid=APPID)
    for i in range(10):
        s.defer(push_step(f"o{i}", float(i)), f"customer o{i}")
    s.close()
    with pytest.raises(StoreError, match="closed"):
        s.defer(push_step("late", 1.0), "late customer")
    with Store(target, appid=APPID) as again:
        assert len(again.load_state().waiting) == 10


def test_a_deferred_failure_is_logged_with_what_it_was(
    stores: Callable[[], Store], caplog: pytest.LogCaptureFixture
) -> None:
    s = stores()
    with caplog.at_level(logging.ERROR, logger="kfrouter.store"):
        s.defer(lambda st: st.add_waiting(row("")), "reservation o1 -> a@x")
        s.flush()
    assert "reservation o1 -> a@x not committed: StoreError: openid must be a non-empty string" in caplog.text


def test_work_must_be_a_function(stores: Callable[[], Store]) -> None:
    with pytest.raises(StoreError, match="work must be a function of the store"):
        stores().submit("add_waiting")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------- leases


def expire(s: Store, lease: Any) -> None:
    """Wait (database clock, bounded) until ``lease`` expired."""
    wait_for(lambda: s.db_now() > lease.expires_at, timeout=10, message="the lease to expire")


def test_acquire_renew_release_and_epochs(stores: Callable[[], Store]) -> None:
    a, b = stores(), stores()
    la = a.acquire_lease("daemon-a", 30)
    assert la is not None and (la.owner, la.epoch) == ("daemon-a", 1) and abs(la.ttl_s - 30) < 1e-6
    assert b.acquire_lease("daemon-b", 30) is None  # held by a
    again = a.acquire_lease("daemon-a", 60)  # the holder acquiring again renews: same epoch
    assert again is not None and again.epoch == 1 and again.expires_at > la.expires_at
    renewed = a.renew_lease(again, 30)
    assert renewed is not None and renewed.epoch == 1
    row_ = b.lease_row()
    assert row_ is not None and (row_.owner, row_.epoch, row_.live) == ("daemon-a", 1, True)
    assert a.release_lease(renewed) and not a.release_lease(renewed)
    assert a.renew_lease(renewed, 30) is None
    lb = b.acquire_lease("daemon-b", 30)  # released: taken at once, a new epoch
    assert lb is not None and (lb.owner, lb.epoch) == ("daemon-b", 2)
    assert [(r.appid, r.owner, r.epoch) for r in a.leases()] == [(APPID, "daemon-b", 2)]


def test_a_stale_owner_is_refused_by_the_database(stores: Callable[[], Store]) -> None:
    """Owner A; its lease expires; B takes the account; every write of A is refused, direct or batched,
    and B writes."""
    a, b = stores(), stores()
    la = a.acquire_lease("daemon-a", 0.3)
    assert la is not None
    a.use_lease(la)
    assert a.add_waiting(row("before"))
    expire(a, la)
    with pytest.raises(StaleLease, match="expired"):  # expired, not yet taken: refused already
        a.add_waiting(row("late"))
    lb = b.acquire_lease("daemon-b", 30)
    assert lb is not None and lb.epoch == la.epoch + 1
    b.use_lease(lb)
    with pytest.raises(StaleLease, match=f"carries lease epoch {la.epoch}, the current one is {lb.epoch}"):
        a.add_waiting(row("stale"))
    with pytest.raises(StaleLease):
        a.submit(push_step("stale2", 2.0)).result(10)
    with pytest.raises(StaleLease):
        a.save_token("token-from-a", 9e9, 1.0)
    assert a.renew_lease(la, 30) is None  # A learns it lost the lease
    assert b.add_waiting(row("by-b"))
    assert {w.openid for w in b.load_state().waiting} == {"before", "by-b"}
    assert not a.is_processed("msg:stale2")


def test_once_leased_a_writer_without_a_lease_is_refused(stores: Callable[[], Store]) -> None:
    free, owner = stores(), stores()
    assert free.add_waiting(row("never-leased"))  # no lease row: a single daemon writes freely
    lease = owner.acquire_lease("daemon-o", 30)
    assert lease is not None
    with pytest.raises(StaleLease, match=r"leased by daemon-o .* holds no lease"):
        free.add_waiting(row("x"))
    owner.use_lease(lease)
    assert owner.add_waiting(row("y"))


def test_a_takeover_waits_for_writes_already_checked(stores: Callable[[], Store]) -> None:
    """A checked its fence inside a transaction; its lease expires; B's takeover does not slip in
    between: it completes after A's commit, and then sees A's write."""
    a, b = stores(), stores()
    la = a.acquire_lease("daemon-a", 0.5)
    assert la is not None
    a.use_lease(la)
    taken: dict[str, Any] = {}
    with a.transaction():
        assert a.add_waiting(row("written-by-a"))  # fence checked here
        expire(b, la)
        thread = threading.Thread(target=lambda: taken.update(lease=b.acquire_lease("daemon-b", 30)))
        thread.start()
        thread.join(0.3)  # B's takeover cannot finish while A's transaction is open (any backend)
        assert "lease" not in taken
    thread.join(10)
    lb = taken["lease"]
    assert lb is not None and lb.epoch == la.epoch + 1
    b.use_lease(lb)
    assert "written-by-a" in {w.openid for w in b.load_state().waiting}


def test_members_beat_expire_and_leave(stores: Callable[[], Store]) -> None:
    a, b = stores(), stores()
    first = a.heartbeat("daemon-a", 30)
    assert first.daemon_id == "daemon-a" and abs(first.expires_at - first.started_at - 30) < 1e-6
    again = a.heartbeat("daemon-a", 60)  # a live member keeps its start time
    assert again.started_at == first.started_at and again.expires_at > first.expires_at
    short = b.heartbeat("daemon-b", 0.3)
    assert [m.daemon_id for m in a.members()] == ["daemon-a", "daemon-b"]
    wait_for(lambda: b.db_now() > short.expires_at, timeout=10, message="b's heartbeat to expire")
    assert [m.daemon_id for m in b.members()] == ["daemon-a"]
    back = b.heartbeat("daemon-b", 30)  # back after expiry: a new start
    assert back.started_at > short.started_at
    assert a.leave("daemon-a") and not a.leave("daemon-a")
    assert [m.daemon_id for m in b.members()] == ["daemon-b"]
    with pytest.raises(StoreError, match="ttl_s must be > 0"):
        a.heartbeat("daemon-a", 0)
    with pytest.raises(StoreError, match="daemon_id must be a non-empty string"):
        a.heartbeat("", 1)


def test_lease_operations_are_checked(stores: Callable[[], Store], tmp_path: Path) -> None:
    s = stores()
    with pytest.raises(StoreError, match="ttl_s must be > 0"):
        s.acquire_lease("d", 0)
    with pytest.raises(StoreError, match="owner must be a non-empty string"):
        s.acquire_lease("", 1)
    lease = s.acquire_lease("d", 30)
    assert lease is not None
    with s.transaction(), pytest.raises(StoreError, match="their own transaction"):
        s.renew_lease(lease, 30)
    with Store(tmp_path / "no-appid.db") as bare, pytest.raises(StoreError, match="without an appid"):
        bare.acquire_lease("d", 30)
    with pytest.raises(StoreError, match="appid must be"):
        Store(tmp_path / "x.db", appid="wx with space")


# ---------------------------------------------------------------------------------------------- shared inbox


def test_shared_inbox_put_by_anyone_taken_once_by_the_owner(stores: Callable[[], Store]) -> None:
    receiver, owner = stores(), stores()
    lease = owner.acquire_lease("daemon-o", 30)
    assert lease is not None
    owner.use_lease(lease)
    # the receiver holds no lease: it may still keep a push for the owner (not fenced)
    assert receiver.submit(
        lambda s: s.put_shared_push("msg:1", "<xml>1</xml>", 10.0, received_by="daemon-r", query="a=1")
    ).result(10)
    assert not receiver.put_shared_push(
        "msg:1", "<xml>1</xml>", 11.0, received_by="daemon-r"
    )  # WeChat's retry
    assert receiver.put_shared_push("msg:2", "<xml>2</xml>", 12.0, received_by="daemon-r")
    pending = owner.shared_pushes()
    assert [(p.dedup_key, p.raw, p.query, p.received_by) for p in pending] == [
        ("msg:1", "<xml>1</xml>", "a=1", "daemon-r"),
        ("msg:2", "<xml>2</xml>", "", "daemon-r"),
    ]
    with pytest.raises(StaleLease):  # only the owner takes pushes
        receiver.ack_shared_push(pending[0].id)

    def take(s: Store, push_id: int, openid: str) -> bool:  # taken and applied in one write unit
        if not s.ack_shared_push(push_id):
            return False
        return s.add_waiting(row(openid))

    assert owner.submit(lambda s: take(s, pending[0].id, "o1")).result(10)
    assert not owner.submit(lambda s: take(s, pending[0].id, "o1")).result(10)  # handled once
    assert [p.dedup_key for p in owner.shared_pushes()] == ["msg:2"]
    assert [w.openid for w in owner.load_state().waiting] == ["o1"]


async def test_waiting_for_shared_pushes_wakes_on_a_put_and_times_out(target: str) -> None:
    # PostgreSQL: two databases (two daemons), woken through LISTEN/NOTIFY; SQLite: one file, one process
    waiter = Store(target, appid=APPID)
    putter = Store(target, appid=APPID) if waiter.backend == "postgresql" else waiter
    try:
        t0 = time.monotonic()
        assert await waiter.wait_shared_pushes(0.05) is False  # nothing: the polling timeout
        assert time.monotonic() - t0 < 5
        db = waiter.database
        if isinstance(db, PgDatabase):
            deadline = time.monotonic() + 10
            while not db.listening and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            assert db.listening
        woken = asyncio.create_task(waiter.wait_shared_pushes(30))
        await asyncio.sleep(0)
        assert await putter.commit(lambda s: s.put_shared_push("msg:9", "<xml/>", 1.0, received_by="r"))
        t1 = time.monotonic()
        assert await asyncio.wait_for(woken, 20) is True
        assert time.monotonic() - t1 < 10  # woken, not timed out (the wait was 30 s)
        assert [p.dedup_key for p in waiter.shared_pushes()] == ["msg:9"]
    finally:
        if isinstance(waiter.database, PgDatabase):
            await waiter.database.stop_listening()
        waiter.close()
        putter.close()


# ---------------------------------------------------------------------------------------------- tokens


def test_only_the_owner_stores_the_token_and_everyone_reads_it(stores: Callable[[], Store]) -> None:
    owner, reader = stores(), stores()
    assert reader.token() is None
    lease = owner.acquire_lease("daemon-o", 30)
    assert lease is not None
    owner.use_lease(lease)
    owner.save_token("ACCESS-1", 7200.0, 0.0)
    owner.save_token("ACCESS-2", 7300.0, 100.0)  # a refresh replaces it
    tok = reader.token()
    assert tok is not None and (tok.access_token, tok.expires_at, tok.refreshed_at, tok.epoch) == (
        "ACCESS-2",
        7300.0,
        100.0,
        lease.epoch,
    )
    with pytest.raises(StaleLease):
        reader.save_token("ACCESS-BY-READER", 9e9, 1.0)
    with pytest.raises(StoreError, match="access_token must be a non-empty string"):
        owner.save_token("", 1.0, 1.0)
