"""Synthetic traces: determinism, spec parsing, groups/shifts/profile/returning/preferred shapes, CLI."""

from __future__ import annotations

import io
from collections import Counter
from pathlib import Path

import pytest

from router.cli import main
from sim.gen import GenError, GenParams, generate, header_for, parse_priorities, parse_shares, parse_windows
from sim.trace import AgentOffline, AgentOnline, Arrival, TraceWriter, read_trace


def text_of(p: GenParams) -> str:
    buf = io.StringIO()
    TraceWriter(buf, header_for(p)).write_all(generate(p))
    return buf.getvalue()


RICH = GenParams(
    agents=9,
    max_sessions=2,
    customers=1500,
    arrival_rate=0.05,
    service_mean=120,
    service_dist="lognormal",
    service_cv=0.7,
    patience_mean=300,
    groups=parse_shares("sales:0.6,support:0.3,vip:0.1"),
    priorities=parse_priorities("1:0.1,2:0.05"),
    returning=0.3,
    return_gap=600,
    preferred=0.2,
    shifts=parse_windows("22-8,8-16,14-22:0.5", "--shifts", wrap=True, default=1.0),
    seed=11,
)


def test_same_seed_same_bytes_other_seed_differs() -> None:
    a = text_of(RICH)
    assert a == text_of(RICH)
    b = text_of(GenParams(**{**RICH.__dict__, "seed": 12}))
    assert a != b
    # the output is a valid trace with the requested number of arrivals
    header, recs, _ = read_trace(a.splitlines(keepends=True))
    assert header.seed == 11 and header.created_by == "kfrouter sim gen"
    assert header.meta["groups"] == ["sales", "support", "vip"]
    assert sum(isinstance(r, Arrival) for r in recs) == 1500


def test_rich_trace_shapes() -> None:
    recs = list(generate(RICH))
    arrivals = [r for r in recs if isinstance(r, Arrival)]
    groups = Counter(a.group for a in arrivals)
    assert groups["sales"] > groups["support"] > groups["vip"] > 0
    prios = Counter(a.priority for a in arrivals)
    assert prios[0] > prios[1] > prios[2] > 0
    assert all(a.patience_s is not None and a.patience_s > 0 for a in arrivals)
    # returning customers come back no sooner than return_gap after their previous arrival
    last: dict[str, float] = {}
    returning = 0
    for a in arrivals:
        if a.customer in last:
            returning += 1
            assert a.t - last[a.customer] >= 600
        last[a.customer] = a.t
    assert 0.15 * len(arrivals) < returning < 0.35 * len(arrivals)
    # preferred agents belong to the customer's group
    online = {r.agent: r.groups for r in recs if isinstance(r, AgentOnline)}
    prefs = [a for a in arrivals if a.preferred_agent]
    assert 0.1 * len(arrivals) < len(prefs) < 0.3 * len(arrivals)
    assert all(a.group in online[a.preferred_agent] for a in prefs if a.preferred_agent)
    # every group has agents; every agent goes online and offline on its shift
    assert {g for gs in online.values() for g in gs} == {"sales", "support", "vip"}
    assert any(isinstance(r, AgentOffline) for r in recs)
    times = [r.t for r in recs]
    assert times == sorted(times)


def test_shifts_follow_the_clock() -> None:
    p = GenParams(
        agents=4,
        customers=50,
        arrival_rate=0.001,
        shifts=parse_windows("0-12,12-24", "s", wrap=True, default=1.0),
    )
    recs = list(generate(p))
    state: dict[str, bool] = {}
    for r in recs:
        if isinstance(r, AgentOnline):
            assert not state.get(r.agent), f"{r.agent} online twice"
            state[r.agent] = True
            assert (r.t % 86400) in (0.0, 43200.0)
        elif isinstance(r, AgentOffline):
            assert state.get(r.agent)
            state[r.agent] = False
        else:
            hour = (r.t % 86400) / 3600
            on = [a for a, s in state.items() if s]
            assert len(on) == 2, (hour, on)


def test_night_shift_is_on_at_start() -> None:
    p = GenParams(
        agents=2,
        customers=1,
        arrival_rate=1.0,
        shifts=parse_windows("20-4,4-20", "s", wrap=True, default=1.0),
    )
    recs = list(generate(p))
    assert recs[0] == AgentOnline(t=0.0, agent="a001@sim", groups=(), max_sessions=1)
    assert isinstance(recs[1], Arrival)
    assert recs[2:4] == [
        AgentOnline(t=4 * 3600.0, agent="a002@sim", groups=(), max_sessions=1),
        AgentOffline(t=4 * 3600.0, agent="a001@sim"),
    ]


def test_arrival_profile_rates() -> None:
    prof = parse_windows("0-6:0.01,6-12:0.1", "--arrival-profile", wrap=False, default=None)
    p = GenParams(customers=6000, arrival_profile=prof, seed=3)
    arrivals = [r for r in generate(p) if isinstance(r, Arrival)]
    hours = Counter(int((a.t % 86400) // 3600) for a in arrivals)
    assert sum(hours[h] for h in range(12, 24)) == 0  # no rate after noon
    low = sum(hours[h] for h in range(0, 6))
    high = sum(hours[h] for h in range(6, 12))
    assert 7 < high / low < 13  # 10x the rate


def test_constant_and_exp_service() -> None:
    const = [
        r.service_s
        for r in generate(GenParams(customers=20, service_dist="const", service_mean=42))
        if isinstance(r, Arrival)
    ]
    assert set(const) == {42.0}
    exp = [
        r.service_s
        for r in generate(GenParams(customers=4000, service_mean=10, seed=5))
        if isinstance(r, Arrival)
    ]
    assert 9.3 < sum(exp) / len(exp) < 10.7
    assert all(r.patience_s is None for r in generate(GenParams(customers=10)) if isinstance(r, Arrival))


@pytest.mark.parametrize(
    ("fn", "match"),
    [
        (lambda: parse_shares("sales:x"), "not a number"),
        (lambda: parse_shares("sales:1,sales:2"), "appears twice"),
        (lambda: parse_shares(":1"), "empty name"),
        (lambda: parse_shares("a:0"), "positive total"),
        (lambda: parse_priorities("x:0.1"), "not an integer"),
        (lambda: parse_priorities("1:0.7,2:0.5"), "more than 1"),
        (lambda: parse_priorities("1"), "PRIORITY:SHARE"),
        (lambda: parse_windows("8:1", "--shifts", wrap=True, default=1.0), "START-END"),
        (lambda: parse_windows("8-8", "--shifts", wrap=True, default=1.0), "empty"),
        (lambda: parse_windows("9-25:1", "--arrival-profile", wrap=False, default=None), "past 24"),
        (lambda: parse_windows("12-6:1", "--arrival-profile", wrap=False, default=None), "backwards"),
        (lambda: parse_windows("0-8:1,6-9:1", "--arrival-profile", wrap=False, default=None), "overlap"),
        (lambda: parse_windows("0-8", "--arrival-profile", wrap=False, default=None), "needs a value"),
        (lambda: GenParams(agents=0), "--agents"),
        (lambda: GenParams(arrival_rate=0), "--arrival-rate"),
        (lambda: GenParams(service_dist="gamma"), "--service-dist"),
        (lambda: GenParams(returning=1.5), "--returning"),
        (lambda: GenParams(agents=1, groups=parse_shares("a,b")), "only 1 agents"),
        (
            lambda: GenParams(arrival_profile=parse_windows("0-8:0", "p", wrap=False, default=None)),
            "rate > 0",
        ),
    ],
)
def test_bad_specs(fn: object, match: str) -> None:
    with pytest.raises(GenError, match=match):
        fn()  # type: ignore[operator]


def test_cli_gen_writes_a_trace(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "t.jsonl"
    args = [
        "sim",
        "gen",
        "--agents",
        "3",
        "--customers",
        "25",
        "--groups",
        "a:1,b:1",
        "--seed",
        "4",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    first = out.read_text()
    assert main(args) == 0
    assert out.read_text() == first
    header, recs, _ = read_trace(out)
    assert header.meta["params"]["agents"] == 3
    assert sum(isinstance(r, Arrival) for r in recs) == 25
    assert main(["sim", "gen", "--customers", "2", "--seed", "4"]) == 0  # stdout
    assert capsys.readouterr().out.startswith('{"kind": "header"')


def test_cli_gen_bad_option(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sim", "gen", "--groups", "a:x"]) == 2
    assert "--groups" in capsys.readouterr().err
    assert main(["sim", "gen", "--arrival-rate", "1", "--arrival-profile", "0-24:1"]) == 2
    assert "not both" in capsys.readouterr().err


def test_round_the_clock_shift_stays_online_across_midnight() -> None:
    p = GenParams(
        agents=1,
        customers=400,
        arrival_rate=0.002,  # about 2.3 days of arrivals
        shifts=parse_windows("0-24", "s", wrap=True, default=1.0),
    )
    online = False
    for r in generate(p):
        if isinstance(r, AgentOnline):
            online = True
        elif isinstance(r, AgentOffline):
            online = False
        else:
            assert online, f"arrival at {r.t / 3600:.1f} h with the only (0-24) agent offline"
