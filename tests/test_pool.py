"""The agent pool on its own: a Hypothesis state machine that drives every mutation of ``Pool`` against a
naive model (who is free, in which order, with what capacity), plus the least-load cycle the simulator runs
once per customer, checked step by step."""

from __future__ import annotations

import math
from typing import ClassVar

import hypothesis.strategies as st
import pytest
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from kfrouter.router.core.pool import Order, Pool

ACCOUNTS = [f"k{i}@x" for i in range(5)]
GROUPS = ["sales", "support", "vip"]
ORDERS: list[Order] = ["load", "idle", "name"]
DEFAULT_CAPACITY = 2


class _Model:
    """What the pool should say about one agent, recomputed from scratch."""

    def __init__(self) -> None:
        self.status = 0
        self.auto_accept = 0
        self.local_max: int | None = None
        self.paused = False
        self.groups: frozenset[str] = frozenset()
        self.sessions = 0
        self.reserved = 0
        self.last = -math.inf

    def capacity(self) -> int:
        if self.local_max is not None:
            return self.local_max
        return self.auto_accept if self.auto_accept > 0 else DEFAULT_CAPACITY

    def serving(self) -> bool:
        return self.status != 0 and not self.paused

    def free(self) -> bool:
        return self.serving() and self.sessions + self.reserved < self.capacity()


def _sort_key(kf: str, m: _Model, order: Order) -> tuple[float | int | str, ...]:
    load = m.sessions + m.reserved
    if order == "load":
        return (load / m.capacity(), load, m.last, kf)
    if order == "idle":
        return (m.last, kf)
    return (kf,)


def _assert_answers(
    pool: Pool, model: dict[str, _Model], group: str | None, order: Order, exclude: frozenset[str]
) -> None:
    """The pool's free agents of ``group`` by ``order`` are the model's."""
    want = sorted(
        (
            kf
            for kf, m in model.items()
            if m.free() and kf not in exclude and (group is None or group in m.groups)
        ),
        key=lambda kf: _sort_key(kf, model[kf], order),
    )
    assert list(pool.free_agents(group, order, exclude)) == want
    assert pool.first_free(group, order, exclude) == (want[0] if want else None)


def _assert_counts(pool: Pool, model: dict[str, _Model]) -> None:
    """The pool's invariants hold, and its counts and capacities are the model's."""
    pool.check()
    for group in [None, *GROUPS]:
        members = [m for m in model.values() if group is None or group in m.groups]
        assert pool.free_count(group) == sum(m.free() for m in members)
        serving = [m for m in members if m.serving()]
        assert pool.capacity_of(group) == (
            sum(m.capacity() for m in serving),
            sum(max(0, m.capacity() - m.sessions - m.reserved) for m in serving),
        )
    for kf, m in model.items():
        assert pool.is_free(kf) == m.free()
        assert pool.capacity(kf) == m.capacity()


class PoolMachine(RuleBasedStateMachine):
    orders: ClassVar[list[Order]] = ORDERS  # the orders policies ask for

    def __init__(self) -> None:
        super().__init__()
        self.pool = Pool(DEFAULT_CAPACITY)
        self.model: dict[str, _Model] = {}
        self.now = 0.0

    def _known(self) -> list[str]:
        return sorted(self.model)

    @initialize(
        data=st.data(),
        online=st.lists(st.tuples(st.sampled_from([0, 1]), st.integers(0, 2), st.integers(0, 3)), max_size=5),
    )
    def start(self, data: st.DataObject, online: list[tuple[int, int, int]]) -> None:
        """Some agents seen online at once, and the orders some policy has asked for so far."""
        orders = data.draw(st.lists(st.sampled_from(self.orders), unique=True, max_size=2))
        for kf, (status, accepted, auto) in zip(ACCOUNTS, online, strict=False):
            self.pool.ensure(kf)
            self.pool.update_from_wechat(kf, status, accepted, auto)
            m = self.model[kf] = _Model()
            m.status, m.sessions, m.auto_accept = status, accepted, auto
        for order in orders:
            self.ask(None, order, frozenset())

    @rule(kf=st.sampled_from(ACCOUNTS))
    def ensure(self, kf: str) -> None:
        assert self.pool.ensure(kf) == (kf not in self.model)
        self.model.setdefault(kf, _Model())

    @precondition(lambda self: self.model)
    @rule(
        data=st.data(), status=st.sampled_from([0, 1, 2]), accepted=st.integers(0, 3), auto=st.integers(0, 3)
    )
    def update_from_wechat(self, data: st.DataObject, status: int, accepted: int, auto: int) -> None:
        kf = data.draw(st.sampled_from(self._known()))
        self.pool.update_from_wechat(kf, status, accepted, auto)
        m = self.model[kf]
        m.status, m.sessions, m.auto_accept = status, accepted, auto

    @precondition(lambda self: self.model)
    @rule(data=st.data(), status=st.sampled_from([0, 1]))
    def set_status(self, data: st.DataObject, status: int) -> None:
        kf = data.draw(st.sampled_from(self._known()))
        self.pool.set_status(kf, status)
        self.model[kf].status = status

    @precondition(lambda self: self.model)
    @rule(
        data=st.data(),
        groups=st.one_of(st.none(), st.frozensets(st.sampled_from(GROUPS), max_size=2)),
        max_sessions=st.one_of(st.none(), st.integers(1, 3)),
        clear=st.booleans(),
        paused=st.one_of(st.none(), st.booleans()),
    )
    def configure(
        self,
        data: st.DataObject,
        groups: frozenset[str] | None,
        max_sessions: int | None,
        clear: bool,
        paused: bool | None,
    ) -> None:
        kf = data.draw(st.sampled_from(self._known()))
        self.pool.configure(
            kf, groups=groups, max_sessions=max_sessions, clear_max_sessions=clear, paused=paused
        )
        m = self.model[kf]
        if groups is not None:
            m.groups = groups
        if clear:
            m.local_max = None
        if max_sessions is not None:
            m.local_max = max_sessions
        if paused is not None:
            m.paused = paused

    @precondition(lambda self: self.model)
    @rule(data=st.data(), delta=st.sampled_from([-2, -1, -1, 1, 1, 2]))
    def add_sessions(self, data: st.DataObject, delta: int) -> None:
        kf = data.draw(st.sampled_from(self._known()))
        self.pool.add_sessions(kf, delta)
        m = self.model[kf]
        m.sessions = max(0, m.sessions + delta)

    @precondition(lambda self: self.model)
    @rule(data=st.data(), count=st.integers(-1, 3))
    def set_sessions(self, data: st.DataObject, count: int) -> None:
        kf = data.draw(st.sampled_from(self._known()))
        self.pool.set_sessions(kf, count)
        self.model[kf].sessions = max(0, count)

    @precondition(lambda self: self.model)
    @rule(data=st.data(), step=st.sampled_from([0.0, 0.5, 1.0]))
    def reserve(self, data: st.DataObject, step: float) -> None:
        # any free agent (a policy may skip the head), or any agent at all
        free = list(self.pool.free_agents(None, "load"))
        pick_free: bool = data.draw(st.booleans())
        kf = data.draw(st.sampled_from(free if free and pick_free else self._known()))
        self.now += step
        self.pool.reserve(kf, self.now)
        m = self.model[kf]
        m.reserved += 1
        m.last = self.now

    @precondition(lambda self: self.model)
    @rule(data=st.data(), confirmed=st.booleans())
    def unreserve(self, data: st.DataObject, confirmed: bool) -> None:
        kf = data.draw(st.sampled_from([*self._known(), "gone@x"]))
        self.pool.unreserve(kf, confirmed=confirmed)
        m = self.model.get(kf)
        if m is not None:
            m.reserved = max(0, m.reserved - 1)
            if confirmed:
                m.sessions += 1

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def remove(self, data: st.DataObject) -> None:
        kf = data.draw(st.sampled_from(self._known()))
        self.pool.remove(kf)
        del self.model[kf]

    @rule(
        data=st.data(),
        group=st.sampled_from([None, *GROUPS]),
        exclude=st.frozensets(st.sampled_from(ACCOUNTS), max_size=2),
    )
    def ask_policy_question(self, data: st.DataObject, group: str | None, exclude: frozenset[str]) -> None:
        self.ask(group, data.draw(st.sampled_from(self.orders)), exclude)

    def ask(self, group: str | None, order: Order, exclude: frozenset[str]) -> None:
        """A policy's question; the first question of an order starts keeping that order's indices."""
        _assert_answers(self.pool, self.model, group, order, exclude)

    @invariant()
    def pool_matches_model(self) -> None:
        _assert_counts(self.pool, self.model)


class LeastLoadPoolMachine(PoolMachine):
    """Only least-load asks (the simulator's case): the pool keeps one index per group, and reserve and
    add_sessions take their shortcuts."""

    orders: ClassVar[list[Order]] = ["load"]


PoolMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
TestPoolMachine = PoolMachine.TestCase
LeastLoadPoolMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
TestLeastLoadPoolMachine = LeastLoadPoolMachine.TestCase


def test_least_load_cycle_of_single_session_agents() -> None:
    """The simulator's cycle: pick the head, reserve (the agent fills up and leaves the index), confirm,
    and later end the session (the agent is free again, behind those idle longer)."""
    pool = Pool(default_capacity=3)
    for kf in ("a@x", "b@x", "c@x"):
        pool.ensure(kf)
        pool.configure(kf, max_sessions=1, groups=frozenset({"sales"}) if kf != "c@x" else None)
        pool.update_from_wechat(kf, 1, 0, 1)
    assert pool.first_free(None, "load") == "a@x"
    assert pool.capacity_of(None) == (3, 3) and pool.capacity_of("sales") == (2, 2)

    pool.reserve("a@x", 1.0)
    pool.unreserve("a@x", confirmed=True)
    pool.check()
    assert not pool.is_free("a@x")
    assert pool.free_count(None) == 2 and pool.free_count("sales") == 1
    assert pool.capacity_of(None) == (3, 2) and pool.capacity_of("sales") == (2, 1)
    assert list(pool.free_agents(None, "load")) == ["b@x", "c@x"]

    pool.reserve("b@x", 2.0)
    pool.unreserve("b@x", confirmed=True)
    pool.add_sessions("a@x", -1)
    pool.check()
    assert pool.free_count("sales") == 1 and pool.capacity_of("sales") == (2, 1)
    assert list(pool.free_agents(None, "load")) == ["c@x", "a@x"]  # c never assigned, a at 1.0
    assert list(pool.free_agents("sales", "load")) == ["a@x"]

    pool.add_sessions("b@x", -1)
    pool.check()
    assert list(pool.free_agents(None, "load")) == ["c@x", "a@x", "b@x"]
    assert pool.capacity_of(None) == (3, 3)


def test_a_session_ending_over_capacity_leaves_the_agent_full() -> None:
    """An agent above its capacity (WeChat counted more sessions) is not free after one session ends."""
    pool = Pool(default_capacity=3)
    pool.ensure("a@x")
    pool.configure("a@x", max_sessions=1)
    pool.update_from_wechat("a@x", 1, 2, 0)
    assert pool.first_free() is None
    pool.add_sessions("a@x", -1)
    pool.check()
    assert pool.first_free() is None and pool.capacity_of() == (1, 0)
    pool.add_sessions("a@x", -1)
    pool.check()
    assert pool.first_free() == "a@x" and pool.capacity_of() == (1, 1)


def test_equal_groups_in_another_iteration_order() -> None:
    """Configuring groups equal to the current ones changes nothing, even when the new set iterates in
    another order (string hashes vary per process, so find two names whose order depends on insertion)."""
    names = [f"g{i}" for i in range(64)]
    first, second = next(
        (frozenset([x, y]), frozenset([y, x]))
        for x in names
        for y in names
        if x != y and tuple(frozenset([x, y])) != tuple(frozenset([y, x]))
    )
    pool = Pool(default_capacity=1)
    pool.ensure("a@x")
    pool.update_from_wechat("a@x", 1, 0, 0)
    pool.configure("a@x", groups=first)
    pool.configure("a@x", groups=second)
    pool.check()
    for group in first:
        assert pool.first_free(group) == "a@x" and pool.free_count(group) == 1
        assert pool.capacity_of(group) == (1, 1)


LOAD_CHANGES = ["reserve", "confirm", "release", "end one", "end two", "open one"]


@pytest.mark.parametrize("orders", [["load"], ["load", "idle", "name"], ["name"]])
@pytest.mark.parametrize("change", LOAD_CHANGES)
def test_every_load_change_at_every_load(orders: list[Order], change: str) -> None:
    """One agent (with a free and a busy colleague in its group) at every load from idle to over capacity,
    for capacities 1 to 3: each change of load leaves the pool as the model says."""
    for capacity in (1, 2, 3):
        for sessions in range(capacity + 2):
            for reserved in (0, 1):
                pool = Pool(default_capacity=2)
                model: dict[str, _Model] = {}
                for kf, load in (("a@x", sessions), ("b@x", 0), ("c@x", 2)):
                    m = model[kf] = _Model()
                    m.status, m.sessions, m.groups = 1, load, frozenset({"sales"})
                    m.local_max = capacity if kf == "a@x" else None
                    pool.ensure(kf)
                    pool.configure(kf, groups=m.groups, max_sessions=m.local_max)
                    pool.update_from_wechat(kf, 1, load, 0)
                for order in orders:
                    pool.first_free(None, order)
                a = model["a@x"]
                for _ in range(reserved):
                    pool.reserve("a@x", 1.0)
                a.reserved, a.last = reserved, 1.0 if reserved else -math.inf
                _assert_counts(pool, model)

                if change == "reserve":
                    pool.reserve("a@x", 2.0)
                    a.reserved, a.last = a.reserved + 1, 2.0
                elif change in ("confirm", "release"):
                    pool.unreserve("a@x", confirmed=change == "confirm")
                    a.sessions += change == "confirm"
                    a.reserved = max(0, a.reserved - 1)
                else:
                    delta = {"end one": -1, "end two": -2, "open one": 1}[change]
                    pool.add_sessions("a@x", delta)
                    a.sessions = max(0, a.sessions + delta)
                _assert_counts(pool, model)
                for group in (None, "sales"):
                    for order in orders:
                        _assert_answers(pool, model, group, order, frozenset())
