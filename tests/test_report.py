"""``kfrouter report``: a database with known traffic written through the real Store, the report's numbers
computed here independently from the scenario; local days; the HTML file; reading a live database without
getting in the writer's way; bad arguments and unreadable databases exit 2 with a message naming them."""

from __future__ import annotations

import json
import sqlite3
import statistics
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo

import pytest

from kfrouter.router.cli import main
from kfrouter.router.edges.store import SCHEMA_VERSION, Store, WaitingRow
from kfrouter.router.report import build_report
from kfrouter.router.traffic import NOTICE_KIND, TrafficError, connect_readonly, read_traffic

D = datetime(2026, 12, 1, tzinfo=UTC).timestamp()  # midnight UTC, the first day of the scenario
H = 3600.0


class Req(NamedTuple):
    """One customer of the scenario: asked at ``t``; served by ``agent`` after ``wait`` for ``handle``, or
    left after ``left_after`` for ``reason``, or still waiting (neither)."""

    openid: str
    group: str | None
    t: float
    agent: str | None = None
    wait: float = 0.0
    handle: float | None = None
    left_after: float | None = None
    reason: str = "cancelled"


SCENARIO = (
    Req("c1", "sales", D + 1 * H, "a1@t", 5.0, 100.0),
    Req("c2", "sales", D + 1 * H + 600, "a1@t", 30.0, 200.0),
    Req("c3", "support", D + 2 * H, "a2@t", 12.0, 60.0),
    Req("c4", "support", D + 2 * H + 1800, left_after=40.0),
    Req("c5", None, D + 24 * H - 10, "a2@t", 25.0, 300.0),  # asked on day 1, served on day 2
    Req("c6", "sales", D + 27 * H, left_after=8.0, reason="removed"),
    Req("c7", "sales", D + 28 * H),  # still waiting
)
DIRECT = ("d1", "a2@t", D + 30 * H, 120.0)  # a session kfrouter did not route (no request)
AGENTS = (  # (t, kind, agent, groups, max_sessions)
    (D, "agent_online", "a1@t", ["sales"], 2),
    (D + 1 * H, "agent_online", "a2@t", ["support"], 1),
    (D + 10 * H, "agent_offline", "a1@t", None, None),
)
NOTICES = (("c1", D + 1 * H + 1), ("c4", D + 2 * H + 1802), ("c7", D + 28 * H + 1), ("c7", D + 28 * H + 60))
SINCE, UNTIL = D, D + 48 * H


def write_scenario(path: Path) -> None:
    with Store(path) as s:
        for t, kind, agent, groups, cap in AGENTS:
            payload: dict[str, Any] = {"agent": agent}
            if kind == "agent_online":
                payload.update(groups=groups, max_sessions=cap)
            s.append_event(t, kind, payload)
        for r in SCENARIO:
            s.add_waiting(WaitingRow(r.openid, r.group, 0, r.t, text="人工"))
            if r.agent is not None:
                s.record_session_start(r.openid, r.agent, r.t + r.wait)
                if r.handle is not None:
                    s.record_session_end(r.openid, r.agent, r.t + r.wait + r.handle)
            elif r.left_after is not None:
                s.remove_waiting(r.openid, r.t + r.left_after, r.reason)
        openid, agent, t, handle = DIRECT
        s.record_session_start(openid, agent, t)
        s.record_session_end(openid, agent, t + handle)
        for openid, t in NOTICES:
            s.append_event(t, NOTICE_KIND, {"openid": openid, "kind": "queued"})


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "kfrouter.db"
    write_scenario(path)
    return path


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def report_json(db: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> dict[str, Any]:
    code, out, err = run(
        [
            "report",
            "--db",
            str(db),
            "--since",
            str(SINCE),
            "--until",
            str(UNTIL),
            "--tz",
            "UTC",
            "--json",
            *extra,
        ],
        capsys,
    )
    assert code == 0, err
    data: dict[str, Any] = json.loads(out)
    return data


# ---------------------------------------------------------------------------------------------- expected


def pct(values: list[float], q: int) -> float:
    """Percentile by interpolation between ranks, computed with the standard library."""
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def expected(reqs: list[Req], threshold: float = 20.0) -> dict[str, Any]:
    served = [r for r in reqs if r.agent is not None]
    left = [r for r in reqs if r.agent is None and r.left_after is not None]
    waits = [r.wait for r in served]
    decided = len(served) + len(left)
    return {
        "requests": len(reqs),
        "served": len(served),
        "abandoned": len(left),
        "waiting": len(reqs) - len(served) - len(left),
        "wait_p50_s": round(pct(waits, 50), 3) if waits else None,
        "wait_p90_s": round(pct(waits, 90), 3) if waits else None,
        "wait_p95_s": round(pct(waits, 95), 3) if waits else None,
        "service_level_20s": round(sum(w <= 20 for w in waits) / decided, 4) if decided else None,
        "service_level": round(sum(w <= threshold for w in waits) / decided, 4) if decided else None,
    }


def check(row: dict[str, Any], want: dict[str, Any]) -> None:
    for key, value in want.items():
        assert row[key] == value, f"{key}: {row[key]!r} != {value!r}"


def capacity_seconds(lo: float, hi: float, group: str | None = None) -> float:
    """Online seconds times max sessions within [lo, hi), from AGENTS (a1: D..D+10h x2; a2: D+1h.. x1)."""
    spans = [("a1@t", D, D + 10 * H, 2, "sales"), ("a2@t", D + 1 * H, UNTIL, 1, "support")]
    return sum(
        max(0.0, min(b, hi) - max(a, lo)) * cap for _kf, a, b, cap, g in spans if group is None or g == group
    )


# ---------------------------------------------------------------------------------------------- tests


def test_totals_days_groups_agents_match_the_scenario(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report = report_json(db, capsys, "--threshold-s", "30")
    reqs = list(SCENARIO)
    totals = report["totals"]
    check(totals, expected(reqs, 30.0))
    assert totals["direct_sessions"] == 1 and totals["superseded"] == 0
    assert totals["left"] == {"cancelled": 1, "removed": 1}
    handles = [r.handle for r in reqs if r.handle is not None] + [DIRECT[3]]
    assert totals["handle_mean_s"] == round(sum(handles) / len(handles), 3)
    sessions = sum(handles)  # every session lies inside the window
    assert totals["session_s"] == pytest.approx(sessions)
    assert totals["utilisation"] == round(sessions / capacity_seconds(SINCE, UNTIL), 4)
    assert totals["notifications"] == len(NOTICES)
    assert report["threshold_s"] == 30.0

    # days (UTC): c5 asked on day 1 and is counted there, though its session ran on day 2
    assert [d["date"] for d in report["days"]] == ["2026-12-01", "2026-12-02"]
    day1, day2 = report["days"]
    check(day1, expected([r for r in reqs if r.t < D + 24 * H], 30.0))
    check(day2, expected([r for r in reqs if r.t >= D + 24 * H], 30.0))
    assert day1["session_s"] == pytest.approx(100 + 200 + 60)
    assert day2["session_s"] == pytest.approx(300 + 120)
    assert day1["utilisation"] == round(360 / capacity_seconds(D, D + 24 * H), 4)
    assert day2["utilisation"] == round(420 / capacity_seconds(D + 24 * H, UNTIL), 4)
    assert (day1["notifications"], day2["notifications"]) == (2, 2)

    # hours of the day: 01:00 holds c1 and c2 (and nothing from day 2)
    hours = {h["hour"]: h for h in report["hours"]}
    assert len(hours) == 24
    check(hours[1], expected([SCENARIO[0], SCENARIO[1]], 30.0))
    check(hours[23], expected([SCENARIO[4]], 30.0))
    assert sum(h["requests"] for h in hours.values()) == len(reqs)

    groups = {g["group"]: g for g in report["groups"]}
    assert list(groups) == ["sales", "support", None]
    for name, g in groups.items():
        check(g, expected([r for r in reqs if r.group == name], 30.0))
    assert groups["sales"]["utilisation"] == round(300 / capacity_seconds(SINCE, UNTIL, "sales"), 4)
    assert groups["support"]["utilisation"] == round(60 / capacity_seconds(SINCE, UNTIL, "support"), 4)
    assert groups[None]["utilisation"] is None and groups[None]["label"] == "(no group)"
    assert (groups["sales"]["notifications"], groups["support"]["notifications"]) == (3, 1)

    agents = {a["agent"]: a for a in report["agents"]}
    assert set(agents) == {"a1@t", "a2@t"}
    assert agents["a1@t"]["served"] == 2 and agents["a1@t"]["session_s"] == pytest.approx(300)
    assert agents["a1@t"]["wait_p50_s"] == 17.5 and agents["a1@t"]["handle_mean_s"] == 150
    assert agents["a1@t"]["utilisation"] == round(300 / (10 * H * 2), 4)
    a2 = agents["a2@t"]
    assert (a2["served"], a2["direct_sessions"]) == (2, 1)
    assert a2["utilisation"] == round((60 + 300 + 120) / (UNTIL - D - H), 4)
    assert a2["requests"] is None and a2["abandoned"] is None and a2["service_level_20s"] is None


def test_a_narrow_window_counts_only_its_requests_and_clips_seconds(
    db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lo, hi = D + 1 * H, D + 1 * H + 650  # c1 whole, c2 asked at +600 s, served at +630 s
    code, out, err = run(
        ["report", "--db", str(db), "--since", str(lo), "--until", str(hi), "--json"], capsys
    )
    assert code == 0, err
    t = json.loads(out)["totals"]
    check(t, expected([SCENARIO[0], SCENARIO[1]]))
    # c1's session: [lo+5, lo+105); c2's: [lo+630, hi) clipped to 20 s
    assert t["session_s"] == pytest.approx(100 + 20)
    assert t["utilisation"] == pytest.approx((100 + 20) / (650 * 2 + 650 * 1), abs=1e-4)


def test_local_days_follow_the_time_zone(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Asia/Shanghai is UTC+8: c5 (23:59:50 UTC) asked at 07:59:50 on 2 December there.
    code, out, err = run(
        [
            "report",
            "--db",
            str(db),
            "--since",
            "2026-12-01",
            "--until",
            "2026-12-03",
            "--tz",
            "Asia/Shanghai",
            "--json",
        ],
        capsys,
    )
    assert code == 0, err
    report = json.loads(out)
    shanghai = ZoneInfo("Asia/Shanghai")
    assert report["window"]["since"] == datetime(2026, 12, 1, tzinfo=shanghai).timestamp()
    assert (
        report["window"]["until"] == datetime(2026, 12, 4, tzinfo=shanghai).timestamp()
    )  # the end of the 3rd
    days = {d["date"]: d["requests"] for d in report["days"]}
    by_day: dict[str, int] = {}
    for r in SCENARIO:
        key = datetime.fromtimestamp(r.t, shanghai).date().isoformat()
        by_day[key] = by_day.get(key, 0) + 1
    assert {k: v for k, v in days.items() if v} == by_day
    assert by_day["2026-12-02"] == 3  # c5, c6 and c7 (03:00 and 04:00 UTC on the 2nd: 11:00, 12:00 there)
    hour_of_c5 = datetime.fromtimestamp(SCENARIO[4].t, shanghai).hour
    assert report["hours"][hour_of_c5]["requests"] == 1 and hour_of_c5 == 7


def test_default_window_runs_from_the_first_request_to_the_last_write(
    db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(["report", "--db", str(db), "--tz", "UTC", "--json"], capsys)
    assert code == 0, err
    report = json.loads(out)
    assert report["window"]["since"] == SCENARIO[0].t
    assert report["window"]["until"] == pytest.approx(DIRECT[2] + DIRECT[3])  # the direct session's end
    assert report["totals"]["requests"] == len(SCENARIO)


def test_text_output_and_html_file(db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        ["report", "--db", str(db), "--since", str(SINCE), "--until", str(UNTIL), "--tz", "UTC"], capsys
    )
    assert code == 0
    assert "2026-12-01" in out and "sales" in out and "a1@t" in out
    total_line = next(line for line in out.splitlines() if line.startswith("all "))
    assert total_line.split()[1:4] == ["7", "4", "2"]  # requests, served, abandoned

    page = tmp_path / "report.html"
    code, _, err = run(["report", "--db", str(db), "--tz", "UTC", "--html", str(page)], capsys)
    assert code == 0 and "wrote" in err
    html = page.read_text(encoding="utf-8")
    assert html.startswith("<!doctype html>") and html.count("<svg") >= 6
    assert "<script" not in html and "src=" not in html and "<link" not in html  # nothing to fetch
    assert "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "Per agent" in html and "a2@t" in html


def test_names_are_escaped_in_the_html(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "kf.db"
    with Store(path) as s:
        s.append_event(D, "agent_online", {"agent": "<i>x@t", "groups": ["<b>vip"], "max_sessions": 1})
        s.add_waiting(WaitingRow("o1", "<b>vip", 0, D + 10))
        s.record_session_start("o1", "<i>x@t", D + 15)
    page = tmp_path / "r.html"
    code, _, err = run(["report", "--db", str(path), "--html", str(page)], capsys)
    assert code == 0, err
    html = page.read_text(encoding="utf-8")
    assert "<b>vip" not in html and "&lt;b&gt;vip" in html
    assert "<i>x" not in html and "&lt;i&gt;x@t" in html


def test_a_live_database_is_read_without_blocking_its_writer(db: Path) -> None:
    with Store(db) as writer:
        # the daemon is in the middle of a write transaction: the report still reads the last commit
        with writer.transaction():
            writer.add_waiting(WaitingRow("late", "sales", 0, D + 29 * H))
            traffic = read_traffic(db, SINCE, UNTIL)
            assert "late" not in {c.openid for c in traffic.cases}
        # a reader holding its snapshot open does not stop the writer from committing
        reader = connect_readonly(db)
        try:
            reader.execute("BEGIN")
            before = reader.execute("SELECT count(*) FROM sessions").fetchone()[0]
            writer.add_waiting(WaitingRow("later", "sales", 0, D + 29 * H + 1))  # commits at once
            assert reader.execute("SELECT count(*) FROM sessions").fetchone()[0] == before  # its snapshot
            reader.execute("COMMIT")
            assert reader.execute("SELECT count(*) FROM sessions").fetchone()[0] == before + 1
            with pytest.raises(sqlite3.OperationalError, match="readonly"):
                reader.execute("DELETE FROM sessions")
        finally:
            reader.close()
    report = build_report(read_traffic(db, SINCE, UNTIL), tz=UTC)
    assert report["totals"]["waiting"] == 1 + 2  # c7, late, later


# ---------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--since", "2026-13-01"], "--since: expected YYYY-MM-DD"),
        (["--until", "yesterday"], "--until: expected YYYY-MM-DD"),
        (["--since", "2026-12-02", "--until", "2026-12-01"], "--since (2026-12-02) must be before --until"),
        (["--tz", "Mars/Olympus"], "--tz: unknown time zone 'Mars/Olympus'"),
        (["--since", "1", "--until", "999999999999"], "days long"),
    ],
)
def test_bad_arguments_exit_2_naming_them(
    db: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    code, out, err = run(["report", "--db", str(db), *args], capsys)
    assert code == 2 and out == ""
    assert message in err and err.startswith("kfrouter report: error:")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--threshold-s", "0"], "--threshold-s: expected a number of seconds > 0, got '0'"),
        (["--threshold-s", "nan"], "--threshold-s"),
        (["--json", "--html", "x.html"], "not allowed with argument"),
        (["--default-capacity", "0"], "--default-capacity: expected an integer 1..1000"),
    ],
)
def test_argparse_refusals_exit_2(
    db: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["report", "--db", str(db), *args])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_databases_that_cannot_be_read_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.db"
    code, _, err = run(["report", "--db", str(missing)], capsys)
    assert code == 2 and f"{missing}: no such file" in err
    assert not missing.exists()  # a read-only open never creates the file

    text = tmp_path / "notes.txt"
    text.write_text("hello, this is not SQLite\n" * 100)
    code, _, err = run(["report", "--db", str(text)], capsys)
    assert code == 2 and "not a kfrouter database" in err

    other = tmp_path / "other.db"
    raw = sqlite3.connect(other)
    raw.execute("CREATE TABLE t (x)")
    raw.execute("PRAGMA user_version = 1")
    raw.close()
    code, _, err = run(["report", "--db", str(other)], capsys)
    assert code == 2 and "missing table(s) agents, events, sessions" in err

    newer = tmp_path / "newer.db"
    Store(newer).close()
    raw = sqlite3.connect(newer)
    raw.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    raw.close()
    code, _, err = run(["report", "--db", str(newer)], capsys)
    assert code == 2 and "newer than this kfrouter reads" in err

    code, _, err = run(["report", "--db", str(tmp_path)], capsys)
    assert code == 2 and "not a file" in err


def test_a_malformed_input_log_entry_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "kf.db"
    with Store(path) as s:
        seq = s.append_event(D, "agent_online", {"agent": "a@t", "groups": "sales"})
    with pytest.raises(
        TrafficError, match=rf"input log entry {seq} \(agent_online\): 'groups' must be a list"
    ):
        read_traffic(path)
    code, _, err = run(["report", "--db", str(path)], capsys)
    assert code == 2 and f"entry {seq}" in err


def test_an_empty_database_reports_zeros(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "kf.db"
    Store(path).close()
    code, out, err = run(["report", "--db", str(path), "--json", "--tz", "UTC"], capsys)
    assert code == 0, err
    t = json.loads(out)["totals"]
    assert (t["requests"], t["served"], t["abandoned"], t["wait_p90_s"], t["service_level_20s"]) == (
        0,
        0,
        0,
        None,
        None,
    )


def test_until_as_a_date_includes_that_day() -> None:
    from kfrouter.router.report_cli import parse_when

    tz = ZoneInfo("Asia/Shanghai")
    start = datetime(2026, 12, 1, tzinfo=tz)
    assert parse_when("--since", "2026-12-01", tz) == start.timestamp()
    assert parse_when("--until", "2026-12-01", tz, end_of_day=True) == (start + timedelta(days=1)).timestamp()
    assert parse_when("--since", "2026-12-01T08:30", tz) == (start + timedelta(hours=8.5)).timestamp()
    assert (
        parse_when("--since", "2026-12-01T08:30+00:00", tz)
        == datetime(2026, 12, 1, 8, 30, tzinfo=UTC).timestamp()
    )
    assert parse_when("--since", "1796083200", tz) == 1796083200.0


def test_utilisation_counts_sessions_only_while_their_agent_is_online(tmp_path: Path) -> None:
    path = tmp_path / "kf.db"
    with Store(path) as s:
        s.append_event(D, "agent_online", {"agent": "a@t", "groups": ["g"], "max_sessions": 2})
        s.append_event(D + 100, "agent_offline", {"agent": "a@t"})
        s.append_event(D + 200, "agent_online", {"agent": "a@t", "groups": ["g"], "max_sessions": 2})
        for openid, asked, start, end in (
            ("o1", D + 40, D + 50, D + 150),  # runs 50 s past the agent going offline
            ("o2", D + 170, D + 180, D + 250),  # starts 20 s before the agent is back
            ("o3", D + 10, D + 20, D + 290),  # spans both online periods and the gap
        ):
            s.add_waiting(WaitingRow(openid, "g", 0, asked))
            s.record_session_start(openid, "a@t", start)
            s.record_session_end(openid, "a@t", end)
    report = build_report(read_traffic(path, D, D + 300), tz=UTC)
    busy = 50 + 50 + (80 + 90)  # o1 [50,100), o2 [200,250), o3 [20,100) and [200,290)
    for row in (report["totals"], report["agents"][0], report["groups"][0]):
        assert row["session_s"] == pytest.approx(100 + 70 + 270)
        assert row["busy_s"] == pytest.approx(busy)
        assert row["capacity_s"] == pytest.approx((100 + 100) * 2)
        assert row["utilisation"] == round(busy / 400, 4)
