"""Hypothesis state machine over the Desk (engine, estimator, notifier), beside a naive model of WeChat.

The machine plays WeChat: it answers the CreateSession commands (success or failure), closes sessions,
flips agents on and off line, and lets customers arrive (each arrival is a message: WeChat's window
opens) and give up, while time moves on. After every step the invariants of the routing core are checked:

- the engine's own ``check()``, nobody served twice, no idle agent while an eligible customer waits,
  queue order, every customer accounted for;
- a twin Desk, given the same inputs through the typed calls (``customer_requested``,
  ``session_created``, ``session_closed``) where there is one, answers with the same commands and
  shows the same state;
- the facts tell the whole story: a customer's state rebuilt from the facts alone equals the engine's;
- no customer is sent more texts than the notifier's budget (per visit, per window, inside the window);
- every waiting customer has an estimate, and their arrival estimate is remembered for scoring.
"""

from __future__ import annotations

import hypothesis.strategies as st
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from kfrouter.policies.registry import load_all
from kfrouter.router.core import (
    AgentConfigured,
    AgentsSeen,
    CloseFailed,
    CloseSession,
    CreateFailed,
    CreateSession,
    CustomerLeft,
    CustomerRequested,
    CustomerState,
    Engine,
    EngineConfig,
    ReassignRequested,
    Route,
    SessionClosed,
    SessionCreated,
)
from kfrouter.router.core.commands import SendText
from kfrouter.router.core.desk import Desk
from kfrouter.router.core.estimate import WaitEstimator
from kfrouter.router.core.facts import Assigned, Left, Queued, Released, Requeued, Reserved, SessionEnded
from kfrouter.router.core.model import AgentRow
from kfrouter.router.core.notify import Notifier, NotifyConfig

AGENTS = [f"a{i}@shop" for i in range(5)]
AGENT_GROUPS = {
    "a0@shop": {"sales"},
    "a1@shop": {"sales"},
    "a2@shop": {"support"},
    "a3@shop": {"support", "sales"},
    "a4@shop": {"vip"},
}
CUSTOMERS = [f"c{i}" for i in range(25)]
GROUPS = [None, "sales", "support", "vip"]
FAIL_CODES = [-1, -2, 65415, 45009]
BUDGET = NotifyConfig(max_per_customer=3, window_quota=5, reserve_for_agent=1, eta_change_s=1.0)


def desk_for(config: EngineConfig) -> Desk:
    return Desk(Engine(config, load_all()), estimator=WaitEstimator(), notifier=Notifier(BUDGET))


class FactLedger:
    """Customers' states rebuilt from the facts alone (router/core/facts.py's rules)."""

    def __init__(self) -> None:
        self.state: dict[str, CustomerState] = {}
        self.moved: set[str] = set()  # customers routed again in this visit (Requeued)

    def read(self, facts: list[object]) -> None:
        for f in facts:
            if isinstance(f, Queued):
                assert self.state.get(f.openid) in (None, CustomerState.GONE), f
                self.state[f.openid] = CustomerState.WAITING
                self.moved.discard(f.openid)
            elif isinstance(f, Reserved):
                assert self.state.get(f.openid) is CustomerState.WAITING, f
                self.state[f.openid] = CustomerState.RESERVED
            elif isinstance(f, Released):
                assert self.state.get(f.openid) is CustomerState.RESERVED, f
                self.state[f.openid] = CustomerState.WAITING
            elif isinstance(f, Assigned):
                self.state[f.openid] = CustomerState.IN_SESSION
            elif isinstance(f, SessionEnded):
                assert self.state.get(f.openid) is CustomerState.IN_SESSION, f
            elif isinstance(f, Requeued):
                self.state[f.openid] = CustomerState.WAITING
                self.moved.add(f.openid)
            elif isinstance(f, Left):
                self.state[f.openid] = CustomerState.GONE


class EngineMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.truth: dict[str, set[str]] = {a: set() for a in AGENTS}  # WeChat's sessions per agent
        self.online: dict[str, bool] = dict.fromkeys(AGENTS, True)
        self.pending: list[CreateSession] = []
        self.closing: list[CloseSession] = []
        self.requested: set[str] = set()
        self.policy_name = "least-load"
        self.engine: Engine | None = None
        self.twin: Engine | None = None
        self.desk: Desk | None = None
        self.twin_desk: Desk | None = None
        self.last_commands: list[object] = []
        self.ledger = FactLedger()
        # texts per customer: (this visit's, this window's, when their last message opened the window)
        self.texts: dict[str, list[float]] = {}

    @rule(policy=st.sampled_from(["least-load", "group-affinity", "round-robin", "sticky", "best-fit"]))
    @precondition(lambda self: self.engine is None)
    def start(self, policy: str) -> None:
        self.policy_name = policy
        routes = {
            "sales": Route(policy=policy, overflow=(("support", 30.0),)),
            "support": Route(policy=policy, on_agent_offline="reassign", offline_grace_s=15.0),
            "vip": Route(policy=policy, overflow=(("sales", 10.0), ("support", 20.0))),
        }
        config = EngineConfig(default_capacity=2, routes=routes, default_route=Route(policy=policy))
        self.desk, self.twin_desk = desk_for(config), desk_for(config)
        self.engine, self.twin = self.desk.engine, self.twin_desk.engine
        for a in AGENTS:
            self.apply(AgentConfigured(kf_account=a, groups=frozenset(AGENT_GROUPS[a])))
        self.apply(self.snapshot())

    # -------------------------------------------------------------- helpers

    def snapshot(self) -> AgentsSeen:
        rows = [
            AgentRow(kf_account=a, status=1, accepted_case=len(self.truth[a]), auto_accept=0)
            for a in AGENTS
            if self.online[a]
        ]
        return AgentsSeen(rows=rows, complete=True)

    def apply(self, event: object) -> None:
        assert self.desk is not None and self.twin_desk is not None
        step = self.desk.handle(event, self.now)  # type: ignore[arg-type]
        assert self.typed(self.twin_desk, event) == step.commands
        assert self.twin_desk.facts == step.facts
        self.record(step.commands, step.facts)  # type: ignore[arg-type]

    def typed(self, desk: Desk, event: object) -> list[object]:
        """``event`` through the Desk's typed call for its type, if it has one."""
        now = self.now
        if isinstance(event, CustomerRequested) and event.arrived_at is None:
            e = event
            return desk.customer_requested(e.openid, e.group, e.priority, e.preferred_agent, e.tags, now)  # type: ignore[return-value]
        if isinstance(event, SessionCreated):
            return desk.session_created(event.openid, event.kf_account, now)  # type: ignore[return-value]
        if isinstance(event, SessionClosed):
            return desk.session_closed(event.openid, event.kf_account, now)  # type: ignore[return-value]
        return desk.handle(event, now).commands  # type: ignore[arg-type,return-value]

    def record(self, out: list[object], facts: list[object]) -> None:
        assert self.engine is not None
        self.ledger.read(facts)
        for f in facts:
            if isinstance(f, Requeued):  # moved: a new waiting spell, with a quota of its own
                self.texts[f.openid][0] = 0
        self.last_commands = out
        for c in out:
            if isinstance(c, SendText):
                visit, window, opened = self.texts[c.openid]
                self.texts[c.openid] = [visit + 1, window + 1, opened]
                # the budget: inside the window, within the visit's and the window's quota
                assert self.now - opened < BUDGET.window_s, c
                assert visit + 1 <= BUDGET.max_per_customer, (c, visit + 1)
                assert window + 1 <= BUDGET.per_window, (c, window + 1)
            if isinstance(c, CreateSession):
                view = self.engine.agent(c.kf_account)
                assert view is not None
                # the engine only ever assigns within capacity (the reservation is already counted)
                assert 0 <= view.load <= view.capacity, view
                assert view.online and not view.paused
                self.pending.append(c)
            elif isinstance(c, CloseSession):
                self.closing.append(c)

    def who_serves(self, openid: str) -> str | None:
        for a, s in self.truth.items():
            if openid in s:
                return a
        return None

    # -------------------------------------------------------------- rules

    @rule(
        customer=st.sampled_from(CUSTOMERS),
        group=st.sampled_from(GROUPS),
        priority=st.integers(0, 2),
        preferred=st.one_of(st.none(), st.none(), st.sampled_from(AGENTS)),
    )
    @precondition(lambda self: self.engine is not None)
    def arrive(self, customer: str, group: str | None, priority: int, preferred: str | None) -> None:
        if self.who_serves(customer) is not None:
            return  # in a session: their messages go to the agent, not to us
        self.requested.add(customer)
        assert self.desk is not None and self.twin_desk is not None
        for desk in (self.desk, self.twin_desk):
            desk.on_user_message(customer, self.now)  # they wrote: WeChat's window opens
        visit = self.texts.get(customer, [0, 0, self.now])[0]
        if self.engine is not None and self.engine.state(customer) not in (
            CustomerState.WAITING,
            CustomerState.RESERVED,
        ):
            visit = 0  # a new visit
        self.texts[customer] = [visit, 0, self.now]
        self.apply(
            CustomerRequested(openid=customer, group=group, priority=priority, preferred_agent=preferred)
        )

    @rule(data=st.data(), ok=st.booleans(), code=st.sampled_from(FAIL_CODES))
    @precondition(lambda self: self.engine is not None and self.pending)
    def answer_create(self, data: st.DataObject, ok: bool, code: int) -> None:
        i = data.draw(st.integers(0, len(self.pending) - 1))
        cmd = self.pending.pop(i)
        serving = self.who_serves(cmd.openid)
        if ok and self.online[cmd.kf_account] and serving in (None, cmd.kf_account):
            self.truth[cmd.kf_account].add(cmd.openid)
            self.apply(SessionCreated(openid=cmd.openid, kf_account=cmd.kf_account, source="api"))
        elif serving not in (None, cmd.kf_account):
            self.apply(CreateFailed(openid=cmd.openid, kf_account=cmd.kf_account, errcode=65414))
        else:
            if not self.online[cmd.kf_account]:
                code = 65415
            self.apply(CreateFailed(openid=cmd.openid, kf_account=cmd.kf_account, errcode=code))

    @rule(data=st.data(), ok=st.booleans())
    @precondition(lambda self: self.engine is not None and self.closing)
    def answer_close(self, data: st.DataObject, ok: bool) -> None:
        cmd = self.closing.pop(data.draw(st.integers(0, len(self.closing) - 1)))
        if cmd.openid not in self.truth[cmd.kf_account]:
            self.apply(CloseFailed(openid=cmd.openid, kf_account=cmd.kf_account, errcode=65413))
        elif ok:
            self.truth[cmd.kf_account].discard(cmd.openid)
            self.apply(SessionClosed(openid=cmd.openid, kf_account=cmd.kf_account))
        else:
            self.apply(CloseFailed(openid=cmd.openid, kf_account=cmd.kf_account, errcode=-1))

    @rule(data=st.data(), to=st.one_of(st.none(), st.sampled_from(AGENTS)))
    @precondition(lambda self: self.engine is not None and self.engine.sessions())
    def reassign(self, data: st.DataObject, to: str | None) -> None:
        assert self.engine is not None
        openid = data.draw(st.sampled_from(sorted(self.engine.sessions())))
        self.apply(ReassignRequested(openid=openid, to_account=to))

    @rule(data=st.data())
    @precondition(lambda self: self.engine is not None and any(self.truth.values()))
    def close_session(self, data: st.DataObject) -> None:
        pairs = sorted((a, o) for a, s in self.truth.items() for o in s)
        a, o = data.draw(st.sampled_from(pairs))
        self.truth[a].discard(o)
        self.apply(SessionClosed(openid=o, kf_account=a))

    @rule(customer=st.sampled_from(CUSTOMERS))
    @precondition(lambda self: self.engine is not None)
    def give_up(self, customer: str) -> None:
        assert self.engine is not None
        if self.engine.state(customer) in (CustomerState.WAITING, CustomerState.RESERVED):
            self.apply(CustomerLeft(openid=customer, reason="patience"))

    @rule(agent=st.sampled_from(AGENTS))
    @precondition(lambda self: self.engine is not None)
    def toggle_online(self, agent: str) -> None:
        self.online[agent] = not self.online[agent]
        self.apply(self.snapshot())

    @rule(agent=st.sampled_from(AGENTS), paused=st.booleans(), cap=st.one_of(st.none(), st.integers(1, 3)))
    @precondition(lambda self: self.engine is not None)
    def configure(self, agent: str, paused: bool, cap: int | None) -> None:
        self.apply(AgentConfigured(kf_account=agent, paused=paused, max_sessions=cap))

    @rule(dt=st.sampled_from([0.5, 5.0, 15.0, 40.0]))
    @precondition(lambda self: self.engine is not None)
    def advance(self, dt: float) -> None:
        assert self.engine is not None and self.desk is not None and self.twin_desk is not None
        self.now += dt
        step = self.desk.tick(self.now)
        assert self.twin_desk.tick(self.now) == step
        self.record(step.commands, step.facts)  # type: ignore[arg-type]
        sweep = self.desk.sweep_estimates(self.now)
        assert self.twin_desk.sweep_estimates(self.now) == sweep
        self.record(sweep, [])  # type: ignore[arg-type]
        # answers to creates that the engine timed out are now stale; WeChat may still answer them
        assert self.engine.next_deadline() > self.now

    @rule()
    @precondition(lambda self: self.engine is not None)
    def poll(self) -> None:
        self.apply(self.snapshot())

    # -------------------------------------------------------------- invariants

    @invariant()
    def internal_consistency(self) -> None:
        if self.engine is not None:
            self.engine.check()

    @invariant()
    def twin_shows_the_same_state(self) -> None:
        if self.engine is None or self.twin is None:
            return
        a, b = self.engine, self.twin
        for o in CUSTOMERS:
            assert (a.state(o), a.gone_reason(o), a.history(o)) == (
                b.state(o),
                b.gone_reason(o),
                b.history(o),
            ), o
        assert a.waiting(self.now) == b.waiting(self.now)
        assert a.agents() == b.agents() and a.reservations() == b.reservations()

    @invariant()
    def facts_tell_the_whole_story(self) -> None:
        if self.engine is None:
            return
        for o in CUSTOMERS:
            state = self.engine.state(o)
            told = self.ledger.state.get(o)
            if state is CustomerState.UNKNOWN:
                assert told in (None, CustomerState.GONE), o  # forgotten after the sticky window
            else:
                assert told is state, (o, told, state)

    @invariant()
    def every_waiting_customer_has_an_estimate(self) -> None:
        if self.desk is None or self.desk.estimator is None:
            return
        for w in self.desk.engine.waiting(self.now):
            assert self.desk.estimate(w.openid, self.now) is not None, w.openid
            if w.openid not in self.ledger.moved:  # a first wait: its estimate is remembered, to be scored
                assert self.desk.estimator.has_arrival_estimate(w.openid), w.openid

    @invariant()
    def nobody_twice(self) -> None:
        if self.engine is None:
            return
        reserved = [o for o, _a, _d in self.engine.reservations()]
        in_session = list(self.engine.sessions())
        both = reserved + in_session
        assert len(both) == len(set(both)), both
        for o in CUSTOMERS:
            assert sum(o in s for s in self.truth.values()) <= 1

    @invariant()
    def no_idle_agent_while_eligible_customer_waits(self) -> None:
        if self.engine is None:
            return
        pool = self.engine.pool
        for w in self.engine.waiting(self.now):
            if w.preferred_agent is not None and self.now < w.preferred_until:
                assert w.preferred_agent in w.avoid or not pool.is_free(w.preferred_agent), w
                continue
            eligible = set()
            for group in w.scope:
                eligible |= set(pool.free_agents(group, "name", w.avoid))
            assert not eligible, (w, eligible)

    @invariant()
    def queue_order(self) -> None:
        if self.engine is None:
            return
        keys = [(-w.priority, w.arrived_at) for w in self.engine.waiting()]
        assert keys == sorted(keys)

    @invariant()
    def every_customer_accounted_for(self) -> None:
        if self.engine is None:
            return
        for o in self.requested:
            state = self.engine.state(o)
            assert state is not CustomerState.UNKNOWN, o
            if state is CustomerState.GONE:
                assert self.engine.gone_reason(o)


EngineMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=60, deadline=None)
TestEngineMachine = EngineMachine.TestCase
