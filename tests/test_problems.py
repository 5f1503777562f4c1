"""Operator problems are told once in the doctor's words, not as a warning on every call (the daemon's
side: tests/test_daemon.py, "operator problems")."""

from __future__ import annotations

import logging

import pytest

from kfrouter.router.edges.errors import AgentOffline, KfApiDisabled, SystemBusy
from kfrouter.router.problems import ProblemReporter


def told(caplog: pytest.LogCaptureFixture, code: str) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if r.name == "kfrouter.problems" and code in r.getMessage()
    ]


def test_reporter_tells_each_operator_problem_once_until_it_clears(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="kfrouter")
    r = ProblemReporter()
    for _ in range(3):
        r.on_error(KfApiDisabled(65400, "api unauthorized", "/cgi-bin/customservice/getonlinekflist"))
    r.on_error(SystemBusy(-1, "system error", "/customservice/kfsession/create"))  # a retry matter
    r.on_error(AgentOffline(65415, "worker not online", "/customservice/kfsession/create"))  # routine
    assert len(told(caplog, "65400")) == 1 and r.known(65400)
    assert not r.known(-1) and not r.known(65415) and len(caplog.records) == 1
    assert "新版客服功能" in told(caplog, "65400")[0]
    r.clear()
    r.on_error(KfApiDisabled(65400, "api unauthorized", "/customservice/kfsession/getwaitcase"))
    assert len([m for m in told(caplog, "65400") if "answered 65400" in m]) == 2
