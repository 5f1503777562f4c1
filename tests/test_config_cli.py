"""``kfrouter check-config`` and ``kfrouter trace export`` through ``router.cli.main``."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from kfrouter.router.cli import main
from kfrouter.router.edges.store import Store, WaitingRow
from kfrouter.sim.trace import Arrival, read_trace

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "kfrouter.toml"
SECRET_VARS = (
    "KFROUTER_APPID",
    "KFROUTER_SECRET",
    "KFROUTER_TOKEN",
    "KFROUTER_AES_KEY",
    "KFROUTER_ADMIN_TOKEN",
    "KFROUTER_STORE_URL",
)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in SECRET_VARS:
        monkeypatch.delenv(var, raising=False)


def test_check_config_ok(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", str(EXAMPLE)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("ok: 3 groups, 5 agents, 3 routing rules, 2 listed customers; mode keywords")
    assert "policies: group-affinity, least-load, sticky" in out and "secrets from the environment" not in out


def test_check_config_names_secrets_from_env(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KFROUTER_SECRET", "prod-secret-value")
    assert main(["check-config", str(EXAMPLE)]) == 0
    out = capsys.readouterr().out
    assert "secrets from the environment: KFROUTER_SECRET" in out and "prod-secret-value" not in out


def test_check_config_error_exits_2_with_key_paths(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(
        EXAMPLE.read_text(encoding="utf-8").replace(
            '{ group = "general", after_s = 60.0 }', '{ group = "general", after_s = -5 }'
        ),
        encoding="utf-8",
    )
    assert main(["check-config", str(bad)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.strip() == f"{bad}: groups[1].overflow[0].after_s: must be >= 0, got -5"


def test_check_config_missing_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", str(tmp_path / "nope.toml")]) == 2
    assert "cannot read the file" in capsys.readouterr().err


def _db(tmp_path: Path) -> Path:
    path = tmp_path / "live.db"
    with Store(path) as s:
        s.append_event(1_700_000_000.0, "agent_online", {"agent": "a@x", "groups": ["g"], "max_sessions": 2})
        s.add_waiting(WaitingRow(openid="o1", group="g", priority=0, arrived_at=1_700_000_010.0, text="人工"))
        s.record_session_start("o1", "a@x", 1_700_000_020.0)
        s.record_session_end("o1", "a@x", 1_700_000_200.0)
        s.add_waiting(WaitingRow(openid="o2", group="g", priority=0, arrived_at=1_700_003_600.0))
        s.remove_waiting("o2", 1_700_003_630.0, "cancelled")
    return path


def test_trace_export_writes_a_readable_trace(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "trace.jsonl"
    assert main(["trace", "export", "--db", str(_db(tmp_path)), "--out", str(out), "--name", "live"]) == 0
    assert "wrote 2 arrivals (1 served, 1 left), 1 agent lines" in capsys.readouterr().err
    header, records, _ = read_trace(out)
    assert header.name == "live"
    arrivals = [r for r in records if isinstance(r, Arrival)]
    assert [(a.customer, a.t, a.service_s, a.patience_s) for a in arrivals] == [
        ("o1", 10.0, 180.0, None),
        ("o2", 3600.0, 180.0, 30.0),
    ]


@pytest.mark.parametrize("since", ["1700001000", "2023-11-14T22:30:00+00:00", "2023-11-14T22:30:00"])
def test_trace_export_since(tmp_path: Path, capsys: pytest.CaptureFixture[str], since: str) -> None:
    db = _db(tmp_path)
    capsys.readouterr()
    assert main(["trace", "export", "--db", str(db), "--out", "-", "--since", since]) == 0
    _header, records, _ = read_trace(io.StringIO(capsys.readouterr().out).read().splitlines())
    # 2023-11-14T22:30:00Z is 1700001000; only o2 (arrived 2600 s later) remains
    assert [(r.customer, r.t) for r in records if isinstance(r, Arrival)] == [("o2", 2600.0)]


def test_trace_export_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(["trace", "export", "--db", str(tmp_path / "none.db"), "--out", str(tmp_path / "t.jsonl")]) == 2
    )
    assert "no such database file" in capsys.readouterr().err
    not_db = tmp_path / "junk.db"
    not_db.write_bytes(b"this is not sqlite" * 100)
    assert main(["trace", "export", "--db", str(not_db), "--out", str(tmp_path / "t.jsonl")]) == 2
    assert str(not_db) in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["trace", "export", "--db", str(not_db), "--out", "-", "--since", "yesterday"])
    assert info.value.code == 2


def test_trace_export_from_postgresql(
    pg_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with Store(pg_url, appid="wx_export") as s:
        s.add_waiting(WaitingRow(openid="o1", group="g", priority=0, arrived_at=1_700_000_010.0))
        s.record_session_start("o1", "a@x", 1_700_000_020.0)
        s.record_session_end("o1", "a@x", 1_700_000_200.0)
    out = tmp_path / "pg.jsonl"
    assert main(["trace", "export", "--db", pg_url, "--out", str(out)]) == 2
    assert "--appid is needed" in capsys.readouterr().err
    assert main(["trace", "export", "--db", pg_url, "--appid", "wx_export", "--out", str(out)]) == 0
    assert "wrote 1 arrivals (1 served, 0 left)" in capsys.readouterr().err
    _header, records, _ = read_trace(out)
    assert [(r.customer, r.service_s) for r in records if isinstance(r, Arrival)] == [("o1", 180.0)]
