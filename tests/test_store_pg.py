"""router.edges.store_pg against a throw-away PostgreSQL cluster: the database itself refuses stale writes
(SQL that bypasses the store), migrations run once when daemons start together and a newer schema is
refused, a connection the server dropped is replaced, and every connection carries TCP keepalives and a
user timeout (read back from the socket itself) derived from the lease settings, unless the URL sets them."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from typing import Any

import pytest

try:
    import psycopg
except ImportError:  # CI must run these: there, a missing driver is a failure
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        raise
    pytest.skip("no PostgreSQL: psycopg is not installed (pip install -e '.[dev]')", allow_module_level=True)

from kfrouter.router.cluster_settings import ClusterSettings
from kfrouter.router.edges.store import Store, StoredCounts, StoreError, WaitingRow, open_database
from kfrouter.router.edges.store_counts import CountsReader
from kfrouter.router.edges.store_pg import ACCOUNT_MIGRATIONS, SHARED_MIGRATIONS, STALE_SQLSTATE, PgDatabase

APPID = "wx_pg_test"


def row(openid: str) -> WaitingRow:
    return WaitingRow(openid=openid, group=None, priority=0, arrived_at=1.0)


def test_the_database_refuses_stale_writes_that_bypass_the_store(pg_url: str) -> None:
    with Store(pg_url, appid=APPID) as a, Store(pg_url, appid=APPID) as b:
        la = a.acquire_lease("daemon-a", 30)
        assert la is not None and a.release_lease(la)
        lb = b.acquire_lease("daemon-b", 30)
        assert lb is not None and lb.epoch == la.epoch + 1
    insert = "INSERT INTO acct_wx_pg_test.waiting(openid, priority, arrived_at, text, tags) VALUES (%s, 0, 1, '', '[]')"
    with psycopg.connect(pg_url, autocommit=True) as raw:
        for fence in (None, la.epoch):  # no epoch at all; the old owner's epoch
            with pytest.raises(psycopg.Error) as caught, raw.transaction():
                if fence is not None:
                    raw.execute("SELECT kfrouter.fence(%s, %s)", (APPID, fence))
                raw.execute(insert, ("sneaky",))
            assert caught.value.sqlstate == STALE_SQLSTATE
        for statement in ("DELETE FROM acct_wx_pg_test.events", "TRUNCATE acct_wx_pg_test.processed"):
            with pytest.raises(psycopg.Error) as caught, raw.transaction():
                raw.execute(statement)
            assert caught.value.sqlstate == STALE_SQLSTATE
        with pytest.raises(psycopg.Error) as caught, raw.transaction():
            raw.execute(
                "INSERT INTO kfrouter.tokens VALUES (%s, 'T', 1, 1, %s)", (APPID, la.epoch)
            )  # the old owner storing a token
        assert caught.value.sqlstate == STALE_SQLSTATE
        with raw.transaction():  # the current epoch passes
            raw.execute("SELECT kfrouter.fence(%s, %s)", (APPID, lb.epoch))
            raw.execute(insert, ("by-b",))
    with Store(pg_url, appid=APPID) as check:
        assert [w.openid for w in check.load_state().waiting] == ["by-b"]


def test_daemons_starting_together_migrate_once(pg_url: str) -> None:
    opened: list[Store] = []
    errors: list[BaseException] = []

    def start() -> None:
        try:
            opened.append(Store(pg_url, appid=APPID))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    try:
        assert errors == [] and len(opened) == 4
        assert all(s.schema_version == len(ACCOUNT_MIGRATIONS) for s in opened)
        with psycopg.connect(pg_url) as raw:
            versions = dict(raw.execute("SELECT scope, version FROM kfrouter.schema_version").fetchall())
        assert versions == {"shared": len(SHARED_MIGRATIONS), f"account:{APPID}": len(ACCOUNT_MIGRATIONS)}
    finally:
        for s in opened:
            s.close()


def test_a_newer_schema_and_colliding_appids_are_refused(pg_url: str) -> None:
    Store(pg_url, appid=APPID).close()
    with psycopg.connect(pg_url, autocommit=True) as raw:
        raw.execute("UPDATE kfrouter.schema_version SET version = 99 WHERE scope = %s", (f"account:{APPID}",))
    with pytest.raises(StoreError, match=f"schema 'account:{APPID}' is at version 99, newer than"):
        Store(pg_url, appid=APPID)
    with pytest.raises(StoreError, match="would share schema acct_wx_pg_test"):
        Store(pg_url, appid=APPID.upper())
    with pytest.raises(StoreError, match="PostgreSQL store serves one account"):
        Store(pg_url)
    long_one = "wx-" + "a" * 61  # the config's longest appid, with a '-': a valid schema of its own
    with Store(pg_url, appid=long_one) as s:
        assert s.add_waiting(row("o1")) and [w.openid for w in s.load_state().waiting] == ["o1"]


def test_a_connection_the_server_dropped_is_replaced(pg_url: str) -> None:
    database = PgDatabase(pg_url)
    try:
        s = Store(database, appid=APPID)
        assert s.add_waiting(row("before"))
        with psycopg.connect(pg_url, autocommit=True) as raw:
            killed = raw.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = 'kfrouter' AND datname = current_database() AND pid <> pg_backend_pid()"
            ).fetchone()
        assert killed is not None and killed[0] == 2  # the write and the read connection
        assert s.add_waiting(row("after"))  # a new connection, transparently
        assert {w.openid for w in s.load_state().waiting} == {"before", "after"}
    finally:
        database.close()


def tcp_options(conn: Any) -> dict[str, int]:
    """What the kernel applies to a psycopg connection's socket (not what was asked for)."""
    with socket.socket(fileno=os.dup(conn.pgconn.socket)) as sock:
        tcp = {
            name: sock.getsockopt(socket.IPPROTO_TCP, getattr(socket, option))
            for name, option in (
                ("keepalives_idle", "TCP_KEEPIDLE"),
                ("keepalives_interval", "TCP_KEEPINTVL"),
                ("keepalives_count", "TCP_KEEPCNT"),
                ("tcp_user_timeout", "TCP_USER_TIMEOUT"),
            )
        }
        return {"keepalives": sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE), **tcp}


def idle_timeout(raw: Any) -> str:
    """The server's idle_in_transaction_session_timeout of a psycopg connection, as SHOW gives it."""
    return str(raw.execute("SHOW idle_in_transaction_session_timeout").fetchone()[0])


needs_linux_tcp = pytest.mark.skipif(
    not hasattr(socket, "TCP_USER_TIMEOUT"), reason="reads TCP_KEEPIDLE / TCP_USER_TIMEOUT back: Linux only"
)


def test_keepalive_follows_the_lease_settings() -> None:
    """A dead database host is given up on in time for the keeper's next look to renew on a new
    connection before its local deadline: lease_s - 3 * renew_every_s (at least 1 s)."""
    assert ClusterSettings().keepalive() == {
        "keepalives": "1",
        "keepalives_idle": "3",
        "keepalives_interval": "3",
        "keepalives_count": "3",
        "tcp_user_timeout": "6000",
        "options": "-c idle_in_transaction_session_timeout=9000",  # lease_s - 2 * renew_every_s
    }
    slow = ClusterSettings(lease_s=60, renew_every_s=5).keepalive()
    assert (slow["keepalives_idle"], slow["tcp_user_timeout"]) == ("5", "45000")
    assert slow["options"] == "-c idle_in_transaction_session_timeout=50000"
    tight = ClusterSettings(lease_s=2, renew_every_s=0.4).keepalive()  # the tightest settings that validate
    assert (tight["keepalives_idle"], tight["keepalives_interval"], tight["tcp_user_timeout"]) == (
        "1",
        "1",
        "1000",
    )
    assert tight["options"] == "-c idle_in_transaction_session_timeout=1200"


@needs_linux_tcp
async def test_every_connection_carries_the_keepalive_and_the_url_wins(pg_url: str) -> None:
    settings = ClusterSettings(lease_s=20, renew_every_s=2)  # idle 2 s, give up after 14 s
    wanted = {
        "keepalives": 1,
        "keepalives_idle": 2,
        "keepalives_interval": 2,
        "keepalives_count": 3,
        "tcp_user_timeout": 14000,
    }
    database = PgDatabase(pg_url, keepalive=settings.keepalive())
    try:
        s = Store(database, appid=APPID)
        assert tcp_options(database.writes.conn.raw) == wanted  # type: ignore[attr-defined]
        assert idle_timeout(database.writes.conn.raw) == "16s"  # type: ignore[attr-defined]
        assert idle_timeout(database.reads.conn.raw) == "16s"  # type: ignore[attr-defined]
        assert tcp_options(database.reads.conn.raw) == wanted  # type: ignore[attr-defined]
        listen = await database._listen_connection()  # what the LISTEN task connects with
        async with listen:
            assert tcp_options(listen) == wanted
        with psycopg.connect(pg_url, autocommit=True) as raw:  # the server drops them: replaced alike
            raw.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = 'kfrouter' AND datname = current_database()"
            )
        assert s.add_waiting(row("after")) and s.load_state().waiting
        assert tcp_options(database.writes.conn.raw) == wanted  # type: ignore[attr-defined]
        assert tcp_options(database.reads.conn.raw) == wanted  # type: ignore[attr-defined]
    finally:
        database.close()
    reader = CountsReader(pg_url, keepalive=settings.keepalive())  # accounts list's reads (store_counts)
    try:
        assert (
            reader.read([APPID]) == {APPID: StoredCounts(waiting=1, sessions=0)} and reader._conn is not None
        )
        assert tcp_options(reader._conn) == wanted
    finally:
        reader.close()
    # a value the URL sets itself wins (server settings: both, the URL's win); without [cluster], the defaults
    own = open_database(
        f"{pg_url}?keepalives_idle=7&tcp_user_timeout=2500"
        "&options=-c%20application_name%3Dmine%20-c%20idle_in_transaction_session_timeout%3D4321"
    )
    try:
        got = tcp_options(own.writes.conn.raw)  # type: ignore[attr-defined]
        assert (got["keepalives"], got["keepalives_idle"], got["tcp_user_timeout"]) == (1, 7, 2500)
        assert got["keepalives_interval"] == 3  # ClusterSettings().keepalive()
        assert idle_timeout(own.writes.conn.raw) == "4321ms"  # type: ignore[attr-defined]
    finally:
        own.close()
    own = open_database(f"{pg_url}?options=-c%20work_mem%3D8MB")
    try:
        assert idle_timeout(own.writes.conn.raw) == "9s"  # type: ignore[attr-defined]
        assert own.writes.conn.raw.execute("SHOW work_mem").fetchone()[0] == "8MB"  # type: ignore[attr-defined]
    finally:
        own.close()
    with pytest.raises(StoreError, match="keepalive applies to PostgreSQL only"):
        open_database(":memory:", keepalive=settings.keepalive())


def test_bad_urls_need_no_server() -> None:
    with pytest.raises(StoreError, match="must start with postgresql://"):
        PgDatabase("mysql://x")
    with pytest.raises(StoreError, match="cannot connect"):
        PgDatabase("postgresql://nobody@127.0.0.1:1/none")


@pytest.mark.parametrize(("ci", "outcome"), [("", "1 skipped"), ("true", "1 error")])
def test_without_postgresql_the_tests_skip_but_ci_fails_them(ci: str, outcome: str) -> None:
    """PG_BINDIR pointing nowhere: no server binaries. A test that needs the cluster is skipped with
    that reason — or, with CI=true, errors; a test that needs no server still runs."""
    env = {**os.environ, "PG_BINDIR": "/nonexistent", "CI": ci}
    tests = [
        f"{__file__}::test_bad_urls_need_no_server",
        f"{__file__}::test_daemons_starting_together_migrate_once",
    ]
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-rsf", "-p", "no:cacheprovider", *tests],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert outcome in done.stdout and "1 passed" in done.stdout, done.stdout
    assert "no PostgreSQL server binaries (initdb, pg_ctl)" in done.stdout
    if ci:  # an error of the run, not a skip: CI must never skip these
        assert "CI=true and the PostgreSQL tests cannot run" in done.stdout
