"""Re-contact: the header's ``recontact`` model (sim/service.py), its draws, the generator's --recontact /
--recontact-gap, the replay's re-contact arrivals and ``recontact_rate`` in the report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kfrouter.router.cli import main
from kfrouter.sim.gen import GenError, GenParams, generate, header_for, params_from_header, parse_shares
from kfrouter.sim.report import metrics
from kfrouter.sim.runner import RunConfig, run_records
from kfrouter.sim.service import MAX_RECONTACTS, Recontact, ServiceModel
from kfrouter.sim.trace import AgentOnline, Arrival, Header, TraceError, read_trace


def header_line(**meta: object) -> list[str]:
    return [json.dumps({"kind": "header", "version": 1, **meta})]


def replay(
    recs: list[object], header: Header, policy: str = "least-load", seed: int = 0
) -> dict[str, object]:
    res = run_records(
        header, recs, RunConfig(policy=policy, seed=seed, overflow_after_s=0.0), groups={"s", "t"}
    )  # type: ignore[arg-type]
    return metrics(res)


def test_the_header_model_is_checked_naming_the_key() -> None:
    header, _, _ = read_trace(header_line(recontact={"rate": 0.1, "gap_mean_s": 600}))
    assert ServiceModel.from_header(header).recontact == Recontact(0.1, 600.0)
    assert ServiceModel.from_header(Header()).recontact is None
    for bad, key in (
        ({"rate": 1.5, "gap_mean_s": 600}, "'recontact.rate' must be a number in [0, 1]"),
        ({"rate": True, "gap_mean_s": 600}, "'recontact.rate'"),
        ({"rate": 0.1, "gap_mean_s": 0}, "'recontact.gap_mean_s' must be a finite number > 0"),
        ({"rate": 0.1}, "'recontact' must be an object with exactly 'rate' and 'gap_mean_s'"),
        (0.1, "'recontact' must be an object"),
    ):
        with pytest.raises(TraceError, match=r"^<memory>:1: ") as info:
            read_trace(header_line(recontact=bad))
        assert key in str(info.value)


@given(
    rate=st.floats(0.0, 1.0),
    p=st.floats(0.05, 1.0),
    q=st.floats(0.05, 1.0),
    customer=st.text(min_size=1, max_size=8),
    first_t=st.floats(0.0, 1e7),
    attempt=st.integers(0, MAX_RECONTACTS + 1),
    seed=st.integers(0, 2**31),
)
def test_draws_are_deterministic_and_a_weaker_agent_never_resolves_more(
    rate: float, p: float, q: float, customer: str, first_t: float, attempt: int, seed: int
) -> None:
    model = Recontact(rate, 600.0)
    lo, hi = min(p, q), max(p, q)
    back_hi = model.comes_back(seed, customer, first_t, attempt, hi)
    back_lo = model.comes_back(seed, customer, first_t, attempt, lo)
    assert back_hi == model.comes_back(seed, customer, first_t, attempt, hi)  # deterministic
    if back_hi is not None:  # unresolved with the better agent: unresolved with the weaker one, same gap
        assert back_lo == back_hi and back_hi >= 0.0
    if attempt >= MAX_RECONTACTS or rate == 0.0:
        assert back_lo is None


def test_rates_follow_rate_over_proficiency() -> None:
    model = Recontact(0.1, 600.0)
    n = 20000
    full = sum(model.comes_back(7, f"u{i}", 0.0, 0, 1.0) is not None for i in range(n)) / n
    half = sum(model.comes_back(7, f"u{i}", 0.0, 0, 0.5) is not None for i in range(n)) / n
    assert full == pytest.approx(0.1, abs=0.01)
    assert half == pytest.approx(0.2, abs=0.012)
    gaps = [g for i in range(n) if (g := model.comes_back(7, f"u{i}", 0.0, 0, 0.01)) is not None]
    assert sum(gaps) / len(gaps) == pytest.approx(600.0, rel=0.05)  # rate / p >= 1: always back


def test_an_unresolved_customer_comes_back_at_most_max_recontacts_times() -> None:
    agent = AgentOnline(t=0.0, agent="a", groups=("s",), max_sessions=1)
    recs = [agent, Arrival(t=1.0, customer="u1", service_s=10.0, group="s")]
    row = replay(recs, Header(meta={"recontact": {"rate": 1.0, "gap_mean_s": 100.0}}))
    assert row["customers"] == 1 + MAX_RECONTACTS and row["served"] == 1 + MAX_RECONTACTS
    assert row["recontact_rate"] == pytest.approx(MAX_RECONTACTS / (1 + MAX_RECONTACTS))
    assert row["sticky_hit_rate"] == 1.0  # they came back to the agent who served them
    never = replay(recs, Header(meta={"recontact": {"rate": 0.0, "gap_mean_s": 100.0}}))
    assert never["customers"] == 1 and never["recontact_rate"] == 0.0
    assert "recontact_rate" not in replay(recs, Header())  # not modelled: not reported


def test_a_mismatched_agent_brings_customers_back_more_often() -> None:
    """The same arrivals served in their own group (proficiency 1) or by the other group's agent (0.5)."""
    skills = (("s", 1.0), ("t", 0.5))
    recs: list[object] = [AgentOnline(t=0.0, agent="a", groups=("s",), max_sessions=50, skills=skills)]
    for group in ("s", "t"):
        arrivals = [Arrival(t=10.0 * i, customer=f"u{i}", service_s=5.0, group=group) for i in range(1, 3001)]
        row = replay([*recs, *arrivals], Header(meta={"recontact": {"rate": 0.1, "gap_mean_s": 50.0}}))
        rate = row["recontact_rate"]
        assert isinstance(rate, float)
        # re-contacts are served at the same proficiency: (r + r^2 + r^3) / (1 + r + r^2 + r^3)
        r = 0.1 if group == "s" else 0.2
        expected = (r + r * r + r**3) / (1 + r + r * r + r**3)
        assert rate == pytest.approx(expected, abs=0.02)


def test_same_seed_same_report_and_a_trace_without_the_model_is_unchanged() -> None:
    base = GenParams(
        agents=4,
        max_sessions=2,
        customers=400,
        arrival_rate=0.1,
        groups=parse_shares("s:0.5,t:0.5"),
        returning=0.2,
        return_gap=600,
        cross_skill=0.6,
        seed=3,
    )
    with_rc = GenParams(**{**base.__dict__, "recontact": 0.2, "recontact_gap": 300.0})
    # the model lives in the header only: the records are the same draws
    assert list(generate(with_rc)) == list(generate(base))
    assert "recontact" not in header_for(base).meta and "recontact" not in header_for(base).meta["params"]
    header = header_for(with_rc)
    assert header.meta["recontact"] == {"rate": 0.2, "gap_mean_s": 300.0}
    assert params_from_header(header) == with_rc
    assert params_from_header(header_for(base)) == base

    def row(params: GenParams, seed: int) -> dict[str, object]:
        r = replay(list(generate(params)), header_for(params), "best-fit", seed)
        return {k: v for k, v in r.items() if k not in ("wall_s", "customers_per_s")}

    assert row(with_rc, 1) == row(with_rc, 1)
    assert row(with_rc, 1)["customers"] > 400 and "recontact_rate" not in row(base, 1)
    with pytest.raises(GenError, match="--recontact must be a share"):
        GenParams(recontact=1.5)
    with pytest.raises(GenError, match="--recontact-gap must be"):
        GenParams(recontact=0.1, recontact_gap=0.0)


def test_cli_gen_and_run_recontact(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "t.jsonl"
    argv = ["sim", "gen", "--agents", "2", "--customers", "200", "--groups", "a:1,b:1", "--out", str(out)]
    assert main([*argv, "--recontact", "0.3", "--recontact-gap", "120"]) == 0
    header, _, _ = read_trace(out)
    assert header.meta["recontact"] == {"rate": 0.3, "gap_mean_s": 120.0}
    capsys.readouterr()
    assert main(["sim", "run", str(out), "--policy", "least-load", "--json", "--jobs", "1"]) == 0
    report = json.loads(capsys.readouterr().out)
    rows = {r["policy"]: r for r in report["policies"]}
    assert 0.2 < rows["least-load"]["recontact_rate"] < 0.45
    assert main([*argv, "--recontact", "-0.1"]) == 2
    assert "--recontact must be a share between 0 and 1" in capsys.readouterr().err
