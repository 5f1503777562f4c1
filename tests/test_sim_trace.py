"""Trace reader/writer: every kind of bad line is an error naming file, line and problem; x- kinds are
skipped and counted; writer → reader round-trips (Hypothesis)."""

from __future__ import annotations

import gzip
import io
import json
import math
import pickle
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kfrouter.sim.trace import (
    AgentOffline,
    AgentOnline,
    Arrival,
    Header,
    TraceError,
    TraceReader,
    TraceWriter,
    read_trace,
    record_to_dict,
    write_trace,
)

HEADER = '{"kind": "header", "version": 1, "name": "t", "seed": 7, "created_by": "test"}'
ONLINE = '{"t": 0, "kind": "agent_online", "agent": "a1@x", "groups": ["sales"], "max_sessions": 2}'
ARRIVAL = (
    '{"t": 1.5, "kind": "arrival", "customer": "u1", "group": "sales", "priority": 0, '
    '"service_s": 30, "patience_s": null}'
)


def write(tmp_path: Path, lines: list[str], name: str = "trace.jsonl") -> Path:
    p = tmp_path / name
    p.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return p


def fails(tmp_path: Path, lines: list[str]) -> TraceError:
    p = write(tmp_path, lines)
    with pytest.raises(TraceError) as info:
        read_trace(p)
    err = info.value
    assert err.file == str(p)
    assert str(err).startswith(f"{p}:{err.line}: ")
    return err


def arrival(**changes: object) -> str:
    obj = json.loads(ARRIVAL)
    for k, v in changes.items():
        if v is DROP:
            obj.pop(k)
        else:
            obj[k] = v
    return json.dumps(obj)


def online(**changes: object) -> str:
    obj = json.loads(ONLINE)
    for k, v in changes.items():
        if v is DROP:
            obj.pop(k)
        else:
            obj[k] = v
    return json.dumps(obj)


DROP = object()


def test_valid_trace_reads_with_defaults(tmp_path: Path) -> None:
    p = write(tmp_path, [HEADER, ONLINE, ARRIVAL, '{"t": 2, "kind": "agent_offline", "agent": "a1@x"}'])
    header, recs, skipped = read_trace(p)
    assert header == Header(version=1, name="t", seed=7, created_by="test")
    assert recs == [
        AgentOnline(t=0.0, agent="a1@x", groups=("sales",), max_sessions=2),
        Arrival(t=1.5, customer="u1", service_s=30.0, group="sales"),
        AgentOffline(t=2.0, agent="a1@x"),
    ]
    assert skipped == {}
    minimal = '{"t": 3, "kind": "arrival", "customer": "u2", "service_s": 1}'
    _, recs2, _ = read_trace([HEADER, minimal])
    assert recs2 == [Arrival(t=3.0, customer="u2", service_s=1.0, group=None, priority=0, patience_s=None)]


def test_optional_fields_and_extensions(tmp_path: Path) -> None:
    line = arrival(text="hi", preferred_agent="a1@x", tags=["vip"], **{"x-note": 1})
    xline = '{"t": 1.5, "kind": "x-metrics", "whatever": [1, 2]}'
    p = write(tmp_path, [HEADER, ONLINE, xline, line, xline, '{"t": 2, "kind": "x-other"}'])
    with TraceReader(p) as reader:
        recs = list(reader)
        assert reader.skipped == {"x-metrics": 2, "x-other": 1}
        assert reader.lines == 6
    assert recs[1] == Arrival(
        t=1.5, customer="u1", service_s=30.0, group="sales", text="hi", preferred_agent="a1@x", tags=("vip",)
    )


def test_header_metadata_kept(tmp_path: Path) -> None:
    p = write(tmp_path, ['{"kind": "header", "version": 1, "params": {"agents": 3}, "groups": ["a"]}'])
    header, recs, _ = read_trace(p)
    assert header.meta == {"params": {"agents": 3}, "groups": ["a"]} and recs == []


BAD_LINES = [
    # (lines after which the error occurs, expected line number, problem fragment)
    ([], 1, "empty trace"),
    (["not json"], 1, "not JSON"),
    (["[1, 2]"], 1, "must be a JSON object"),
    ([ONLINE], 1, "first line must be the header"),
    (['{"kind": "header", "version": 2}'], 1, "unsupported trace version 2"),
    (['{"kind": "header", "version": "1"}'], 1, "unsupported trace version"),
    (['{"kind": "header"}'], 1, "unsupported trace version None"),
    (['{"kind": "header", "version": 1, "name": 5}'], 1, "'name' must be a string"),
    (['{"kind": "header", "version": 1, "seed": 1.5}'], 1, "'seed' must be an integer"),
    (['{"kind": "header", "version": 1, "created_by": []}'], 1, "'created_by' must be a string"),
    ([HEADER, ""], 2, "empty line"),
    ([HEADER, "   "], 2, "empty line"),
    ([HEADER, "{"], 2, "not JSON"),
    ([HEADER, '"text"'], 2, "must be a JSON object"),
    ([HEADER, HEADER], 2, "second header"),
    ([HEADER, '{"t": 0, "kind": "agent_break", "agent": "a"}'], 2, "unknown kind 'agent_break'"),
    ([HEADER, '{"t": 0}'], 2, "'kind' must be a string"),
    ([HEADER, '{"t": 0, "kind": 3}'], 2, "'kind' must be a string"),
    ([HEADER, '{"kind": "arrival", "customer": "u", "service_s": 1}'], 2, "has no 't'"),
    ([HEADER, '{"kind": "x-note"}'], 2, "has no 't'"),
    ([HEADER, arrival(t=-1)], 2, "'t' must be a finite number >= 0"),
    ([HEADER, arrival(t="1")], 2, "'t' must be a finite number"),
    ([HEADER, arrival(t=True)], 2, "'t' must be a finite number"),
    ([HEADER, arrival(t=None)], 2, "'t' must be a finite number"),
    ([HEADER, arrival().replace('"t": 1.5', '"t": NaN')], 2, "'t' must be a finite number"),
    ([HEADER, arrival().replace('"t": 1.5', '"t": Infinity')], 2, "'t' must be a finite number"),
    ([HEADER, ONLINE, arrival(t=3), arrival(t=2, customer="u2")], 4, "'t' goes backwards: 2 after 3"),
    ([HEADER, arrival(t=3), '{"t": 2, "kind": "x-note"}'], 3, "goes backwards"),
    ([HEADER, arrival(customer=DROP)], 2, "missing 'customer'"),
    ([HEADER, arrival(service_s=DROP)], 2, "missing 'service_s'"),
    ([HEADER, arrival(customer="")], 2, "'customer' must be a non-empty string"),
    ([HEADER, arrival(customer=5)], 2, "'customer' must be a non-empty string"),
    ([HEADER, arrival(group="")], 2, "'group' must be a non-empty string or null"),
    ([HEADER, arrival(group=["a"])], 2, "'group' must be a non-empty string or null"),
    ([HEADER, arrival(priority=1.5)], 2, "'priority' must be an integer"),
    ([HEADER, arrival(priority=False)], 2, "'priority' must be an integer"),
    ([HEADER, arrival(service_s=0)], 2, "'service_s' must be a finite number > 0"),
    ([HEADER, arrival(service_s="30")], 2, "'service_s' must be a finite number > 0"),
    ([HEADER, arrival(patience_s=0)], 2, "'patience_s' must be a finite number > 0"),
    ([HEADER, arrival(patience_s=-3)], 2, "'patience_s' must be a finite number > 0"),
    ([HEADER, arrival(text=1)], 2, "'text' must be a string"),
    ([HEADER, arrival(preferred_agent="")], 2, "'preferred_agent' must be a non-empty string"),
    ([HEADER, arrival(tags="vip")], 2, "'tags' must be a list of non-empty strings"),
    ([HEADER, arrival(tags=[1])], 2, "'tags' must be a list of non-empty strings"),
    ([HEADER, arrival(service=30)], 2, "unknown field 'service' on a arrival line"),
    ([HEADER, online(agent=DROP)], 2, "missing 'agent'"),
    ([HEADER, online(groups=DROP, max_sessions=DROP)], 2, "missing 'groups', 'max_sessions'"),
    ([HEADER, online(agent="")], 2, "'agent' must be a non-empty string"),
    ([HEADER, online(groups="sales")], 2, "'groups' must be a list"),
    ([HEADER, online(groups=[""])], 2, "'groups' must be a list of non-empty strings"),
    ([HEADER, online(max_sessions=0)], 2, "'max_sessions' must be an integer >= 1"),
    ([HEADER, online(max_sessions=2.0)], 2, "'max_sessions' must be an integer >= 1"),
    ([HEADER, online(max_sessions=True)], 2, "'max_sessions' must be an integer >= 1"),
    ([HEADER, online(capacity=3)], 2, "unknown field 'capacity'"),
    ([HEADER, '{"t": 1, "kind": "agent_offline"}'], 2, "missing 'agent'"),
    ([HEADER, '{"t": 1, "kind": "agent_offline", "agent": null}'], 2, "'agent' must be a non-empty string"),
    ([HEADER, '{"t": 1, "kind": "agent_offline", "agent": "a", "groups": []}'], 2, "unknown field 'groups'"),
]


@pytest.mark.parametrize(("lines", "line_no", "problem"), BAD_LINES)
def test_bad_lines(tmp_path: Path, lines: list[str], line_no: int, problem: str) -> None:
    err = fails(tmp_path, lines)
    assert err.line == line_no
    assert problem in err.problem, err.problem


def test_not_utf8(tmp_path: Path) -> None:
    p = tmp_path / "bad.jsonl"
    p.write_bytes(HEADER.encode() + b"\n" + b'{"t": 0, "kind": "agent_offline", "agent": "\xff"}\n')
    with pytest.raises(TraceError) as info:
        read_trace(p)
    assert info.value.line == 2 and "not UTF-8" in info.value.problem


def test_utf16_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "u16.jsonl"
    p.write_bytes((HEADER + "\n").encode("utf-16"))
    with pytest.raises(TraceError) as info:
        read_trace(p)
    assert info.value.line == 1


def test_missing_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(TraceError) as info:
        TraceReader(tmp_path / "nope.jsonl")
    assert info.value.line == 0 and "cannot open" in info.value.problem
    assert "nope.jsonl" in str(info.value)


def test_truncated_gzip(tmp_path: Path) -> None:
    good = gzip.compress(("\n".join([HEADER, ONLINE, ARRIVAL] * 1) + "\n").encode())
    p = tmp_path / "cut.jsonl.gz"
    p.write_bytes(good[: len(good) - 12])
    with pytest.raises(TraceError) as info:
        read_trace(p)
    assert "cannot read" in info.value.problem or "not JSON" in info.value.problem


def test_gzip_round_trip_and_fraction(tmp_path: Path) -> None:
    p = tmp_path / "t.jsonl.gz"
    recs = [AgentOnline(t=0.0, agent="a@x", groups=("g",), max_sessions=1)] + [
        Arrival(t=float(i), customer=f"u{i}", service_s=1.0) for i in range(200)
    ]
    assert write_trace(p, Header(name="gz"), recs) == 201
    with TraceReader(p) as reader:
        assert list(reader) == recs
        assert reader.fraction() == pytest.approx(1.0)
    assert gzip.decompress(p.read_bytes()).startswith(b'{"kind": "header"')
    plain = tmp_path / "big.jsonl"
    write_trace(plain, Header(), [Arrival(t=float(i), customer=f"u{i}", service_s=1.0) for i in range(5000)])
    with TraceReader(plain) as reader:
        assert reader.fraction() < 0.5
        assert sum(1 for _ in reader) == 5000
        assert reader.fraction() == 1.0
    assert TraceReader([HEADER]).fraction() == 0.0


def test_writer_refuses_what_the_reader_would() -> None:
    w = TraceWriter(io.StringIO(), Header())
    w.write(Arrival(t=5.0, customer="u", service_s=1.0))
    with pytest.raises(ValueError, match="goes backwards"):
        w.write(Arrival(t=4.0, customer="u", service_s=1.0))
    with pytest.raises(ValueError, match="service_s"):
        w.write(Arrival(t=6.0, customer="u", service_s=0.0))
    with pytest.raises(ValueError, match=r"nan|finite"):
        w.write(Arrival(t=math.nan, customer="u", service_s=1.0))
    with pytest.raises(ValueError, match="max_sessions"):
        w.write(AgentOnline(t=7.0, agent="a", max_sessions=0))
    with pytest.raises(ValueError, match="clashes"):
        TraceWriter(io.StringIO(), Header(meta={"version": 2}))


def test_writer_escapes_unicode_line_breaks_only() -> None:
    # JSON keeps U+0085, U+2028 and U+2029 raw inside strings, but str.splitlines() and JavaScript
    # end a line there: the writer escapes them, and leaves every other character as it is
    out = io.StringIO()
    w = TraceWriter(out, Header())
    texts = ["a\x85b\u2028c\u2029d", "plain", "客服 ok"]
    for i, text in enumerate(texts):
        w.write(Arrival(t=float(i), customer="u", service_s=1.0, text=text))
    data = out.getvalue()
    assert len(data.splitlines()) == 1 + len(texts)
    assert "\\u2028" in data and "客服 ok" in data and '"plain"' in data
    _header, recs, _skipped = read_trace(data.splitlines())
    assert [r.text for r in recs if isinstance(r, Arrival)] == texts


# ------------------------------------------------------------------------------------------ round trip

names = st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=12)
times = st.floats(min_value=0, max_value=1e9, allow_nan=False, allow_infinity=False)
positive = st.floats(min_value=1e-9, max_value=1e7, allow_nan=False, allow_infinity=False)
tags = st.lists(names, max_size=3).map(tuple)

records = st.one_of(
    st.builds(AgentOnline, t=times, agent=names, groups=tags, max_sessions=st.integers(1, 1000), tags=tags),
    st.builds(AgentOffline, t=times, agent=names),
    st.builds(
        Arrival,
        t=times,
        customer=names,
        service_s=positive,
        group=st.none() | names,
        priority=st.integers(-(2**40), 2**40),
        patience_s=st.none() | positive,
        text=st.text(max_size=20),
        preferred_agent=st.none() | names,
        tags=tags,
    ),
)


@settings(max_examples=150, deadline=None)
@given(
    recs=st.lists(records, max_size=25),
    header=st.builds(
        Header,
        name=st.text(max_size=10),
        seed=st.none() | st.integers(-(2**63), 2**63),
        created_by=st.text(max_size=10),
        meta=st.dictionaries(
            st.sampled_from(["params", "groups", "note"]), st.integers() | st.text(max_size=5), max_size=2
        ),
    ),
)
def test_round_trip(recs: list[AgentOnline | AgentOffline | Arrival], header: Header) -> None:
    recs = sorted(recs, key=lambda r: r.t)
    buf = io.StringIO()
    assert TraceWriter(buf, header).write_all(recs) == len(recs)
    got_header, got, skipped = read_trace(buf.getvalue().splitlines(keepends=True))
    assert got_header == header
    assert got == recs
    assert skipped == {}


def test_an_arrival_is_a_frozen_value_read_by_name() -> None:
    positional = Arrival(1.5, "u1", 30.0, "sales", 2, 9.0, "", "a1@x")
    named = Arrival(
        t=1.5,
        customer="u1",
        service_s=30.0,
        group="sales",
        priority=2,
        patience_s=9.0,
        preferred_agent="a1@x",
    )
    assert positional == named and hash(positional) == hash(named) and repr(positional) == repr(named)
    assert positional != named._replace(preferred_agent=None)
    assert (named.text, named.tags) == ("", ())
    with pytest.raises(AttributeError):
        named.t = 2.0  # type: ignore[misc]
    assert pickle.loads(pickle.dumps(named)) == positional
    assert record_to_dict(positional) == record_to_dict(named)
