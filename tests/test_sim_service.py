"""Match-dependent service: skills and same_agent_factor in the trace, the session-length rule, the
generator's --cross-skill / --same-agent-factor, and replays whose sessions last what the rule says."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import pytest

from kfrouter.router.cli import main
from kfrouter.sim.gen import GenError, GenParams, generate, header_for, parse_shares
from kfrouter.sim.report import metrics
from kfrouter.sim.runner import RunConfig, Simulation, groups_of, run_records
from kfrouter.sim.service import ServiceModel, session_length
from kfrouter.sim.trace import AgentOnline, Arrival, Header, TraceError, TraceWriter, read_trace


def lines(*objs: dict[str, object], header: dict[str, object] | None = None) -> list[str]:
    head = {"kind": "header", "version": 1, **(header or {})}
    return [json.dumps(o) for o in (head, *objs)]


def test_session_length_rule() -> None:
    assert session_length(60.0, 1.0, False, 0.8) == 60.0
    assert session_length(60.0, 0.6, False, 0.8) == pytest.approx(100.0)
    assert session_length(60.0, 1.0, True, 0.8) == pytest.approx(48.0)
    assert session_length(60.0, 0.5, True, 0.8) == pytest.approx(96.0)


def test_service_model_defaults_and_activity() -> None:
    m = ServiceModel()
    assert not m.active
    m.agent_online("a", [("sales", 1.0)])
    assert not m.active  # every skill 1: sessions last service_s, the replay skips the call
    m.agent_online("b", [("sales", 1.0), ("support", 0.5)])
    assert m.active
    assert m.proficiency("b", "support") == 0.5
    assert m.proficiency("b", "vip") == 1.0  # not listed
    assert m.proficiency("b", None) == 1.0
    assert m.proficiency("nobody", "support") == 1.0
    assert m.length(30.0, "support", "b", last_agent="b") == pytest.approx(60.0)
    assert ServiceModel(0.5).active
    with pytest.raises(ValueError, match="same_agent_factor"):
        ServiceModel(0.0)


def test_trace_reads_and_writes_skills_and_factor() -> None:
    text = lines(
        {
            "t": 0,
            "kind": "agent_online",
            "agent": "a",
            "groups": ["s"],
            "max_sessions": 1,
            "skills": {"t": 0.5, "s": 1},
        },
        header={"same_agent_factor": 0.7},
    )
    header, records, _ = read_trace(text)
    assert header.meta["same_agent_factor"] == 0.7
    rec = records[0]
    assert isinstance(rec, AgentOnline)
    assert rec.skills == (("s", 1.0), ("t", 0.5))
    out = io.StringIO()
    TraceWriter(out, header).write_all(records)
    again = read_trace(out.getvalue().splitlines())
    assert again[1] == records and again[0].meta["same_agent_factor"] == 0.7


@pytest.mark.parametrize(
    ("skills", "problem"),
    [
        ([0.5], "must be an object"),
        ({"s": 0}, "in (0, 1]"),
        ({"s": 1.5}, "in (0, 1]"),
        ({"s": True}, "in (0, 1]"),
        ({"": 0.5}, "empty group name"),
    ],
)
def test_bad_skills_are_refused_with_the_line(skills: object, problem: str) -> None:
    text = lines(
        {"t": 0, "kind": "agent_online", "agent": "a", "groups": [], "max_sessions": 1, "skills": skills}
    )
    with pytest.raises(TraceError, match=r"^<memory>:2: .*") as info:
        read_trace(text)
    assert problem in str(info.value)


@pytest.mark.parametrize("factor", [0, -1, "x", None])
def test_bad_same_agent_factor_is_refused(factor: object) -> None:
    with pytest.raises(TraceError, match=r"<memory>:1: 'same_agent_factor' must be a finite number > 0"):
        read_trace(lines(header={"same_agent_factor": factor}))


def test_generator_writes_skills_only_when_asked() -> None:
    base = GenParams(agents=4, customers=50, groups=parse_shares("sales:0.5,support:0.5"), seed=2)
    plain = list(generate(base))
    assert all(not r.skills for r in plain if isinstance(r, AgentOnline))
    assert "cross_skill" not in header_for(base).meta["params"]
    assert "same_agent_factor" not in header_for(base).meta
    skilled = GenParams(**{**base.__dict__, "cross_skill": 0.6, "same_agent_factor": 0.8})
    recs = list(generate(skilled))
    onl = [r for r in recs if isinstance(r, AgentOnline)]
    for r in onl:
        own = r.groups[0]
        assert dict(r.skills) == {own: 1.0, ("support" if own == "sales" else "sales"): 0.6}
    # the arrivals themselves are the same draws
    assert [r for r in recs if isinstance(r, Arrival)] == [r for r in plain if isinstance(r, Arrival)]
    assert header_for(skilled).meta["same_agent_factor"] == 0.8
    with pytest.raises(GenError, match="--cross-skill"):
        GenParams(cross_skill=0.0)
    with pytest.raises(GenError, match="--same-agent-factor"):
        GenParams(same_agent_factor=-1.0)


def _replay(records: list[object], header: Header, policy: str = "least-load") -> object:
    return run_records(header, records, RunConfig(policy=policy, overflow_after_s=0.0), groups={"s", "t"})  # type: ignore[arg-type]


def test_a_mismatched_agent_is_slower_and_a_returning_customer_quicker() -> None:
    agent = AgentOnline(t=0.0, agent="a", groups=("s",), max_sessions=1, skills=(("s", 1.0), ("t", 0.5)))
    recs = [
        agent,
        Arrival(t=1.0, customer="u1", service_s=10.0, group="t"),  # cross: 20 s
        Arrival(t=100.0, customer="u2", service_s=10.0, group="s"),  # own: 10 s
        Arrival(t=200.0, customer="u2", service_s=10.0, group="s"),  # own, same agent: 0.5 x 10 s
    ]
    res = _replay(recs, Header(meta={"same_agent_factor": 0.5}))
    st = res.agents["a"]  # type: ignore[attr-defined]
    assert st.busy_s == pytest.approx(20.0 + 10.0 + 5.0)
    assert metrics(res)["handle_mean_s"] == pytest.approx(35.0 / 3)  # type: ignore[arg-type]
    # without skills and factor the same trace lasts what the arrivals say
    plain = _replay([AgentOnline(t=0.0, agent="a", groups=("s",), max_sessions=1), *recs[1:]], Header())
    assert plain.agents["a"].busy_s == pytest.approx(30.0)  # type: ignore[attr-defined]


def test_skills_make_a_queue_and_handle_time_shows_it() -> None:
    """The same arrivals: with cross-skill 0.5 wechat-native (which ignores groups) spends more agent time
    per session than with cross-skill 1, and customers wait longer."""
    base = GenParams(
        agents=4,
        max_sessions=1,
        customers=1500,
        arrival_rate=0.05,
        service_mean=60,
        groups=parse_shares("s:0.5,t:0.5"),
        seed=4,
    )
    rows = {}
    for cross in (1.0, 0.5):
        p = GenParams(**{**base.__dict__, "cross_skill": cross})
        header = header_for(p)
        res = Simulation(
            header, generate(p), RunConfig(policy="wechat-native"), groups=groups_of(header)
        ).run()
        rows[cross] = metrics(res)
    assert rows[1.0]["handle_mean_s"] == pytest.approx(60.0, rel=0.1)
    assert rows[0.5]["handle_mean_s"] > 1.25 * rows[1.0]["handle_mean_s"]
    assert rows[0.5]["wait_mean_s"] > rows[1.0]["wait_mean_s"]
    assert not math.isnan(rows[0.5]["wait_mean_s"])


def test_cli_gen_cross_skill(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "t.jsonl"
    argv = ["sim", "gen", "--agents", "2", "--customers", "5", "--groups", "a:1,b:1", "--out", str(out)]
    assert main([*argv, "--cross-skill", "0.5", "--same-agent-factor", "0.9"]) == 0
    header, records, _ = read_trace(out)
    assert header.meta["same_agent_factor"] == 0.9
    assert any(isinstance(r, AgentOnline) and ("b", 0.5) in r.skills for r in records)
    plain = tmp_path / "p.jsonl"
    assert main([*argv[:-1], str(plain)]) == 0
    assert (
        main([*argv[:-1], str(tmp_path / "q.jsonl"), "--cross-skill", "1", "--same-agent-factor", "1"]) == 0
    )
    assert plain.read_bytes() == (tmp_path / "q.jsonl").read_bytes()  # absent and 1 are the same bytes
    assert main([*argv, "--cross-skill", "1.5"]) == 2
    assert "--cross-skill must be a number in (0, 1]" in capsys.readouterr().err
