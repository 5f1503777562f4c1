"""`kfrouter sim run --jobs N --replications K`: worker processes give the report of one process (apart
from the wall clock), replications are what docs/simulator.md says they are, means come with 95 %
intervals, and bad arguments and failing jobs give the same clear errors either way."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

import pytest

from kfrouter.router.cli import main
from kfrouter.sim import parallel
from kfrouter.sim.confidence import mean_ci95, t_central, t_quantile
from kfrouter.sim.gen import GenError, generate, header_for, params_from_header
from kfrouter.sim.report import mean_row, strip_nondeterministic
from kfrouter.sim.runner import RunConfig
from kfrouter.sim.trace import Header, TraceReader, write_trace

FOUR = [
    "--policy",
    "least-load",
    "--policy",
    "group-affinity",
    "--policy",
    "sticky",
    "--policy",
    "wechat-native",
]


def gen(out: Path, *extra: str, customers: int = 400, seed: int = 3) -> Path:
    args = ["sim", "gen", "--agents", "5", "--max-sessions", "2", "--customers", str(customers)]
    args += ["--arrival-rate", "0.08", "--service-mean", "90", "--patience-mean", "240"]
    args += ["--groups", "a:0.6,b:0.4", "--returning", "0.3", "--return-gap", "300", "--preferred", "0.1"]
    assert main([*args, "--seed", str(seed), "--out", str(out), *extra]) == 0
    return out


@pytest.fixture
def trace(tmp_path: Path) -> Path:
    return gen(tmp_path / "day.jsonl")


def run_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    capsys.readouterr()
    assert main(["sim", "run", *args, "--json"]) == 0
    report: dict[str, Any] = json.loads(capsys.readouterr().out)
    return report


def plain(row: dict[str, Any]) -> dict[str, Any]:
    """A report row without the wall clock and the comparison with the baseline."""
    return {
        k: v for k, v in row.items() if k not in ("wall_s", "customers_per_s") and not k.startswith("vs_")
    }


def test_two_jobs_give_the_report_of_one(trace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    one = run_json(capsys, str(trace), *FOUR, "--create-failure-rate", "0.1", "--jobs", "1")
    two = run_json(capsys, str(trace), *FOUR, "--create-failure-rate", "0.1", "--jobs", "2")
    assert [r["policy"] for r in one["policies"]] == [
        "least-load",
        "group-affinity",
        "sticky",
        "wechat-native",
    ]
    assert strip_nondeterministic(one) == strip_nondeterministic(two)
    # the only fields that differ are the wall-clock ones, and they are there
    for a, b in zip(one["policies"], two["policies"], strict=True):
        assert {k for k in a if a[k] != b.get(k)} <= {"wall_s", "customers_per_s"}
        assert set(a) == set(b) and b["customers_per_s"] > 0
    assert one["policies"][0]["api_failures"] > 0 and one["policies"][0]["served"] > 200


def test_replications_in_parallel_are_the_same_as_one_by_one(
    trace: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [str(trace), "--policy", "least-load", "--policy", "sticky", "--replications", "3"]
    one = run_json(capsys, *args, "--jobs", "1")
    two = run_json(capsys, *args, "--jobs", "2")
    assert strip_nondeterministic(one) == strip_nondeterministic(two)
    assert one["run"]["replications"] == 3 and len(one["replications"]) == 3


def test_a_replication_of_a_generated_trace_is_the_trace_made_with_seed_plus_k(
    tmp_path: Path, trace: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = run_json(capsys, str(trace), "--policy", "sticky", "--replications", "3", "--jobs", "2")
    reps = report["replications"]
    assert [(r["replication"], r["trace_seed"], r["run_seed"]) for r in reps] == [
        (0, 3, 3),
        (1, 4, 4),
        (2, 5, 5),
    ]
    # replication 0 is the file as given; replication 2 is what `sim gen --seed 5` writes, run with seed 5
    alone = run_json(capsys, str(trace), "--policy", "sticky", "--no-baseline", "--jobs", "1")
    assert plain(alone["policies"][0]) == plain(reps[0]["policies"][0])
    other = gen(tmp_path / "seed5.jsonl", seed=5)
    again = run_json(capsys, str(other), "--policy", "sticky", "--no-baseline", "--jobs", "1")
    assert plain(again["policies"][0]) == plain(reps[2]["policies"][0])
    assert reps[1]["policies"][0]["wait_mean_s"] != reps[2]["policies"][0]["wait_mean_s"]
    # the row is the mean of the replications, with the half-width of its 95% interval
    row = report["policies"][0]
    waits = [r["policies"][0]["wait_mean_s"] for r in reps]
    mean = statistics.fmean(waits)
    half = t_quantile(0.975, 2) * statistics.stdev(waits) / math.sqrt(3)
    assert row["wait_mean_s"] == pytest.approx(mean, abs=1e-6)
    assert row["wait_mean_s_ci95"] == pytest.approx(half, abs=1e-6) and row["wait_mean_s_ci95"] > 0
    assert row["customers"] == 400.0 and row["customers_ci95"] == 0.0  # every replication has 400
    assert row["capacity_violations"] == 0.0 and "vs_wechat-native" in row


def test_replications_of_a_recorded_trace_vary_only_the_injected_failures(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recorded = tmp_path / "recorded.jsonl"
    lines = [
        json.dumps(
            {"kind": "header", "version": 1, "name": "recorded", "created_by": "kfrouter trace export"}
        )
    ]
    lines += [
        json.dumps({"t": 0.0, "kind": "agent_online", "agent": "a1@x", "groups": [], "max_sessions": 2})
    ]
    lines += [
        json.dumps({"t": 5.0 * i, "kind": "arrival", "customer": f"c{i}", "service_s": 7.0})
        for i in range(200)
    ]
    recorded.write_text("\n".join(lines) + "\n")
    capsys.readouterr()
    assert main(["sim", "run", str(recorded), "--replications", "3", "--jobs", "1"]) == 2
    err = capsys.readouterr().err
    assert "--create-failure-rate is 0" in err and "every replication would be the same run" in err
    report = run_json(
        capsys, str(recorded), "--policy", "least-load", "--no-baseline", "--replications", "3",
        "--create-failure-rate", "0.3", "--jobs", "2",
    )  # fmt: skip
    reps = report["replications"]
    assert [r["run_seed"] for r in reps] == [0, 1, 2] and {r["trace_seed"] for r in reps} == {None}
    failures = [r["policies"][0]["api_failures"] for r in reps]
    assert len(set(failures)) > 1 and all(r["policies"][0]["customers"] == 200 for r in reps)
    assert report["policies"][0]["api_failures_ci95"] > 0


def test_bad_arguments_exit_2_with_a_clear_message(trace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for option, value in (
        ("--jobs", "0"),
        ("--jobs", "two"),
        ("--replications", "-1"),
        ("--replications", "1.5"),
    ):
        capsys.readouterr()
        with pytest.raises(SystemExit) as exc:
            main(["sim", "run", str(trace), option, value])
        assert exc.value.code == 2
        assert f"argument {option}: expected an integer >= 1, got {value!r}" in capsys.readouterr().err
    assert main(["sim", "run", str(trace), "--replications", "1001"]) == 2
    assert "--replications must be between 1 and 1000, got 1001" in capsys.readouterr().err
    assert main(["sim", "run", str(trace), "--replications", "2", "--plot", str(trace.parent)]) == 2
    assert "cannot be combined with --replications" in capsys.readouterr().err


def test_a_failing_job_gives_the_same_error_with_workers(
    tmp_path: Path, trace: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # the header and the first lines are fine; line 300 is not: every job fails when it gets there
    lines = trace.read_text().splitlines()
    lines[299] = '{"t": 1e9, "kind": "arrival", "customer": "u"}'
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(lines) + "\n")
    errors = []
    for jobs in ("1", "2"):
        capsys.readouterr()
        assert main(["sim", "run", str(bad), *FOUR, "--jobs", jobs]) == 2
        errors.append(capsys.readouterr().err)
    assert errors[0] == errors[1] and f"{bad}:300:" in errors[0] and "service_s" in errors[0]


def test_run_jobs_keeps_job_order_and_stops_at_the_first_failure(tmp_path: Path, trace: Path) -> None:
    with TraceReader(trace) as reader:
        header = reader.header
    base = RunConfig(policy="least-load", seed=3)
    missing = str(tmp_path / "gone.jsonl")
    jobs = parallel.plan(str(trace), header, ["sticky", "least-load"], base)
    jobs.insert(1, parallel.Job(0, base, missing))  # a job whose trace vanished after planning
    for workers in (1, 2):
        out = parallel.run_jobs(jobs, workers)
        assert len(out) == 3 and not isinstance(out[0], parallel.JobFailed)
        assert out[0].policy == "sticky"
        assert (
            out[1] == out[2] == parallel.JobFailed(2, f"{missing}:0: cannot open: No such file or directory")
        )
        assert parallel.first_failure(out) == out[1]
    fine = parallel.run_jobs(parallel.plan(str(trace), header, ["sticky", "least-load"], base), 2)
    assert [r.policy for r in fine if not isinstance(r, parallel.JobFailed)] == ["sticky", "least-load"]
    with pytest.raises(ValueError, match="workers must be >= 1"):
        parallel.run_jobs(jobs, 0)


def test_plan_defines_the_replications(trace: Path) -> None:
    with TraceReader(trace) as reader:
        header = reader.header
    base = RunConfig(policy="x", seed=10, create_failure_rate=0.0)
    jobs = parallel.plan(str(trace), header, ["sticky", "least-load"], base, replications=3)
    assert [(j.replication, j.config.policy, j.config.seed) for j in jobs] == [
        (0, "sticky", 10), (0, "least-load", 10), (1, "sticky", 11),
        (1, "least-load", 11), (2, "sticky", 12), (2, "least-load", 12),
    ]  # fmt: skip
    assert jobs[0].params is None and jobs[2].params is not None and jobs[4].params is not None
    assert (jobs[2].params.seed, jobs[4].params.seed) == (4, 5)  # the trace's seed 3, plus k
    assert header_for(jobs[4].params).meta == header.meta
    recorded = Header(name="r")
    with pytest.raises(parallel.ReplicationError, match="every replication would be the same run"):
        parallel.plan("r.jsonl", recorded, ["sticky"], base, replications=2)
    failing = RunConfig(policy="x", seed=0, create_failure_rate=0.2)
    assert [j.params for j in parallel.plan("r.jsonl", recorded, ["sticky"], failing, 2)] == [None, None]
    broken = Header(created_by="kfrouter sim gen", meta={"params": {"agents": 3}})
    with pytest.raises(parallel.ReplicationError, match="cannot re-generate the trace"):
        parallel.plan("b.jsonl", broken, ["sticky"], base, replications=2)
    assert parallel.default_jobs() >= 1


def test_params_from_header_names_what_is_wrong(trace: Path) -> None:
    with TraceReader(trace) as reader:
        header = reader.header
    params = params_from_header(header)
    assert params.seed == 3 and header_for(params) == header
    assert params_from_header(header, seed=8).seed == 8
    with pytest.raises(GenError, match="not made by 'kfrouter sim gen'"):
        params_from_header(Header(created_by="someone"))
    raw = dict(header.meta["params"])
    for key, value, expected in (
        ("agents", "5", "'agents' must be an integer"),
        ("agents", True, "'agents' must be an integer"),
        ("service_mean", None, "'service_mean' must be a number"),
        ("groups", [["a", "x"]], "'groups' must be a list of"),
        ("shifts", [[1, 2]], "'shifts' must be a list of 3-item lists"),
        ("agents", -1, "--agents must be >= 1"),  # then GenParams' own checks
    ):
        bad = Header(
            created_by="kfrouter sim gen", seed=1, meta={**header.meta, "params": {**raw, key: value}}
        )
        with pytest.raises(GenError, match=expected):
            params_from_header(bad)
    # the generator's newer options, left out of the header at their default, come back too
    skilled = gen(trace.parent / "skilled.jsonl", "--cross-skill", "0.6", "--same-agent-factor", "0.8")
    with TraceReader(skilled) as reader:
        header2 = reader.header
    params2 = params_from_header(header2)
    assert (params2.cross_skill, params2.same_agent_factor) == (0.6, 0.8) and header_for(params2) == header2
    again = trace.parent / "again.jsonl"
    write_trace(again, header_for(params2), generate(params2))
    assert again.read_bytes() == skilled.read_bytes()
    extra = Header(created_by="kfrouter sim gen", meta={"params": {**raw, "colour": 1}})
    with pytest.raises(GenError, match=r"unknown keys \['colour'\], missing keys \[\]"):
        params_from_header(extra)


def test_mean_row_means_numbers_and_keeps_the_rest() -> None:
    rows = [
        {"policy": "p", "served": 10, "rate": None, "gone": None, "groups": ["a"], "vs_x": {"r": 1}},
        {"policy": "p", "served": 14, "rate": 0.5, "gone": None, "groups": ["a"]},
        {"policy": "p", "served": 12, "rate": 0.7, "gone": None, "groups": ["b"]},
    ]
    out = mean_row(rows)
    assert out["served"] == 12.0 and out["served_ci95"] == pytest.approx(
        t_quantile(0.975, 2) * 2 / math.sqrt(3)
    )
    assert out["rate"] == 0.6 and out["rate_ci95"] is not None  # over the replications where it is defined
    assert out["gone"] is None and out["gone_ci95"] is None
    assert out["groups"] == [["a"], ["a"], ["b"]] and "vs_x" not in out


def test_student_t() -> None:
    # published two-sided 95% critical values
    for df, t in (
        (1, 12.7062),
        (2, 4.3027),
        (3, 3.1824),
        (5, 2.5706),
        (10, 2.2281),
        (30, 2.0423),
        (120, 1.9799),
    ):
        assert t_quantile(0.975, df) == pytest.approx(t, abs=1e-4)
    assert t_quantile(0.995, 4) == pytest.approx(4.6041, abs=1e-4)
    assert t_central(0.0, 7) == 0.0 and t_central(1e9, 7) == pytest.approx(1.0)
    assert t_central(1.0, 1) == pytest.approx(0.5)  # Cauchy: P(|T| <= 1) = 1/2
    mean, half = mean_ci95([1.0, 2.0, 3.0, 4.0])
    assert mean == 2.5 and half == pytest.approx(3.1824 * statistics.stdev([1, 2, 3, 4]) / 2, abs=1e-4)
    assert mean_ci95([5.0]) == (5.0, None)
    for bad, match in (([], "no values"), ([1.0, math.nan], "finite")):
        with pytest.raises(ValueError, match=match):
            mean_ci95(bad)
    with pytest.raises(ValueError, match=r"between 0\.5 and 1"):
        t_quantile(0.3, 2)
    with pytest.raises(ValueError, match=">= 1"):
        t_central(1.0, 0)
