"""router.edges.store under a real crash: a writer process is killed with SIGKILL mid-stream; every step
it reported as committed is in the database afterwards, and no step is half-written — one transaction at a
time (SQLite), and through group commit with many pushes in flight (SQLite and PostgreSQL).

A process crash leaves the OS page cache intact, so this checks commit-before-acknowledge and atomicity;
surviving a power cut is what ``synchronous=FULL`` adds, which a test cannot simulate here."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import aiohttp
import pytest
from conftest import CB_TOKEN, Processes, config_dict, free_port, toml_text, wait_until

from kfrouter.router.edges.store import Store
from kfrouter.router.wechat import replies, signature

WRITER = textwrap.dedent(
    """
    import sys
    from kfrouter.router.edges.store import Store, WaitingRow

    store = Store(sys.argv[1])
    i = 0
    while True:
        with store.transaction():  # one push: claim its key, queue the customer, log the input
            store.claim_push(f"msg:{i}", float(i))
            store.add_waiting(WaitingRow(openid=f"o{i}", group="general", priority=0, arrived_at=float(i)))
            store.append_event(float(i), "push", {"openid": f"o{i}"})
        # only now would the webhook answer WeChat "success"
        print(i, flush=True)
        i += 1
    """
)


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def _reap(proc: subprocess.Popen[str]) -> None:
    """Kill the writer if it still runs, wait for it and close its pipes."""
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=30)
    if proc.stdout is not None:
        proc.stdout.close()
    if proc.stderr is not None:
        proc.stderr.close()


def test_committed_steps_survive_kill_9(tmp_path: Path) -> None:
    db = tmp_path / "crash.db"
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(db)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    acknowledged: list[int] = []
    try:
        while len(acknowledged) < 40:
            line = proc.stdout.readline()
            if not line:
                pytest.fail(f"writer exited early: {proc.stderr.read() if proc.stderr else ''}")
            acknowledged.append(int(line))
        os.kill(proc.pid, signal.SIGKILL)  # no atexit, no close, no checkpoint
    finally:
        _reap(proc)
    assert proc.returncode == -signal.SIGKILL
    assert Path(f"{db}-wal").exists()  # the data lives in the WAL the killed process left behind

    with Store(db) as s:
        assert s.pragma("integrity_check") == "ok"
        state = s.load_state()
        queued = {w.openid for w in state.waiting}
        assert {f"o{i}" for i in acknowledged} <= queued
        # every step is all-or-nothing: queued customers, claimed keys and logged inputs match one to one
        logged = {e[3]["openid"] for e in s.events(kinds=["push"])}
        assert logged == queued
        assert all(s.is_processed(f"msg:{o[1:]}") for o in queued)
        assert len(s.session_log()) == len(queued)


GROUP_WRITER = textwrap.dedent(
    """
    import asyncio, sys
    from kfrouter.router.edges.store import Store, WaitingRow

    def step(i):
        def work(s):  # one push: claim its key, queue the customer, log the input
            s.claim_push(f"msg:{i}", float(i))
            s.add_waiting(WaitingRow(openid=f"o{i}", group="general", priority=0, arrived_at=float(i)))
            s.append_event(float(i), "push", {"openid": f"o{i}"})
        return work

    async def pusher(store, k, lanes):
        i = k
        while True:
            await store.commit(step(i))
            # only now would the webhook answer WeChat "success"
            print(i, store.commit_stats.batches, flush=True)
            i += lanes

    async def main():
        store = Store(sys.argv[1], appid="wx_crash")
        lanes = 32  # 32 pushes in flight at any time: they share batches
        await asyncio.gather(*(pusher(store, k, lanes) for k in range(lanes)))

    asyncio.run(main())
    """
)


@pytest.fixture(params=["sqlite", "postgresql"])
def crash_target(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return str(tmp_path / "crash.db")
    return str(request.getfixturevalue("pg_url"))


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_group_commit_loses_nothing_answered_under_kill_9(crash_target: str) -> None:
    """Many pushes in flight through group commit; SIGKILL mid-stream: every push whose commit returned
    (answered "success") is in the database, whole, and batches were shared."""
    proc = subprocess.Popen(
        [sys.executable, "-c", GROUP_WRITER, crash_target],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    acknowledged: list[int] = []
    batches = 0
    try:
        while len(acknowledged) < 600:
            line = proc.stdout.readline()
            if not line:
                pytest.fail(f"writer exited early: {proc.stderr.read() if proc.stderr else ''}")
            i, batches = (int(x) for x in line.split())
            acknowledged.append(i)
        os.kill(proc.pid, signal.SIGKILL)  # no atexit, no close, jobs queued and a batch in flight
    finally:
        _reap(proc)
    assert proc.returncode == -signal.SIGKILL
    assert batches < len(acknowledged)  # answers shared commits (one fsync each with SQLite)

    with Store(crash_target, appid="wx_crash") as s:
        if s.backend == "sqlite":
            assert s.pragma("integrity_check") == "ok"
        queued = {w.openid for w in s.load_state().waiting}
        assert {f"o{i}" for i in acknowledged} <= queued
        logged = {e[3]["openid"] for e in s.events(kinds=["push"])}
        assert logged == queued  # all-or-nothing per push, even in a batch cut short
        assert all(s.is_processed(f"msg:{o[1:]}") for o in queued)
        assert len(s.session_log()) == len(queued)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_a_daemon_killed_mid_stream_loses_no_answered_push(
    backend: str,
    processes: Processes,
    http: aiohttp.ClientSession,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    """``kfrouter run`` with 16 pushes in flight (every one a new customer; nobody online, so they queue),
    SIGKILL after 300 answers: every customer answered "success" is in the store."""
    port = free_port()
    fake = await processes.fake(webhook=f"http://127.0.0.1:{port}/wechat")
    data = config_dict(api_base=fake.url, store=tmp_path / "kfrouter.db", port=port)
    data["log"] = {"level": "warning"}
    url = str(request.getfixturevalue("pg_url")) if backend == "postgresql" else None
    if url is not None:
        data["store"]["url"] = url
    config = tmp_path / "kfrouter.toml"
    config.write_text(toml_text(data))
    daemon = await processes.daemon(config)
    answered: set[str] = set()
    stop = asyncio.Event()

    async def pusher(lane: int, lanes: int) -> None:
        i = lane
        while not stop.is_set():
            openid = f"c{i}"
            xml = replies.build_text_message("gh_crash", openid, int(time.time()), "human please", 10_000 + i)
            ts, nonce = str(int(time.time())), str(100_000 + i)
            params = {"signature": signature.sign(CB_TOKEN, ts, nonce), "timestamp": ts, "nonce": nonce}
            try:
                async with http.post(f"http://127.0.0.1:{port}/wechat", params=params, data=xml) as resp:
                    if resp.status == 200 and (await resp.text()).strip() == "success":
                        answered.add(openid)
            except aiohttp.ClientError:
                return  # the daemon is gone
            i += lanes

    tasks = [asyncio.create_task(pusher(k, 16)) for k in range(16)]
    try:
        await wait_until(lambda: len(answered) >= 300, timeout=60, message="300 answered pushes")
        await daemon.kill9()  # pushes in flight, a batch maybe being committed
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
    assert daemon.proc.returncode == -signal.SIGKILL
    with Store(url or tmp_path / "kfrouter.db", appid="wx_test_app") as s:
        stored = {w.openid for w in s.load_state().waiting}
        assert answered <= stored, f"answered but lost: {sorted(answered - stored)[:10]}"
        assert all(s.is_processed(f"msg:{10_000 + int(o[1:])}") for o in answered)
