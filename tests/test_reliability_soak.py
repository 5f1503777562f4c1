"""A small soak (``bench/soak.py --quick``, about 25 s): the daemon in its own process against the fake
WeChat, 300 customers over ~22 s with every fault of the full soak (create -1 / 45009 / 65414 / 65415,
creates answering after the timeout, dropped connections, the fake restarting, the token revoked and
expired). Nobody who asked for a human may be lost, nobody may get two sessions."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import soak

pytestmark = pytest.mark.slow


async def test_quick_soak_with_faults_loses_nobody_and_serves_nobody_twice(tmp_path: Path) -> None:
    report = await soak.run_soak(dataclasses.replace(soak.QUICK, workdir=str(tmp_path)))
    print(report.summary())
    assert report.customers == 300 and report.asked == 300 and report.unanswered == 0
    assert report.lost == 0, (report.lost_openids, report.stranded)
    assert report.double_assignments == 0, report.double_openids
    assert report.two_at_once == 0
    assert report.served + report.abandoned == report.asked  # everybody's case ended one way or the other
    assert report.served > 200  # the day mostly worked
    # the faults really happened
    assert len(report.faults) == 19 and report.fake_restarts == 1
    assert all(report.creates.get(code, 0) >= 1 for code in ("-1", "65414", "65415")), report.creates
    assert report.tokens_issued >= 2  # revoked, then fetched again
    # and the daemon stayed healthy
    assert report.daemon_exit == 0
    assert report.daemon_log_tracebacks == 0 and report.daemon_log_errors == 0
    assert report.delivery_failures == 0
