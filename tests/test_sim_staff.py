"""sim staff: the Erlang A service level, targets, the workload read from a trace, staffing at a constant
rate against Erlang A (to one agent), a daily profile, and the CLI (table, JSON, chart, errors)."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kfrouter.router.cli import main
from kfrouter.sim.erlang import birth_death, erlang_a, erlang_a_service_level, erlang_c
from kfrouter.sim.gen import GenParams, generate, header_for, parse_windows
from kfrouter.sim.runner import RunConfig
from kfrouter.sim.staff import StaffError, StaffTarget, erlang_agents, parse_target, read_workload, staff
from kfrouter.sim.trace import write_trace


@settings(max_examples=40, deadline=None)
@given(
    c=st.integers(1, 30),
    rho=st.floats(0.2, 1.8),
    theta_ratio=st.floats(0.05, 3.0),
)
def test_service_level_limits(c: int, rho: float, theta_ratio: float) -> None:
    mu = 1 / 60
    lam = rho * c * mu
    theta = theta_ratio * mu
    a = erlang_a(lam, mu, c, theta)
    at0 = erlang_a_service_level(lam, mu, c, theta, 0.0)
    assert at0 == pytest.approx(1 - a.p_wait, abs=1e-9)  # served at once: found a free server
    # late enough that everyone is served or gone: the queue ahead ((rho - 1) / theta customers' worth of
    # patience when overloaded) drained five times over
    late_t = 200 / (c * mu + theta) + 5 * max(0.0, rho - 1) / theta
    late = erlang_a_service_level(lam, mu, c, theta, late_t)
    assert late == pytest.approx(1 - a.p_abandon, abs=1e-6)  # everyone who is served, eventually
    mid = [erlang_a_service_level(lam, mu, c, theta, t) for t in (5.0, 20.0, 60.0)]
    assert at0 <= mid[0] <= mid[1] <= mid[2] <= late + 1e-12
    assert erlang_a_service_level(lam, mu, c + 1, theta, 20.0) >= mid[1] - 1e-12


def test_service_level_tends_to_erlang_c() -> None:
    lam, mu, c, t = 0.1, 1 / 60, 8, 20.0
    closed = 1 - erlang_c(lam, mu, c).p_wait_longer(t, c, mu, lam)
    assert erlang_a_service_level(lam, mu, c, 0.0, t) == pytest.approx(closed, abs=1e-12)
    assert erlang_a_service_level(lam, mu, c, 1e-7, t) == pytest.approx(closed, abs=1e-5)
    assert erlang_a_service_level(0.2, mu, c, 0.0, t) == 0.0  # unstable without patience
    # the stationary law it starts from is the birth-death chain's
    assert 1 - erlang_a_service_level(lam, mu, c, 1 / 120, 0.0) == pytest.approx(
        birth_death(lam, mu, c, 1 / 120).p_wait, abs=1e-9
    )


def test_targets() -> None:
    assert parse_target("service_level_20s>=0.8") == StaffTarget("service_level", 20.0, 0.8)
    assert parse_target("abandon_rate<=0.05") == StaffTarget("abandon_rate", 0.0, 0.05)
    assert str(parse_target("service_level_30s>=0.9")) == "service_level_30s>=0.9"
    for bad, msg in (
        ("service_level>=0.8", "expected service_level_<N>s>=X"),
        ("service_level_20s<=0.8", "expected service_level_<N>s>=X"),
        ("service_level_20s>=x", "'x' is not a number"),
        ("service_level_20s>=1.5", "must be a share"),
        ("service_level_20s>=1", "cannot be met"),
        ("wait_mean_s<=3", "expected service_level_<N>s>=X"),
    ):
        with pytest.raises(StaffError, match=msg):
            parse_target(bad)


def _write(tmp: Path, **kw: object) -> Path:
    p = GenParams(**kw)  # type: ignore[arg-type]
    path = tmp / "t.jsonl"
    write_trace(path, header_for(p), generate(p))
    return path


def test_constant_rate_agrees_with_erlang_a_to_one_agent(tmp_path: Path) -> None:
    lam, service, patience = 0.05, 60.0, 120.0
    path = _write(
        tmp_path,
        agents=5,
        customers=2000,
        arrival_rate=lam,
        service_mean=service,
        patience_mean=patience,
        seed=21,
    )
    target = parse_target("service_level_20s>=0.8")
    plan = staff(path, target, RunConfig(policy="least-load", seed=21))
    truth = erlang_agents(target, lam, service, patience, 1)  # at the true rates
    assert truth == 5
    full_hours = [h for h in plan.load.hours if h.exposure_s == 3600.0]
    assert len(full_hours) >= 10
    assert plan.met
    for h in full_hours:
        assert abs(plan.erlang[h.hour] - truth) <= 1, (h.hour, plan.erlang[h.hour])
        assert 0 <= plan.agents[h.hour] - plan.erlang[h.hour] <= 1, (h.hour, plan.agents, plan.erlang)
        measure = plan.measure[h.hour]
        assert measure is not None and measure >= 0.8
    assert all(plan.agents[h.hour] == 0 for h in plan.load.hours if h.arrivals == 0)


def test_workload_of_a_daily_profile(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        agents=3,
        max_sessions=2,
        customers=3000,
        arrival_profile=parse_windows(
            "0-8:0.01,8-12:0.1,12-24:0.03", "--arrival-profile", wrap=False, default=None
        ),
        service_mean=60,
        seed=2,
    )
    load = read_workload(path)
    assert load.max_sessions == 2 and load.patience_mean_s is None
    assert load.hours[9].rate == pytest.approx(0.1, rel=0.2)
    assert load.hours[3].rate == pytest.approx(0.01, rel=0.5)
    plan = staff(path, parse_target("service_level_20s>=0.8"), RunConfig(policy="best-fit"), max_rounds=6)
    assert plan.met
    assert plan.agents[9] > plan.agents[14] > plan.agents[3] >= 1
    # without patience, Erlang C: at least the offered load in servers, a stable queue
    assert plan.erlang[9] * 2 > 0.1 * 60


def test_cli_staff(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(
        tmp_path, agents=4, customers=800, arrival_rate=0.05, service_mean=60, patience_mean=120, seed=3
    )
    assert main(["sim", "staff", str(path), "--target", "service_level_20s>=0.8", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["target"] == "service_level_20s>=0.8" and out["met"] is True
    assert out["hours"][0]["erlang_agents"] >= 1 and math.isfinite(out["hours"][0]["arrivals_per_hour"])
    assert main(["sim", "staff", str(path), "--target", "abandon_rate<=0.05", "--policy", "least-load"]) == 0
    text = capsys.readouterr().out
    assert "target abandon_rate<=0.05" in text and "agent-hours per day" in text
    if importlib.util.find_spec("matplotlib") is not None:
        png = tmp_path / "plots" / "staff.png"
        assert (
            main(["sim", "staff", str(path), "--target", "service_level_20s>=0.8", "--plot", str(png)]) == 0
        )
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        capsys.readouterr()
    for argv, msg in (
        (["--target", "colour>=1"], "expected service_level_<N>s>=X"),
        (["--target", "abandon_rate<=0.1", "--max-sessions", "0"], "--max-sessions must be >= 1"),
        (["--target", "abandon_rate<=0.1", "--patience-mean", "-1"], "--patience-mean must be a number > 0"),
        (["--target", "abandon_rate<=0.1", "--policy", "nope"], "unknown policy 'nope'"),
    ):
        assert main(["sim", "staff", str(path), *argv]) == 2
        assert msg in capsys.readouterr().err
    assert main(["sim", "staff", str(tmp_path / "none.jsonl"), "--target", "abandon_rate<=0.1"]) == 2
    assert "no such file" in capsys.readouterr().err
