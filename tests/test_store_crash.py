"""router.edges.store under a real crash: a writer process is killed with SIGKILL mid-stream; every step
it reported as committed is in the database afterwards, and no step is half-written.

A process crash leaves the OS page cache intact, so this checks commit-before-acknowledge and atomicity;
surviving a power cut is what ``synchronous=FULL`` adds, which a test cannot simulate here."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from kfrouter.router.edges.store import Store

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
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
        proc.stdout.close()
        if proc.stderr is not None:
            proc.stderr.close()
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
