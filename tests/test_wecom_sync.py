"""The WeCom intake puller against the fake WeCom over HTTP, with real SQLite cursor files: a retried
callback pulls nothing twice, the cursor is saved only after the batch was handled and committed, a
restart resumes from the saved cursor (also after kill -9 of a real subprocess), a first start does not
replay history."""

from __future__ import annotations

import asyncio
import sqlite3
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from conftest import wait_until
from wecom_support import AES_KEY, CB_TOKEN, CORPID, SECRET, T0, client_for, running_receiver

from kfrouter.router.clock import SteadyClock
from kfrouter.router.edges.wecom_client import KfMessage
from kfrouter.router.edges.wecom_cursor import SqliteCursorStore
from kfrouter.router.edges.wecom_sync import SINCE_PREFIX, KfSyncPuller
from kfrouter.router.wechat.wecom_kf import KfCallback
from kfrouter.sim.fake_options import Fault
from kfrouter.sim.wecom_options import WeComOptions
from kfrouter.sim.wecom_server import FakeWeCom, running_fake_wecom

KF = "wkA"


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
async def fake() -> AsyncIterator[FakeWeCom]:
    async with running_fake_wecom(CORPID, SECRET, clock=SteadyClock(T0, frozen=True)) as f:
        f.model.add_account("咨询", open_kfid=KF)
        yield f


def write(fake: FakeWeCom, *texts: str, who: str = "wmC") -> None:
    for t in texts:
        fake.model.customer_message(KF, who, fake.clock.now(), t)


class Collector:
    """``on_message`` that records texts; ``fail_on`` raises once on that text; ``gate`` blocks first."""

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.msgids: list[str] = []
        self.fail_on: str | None = None
        self.gate: asyncio.Event | None = None
        self.entered = asyncio.Event()

    async def __call__(self, msg: KfMessage) -> None:
        self.entered.set()
        if self.gate is not None:
            await asyncio.wait_for(self.gate.wait(), 10)
        if msg.text == self.fail_on:
            self.fail_on = None
            raise RuntimeError(f"handler failed on {msg.text}")
        self.texts.append(msg.text or msg.msgtype)
        self.msgids.append(msg.msgid)


def puller(
    fake: FakeWeCom, http: aiohttp.ClientSession, store: SqliteCursorStore, on: Collector, **kw: object
) -> KfSyncPuller:
    kw.setdefault("history_before", T0)
    return KfSyncPuller(client_for(fake, http), store, on, open_kfids=[KF], **kw)  # type: ignore[arg-type]


def token_of_last_callback(fake: FakeWeCom) -> str:
    return fake.model.drain_outbox()[-1].token


async def test_retried_callback_waits_and_pulls_nothing_twice(
    fake: FakeWeCom, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    write(fake, "一", "二")
    tok = token_of_last_callback(fake)
    on = Collector()
    on.gate = asyncio.Event()
    with SqliteCursorStore(tmp_path / "c.db") as store:
        p = puller(fake, http, store, on)
        cb = KfCallback(to_user=CORPID, create_time=int(T0), token=tok, open_kfid=KF)
        first = p.notify(cb)
        await asyncio.wait_for(on.entered.wait(), 5)  # the first pull is inside the handler
        retry = p.notify(cb)  # WeCom re-sends the same callback
        await asyncio.sleep(0)
        assert fake.model.calls["cgi-bin/kf/sync_msg"] == 1  # the retry waits behind the lock
        on.gate.set()
        r1, r2 = await asyncio.gather(first, retry)  # type: ignore[arg-type]
        assert on.texts == ["一", "二"]
        assert (r1.handed, r2.handed) == (2, 0)
        assert fake.model.calls["cgi-bin/kf/sync_msg"] == 2
        write(fake, "三")
        await p.pull(KF)
        assert on.texts == ["一", "二", "三"]


async def test_cursor_saved_only_after_the_batch_is_committed(
    fake: FakeWeCom, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    log: list[str] = []

    class LoggingStore(SqliteCursorStore):
        def set_cursor(self, open_kfid: str, cursor: str) -> None:
            log.append(f"cursor {cursor[:7]}" if cursor.startswith(SINCE_PREFIX) else "cursor")
            super().set_cursor(open_kfid, cursor)

    async def commit(open_kfid: str) -> None:
        log.append(f"commit {open_kfid}")

    on = Collector()
    write(fake, "a", "b", "c")
    with LoggingStore(tmp_path / "c.db") as store:
        p = puller(fake, http, store, on, commit=commit, limit=2)
        on.fail_on = "b"
        with pytest.raises(RuntimeError, match="failed on b"):
            await p.pull(KF)
        assert on.texts == ["a"] and log == ["cursor !since:"]  # nothing saved past the failed batch
        assert store.get_cursor(KF) == f"{SINCE_PREFIX}{int(T0)}"
        await p.pull(KF)  # the whole batch again (at least once), then the rest
        assert on.texts == ["a", "a", "b", "c"]
        assert log == ["cursor !since:", "commit wkA", "cursor", "commit wkA", "cursor"]

        async def failing_commit(open_kfid: str) -> None:
            raise OSError("disk full")

        saved = store.get_cursor(KF)
        write(fake, "d")
        p2 = puller(fake, http, store, on, commit=failing_commit)
        with pytest.raises(OSError):
            await p2.pull(KF)
        assert store.get_cursor(KF) == saved  # handed on but not committed: cursor kept
        await p.pull(KF)
        assert on.texts[-2:] == ["d", "d"]


async def test_restart_resumes_from_the_saved_cursor(
    fake: FakeWeCom, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    write(fake, "1", "2", "3")
    on = Collector()
    with SqliteCursorStore(tmp_path / "c.db") as store:
        await puller(fake, http, store, on).pull(KF)
    assert on.texts == ["1", "2", "3"]
    fake.clock.advance(3600)
    write(fake, "4", "5")
    on2 = Collector()
    with SqliteCursorStore(tmp_path / "c.db") as store:
        # started later: 4 and 5 are older than its start, yet handed on — there is a saved cursor
        result = await puller(fake, http, store, on2, history_before=T0 + 7200).pull(KF)
    assert on2.texts == ["4", "5"] and result.skipped_history == 0


async def test_first_start_does_not_replay_history(
    fake: FakeWeCom, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    write(fake, "old1", "old2")
    fake.clock.advance(100)
    start = fake.clock.now()
    write(fake, "new1")
    on = Collector()
    with SqliteCursorStore(tmp_path / "c.db") as store:
        result = await puller(fake, http, store, on, history_before=start, limit=1).pull(KF)
        assert on.texts == ["new1"] and result.skipped_history == 2 and result.pages == 3
        write(fake, "new2")
        await puller(fake, http, store, on, history_before=start).pull(KF)
        assert on.texts == ["new1", "new2"]


async def test_first_start_cutoff_survives_a_crash_before_the_first_cursor(
    fake: FakeWeCom, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    write(fake, "history")
    fake.clock.advance(10)
    write(fake, "during-first-start")
    on = Collector()
    path = tmp_path / "c.db"
    with SqliteCursorStore(path) as store:
        fake.model.set_fault("sync_msg", Fault(errcode=-1))
        with pytest.raises(Exception, match="-1"):
            await puller(fake, http, store, on, history_before=T0 + 5).pull(KF)
        fake.model.set_fault("sync_msg", None)
    fake.clock.advance(100)
    with SqliteCursorStore(path) as store:  # restarted much later: the saved cut-off still rules
        result = await puller(fake, http, store, on, history_before=fake.clock.now()).pull(KF)
    assert on.texts == ["during-first-start"] and result.skipped_history == 1


async def test_invalid_token_falls_back_and_pages_are_bounded(
    fake: FakeWeCom, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    write(fake, *[f"m{i}" for i in range(5)])
    on = Collector()
    with SqliteCursorStore(tmp_path / "c.db") as store:
        p = puller(fake, http, store, on, limit=1, max_pages=2)
        r = await p.pull(KF, token="ENCexpiredtoken")
        assert p.stats.token_fallbacks == 1 and on.texts == ["m0", "m1"] and not r.complete
        r = await p.pull(KF)
        r = await p.pull(KF)
        assert on.texts == ["m0", "m1", "m2", "m3", "m4"] and r.complete
        assert p.notify(KfCallback(to_user=CORPID, create_time=1, token="x", open_kfid="wkOTHER")) is None
        assert p.stats.ignored_callbacks == 1


async def test_empty_pages_with_has_more_are_followed(http: aiohttp.ClientSession, tmp_path: Path) -> None:
    async with running_fake_wecom(
        CORPID, SECRET, options=WeComOptions(empty_page_every=2), clock=SteadyClock(T0, frozen=True)
    ) as fake:
        fake.model.add_account("咨询", open_kfid=KF)
        write(fake, "x", "y", "z")
        on = Collector()
        with SqliteCursorStore(tmp_path / "c.db") as store:
            await puller(fake, http, store, on, limit=1).pull(KF)
        assert on.texts == ["x", "y", "z"]


async def test_callbacks_from_the_fake_drive_the_puller_end_to_end(
    http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """Real encrypted callbacks: the receiver pulls inline (slowly), WeCom times out and re-sends while
    the pull is in flight; every message is handed on exactly once."""
    async with running_receiver() as rec:
        options = WeComOptions(callback_timeout_s=0.2)
        async with running_fake_wecom(
            CORPID,
            SECRET,
            callback_url=rec.url,
            token=CB_TOKEN,
            aes_key=AES_KEY,
            options=options,
            clock=SteadyClock(T0, frozen=True),
        ) as fake:
            fake.model.add_account("咨询", open_kfid=KF)
            fake.model.add_servicer(KF, "alice")
            on = Collector()
            on.gate = asyncio.Event()
            with SqliteCursorStore(tmp_path / "c.db") as store:
                p = puller(fake, http, store, on)

                async def handle(cb: KfCallback) -> None:
                    await p.pull(cb.open_kfid, cb.token)

                rec.handler = handle
                write(fake, "你好")
                fake.flush()
                await wait_until(lambda: len(rec.callbacks) >= 2, timeout=5, message="a retried callback")
                on.gate.set()
                assert await fake.settle(10)
                write(fake, "还在吗")
                fake.flush()
                assert await fake.settle(10)
                await wait_until(
                    lambda: on.texts == ["你好", "还在吗"], timeout=5, message="both messages once"
                )
                assert rec.callbacks[0] == rec.callbacks[1]  # the retry was the identical callback


_CHILD = textwrap.dedent(
    """
    import asyncio, os, signal, sqlite3, sys
    import aiohttp
    from kfrouter.router.edges.wecom_client import WeComKfClient
    from kfrouter.router.edges.wecom_cursor import SqliteCursorStore
    from kfrouter.router.edges.wecom_sync import KfSyncPuller

    base, cursor_db, out_db, kill_after = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    out = sqlite3.connect(out_db, isolation_level=None)
    out.execute("CREATE TABLE IF NOT EXISTS handed (msgid TEXT, text TEXT)")

    async def main():
        async with aiohttp.ClientSession() as http:
            client = WeComKfClient(http, {corpid!r}, {secret!r}, base_url=base)
            handed = 0

            async def on_message(msg):
                nonlocal handed
                out.execute("INSERT INTO handed VALUES (?, ?)", (msg.msgid, msg.text))
                handed += 1
                if handed == kill_after:
                    os.kill(os.getpid(), signal.SIGKILL)  # mid-batch: the cursor was not saved

            store = SqliteCursorStore(cursor_db)
            await KfSyncPuller(client, store, on_message, history_before=0, limit=3).pull({kf!r})

    asyncio.run(main())
    """
).format(corpid=CORPID, secret=SECRET, kf=KF)


async def test_kill_9_mid_batch_loses_nothing(
    fake: FakeWeCom, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    write(fake, *[f"m{i}" for i in range(7)])
    cursor_db, out_db = str(tmp_path / "cursor.db"), str(tmp_path / "out.db")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _CHILD, fake.base_url, cursor_db, out_db, "5"
    )
    assert await asyncio.wait_for(proc.wait(), 30) == -9  # killed by SIGKILL inside the second batch
    with sqlite3.connect(out_db) as db:
        before = [t for (t,) in db.execute("SELECT text FROM handed")]
    assert before == ["m0", "m1", "m2", "m3", "m4"]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _CHILD, fake.base_url, cursor_db, out_db, "0"
    )
    assert await asyncio.wait_for(proc.wait(), 30) == 0
    with sqlite3.connect(out_db) as db:
        after = [t for (t,) in db.execute("SELECT text FROM handed")]
    # the restart re-reads from the cursor saved after the first batch: the interrupted batch again
    assert after == [*before, "m3", "m4", "m5", "m6"]
    assert sorted(set(after)) == [f"m{i}" for i in range(7)]
