"""Notifications in the simulator: the Desk's notifier plans the texts (``sim run --notify``), the report
counts them, and the runner's independent budget check would catch a notifier that overspends."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kfrouter.router.cli import main
from kfrouter.router.core.notify import Notifier, NotifyConfig
from kfrouter.sim.runner import RunConfig, run_trace

NOTIFY_KEYS = ("messages_sent", "messages_per_customer_max", "notify_budget_violations")


@pytest.fixture(scope="module")
def busy_trace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two agents, 600 customers arriving faster than they are served, who give up after a while."""
    path = tmp_path_factory.mktemp("notify") / "busy.jsonl"
    args = [
        "sim", "gen", "--agents", "2", "--max-sessions", "1", "--customers", "600",
        "--arrival-rate", "0.05", "--service-mean", "45", "--patience-mean", "300",
        "--seed", "3", "--out", str(path),
    ]  # fmt: skip
    assert main(args) == 0
    return path


def test_sim_run_json_reports_the_texts_within_the_budget(
    busy_trace: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    assert main(["sim", "run", str(busy_trace), "--notify", "--eta", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    for row in report["policies"]:
        assert all(key in row for key in NOTIFY_KEYS), row["policy"]
        assert row["messages_sent"] > 0
        # the default budget: at most max_per_customer texts in one waiting spell
        assert 1 <= row["messages_per_customer_max"] <= NotifyConfig().max_per_customer
        assert row["notify_budget_violations"] == 0
        assert row["eta_rrmse"] is not None  # next to the estimates' accuracy


def test_without_notify_the_report_has_no_notification_keys(
    busy_trace: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    assert main(["sim", "run", str(busy_trace), "--policy", "least-load", "--no-baseline", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)["policies"]
    assert not any(key in row for key in NOTIFY_KEYS)
    assert row["texts_sent"] == 0


def test_the_budget_check_catches_a_notifier_that_overspends(
    busy_trace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = RunConfig(policy="least-load", notify=True)
    honest = run_trace(str(busy_trace), cfg)
    assert honest.notify_budget_violations == 0
    monkeypatch.setattr(Notifier, "_allowance", lambda self, c, now: 1)  # never says no
    greedy = run_trace(str(busy_trace), cfg)
    assert greedy.texts_sent > honest.texts_sent
    assert greedy.notify_budget_violations > 0
