"""sim tune: strict parsing of targets and --vary, the grid, the best setting against direct replays, the
CLI's table, JSON and exit codes (small traces, two worker processes)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kfrouter.router.cli import main
from kfrouter.sim.gen import GenParams, generate, header_for, parse_shares
from kfrouter.sim.report import metrics
from kfrouter.sim.runner import RunConfig, run_trace
from kfrouter.sim.trace import write_trace
from kfrouter.sim.tune import (
    Target,
    TuneError,
    Vary,
    best_index,
    grid,
    parse_target,
    parse_vary,
    run_grid,
)

POLICIES = ("least-load", "best-fit", "wechat-native")


@pytest.fixture(scope="module")
def trace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = GenParams(
        agents=4,
        max_sessions=2,
        customers=600,
        arrival_rate=0.1,
        service_mean=60,
        patience_mean=120,
        groups=parse_shares("sales:0.6,support:0.4"),
        returning=0.2,
        return_gap=600,
        cross_skill=0.6,
        seed=9,
    )
    path = tmp_path_factory.mktemp("tune") / "t.jsonl"
    write_trace(path, header_for(p), generate(p))
    return path


def test_targets() -> None:
    assert parse_target("wait_p90_s<=60") == Target("wait_p90_s", "<=", 60.0)
    assert parse_target(" affinity_hit_rate >= 0.9 ") == Target("affinity_hit_rate", ">=", 0.9)
    assert Target("wait_p90_s", "<", 5).holds({"wait_p90_s": 4.0})
    assert not Target("wait_p90_s", "<", 5).holds({"wait_p90_s": None})
    for bad, msg in (
        ("wait_p90_s=60", "expected METRIC OP NUMBER"),
        ("wait_p90<=60", "unknown metric 'wait_p90'"),
        ("wait_p90_s<=abc", "'abc' is not a number"),
        ("wait_p90_s<=inf", "not a finite number"),
        ("", "expected METRIC OP NUMBER"),
    ):
        with pytest.raises(TuneError, match=msg):
            parse_target(bad)


def test_vary() -> None:
    assert parse_vary("overflow_after=0..20:10") == Vary("overflow_after", (0.0, 10.0, 20.0))
    assert parse_vary("overflow_after=0..20") == Vary("overflow_after", (0.0, 5.0, 10.0, 15.0, 20.0))
    assert parse_vary("preferred_wait=30,60") == Vary("preferred_wait", (30.0, 60.0))
    assert parse_vary("policy=least-load,best-fit", POLICIES).values == ("least-load", "best-fit")
    assert parse_vary("best-fit.unlisted_skill=0.5..1:0.25", POLICIES).values == (0.5, 0.75, 1.0)
    for bad, msg in (
        ("overflow_after", "expected NAME=LO..HI"),
        ("overflow_after=", "expected NAME=LO..HI"),
        ("overflow=0..10", "unknown setting 'overflow'"),
        ("overflow_after=10..0", "runs backwards"),
        ("overflow_after=0..10:0", "STEP must be > 0"),
        ("overflow_after=0..x", "'x' is not a number"),
        ("overflow_after=-5,5", "seconds must be >= 0"),
        ("overflow_after=5,5", "given twice"),
        ("overflow_after=0..1000000:1", "at most 500"),
        ("policy=least-load,nope", "unknown policy 'nope'"),
        ("policy=least-load,,best-fit", "empty policy name"),
        ("nope.x=1,2", "unknown policy 'nope'"),
        ("best-fit.=1", "unknown setting"),
    ):
        with pytest.raises(TuneError, match=msg):
            parse_vary(bad, POLICIES)


def test_grid_builds_configs_and_policy_options() -> None:
    base = RunConfig(policy="best-fit")
    settings = grid(
        base,
        [
            Vary("policy", ("least-load", "best-fit")),
            Vary("best-fit.unlisted_skill", (0.5,)),
            Vary("overflow_after", (0.0, 30.0)),
        ],
    )
    assert [s.config.policy for s in settings] == [
        "least-load",
        "least-load",
        "best-fit(unlisted_skill=0.5)",
        "best-fit(unlisted_skill=0.5)",
    ]
    assert [s.config.overflow_after_s for s in settings] == [0.0, 30.0, 0.0, 30.0]
    with pytest.raises(TuneError, match="varied twice"):
        grid(base, [Vary("overflow_after", (1.0,)), Vary("overflow_after", (2.0,))])


def test_best_is_the_lowest_objective_among_those_meeting_the_target(trace: Path) -> None:
    base = RunConfig(policy="least-load", seed=1)
    settings = grid(base, [Vary("policy", ("least-load", "best-fit")), Vary("overflow_after", (0.0, 30.0))])
    rows = run_grid(str(trace), settings, jobs=2)
    # the same rows as replaying each setting here, in this process
    direct = [metrics(run_trace(str(trace), s.config)) for s in settings]
    strip = lambda r: {k: v for k, v in r.items() if k not in ("wall_s", "customers_per_s")}  # noqa: E731
    assert [strip(r) for r in rows] == [strip(r) for r in direct]
    target = Target("affinity_hit_rate", ">=", 0.7)
    best = best_index(rows, [target], "wait_mean_s", maximize=False)
    meeting = [i for i, r in enumerate(rows) if r["affinity_hit_rate"] >= 0.7]
    assert meeting, rows
    assert best == min(meeting, key=lambda i: (rows[i]["wait_mean_s"], i))
    assert best_index(rows, [Target("wait_mean_s", "<", 0.0)], "wait_mean_s", maximize=False) is None
    hi = best_index(rows, [], "affinity_hit_rate", maximize=True)
    assert hi is not None and rows[hi]["affinity_hit_rate"] == max(r["affinity_hit_rate"] for r in rows)


def test_cli_tune(trace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = [
        "sim",
        "tune",
        str(trace),
        "--vary",
        "policy=least-load,best-fit",
        "--vary",
        "overflow_after=0,30",
        "--jobs",
        "2",
    ]
    assert main([*argv, "--target", "affinity_hit_rate>=0.7", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["settings"]) == 4
    best = out["best"]
    rows = [s for s in out["settings"] if s["meets"]]
    assert min(rows, key=lambda s: s["metrics"]["wait_mean_s"])["setting"] == best
    assert out["report"]["policies"][0]["policy"] == best["policy"]
    assert out["report"]["policies"][1]["policy"] == "wechat-native"

    assert main([*argv, "--target", "affinity_hit_rate>=0.7"]) == 0
    text = capsys.readouterr().out
    assert "4 settings, targets affinity_hit_rate>=0.7, best = lowest wait_mean_s" in text
    assert sum(1 for line in text.splitlines() if line.startswith(">")) == 1
    assert "compared with wechat-native" in text

    assert main([*argv, "--target", "wait_mean_s<0"]) == 1
    assert "no setting meets wait_mean_s<0" in capsys.readouterr().err
    assert main([*argv, "--target", "wait_p90<=1"]) == 2
    assert "unknown metric 'wait_p90'" in capsys.readouterr().err
    assert main([*argv, "--target", "wait_p90_s<=1", "--maximize", "colour"]) == 2
    assert "unknown metric 'colour'" in capsys.readouterr().err
    assert main(["sim", "tune", str(trace), "--target", "wait_p90_s<=1", "--vary", "best-fit.colour=1"]) == 2
    assert "unexpected keyword argument 'colour'" in capsys.readouterr().err
    assert (
        main(["sim", "tune", "nowhere.jsonl", "--target", "wait_p90_s<=1", "--vary", "overflow_after=1"]) == 2
    )
    assert "nowhere.jsonl: no such file" in capsys.readouterr().err
