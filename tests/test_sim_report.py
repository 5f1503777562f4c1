"""Report metrics on hand-checked runs, the comparison with the baseline, text/JSON output, the
`kfrouter sim run` command (determinism, errors, plots) and the progress bar."""

from __future__ import annotations

import importlib.util
import io
import json
from pathlib import Path

import pytest

from kfrouter.router.cli import main
from kfrouter.sim.progress import Progress
from kfrouter.sim.report import (
    build_report,
    compare,
    jain,
    metrics,
    percentile,
    strip_nondeterministic,
    to_text,
)
from kfrouter.sim.runner import RunConfig, run_records
from kfrouter.sim.trace import AgentOnline, Arrival, Header, Record, write_trace


def test_percentile_nearest_rank() -> None:
    vals = [float(v) for v in range(1, 11)]
    assert percentile(vals, 50) == 5.0
    assert percentile(vals, 90) == 9.0
    assert percentile(vals, 95) == 10.0
    assert percentile(vals, 0) == 1.0
    assert percentile([3.0], 99) == 3.0
    with pytest.raises(ValueError):
        percentile([], 50)


def test_jain_index() -> None:
    assert jain([5.0, 5.0, 5.0]) == pytest.approx(1.0)
    assert jain([9.0, 0.0, 0.0]) == pytest.approx(1 / 3)
    assert jain([0.0, 0.0]) is None


TINY: list[Record] = [
    AgentOnline(t=0.0, agent="a1@x", groups=("sales",), max_sessions=1),
    AgentOnline(t=0.0, agent="a2@x", groups=("support",), max_sessions=1),
    Arrival(t=0.0, customer="c1", service_s=10.0, group="sales"),
    Arrival(t=0.0, customer="c2", service_s=12.0, group="sales", preferred_agent="a2@x"),
    Arrival(t=5.0, customer="c3", service_s=4.0, patience_s=100.0),
    Arrival(t=6.0, customer="c4", service_s=4.0, patience_s=1.0),
]


def test_metrics_of_a_hand_checked_run() -> None:
    res = run_records(
        Header(name="tiny"), TINY, RunConfig(policy="least-load", arrivals=True), groups={"sales", "support"}
    )
    row = metrics(res)
    # c1 -> a1 at 0, c2 -> its preferred a2 at 0, c3 waits until a1 frees at 10, c4 leaves at 7
    assert res.arrivals is not None and res.arrivals.agent == ["a1@x", "a2@x", "a1@x", None]
    assert row["customers"] == 4 and row["served"] == 3 and row["abandoned"] == 1 and row["unserved"] == 0
    assert row["wait_mean_s"] == pytest.approx(5 / 3)
    assert row["wait_p50_s"] == 0.0 and row["wait_p99_s"] == 5.0
    assert row["p_wait"] == pytest.approx(1 / 3)
    assert row["service_level_20s"] == 0.75  # 3 of 4 arrivals served within 20 s
    assert row["abandon_rate"] == 0.25
    assert row["end_s"] == 14.0
    assert row["utilization"] == pytest.approx(26 / 28, abs=1e-6)  # (14 + 12) / (2 agents x 14 s)
    assert row["load_fairness"] == pytest.approx(26**2 / (2 * (14**2 + 12**2)), abs=1e-6)
    assert row["affinity_hit_rate"] == 0.5  # c1 in sales by a sales agent; c2 by a support agent
    assert row["preference_hit_rate"] == 1.0
    assert row["sticky_hit_rate"] is None
    assert row["capacity_violations"] == 0 and row["double_assignments"] == 0
    assert row["api_calls"] == 3


def test_compare_with_the_baseline() -> None:
    rows = [
        {
            "policy": "x",
            "wait_mean_s": 10.0,
            "wait_p90_s": 30.0,
            "abandon_rate": 0.1,
            "service_level_20s": 0.8,
        },
        {
            "policy": "wechat-native",
            "wait_mean_s": 20.0,
            "wait_p90_s": 30.0,
            "abandon_rate": 0.0,
            "service_level_20s": 0.7,
        },
    ]
    compare(rows)
    assert rows[0]["vs_wechat-native"] == {
        "wait_mean_ratio": 0.5,
        "wait_p90_ratio": 1.0,
        "abandon_ratio": None,
        "service_level_gain": 0.1,
    }
    assert "vs_wechat-native" not in rows[1]


def test_report_json_and_text() -> None:
    results = [
        run_records(Header(name="tiny"), TINY, RunConfig(policy=p), groups={"sales", "support"})
        for p in ("least-load", "wechat-native")
    ]
    report = build_report(results, file="tiny.jsonl")
    assert report["trace"]["customers"] == 4 and report["trace"]["agents"] == 2
    assert report["run"]["baseline"] == "wechat-native"
    assert [r["policy"] for r in report["policies"]] == ["least-load", "wechat-native"]
    assert "vs_wechat-native" in report["policies"][0]
    text = to_text(report)
    assert "least-load" in text and "wechat-native" in text and "compared with wechat-native" in text
    assert "wall_s" not in json.dumps(strip_nondeterministic(report))


@pytest.fixture
def trace_file(tmp_path: Path) -> Path:
    out = tmp_path / "t.jsonl"
    assert (
        main(
            [
                "sim",
                "gen",
                "--agents",
                "4",
                "--max-sessions",
                "2",
                "--customers",
                "300",
                "--arrival-rate",
                "0.05",
                "--service-mean",
                "100",
                "--patience-mean",
                "200",
                "--groups",
                "a:0.5,b:0.5",
                "--returning",
                "0.2",
                "--return-gap",
                "300",
                "--seed",
                "9",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    return out


def test_cli_run_json_is_deterministic(trace_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    args = ["sim", "run", str(trace_file), "--policy", "least-load", "--policy", "sticky", "--json"]
    assert main(args) == 0
    first = json.loads(capsys.readouterr().out)
    assert main(args) == 0
    second = json.loads(capsys.readouterr().out)
    assert [r["policy"] for r in first["policies"]] == ["least-load", "sticky", "wechat-native"]
    assert strip_nondeterministic(first) == strip_nondeterministic(second)
    assert first["policies"][0]["customers_per_s"] > 0
    for row in first["policies"]:
        assert row["capacity_violations"] == 0 and row["double_assignments"] == 0
    assert main(["sim", "run", str(trace_file), "--policy", "least-load", "--no-baseline"]) == 0
    out = capsys.readouterr().out
    assert "least-load" in out and "wechat-native" not in out


def test_cli_run_errors(tmp_path: Path, trace_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(["sim", "run", str(trace_file), "--policy", "nope"]) == 2
    assert "unknown policy 'nope'" in capsys.readouterr().err
    assert main(["sim", "run", str(tmp_path / "missing.jsonl")]) == 2
    assert "no such file" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"kind": "header", "version": 1}\n{"t": 1, "kind": "arrival", "customer": "u"}\n')
    assert main(["sim", "run", str(bad), "--policy", "least-load"]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:2:" in err and "service_s" in err


def test_cli_run_plot(tmp_path: Path, trace_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["sim", "run", str(trace_file), "--policy", "least-load", "--plot", str(tmp_path / "plots")])
    if importlib.util.find_spec("matplotlib") is None:
        assert code == 2
        assert "pip install 'kfrouter[plot]'" in capsys.readouterr().err
        assert not (tmp_path / "plots").exists()
    else:  # pragma: no cover - depends on the environment
        assert code == 0
        for name in ("wait_cdf.png", "queue.png", "agent_load.png"):
            assert (tmp_path / "plots" / name).stat().st_size > 1000


def test_cli_erlang(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sim", "erlang", "--agents", "10", "--arrival-rate", "0.15", "--service-mean", "60"]) == 0
    assert "P(wait>0) 0.6687" in capsys.readouterr().out
    assert main(["sim", "erlang", "--agents", "1", "--arrival-rate", "2", "--service-mean", "1"]) == 2
    assert "unstable" in capsys.readouterr().err


def test_run_trace_counts_skipped_lines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = tmp_path / "x.jsonl"
    write_trace(p, Header(name="x"), TINY)
    lines = p.read_text().splitlines()
    lines.insert(2, '{"t": 0, "kind": "x-note", "text": "hi"}')
    p.write_text("\n".join(lines) + "\n")
    assert main(["sim", "run", str(p), "--policy", "least-load", "--json", "--no-baseline"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["trace"]["skipped"] == {"x-note": 1}
    assert report["policies"][0]["served"] == 3


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_only_on_a_tty() -> None:
    pipe = io.StringIO()
    with Progress("run", pipe) as bar:
        bar.update(0.5)
    assert pipe.getvalue() == ""
    tty = FakeTTY()
    bar = Progress("run", tty)
    bar.update(0.5)
    assert "50.0%" in tty.getvalue() and "[" in tty.getvalue()
    bar.close()
    assert tty.getvalue().endswith("\r")


def test_cli_run_eta_columns(trace_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(["sim", "run", str(trace_file), "--policy", "least-load", "--no-baseline"]) == 0
    assert "eta_rrmse" not in capsys.readouterr().out
    assert (
        main(["sim", "run", str(trace_file), "--policy", "least-load", "--no-baseline", "--eta", "--json"])
        == 0
    )
    row = json.loads(capsys.readouterr().out)["policies"][0]
    assert "eta_rrmse" in row and row["served"] > 0
