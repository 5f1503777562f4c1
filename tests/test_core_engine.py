"""Table-style tests of the Engine's flows: reservations, releases, supersession, queue order, overflow,
capacity rules and bad input."""

from __future__ import annotations

import math

import pytest

from kfrouter.policies.registry import load_all, load_policy
from kfrouter.router.core import (
    AgentConfigured,
    AgentRemoved,
    AgentSessionsSeen,
    AgentsSeen,
    CloseFailed,
    CloseSession,
    ConfigError,
    CoreError,
    CreateFailed,
    CreateSession,
    CustomerLeft,
    CustomerRequested,
    CustomerState,
    Engine,
    EngineConfig,
    ReassignRequested,
    Route,
    SendText,
    SessionClosed,
    SessionCreated,
    SessionSwitched,
    UnknownAgentError,
    UnknownCustomerError,
)
from kfrouter.router.core.model import AgentRow


def make_engine(**kw: object) -> Engine:
    return Engine(EngineConfig(**kw), load_all())  # type: ignore[arg-type]


def online(engine: Engine, *agents: str, accepted: int = 0, auto: int = 0, now: float = 0.0) -> list[object]:
    rows = [AgentRow(kf_account=a, status=1, accepted_case=accepted, auto_accept=auto) for a in agents]
    return engine.handle(AgentsSeen(rows=rows, complete=False), now)  # type: ignore[return-value]


def creates(cmds: list[object]) -> list[tuple[str, str]]:
    return [(c.openid, c.kf_account) for c in cmds if isinstance(c, CreateSession)]


def test_request_reserves_and_confirmation_turns_into_session() -> None:
    e = make_engine()
    online(e, "a@x")
    assert creates(e.handle(CustomerRequested(openid="o1"), 1.0)) == [("o1", "a@x")]
    assert e.state("o1") is CustomerState.RESERVED
    view = e.agent("a@x")
    assert view is not None and (view.sessions, view.reserved) == (0, 1)
    e.handle(SessionCreated(openid="o1", kf_account="a@x", source="api"), 2.0)
    e.handle(SessionCreated(openid="o1", kf_account="a@x", source="push"), 2.1)  # the push confirms again
    view = e.agent("a@x")
    assert view is not None and (view.sessions, view.reserved) == (1, 0)
    assert e.state("o1") is CustomerState.IN_SESSION
    e.handle(SessionClosed(openid="o1", kf_account="a@x"), 3.0)
    assert e.state("o1") is CustomerState.GONE and e.gone_reason("o1") == "served"
    assert e.history("o1") == ("a@x", 3.0)
    e.check()


def test_customer_is_never_queued_twice() -> None:
    e = make_engine()
    e.handle(CustomerRequested(openid="o1"), 0.0)
    e.handle(CustomerRequested(openid="o1", source="waitlist"), 1.0)
    assert [w.openid for w in e.waiting()] == ["o1"]
    online(e, "a@x", now=2.0)
    assert e.state("o1") is CustomerState.RESERVED
    assert e.handle(CustomerRequested(openid="o1"), 3.0) == []


def test_failed_create_keeps_place_and_avoids_the_agent() -> None:
    e = make_engine(default_capacity=1, avoid_s=50.0)
    online(e, "a@x")
    e.handle(CustomerRequested(openid="first"), 1.0)
    e.handle(CustomerRequested(openid="second"), 2.0)
    online(e, "b@x", now=3.0)  # b takes "second"
    assert e.with_agent("second") == "b@x"
    out = e.handle(CreateFailed(openid="first", kf_account="a@x", errcode=-1), 4.0)
    # "first" must not go back to a@x; b@x is busy, so "first" waits at the head of the queue
    assert creates(out) == []
    assert [w.openid for w in e.waiting()] == ["first"]
    # a newcomer behind "first" gets a@x, which "first" avoids
    assert creates(e.handle(CustomerRequested(openid="third"), 5.0)) == [("third", "a@x")]
    e.handle(SessionCreated(openid="second", kf_account="b@x", source="api"), 5.5)
    e.handle(SessionCreated(openid="third", kf_account="a@x", source="api"), 6.0)
    assert e.next_deadline() == 4.0 + 50.0
    e.handle(SessionClosed(openid="third", kf_account="a@x"), 7.0)
    assert e.state("first") is CustomerState.WAITING  # a@x is free but still avoided
    assert creates(e.tick(54.0)) == [("first", "a@x")]  # the avoid period is over


def test_released_customer_goes_back_to_its_old_place() -> None:
    e = make_engine(default_capacity=1)
    online(e, "a@x")
    e.handle(CustomerRequested(openid="early"), 1.0)  # reserved with a
    e.handle(CustomerRequested(openid="late"), 2.0)  # waits
    e.handle(AgentsSeen(rows=[AgentRow(kf_account="a@x", status=0)], complete=True), 3.0)
    assert [w.openid for w in e.waiting()] == ["early", "late"]
    out = online(e, "b@x", now=4.0)
    assert creates(out) == [("early", "b@x")]


def test_65414_supersedes_the_reservation() -> None:
    e = make_engine()
    online(e, "a@x")
    e.handle(CustomerRequested(openid="o1"), 0.0)
    e.handle(CreateFailed(openid="o1", kf_account="a@x", errcode=65414), 1.0)
    assert e.state("o1") is CustomerState.GONE and e.gone_reason("o1") == "served_elsewhere"
    view = e.agent("a@x")
    assert view is not None and view.load == 0


def test_session_with_another_agent_supersedes_and_stale_failure_is_ignored() -> None:
    e = make_engine()
    online(e, "a@x", "b@x")
    e.handle(CustomerRequested(openid="o1"), 0.0)
    reserved_with = e.with_agent("o1")
    other = "b@x" if reserved_with == "a@x" else "a@x"
    e.handle(SessionCreated(openid="o1", kf_account=other, source="push"), 1.0)
    assert e.with_agent("o1") == other and e.state("o1") is CustomerState.IN_SESSION
    assert e.handle(CreateFailed(openid="o1", kf_account=reserved_with, errcode=65414), 2.0) == []
    loads = {v.kf_account: (v.sessions, v.reserved) for v in e.agents()}
    assert loads == {reserved_with: (0, 0), other: (1, 0)}


def test_reservation_times_out_and_is_released() -> None:
    e = make_engine(reservation_timeout_s=10.0)
    online(e, "a@x")
    e.handle(CustomerRequested(openid="o1"), 0.0)
    assert e.next_deadline() == 10.0
    assert e.tick(9.9) == []
    out = e.tick(10.0)
    assert creates(out) == []  # the only agent is avoided now
    assert e.state("o1") is CustomerState.WAITING
    view = e.agent("a@x")
    assert view is not None and view.reserved == 0


def test_priority_then_age() -> None:
    e = make_engine()
    for i, prio in enumerate([0, 2, 1, 2]):
        e.handle(CustomerRequested(openid=f"o{i}", priority=prio), float(i))
    assert [w.openid for w in e.waiting()] == ["o1", "o3", "o2", "o0"]
    assert e.position("o2") == 2 and e.position("nobody") is None


def test_overflow_after_wait() -> None:
    routes = {"vip": Route(policy="group-affinity", overflow=(("sales", 30.0),))}
    e = make_engine(routes=routes)
    e.handle(AgentConfigured(kf_account="s@x", groups=frozenset({"sales"})), 0.0)
    online(e, "s@x")
    e.handle(CustomerRequested(openid="v1", group="vip"), 0.0)
    assert e.state("v1") is CustomerState.WAITING
    assert e.next_deadline() == 30.0
    assert creates(e.tick(29.0)) == []
    assert creates(e.tick(30.0)) == [("v1", "s@x")]


def test_capacity_rules_local_then_auto_accept_then_default() -> None:
    e = make_engine(default_capacity=4)
    online(e, "a@x", auto=0)
    assert e.pool.capacity("a@x") == 4
    online(e, "a@x", auto=2)
    assert e.pool.capacity("a@x") == 2
    e.handle(AgentConfigured(kf_account="a@x", max_sessions=7), 0.0)
    assert e.pool.capacity("a@x") == 7
    e.handle(AgentConfigured(kf_account="a@x", clear_max_sessions=True), 0.0)
    assert e.pool.capacity("a@x") == 2


def test_snapshot_reconciles_load_with_accepted_case() -> None:
    e = make_engine(default_capacity=3)
    online(e, "a@x")
    e.handle(CustomerRequested(openid="o1"), 0.0)  # reserved
    online(e, "a@x", accepted=2)  # the agent accepted two customers in their own client
    view = e.agent("a@x")
    assert view is not None and (view.sessions, view.reserved, view.load) == (2, 1, 3)
    assert not view.free


def test_sessions_seen_adopts_and_closes() -> None:
    e = make_engine()
    online(e, "a@x")
    e.handle(SessionCreated(openid="known", kf_account="a@x"), 0.0)
    e.handle(AgentSessionsSeen(kf_account="a@x", openids=("manual",)), 1.0)
    assert e.sessions() == {"manual": "a@x"}
    assert e.gone_reason("known") == "served"
    view = e.agent("a@x")
    assert view is not None and view.sessions == 1


def test_a_close_older_than_the_session_list_does_not_drop_the_count() -> None:
    """A delayed kf_close_session of a session that had ended before the agent's sessions were listed (a
    new owner's start-up): the listed sessions stay counted; a close of a session counted but not known by
    name (accepted_case) still drops the count."""
    e = make_engine(default_capacity=3)
    online(e, "a@x")
    e.handle(AgentSessionsSeen(kf_account="a@x", openids=("s1", "s2")), 1.0)
    e.handle(SessionClosed(openid="ended-before", kf_account="a@x"), 2.0)
    view = e.agent("a@x")
    assert view is not None and view.sessions == 2
    online(e, "a@x", accepted=3)  # one more session, accepted in the agent's own client
    e.handle(SessionClosed(openid="unknown-but-counted", kf_account="a@x"), 3.0)
    view = e.agent("a@x")
    assert view is not None and view.sessions == 2


def test_closes_on_their_way_when_wechat_counted_fewer_do_not_drop_the_count_again() -> None:
    """WeChat's count taken while kf_close_session pushes are still on their way (the daemon's snapshot
    guard takes it after two polls; pushes may take seconds on a busy host): the engine still holds those
    sessions by name, WeChat no longer counts them. When the closes arrive, the count must not drop again,
    or the agent is given more customers than their capacity."""
    e = make_engine(default_capacity=3)
    online(e, "a@x")
    for o in ("s1", "s2", "s3"):
        e.handle(CustomerRequested(openid=o), 0.0)
        e.handle(SessionCreated(openid=o, kf_account="a@x", source="api"), 0.1)
    online(e, "a@x", accepted=0, now=1.0)  # all three ended at WeChat; their closes are delayed
    assert creates(e.handle(CustomerRequested(openid="n1"), 2.0)) == [("n1", "a@x")]
    assert creates(e.handle(CustomerRequested(openid="n2"), 2.0)) == [("n2", "a@x")]
    e.handle(SessionCreated(openid="n1", kf_account="a@x", source="api"), 2.1)
    e.handle(SessionClosed(openid="s1", kf_account="a@x"), 3.0)  # delayed
    e.handle(CloseFailed(openid="s2", kf_account="a@x", errcode=65413), 3.0)  # same as a close
    out = e.handle(CustomerRequested(openid="n3"), 3.0)
    assert creates(out) == [("n3", "a@x")]  # n1, n2, n3: the agent's three places
    e.handle(SessionClosed(openid="s3", kf_account="a@x"), 4.0)
    assert creates(e.handle(CustomerRequested(openid="n4"), 4.0)) == []  # full: n4 waits
    view = e.agent("a@x")
    assert view is not None and (view.sessions, view.reserved) == (1, 2)
    e.handle(SessionClosed(openid="n1", kf_account="a@x"), 5.0)  # one WeChat counted: a place frees
    assert e.state("n4") is CustomerState.RESERVED
    e.check()


def test_switch_moves_the_session() -> None:
    e = make_engine()
    online(e, "a@x", "b@x")
    e.handle(SessionCreated(openid="o1", kf_account="a@x"), 0.0)
    e.handle(SessionSwitched(openid="o1", from_account="a@x", to_account="b@x"), 1.0)
    assert e.sessions() == {"o1": "b@x"}
    assert {v.kf_account: v.sessions for v in e.agents()} == {"a@x": 0, "b@x": 1}
    assert e.history("o1") == ("b@x", 1.0)


def test_customer_left_releases_capacity() -> None:
    e = make_engine(default_capacity=1)
    online(e, "a@x")
    e.handle(CustomerRequested(openid="o1"), 0.0)
    e.handle(CustomerRequested(openid="o2"), 0.0)
    out = e.handle(CustomerLeft(openid="o1", reason="cancelled"), 1.0)
    assert creates(out) == [("o2", "a@x")]
    assert e.gone_reason("o1") == "left:cancelled"


def test_agent_removed_releases_reservations() -> None:
    e = make_engine()
    online(e, "a@x")
    e.handle(CustomerRequested(openid="o1"), 0.0)
    e.handle(AgentRemoved(kf_account="a@x"), 1.0)
    assert e.agent("a@x") is None and e.state("o1") is CustomerState.WAITING


def test_preferred_agent_is_waited_for_then_falls_back() -> None:
    e = make_engine(default_capacity=1, preferred_wait_s=60.0)
    online(e, "a@x", "b@x", accepted=0)
    e.handle(SessionCreated(openid="busy", kf_account="b@x"), 0.0)
    out = e.handle(CustomerRequested(openid="o1", preferred_agent="b@x"), 1.0)
    assert creates(out) == []  # a@x is free, but o1 wants b@x
    assert e.next_deadline() == 61.0
    assert creates(e.tick(61.0)) == [("o1", "a@x")]


def test_sticky_returns_customer_to_last_agent() -> None:
    e = Engine(EngineConfig(default_route=Route(policy="sticky")), {"sticky": load_policy("sticky")})
    online(e, "a@x", "b@x")
    e.remember("o1", "b@x", 0.0)
    e.handle(AgentConfigured(kf_account="a@x"), 0.0)
    assert creates(e.handle(CustomerRequested(openid="o1"), 10.0)) == [("o1", "b@x")]


def test_history_survives_a_visit_without_a_session() -> None:
    # served by b, back, gives up while waiting, back again: the sticky policy still knows b
    cfg = EngineConfig(default_capacity=1, default_route=Route(policy="sticky"))
    e = Engine(cfg, {"sticky": load_policy("sticky")})
    online(e, "b@x")
    e.handle(CustomerRequested(openid="o1"), 1.0)
    e.handle(SessionCreated(openid="o1", kf_account="b@x", source="api"), 1.0)
    e.handle(SessionClosed(openid="o1", kf_account="b@x"), 5.0)
    e.handle(CustomerRequested(openid="busy"), 6.0)  # b is taken: o1 waits on their second visit
    assert e.handle(CustomerRequested(openid="o1"), 7.0) == []
    assert e.history("o1") == ("b@x", 5.0)  # waiting: from the customer's own record
    e.handle(CustomerLeft(openid="o1", reason="patience"), 9.0)
    assert e.state("o1") is CustomerState.GONE and e.gone_reason("o1") == "left:patience"
    assert e.history("o1") == ("b@x", 5.0)
    assert e.handle(CustomerRequested(openid="o1"), 11.0) == []  # b still busy: waits for them
    view = e.waiting_view("o1", 11.0)
    assert view is not None and (view.last_agent, view.last_served_at) == ("b@x", 5.0)
    e.check()


def test_remember_keeps_the_latest_and_reaches_a_customer_present() -> None:
    e = make_engine()
    e.remember("o1", "a@x", 10.0)
    e.remember("o1", "b@x", 5.0)  # older: ignored
    assert e.history("o1") == ("a@x", 10.0)
    assert e.state("o1") is CustomerState.UNKNOWN  # history alone is not a departure
    e.handle(CustomerRequested(openid="o2"), 20.0)  # nobody online: o2 waits
    e.remember("o2", "b@x", 15.0)
    assert e.history("o2") == ("b@x", 15.0)
    e.check()


def test_tick_forgets_departures_older_than_the_sticky_window() -> None:
    e = make_engine(sticky_window_s=100.0)
    online(e, "a@x")
    for t, openid in ((0.0, "o1"), (10.0, "o2"), (60.0, "o1")):  # o1 twice: its first entry is replaced
        e.handle(CustomerRequested(openid=openid), t)
        e.handle(SessionCreated(openid=openid, kf_account="a@x", source="api"), t)
        e.handle(SessionClosed(openid=openid, kf_account="a@x"), t + 1.0)
    e.tick(105.0)  # o1's first departure (t=1) is past the window, its second (t=61) is not
    assert e.history("o1") == ("a@x", 61.0) and e.gone_reason("o1") == "served"
    e.tick(112.0)
    assert (e.state("o2"), e.gone_reason("o2"), e.history("o2")) == (CustomerState.UNKNOWN, None, None)
    assert e.history("o1") == ("a@x", 61.0)
    e.tick(162.0)
    assert e.history("o1") is None
    with pytest.raises(UnknownCustomerError):
        e.handle(CustomerLeft(openid="o1", reason="cancelled"), 163.0)


def test_departures_forget_what_is_older_than_the_sticky_window_without_a_tick() -> None:
    # the simulator calls tick() only at deadlines: with none pending, the departures themselves must keep
    # the table of customers who left to the window, or it holds everyone ever served
    e = make_engine(sticky_window_s=100.0)
    online(e, "a@x")
    assert e.next_deadline() == math.inf
    for i in range(50):  # one customer every 10 s, each served for 1 s
        openid, t = f"o{i}", 10.0 * i
        e.customer_requested(openid, None, 0, None, frozenset(), t)
        e.session_created(openid, "a@x", t)
        e.session_closed(openid, "a@x", t + 1.0)
        e.check()
    # the last departure was at 491: those who left before 391 are forgotten; o39, who left at 391, and
    # the ten after are not (the same rule as tick's: older than the window)
    assert [e.history(f"o{i}") is None for i in (37, 38, 39, 49)] == [True, True, False, False]
    assert e.gone_reason("o39") == "served" and e.state("o38") is CustomerState.UNKNOWN
    assert len(e._past) == len(e._past_order) == 11


def test_typed_calls_refuse_what_the_events_refuse() -> None:
    e = make_engine()
    with pytest.raises(CoreError, match="openid must be a non-empty string, got ''"):
        e.customer_requested("", None, 0, None, frozenset(), 0.0)
    with pytest.raises(CoreError, match="priority must be an integer, got True"):
        e.customer_requested("o1", None, True, None, frozenset(), 0.0)
    with pytest.raises(CoreError, match="preferred_agent must be a non-empty string"):
        e.customer_requested("o1", None, 0, "", frozenset(), 0.0)
    with pytest.raises(CoreError, match="kf_account must be a non-empty string"):
        e.session_created("o1", "", 0.0)
    with pytest.raises(CoreError, match="openid must be a non-empty string, got None"):
        e.session_closed(None, "a@x", 0.0)  # type: ignore[arg-type]
    assert e.state("o1") is CustomerState.UNKNOWN  # nothing half-done
    assert e.customer_requested("o1", None, 0, None, ["vip"], 0.0) == []  # type: ignore[arg-type]
    view = e.waiting_view("o1", 0.0)
    assert view is not None and view.tags == frozenset({"vip"})  # converted as the event converts


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda: CustomerRequested(openid=""), "openid"),
        (lambda: AgentConfigured(kf_account="a@x", max_sessions=-1), "max_sessions"),
        (lambda: AgentConfigured(kf_account="a@x", max_sessions=0), "max_sessions"),
        (lambda: AgentRow(kf_account="a@x", status=-1), "status"),
        (lambda: AgentRow(kf_account="a@x", status=1, accepted_case=-3), "accepted_case"),
        (lambda: AgentConfigured(kf_account="a@x", groups="sales"), "groups"),
        (lambda: EngineConfig(default_capacity=-2), "default_capacity"),
        (lambda: EngineConfig(reservation_timeout_s=0), "reservation_timeout_s"),
        (lambda: Route(overflow=(("sales", -5),)), r"overflow\[0\]"),
    ],
)
def test_bad_values_are_named(make: object, expected: str) -> None:
    with pytest.raises(CoreError, match=expected):
        make()  # type: ignore[operator]


def test_unknown_agent_and_customer_and_policy_are_named() -> None:
    e = make_engine()
    with pytest.raises(UnknownAgentError, match=r"'ghost@x'.*expected an agent"):
        e.handle(SessionClosed(openid="o1", kf_account="ghost@x"), 0.0)
    with pytest.raises(UnknownCustomerError, match="'nobody'"):
        e.handle(CustomerLeft(openid="nobody"), 0.0)
    with pytest.raises(ConfigError, match=r"unknown policy 'fastest'.*expected one of"):
        Engine(EngineConfig(default_route=Route(policy="fastest")), load_all())
    with pytest.raises(ConfigError, match=r"unknown policy 'fastest' \(installed: .*least-load"):
        load_policy("fastest")


def test_policy_picking_a_busy_agent_is_a_named_bug() -> None:
    class Greedy:
        name = "greedy"

        def pick(self, pool: object, customer: object, now: float) -> str:
            return "a@x"

    e = Engine(EngineConfig(default_route=Route(policy="greedy"), default_capacity=1), {"greedy": Greedy()})
    online(e, "a@x", "b@x")
    e.handle(CustomerRequested(openid="o1"), 0.0)
    with pytest.raises(CoreError, match="policy 'greedy' picked 'a@x'"):
        e.handle(CustomerRequested(openid="o2"), 0.0)


def test_idle_engine_has_no_deadline() -> None:
    assert make_engine().next_deadline() == math.inf


def closes(cmds: list[object]) -> list[tuple[str, str]]:
    return [(c.openid, c.kf_account) for c in cmds if isinstance(c, CloseSession)]


def test_agent_offline_reassigns_after_grace_close_first_then_create() -> None:
    routes = {"sales": Route(on_agent_offline="reassign", offline_grace_s=60.0)}
    e = make_engine(routes=routes, default_capacity=5)
    for kf in ("a@x", "b@x"):
        e.handle(AgentConfigured(kf_account=kf, groups=frozenset({"sales"})), 0.0)
    online(e, "a@x")
    for o in ("o1", "o2", "o3"):
        e.handle(CustomerRequested(openid=o, group="sales"), 1.0)
        e.handle(SessionCreated(openid=o, kf_account="a@x", source="api"), 1.0)
    e.handle(AgentsSeen(rows=[AgentRow(kf_account="b@x", status=1)], complete=True), 10.0)  # a@x offline
    assert e.next_deadline() == 70.0
    assert closes(e.tick(69.0)) == []
    out = e.tick(70.0)
    assert sorted(closes(out)) == [("o1", "a@x"), ("o2", "a@x"), ("o3", "a@x")]
    assert creates(out) == []  # nothing is created before WeChat confirms the close
    assert closes(e.tick(71.0)) == []  # asked once, not in a loop
    out = e.handle(SessionClosed(openid="o1", kf_account="a@x"), 72.0)
    assert creates(out) == [("o1", "b@x")]
    # a@x comes back in the middle: the remaining closes still go through, nobody gets two sessions
    online(e, "a@x", accepted=2, now=73.0)
    out = e.handle(CloseFailed(openid="o2", kf_account="a@x", errcode=65413), 74.0)  # already closed
    assert creates(out) == [("o2", "b@x")]
    e.handle(SessionClosed(openid="o3", kf_account="a@x"), 75.0)
    assert e.state("o3") is CustomerState.RESERVED
    e.check()


def test_keep_is_the_default_when_an_agent_goes_offline() -> None:
    e = make_engine()
    online(e, "a@x")
    e.handle(SessionCreated(openid="o1", kf_account="a@x"), 0.0)
    e.handle(AgentsSeen(rows=[], complete=True), 1.0)
    assert e.tick(1000.0) == [] and e.sessions() == {"o1": "a@x"}


def test_manual_reassign_to_a_named_agent() -> None:
    e = make_engine()
    online(e, "a@x", "b@x")
    e.handle(SessionCreated(openid="o1", kf_account="a@x"), 0.0)
    assert closes(e.handle(ReassignRequested(openid="o1", to_account="b@x"), 1.0)) == [("o1", "a@x")]
    assert creates(e.handle(SessionClosed(openid="o1", kf_account="a@x"), 2.0)) == [("o1", "b@x")]
    with pytest.raises(UnknownCustomerError, match="not in a session"):
        e.handle(ReassignRequested(openid="nobody"), 3.0)


def test_failed_close_is_retried_only_on_the_next_sweep() -> None:
    e = make_engine(stale_session_s=600.0, stale_message="closing", avoid_s=30.0)
    online(e, "a@x")
    e.handle(SessionCreated(openid="o1", kf_account="a@x"), 0.0)
    out = e.tick(600.0)
    assert closes(out) == [("o1", "a@x")]
    assert [c.text for c in out if isinstance(c, SendText)] == ["closing"]
    assert closes(e.handle(CloseFailed(openid="o1", kf_account="a@x", errcode=-1), 601.0)) == []
    assert closes(e.tick(631.0)) == [("o1", "a@x")]
    e.handle(SessionClosed(openid="o1", kf_account="a@x"), 632.0)
    assert e.gone_reason("o1") == "closed_stale"
