"""router.edges.store, the same contract on both backends: a real SQLite file and a database in a
throw-away PostgreSQL cluster (``pg_url``: skipped where no PostgreSQL exists, failed under CI=true).
Durability, the request lifecycle, atomicity, a model check and the trace export; backend-specific checks
(WAL, PRAGMAs, schema versions, unusable files) at the end. Group commit, leases, the shared inbox and
tokens: tests/test_store_shared.py."""

from __future__ import annotations

import io
import itertools
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kfrouter.router.edges.store import SCHEMA_VERSION, Store, StoreError, WaitingRow
from kfrouter.router.edges.store_pg import PgDatabase
from kfrouter.sim.trace import AgentOffline, AgentOnline, Arrival, read_trace

APPID = "wx_store_test"
BACKENDS = ["sqlite", "postgresql"]


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "kf.db"


@pytest.fixture(params=BACKENDS)
def target(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where a store lives: a SQLite file, or a new database of the throw-away PostgreSQL cluster."""
    if request.param == "sqlite":
        return str(tmp_path / "kf.db")
    return str(request.getfixturevalue("pg_url"))


def open_store(target: str, **kw: object) -> Store:
    return Store(target, appid=APPID, **kw)  # type: ignore[arg-type]


def waiting(
    openid: str, at: float, group: str | None = "general", priority: int = 0, **kw: object
) -> WaitingRow:
    return WaitingRow(openid=openid, group=group, priority=priority, arrived_at=at, **kw)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------- file


def test_state_survives_close_and_reopen(target: str) -> None:
    with open_store(target) as s:
        s.add_waiting(waiting("o-old", 10.0, text="人工", tags=("vip", "zh")))
        s.add_waiting(waiting("o-vip", 20.0, group="vip", priority=5, preferred="erin@shop"))
        s.add_waiting(waiting("o-new", 30.0))
        s.add_waiting(waiting("o-served", 5.0))
        s.add_reservation("o-old", "alice@shop", 11.0)
        s.record_session_start("o-served", "bob@shop", 6.0)
        s.set_agent("alice@shop", 1.0, groups=["general", "billing"], max_sessions=4, nickname="小王")
        s.set_agent("bob@shop", 2.0, paused=True)
    with open_store(target) as s:
        st_ = s.load_state()
    assert [w.openid for w in st_.waiting] == ["o-vip", "o-old", "o-new"]  # priority, then arrival
    assert st_.waiting[1] == waiting("o-old", 10.0, text="人工", tags=("vip", "zh"))
    assert st_.waiting[0].preferred == "erin@shop"
    assert [(r.openid, r.kf_account, r.created_at) for r in st_.reservations] == [
        ("o-old", "alice@shop", 11.0)
    ]
    assert st_.in_session == {"o-served": ("bob@shop", 6.0)}
    assert st_.history["o-served"].kf_account == "bob@shop"
    alice = st_.agents["alice@shop"]
    assert (alice.groups, alice.max_sessions, alice.paused, alice.nickname) == (
        ("billing", "general"),
        4,
        False,
        "小王",
    )
    bob = st_.agents["bob@shop"]
    assert (bob.groups, bob.max_sessions, bob.paused) == (None, None, True)


def test_history_window_limits_loaded_history(target: str) -> None:
    with open_store(target) as s:
        s.record_session_start("o1", "a@x", 100.0)
        s.record_session_start("o2", "b@x", 500.0)
        assert set(s.load_state(history_since=200.0).history) == {"o2"}


# ---------------------------------------------------------------------------------------------- lifecycle


def test_request_lifecycle_served(target: str) -> None:
    with open_store(target) as s:
        assert s.add_waiting(waiting("o1", 100.0))
        assert not s.add_waiting(waiting("o1", 101.0))  # already waiting: nothing written
        s.add_reservation("o1", "a@x", 102.0)
        assert s.end_reservation("o1") and not s.end_reservation("o1")
        s.add_reservation("o1", "b@x", 103.0)
        s.record_session_start("o1", "b@x", 104.0)
        s.record_session_start("o1", "b@x", 104.5)  # the push after the API answer: no change
        state = s.load_state()
        assert state.waiting == [] and state.reservations == [] and state.in_session == {"o1": ("b@x", 104.0)}
        s.record_session_switch("o1", "c@x", 150.0)
        assert s.history("o1") is not None and s.history("o1").kf_account == "c@x"  # type: ignore[union-attr]
        assert s.record_session_end("o1", "c@x", 200.0)
        assert not s.record_session_end("o1", "c@x", 201.0)
        [case] = s.session_log()
        assert (case.requested_at, case.started_at, case.ended_at, case.kf_account, case.outcome) == (
            100.0,
            104.0,
            200.0,
            "c@x",
            "served",
        )
        h = s.history("o1")
        assert h is not None and (h.kf_account, h.at) == ("c@x", 200.0)


def test_request_lifecycle_left(target: str) -> None:
    with open_store(target) as s:
        s.add_waiting(waiting("o1", 100.0))
        s.add_reservation("o1", "a@x", 101.0)
        assert s.remove_waiting("o1", 130.0, "cancelled")
        assert not s.remove_waiting("o1", 131.0)
        assert s.load_state().reservations == []
        [case] = s.session_log()
        assert (case.outcome, case.ended_at, case.started_at) == ("cancelled", 130.0, None)
        with pytest.raises(StoreError, match="record_session_end"):
            s.remove_waiting("o1", 132.0, "served")
        # a returning customer opens a new case
        s.add_waiting(waiting("o1", 300.0))
        assert [c.outcome for c in s.session_log()] == ["cancelled", None]


def test_a_new_request_closes_a_session_whose_close_we_missed(target: str) -> None:
    with open_store(target) as s:
        s.add_waiting(waiting("o1", 100.0))
        s.record_session_start("o1", "a@x", 110.0)
        s.add_waiting(waiting("o1", 500.0))  # WeChat only pushes to us outside a session: it ended
        first, second = s.session_log()
        assert (first.outcome, first.ended_at) == ("served", 500.0)
        assert second.outcome is None and second.requested_at == 500.0


def test_session_without_a_request_is_logged(target: str) -> None:
    with open_store(target) as s:
        s.record_session_start("o1", "a@x", 50.0)  # agent-initiated or from WeChat's own queue
        assert s.record_session_end("o1", "a@x", 80.0)
        [case] = s.session_log()
        assert (case.requested_at, case.started_at, case.outcome) == (50.0, 50.0, "served")


def test_set_agent_changes_only_given_fields(target: str) -> None:
    with open_store(target) as s:
        s.set_agent("a@x", 1.0, groups=["g1"], max_sessions=3, tags=["zh"])
        s.set_agent("a@x", 2.0, paused=True)
        a = s.agents()["a@x"]
        assert (a.groups, a.max_sessions, a.paused, a.tags, a.updated_at) == (("g1",), 3, True, ("zh",), 2.0)
        s.set_agent("a@x", 3.0, clear_max_sessions=True, paused=False)
        a = s.agents()["a@x"]
        assert (a.max_sessions, a.paused, a.groups) == (None, False, ("g1",))
        with pytest.raises(StoreError, match="max_sessions"):
            s.set_agent("a@x", 4.0, max_sessions=0)
        assert s.remove_agent("a@x") and s.agents() == {}


def test_processed_push_keys_and_pruning(target: str) -> None:
    with open_store(target) as s:
        assert s.claim_push("msg:1", 100.0)
        assert not s.claim_push("msg:1", 104.0)  # WeChat's retry
        assert s.claim_push("evt:o1:99:CLICK", 120.0)
        assert s.prune_processed(before=110.0) == 1
        assert not s.is_processed("msg:1") and s.is_processed("evt:o1:99:CLICK")


def test_event_log(target: str) -> None:
    with open_store(target) as s:
        seq1 = s.append_event(10.0, "push", {"openid": "o1", "text": "人工"})
        seq2 = s.append_event(20.0, "agent_online", {"agent": "a@x", "groups": [], "max_sessions": 2})
        assert seq2 > seq1
        assert [e[2] for e in s.events()] == ["push", "agent_online"]
        assert s.events(since=15.0) == [
            (seq2, 20.0, "agent_online", {"agent": "a@x", "groups": [], "max_sessions": 2})
        ]
        assert [e[0] for e in s.events(kinds=["push"])] == [seq1]
        with pytest.raises(StoreError, match="not JSON-serialisable"):
            s.append_event(30.0, "push", {"x": object()})
        assert s.prune_events(before=15.0) == 1 and len(s.events()) == 1


@pytest.mark.parametrize(
    ("call", "fragment"),
    [
        (lambda s: s.add_waiting(waiting("", 1.0)), "openid must be a non-empty string"),
        (lambda s: s.add_waiting(waiting("o", float("nan"))), "arrived_at must be a finite number"),
        (lambda s: s.add_waiting(waiting("o", 1.0, priority=True)), "priority must be an integer"),
        (lambda s: s.add_waiting(waiting("o", 1.0, tags="vip")), "tags must be a collection"),
        (lambda s: s.add_reservation("o", "", 1.0), "kf_account must be a non-empty string"),
        (lambda s: s.claim_push("k", float("inf")), "answered_at must be a finite number"),
        (lambda s: s.append_event(1.0, "", {}), "kind must be a non-empty string"),
    ],
)
def test_invalid_arguments_are_refused_by_name(target: str, call: object, fragment: str) -> None:
    with open_store(target) as s:
        with pytest.raises(StoreError, match=fragment):
            call(s)  # type: ignore[operator]
        assert s.load_state().waiting == []


# ---------------------------------------------------------------------------------------------- atomicity


def test_a_failed_transaction_leaves_nothing(target: str) -> None:
    with open_store(target) as s:
        with pytest.raises(RuntimeError), s.transaction():
            assert s.claim_push("msg:1", 1.0)
            s.add_waiting(waiting("o1", 1.0))
            raise RuntimeError("crash while handling the push")
        assert not s.is_processed("msg:1") and s.load_state().waiting == [] and s.session_log() == []


def test_nested_transaction_is_a_savepoint(target: str) -> None:
    with open_store(target) as s:
        with s.transaction():
            s.add_waiting(waiting("o1", 1.0))
            with pytest.raises(RuntimeError), s.transaction():
                s.add_waiting(waiting("o2", 2.0))
                raise RuntimeError
            s.add_waiting(waiting("o3", 3.0))
        assert [w.openid for w in s.load_state().waiting] == ["o1", "o3"]


def test_commit_is_visible_to_another_connection_before_close(target: str) -> None:
    """A write committed by the daemon is on disk for any other process, with the daemon still running
    (and never closed: the moment of a crash); an open transaction is not."""
    writer = open_store(target)
    writer.add_waiting(waiting("o1", 1.0))
    with writer.transaction():
        writer.add_waiting(waiting("o2", 2.0))
        other = open_store(target)
        assert [w.openid for w in other.load_state().waiting] == ["o1"]
    assert [w.openid for w in other.load_state().waiting] == ["o1", "o2"]
    other.close()
    writer.close()


def test_threads_share_one_store(target: str) -> None:
    with open_store(target) as s:
        errors: list[BaseException] = []

        def work(k: int) -> None:
            try:
                for i in range(40):
                    with s.transaction():
                        s.claim_push(f"msg:{k}:{i}", float(i))
                        s.add_waiting(waiting(f"o{k}-{i}", float(i)))
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert len(s.load_state().waiting) == 160 and len(s.session_log()) == 160


# ---------------------------------------------------------------------------------------------- model check


OPS = st.lists(
    st.tuples(
        st.sampled_from(["add", "leave", "reserve", "unreserve", "start", "end"]),
        st.sampled_from(["o1", "o2", "o3"]),
        st.sampled_from(["a@x", "b@x"]),
    ),
    max_size=40,
)


@pytest.fixture(params=BACKENDS)
def fresh_store(request: pytest.FixtureRequest) -> Iterator[Callable[[], Store]]:
    """A new, empty store per call: SQLite in memory, or a new account (schema) of one PostgreSQL database."""
    if request.param == "sqlite":
        yield lambda: Store(":memory:")
        return
    database = PgDatabase(request.getfixturevalue("pg_url"))
    names = itertools.count(1)
    try:
        yield lambda: Store(database, appid=f"model{next(names)}")
    finally:
        database.close()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=OPS)
def test_store_matches_a_simple_model(
    fresh_store: Callable[[], Store], ops: list[tuple[str, str, str]]
) -> None:
    """Any sequence of lifecycle calls keeps the store equal to a naive model of waiting / in session."""
    s = fresh_store()
    waiting_m: set[str] = set()
    reserved: dict[str, str] = {}
    session: dict[str, str] = {}
    served = 0
    for i, (op, openid, kf) in enumerate(ops):
        t = float(i)
        if op == "add":
            assert s.add_waiting(waiting(openid, t)) == (openid not in waiting_m)
            if openid not in waiting_m and session.pop(openid, None) is not None:
                served += 1  # the missed close
            waiting_m.add(openid)
        elif op == "leave":
            assert s.remove_waiting(openid, t) == (openid in waiting_m)
            waiting_m.discard(openid)
            reserved.pop(openid, None)
        elif op == "reserve":
            s.add_reservation(openid, kf, t)
            reserved[openid] = kf
        elif op == "unreserve":
            assert s.end_reservation(openid) == (openid in reserved)
            reserved.pop(openid, None)
        elif op == "start":
            s.record_session_start(openid, kf, t)
            waiting_m.discard(openid)
            reserved.pop(openid, None)
            session[openid] = kf
        else:
            assert s.record_session_end(openid, kf, t) == (openid in session)
            served += session.pop(openid, None) is not None
    state = s.load_state()
    assert {w.openid for w in state.waiting} == waiting_m
    assert {r.openid: r.kf_account for r in state.reservations} == reserved
    assert {o: v[0] for o, v in state.in_session.items()} == session
    assert sum(c.outcome == "served" for c in s.session_log()) == served
    open_cases = [c.openid for c in s.session_log() if c.outcome is None]
    assert len(open_cases) == len(set(open_cases))  # at most one open case per customer
    s.close()


# ---------------------------------------------------------------------------------------------- trace


def _recorded(s: Store) -> None:
    s.append_event(900.0, "agent_online", {"agent": "a@x", "groups": ["general"], "max_sessions": 2})
    s.append_event(950.0, "agent_online", {"agent": "gone@x", "groups": [], "max_sessions": 1})
    s.append_event(960.0, "agent_offline", {"agent": "gone@x"})
    s.set_agent("b@x", 900.0, groups=["vip"], max_sessions=4)
    # served by a@x: waited 5, served 120
    s.add_waiting(waiting("o1", 1000.0, text="人工", tags=("vip",), preferred="a@x"))
    s.record_session_start("o1", "a@x", 1005.0)
    s.record_session_end("o1", "a@x", 1125.0)
    # served by b@x (no agent event: described from the agents table), service 60
    s.add_waiting(waiting("o2", 1010.0, group="vip", priority=3))
    s.record_session_start("o2", "b@x", 1020.0)
    s.record_session_end("o2", "b@x", 1080.0)
    # left after 45 s
    s.add_waiting(waiting("o3", 1030.0, group=None))
    s.remove_waiting("o3", 1075.0, "patience")
    s.append_event(1100.0, "agent_offline", {"agent": "a@x"})
    # still waiting / still in session: skipped
    s.add_waiting(waiting("o4", 1200.0))
    s.add_waiting(waiting("o5", 1210.0))
    s.record_session_start("o5", "a@x", 1220.0)


def test_export_trace_is_read_back_by_the_simulator(target: str) -> None:
    with open_store(target) as s:
        _recorded(s)
        buf = io.StringIO()
        stats = s.export_trace(buf, name="shop")
    assert (stats.arrivals, stats.served, stats.left, stats.open) == (3, 2, 1, 2)
    header, records, skipped = read_trace(buf.getvalue().splitlines())
    assert header.name == "shop" and header.created_by == "kfrouter trace export" and skipped == {}
    assert header.meta["recorded_from"] == 900.0
    arrivals = {r.customer: r for r in records if isinstance(r, Arrival)}
    assert arrivals["o1"] == Arrival(
        t=100.0,
        customer="o1",
        service_s=120.0,
        group="general",
        priority=0,
        patience_s=None,
        text="人工",
        preferred_agent="a@x",
        tags=("vip",),
    )
    assert (arrivals["o2"].t, arrivals["o2"].service_s, arrivals["o2"].group, arrivals["o2"].priority) == (
        110.0,
        60.0,
        "vip",
        3,
    )
    assert arrivals["o2"].patience_s is None
    assert (arrivals["o3"].patience_s, arrivals["o3"].service_s, arrivals["o3"].group) == (45.0, 90.0, None)
    assert "o4" not in arrivals and "o5" not in arrivals
    agents = [r for r in records if isinstance(r, AgentOnline | AgentOffline)]
    assert agents == [
        AgentOnline(t=0.0, agent="a@x", groups=("general",), max_sessions=2),
        AgentOnline(t=0.0, agent="b@x", groups=("vip",), max_sessions=4),
        AgentOnline(t=50.0, agent="gone@x", groups=(), max_sessions=1),
        AgentOffline(t=60.0, agent="gone@x"),
        AgentOffline(t=200.0, agent="a@x"),
    ]
    assert all(a.t <= b.t for a, b in itertools.pairwise(records))
    marked = [line for line in buf.getvalue().splitlines() if '"x-imputed_service": true' in line]
    assert len(marked) == 1 and '"customer": "o3"' in marked[0]


def test_export_since_folds_earlier_agent_state(target: str) -> None:
    with open_store(target) as s:
        _recorded(s)
        buf = io.StringIO()
        stats = s.export_trace(buf, since=1008.0, default_capacity=2)
    _header, records, _ = read_trace(buf.getvalue().splitlines())
    assert stats.arrivals == 2  # o2 (served), o3 (left); o1 arrived before `since`
    arrivals = [r for r in records if isinstance(r, Arrival)]
    assert [(a.customer, a.t) for a in arrivals] == [("o2", 2.0), ("o3", 22.0)]
    # a@x was online before `since` (t = 0), gone@x came and went before it (absent); b@x from the table
    online0 = sorted(r.agent for r in records if isinstance(r, AgentOnline) and r.t == 0.0)
    assert online0 == ["a@x", "b@x"]
    assert not any(getattr(r, "agent", None) == "gone@x" for r in records)
    assert arrivals[1].service_s == 60.0  # the median of the served customers in this window


def test_export_of_an_empty_store_is_a_valid_trace(target: str) -> None:
    with open_store(target) as s:
        buf = io.StringIO()
        stats = s.export_trace(buf)
    header, records, _ = read_trace(buf.getvalue().splitlines())
    assert header.version == 1 and records == [] and stats.arrivals == 0


def test_export_refuses_a_malformed_agent_event(target: str) -> None:
    with open_store(target) as s:
        seq = s.append_event(1.0, "agent_online", {"agent": "a@x", "groups": "general"})
        with pytest.raises(StoreError, match=f"event {seq} \\(agent_online\\): 'groups'"):
            s.export_trace(io.StringIO())


def test_unusable_files_are_store_errors(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="cannot open the database"):
        Store(tmp_path / "missing-dir" / "kf.db")
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database" * 200)
    with pytest.raises(StoreError, match="not a usable kfrouter database"):
        Store(junk)


# ---------------------------------------------------------------------------------------------- SQLite


def test_new_file_is_wal_full_and_at_the_current_schema(db: Path) -> None:
    with Store(db) as s:
        assert s.pragma("journal_mode") == "wal"
        assert s.pragma("synchronous") == 2  # FULL
        assert s.schema_version == SCHEMA_VERSION
    with Store(db, synchronous="NORMAL") as s:
        assert s.pragma("synchronous") == 1 and s.schema_version == SCHEMA_VERSION


def test_bad_options_and_newer_schema_are_refused(db: Path) -> None:
    with pytest.raises(StoreError, match="synchronous must be one of"):
        Store(db, synchronous="OFF")
    raw = sqlite3.connect(db)
    raw.execute(f"PRAGMA user_version={SCHEMA_VERSION + 5}")
    raw.close()
    with pytest.raises(StoreError, match=f"schema version {SCHEMA_VERSION + 5} is newer"):
        Store(db)
