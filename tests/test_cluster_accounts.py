"""``kfrouter accounts list`` on several daemons sharing one PostgreSQL (docs/scale-out.md): an account
another daemon serves shows that daemon, its lease and the numbers of its store — waiting customers and
open sessions, read by ``router.edges.store_counts`` (read-only, a connection of its own) — or, in its row,
why they could not be read.

- The reader against a database of the throw-away cluster: the counts as the engine counts them (a
  customer being assigned is not waiting, a closed case is no session); an account never opened, tables
  locked by a schema change (a reason within the timeout, not a wait), a database that cannot be reached,
  a connection the server dropped (replaced at the next read); an owner's open write transaction does
  not make it wait.
- End to end: two ``kfrouter run`` daemons (tests/cluster_rig.py), one account each; each daemon's list
  shows the other's account with the numbers that daemon shows for it, through the admin API and the
  command; and each daemon opens the connections it needs and no more.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import threading
import time
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
import pytest
from cluster_rig import ADMIN_TOKEN, ClusterRig, until
from conftest import wait_until

from kfrouter.router.cli import main as kfrouter_main
from kfrouter.router.edges.store import Store, StoredCounts, WaitingRow
from kfrouter.router.edges.store_counts import NOT_STORED, CountsReader

pytestmark = pytest.mark.usefixtures("pg_cluster")

APPID = "wx_counts_test"


def waiting(openid: str) -> WaitingRow:
    return WaitingRow(openid=openid, group=None, priority=0, arrived_at=1.0)


@pytest.fixture
def owner(pg_url: str) -> Any:
    """The account's store, leased by an owner (its writes carry the lease, as a daemon's do)."""
    store = Store(pg_url, appid=APPID)
    lease = store.acquire_lease("owner-1", 60.0)
    assert lease is not None
    store.use_lease(lease)
    try:
        yield store
    finally:
        store.close()


@pytest.fixture
def reader(pg_url: str) -> Any:
    r = CountsReader(pg_url, timeout_s=1.0)
    try:
        yield r
    finally:
        r.close()


def test_the_counts_are_what_the_engine_counts(owner: Store, reader: CountsReader) -> None:
    for openid in ("w1", "w2", "being-assigned", "served", "gone", "in-session"):
        assert owner.add_waiting(waiting(openid))
    owner.add_reservation("being-assigned", "a1@test", 2.0)  # a create in flight: not waiting any more
    owner.record_session_start("served", "a1@test", 3.0)
    assert owner.record_session_end("served", "a1@test", 4.0)  # a case that ended: no session
    assert owner.remove_waiting("gone", 5.0, "cancelled")
    owner.record_session_start("in-session", "a2@test", 6.0)
    assert reader.read([APPID, "wxNeverOpened"]) == {
        APPID: StoredCounts(waiting=2, sessions=1),
        "wxNeverOpened": NOT_STORED,
    }
    assert reader.read([]) == {}


def test_an_owner_writing_does_not_make_it_wait(owner: Store, reader: CountsReader) -> None:
    """An owner's write transaction holds the lease row (the fence, FOR SHARE) and row locks until it
    commits: the reader sees what was committed before, at once."""
    assert owner.add_waiting(waiting("committed"))
    with owner.transaction():
        assert owner.add_waiting(waiting("not yet"))
        started = time.monotonic()
        assert reader.read([APPID]) == {APPID: StoredCounts(waiting=1, sessions=0)}
        assert time.monotonic() - started < 0.5
    assert reader.read([APPID]) == {APPID: StoredCounts(waiting=2, sessions=0)}


def test_what_cannot_be_read_says_why(owner: Store, reader: CountsReader, pg_url: str) -> None:
    assert owner.add_waiting(waiting("w1"))
    assert reader.read([APPID]) == {APPID: StoredCounts(waiting=1, sessions=0)}
    # a schema change holds the account's table: the read gives up within its timeout, naming the lock
    with psycopg.connect(pg_url) as ddl:
        ddl.execute(f"LOCK TABLE acct_{APPID}.waiting IN ACCESS EXCLUSIVE MODE")
        started = time.monotonic()
        assert reader.read([APPID]) == {APPID: "canceling statement due to lock timeout"}
        assert time.monotonic() - started < 1.5  # lock_timeout: half of timeout_s (1 s)
        ddl.rollback()
    assert reader.read([APPID]) == {APPID: StoredCounts(waiting=1, sessions=0)}
    # the server drops the connection: that read says so, the next one reconnects
    with psycopg.connect(pg_url, autocommit=True) as admin:
        dropped = admin.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = 'kfrouter-counts' AND datname = current_database()"
        ).fetchone()
    assert dropped == (1,)
    first = reader.read([APPID])[APPID]
    assert isinstance(first, str) and "terminat" in first, first
    assert reader.read([APPID]) == {APPID: StoredCounts(waiting=1, sessions=0)}
    # nothing listens there
    gone = CountsReader("postgresql://kfrouter@127.0.0.1:1/none", connect_timeout_s=1.0)
    why = gone.read([APPID, "wxOther"])
    assert set(why) == {APPID, "wxOther"} and why[APPID] == why["wxOther"]
    assert str(why[APPID]).startswith("cannot connect to postgresql://kfrouter@127.0.0.1:1/none: ")


def test_reads_from_several_threads_share_one_connection(
    owner: Store, reader: CountsReader, pg_url: str
) -> None:
    assert owner.add_waiting(waiting("w1"))
    results: list[Any] = []
    threads = [threading.Thread(target=lambda: results.append(reader.read([APPID]))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert results == [{APPID: StoredCounts(waiting=1, sessions=0)}] * 4
    assert connections(pg_url).get("kfrouter-counts") == 1


def connections(url: str) -> dict[str, int]:
    """kfrouter's connections to the database, by application name."""
    with psycopg.connect(url, autocommit=True) as admin:
        rows = admin.execute(
            "SELECT application_name, count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND application_name LIKE 'kfrouter%' GROUP BY application_name"
        ).fetchall()
    return {name: int(n) for name, n in rows}


# ------------------------------------------------------------------------------------------ end to end


def accounts_list(url: str) -> list[list[str]]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = kfrouter_main(["accounts", "list", "--url", url, "--admin-token", ADMIN_TOKEN])
    assert code == 0
    return [line.split() for line in out.getvalue().splitlines()]


async def test_each_daemon_lists_the_other_daemons_account_with_its_numbers(
    tmp_path: Path, pg_url: str
) -> None:
    async with (
        ClusterRig(
            tmp_path, pg_url, daemons=2, accounts=2, lease_s=5.0, renew_every_s=1.0, hold_s=(3600.0, 3600.0)
        ) as rig,
        aiohttp.ClientSession(headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as http,
    ):
        await until(
            lambda: sorted(map(len, rig.owners_by_daemon().values())) == [1, 1], 60, "one account each"
        )
        d0, d1 = rig.daemons
        account = {d.name: rig.owners_by_daemon()[d.name][0] for d in rig.daemons}
        for i in range(
            15
        ):  # d0's account: more customers than its 4 agents x 3 take — 12 sessions, 3 waiting
            rig.customer(account[d0.name], f"w{i:02d}")
        for i in range(2):
            rig.customer(account[d1.name], f"v{i:02d}")

        async def rows(d: Any) -> dict[str, dict[str, Any]]:
            async with http.get(f"{d.url}/api/accounts") as resp:
                assert resp.status == 200
                return {r["appid"]: r for r in (await resp.json())["accounts"]}

        async def seen(d: Any, appid: str, wanted: tuple[int, int], timeout: float) -> None:
            async def check() -> bool:
                row = (await rows(d))[appid]
                return (row["waiting"], row["sessions"]) == wanted and row[
                    "owner"
                ] is not None  # a look later

            await wait_until(check, timeout=timeout, message=f"{d.name} to show {appid} with {wanted}")

        # each owner's engine first, then the other daemon's reading of its store
        await seen(d0, account[d0.name], (3, 12), 60)
        await seen(d1, account[d0.name], (3, 12), 10)
        await seen(d1, account[d1.name], (0, 2), 60)
        await seen(d0, account[d1.name], (0, 2), 10)
        for d, other in ((d0, d1), (d1, d0)):
            theirs = (await rows(d))[account[other.name]]
            assert theirs["running"] is False and theirs["counts_error"] is None, theirs
            assert (
                theirs["owner"].startswith(f"{other.name}:")
                and theirs["status"] == f"served by {theirs['owner']}"
            )
            mine = (await rows(d))[account[d.name]]
            assert mine["running"] is True and mine["owner"].startswith(f"{d.name}:")
        table = await asyncio.to_thread(accounts_list, d1.url)
        assert table[0] == ["APPID", "OWNER", "LEASE", "STATUS", "WAITING", "SESSIONS"]
        row = next(r for r in table if r[0] == account[d0.name])
        assert row[1].startswith(f"{d0.name}:") and row[-5:] == ["served", "by", row[1], "3", "12"]
        # the connections of the two daemons: each its stores' writer and reader, the lease keeper's two,
        # the LISTEN of its pickups and the one of accounts list — nothing opened for nothing
        opened = connections(pg_url)
        assert opened == {"kfrouter": 8, "kfrouter-listen": 2, "kfrouter-counts": 2}, opened
