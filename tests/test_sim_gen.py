"""Synthetic traces: determinism, spec parsing, groups/shifts/profile/returning/preferred shapes, CLI."""

from __future__ import annotations

import hashlib
import io
import math
import random
from collections import Counter
from pathlib import Path

import pytest

from kfrouter.router.cli import main
from kfrouter.sim.gen import (
    GenError,
    GenParams,
    Segment,
    _ArrivalClock,
    _round6,
    generate,
    header_for,
    parse_priorities,
    parse_shares,
    parse_windows,
)
from kfrouter.sim.trace import AgentOffline, AgentOnline, Arrival, TraceWriter, read_trace


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


# sha256 of the trace text, recorded with the generator as of commit 784bb35 (before its speed-ups):
# the same parameters and seed must keep giving the same bytes
GOLDEN = {
    "1c82893e4d94d22cb003b520f7b766f700756b501e5416d1666bfe211aacc1c8": RICH,
    "3dd1381b7a5d892f0d32fb88856fe0ca439663a41b08756950ad3f3bdf23eee6": GenParams(
        agents=10, customers=3000, arrival_rate=9 / 60, service_mean=60, seed=1
    ),
    "64173d0f74b2f86d416ad76afc239221df541b2fd9bf579f1d9aa778d4193894": GenParams(
        customers=2000,
        arrival_profile=parse_windows("0-6:0.01,6-12:0.1,13-20:0.05", "p", wrap=False, default=None),
        patience_mean=90,
        seed=3,
    ),
    "99cc95bf7e6bc280d113f875d00d192d3b374113c5ab2f90eb3bd01e404fc2d3": GenParams(
        customers=500, service_dist="const", service_mean=42, preferred=0.5, seed=6
    ),
}


@pytest.mark.parametrize("digest", list(GOLDEN))
def test_traces_stay_byte_for_byte_the_same(digest: str) -> None:
    assert hashlib.sha256(text_of(GOLDEN[digest]).encode()).hexdigest() == digest


def test_round6_is_round_to_6_digits_bit_for_bit() -> None:
    rng = random.Random(42)
    values = [0.0, -0.0, 1e-9, 4.999999e-7, 5e-7, 0.0078125, 1.5e-6, 86400.0, 7e7, 1e20, -3.25, math.inf]
    for _ in range(20_000):
        values.append(rng.random() * 10 ** rng.uniform(-7, 9))  # times, services, patience
        k = rng.randrange(10 ** rng.randrange(1, 14))
        near_tie = (k + 0.5) / 1e6  # the cases a shortcut through x * 1e6 would get wrong
        values += [near_tie, math.nextafter(near_tie, 0.0), math.nextafter(near_tie, math.inf)]
        values.append(rng.randrange(1, 10**9) * 15625 / 2 ** rng.randrange(1, 8))  # exact ties
    for x in values:
        assert _round6(x).hex() == round(x, 6).hex(), x
    assert math.isnan(_round6(math.nan))


@pytest.mark.parametrize(
    ("rate", "profile"),
    [
        (0.15, ()),
        (2e-5, ()),  # most gaps cross midnight
        (None, parse_windows("0-6:0.01,6-12:0.1,13-20:0.05", "p", wrap=False, default=None)),
        (None, parse_windows("8-9:0.0005", "p", wrap=False, default=None)),
    ],
)
def test_arrival_clock_shortcut_matches_stepping(rate: float | None, profile: tuple[Segment, ...]) -> None:
    fast = list(_ArrivalClock(random.Random(7), rate, profile).times(3000))
    slow_clock, rng = _ArrivalClock(random.Random(7), rate, profile), random.Random(7)
    t, slow = 0.0, []
    for _ in range(3000):
        t = slow_clock._advance(t, -math.log(1.0 - rng.random()))[0]
        slow.append(t)
    assert [x.hex() for x in fast] == [x.hex() for x in slow]
