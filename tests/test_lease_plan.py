"""router.lease_plan: the pure decision of the lease keeper, on a model of the lease table (a dict appid ->
owner, atomic like the database's upsert). Hypothesis runs daemons that look in any order, die, come
back late and lose their heartbeat before or after their leases; the bounds of the issue hold."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kfrouter.router.lease_plan import LeaseView, Plan, plan, ranked


class Table:
    """The lease table and the members, as the database has them."""

    def __init__(self, accounts: int) -> None:
        self.accounts = frozenset(f"wx{i:03d}" for i in range(accounts))
        self.owners: dict[str, str] = {}
        self.members: set[str] = set()

    def held(self, daemon: str) -> frozenset[str]:
        return frozenset(a for a, o in self.owners.items() if o == daemon)

    def fair(self) -> int:
        return math.ceil(len(self.accounts) / max(1, len(self.members)))

    def look(self, daemon: str) -> Plan:
        """One look of ``daemon`` (a member) and what it does: releases, then acquires that can lose a
        race only to a daemon that looked earlier (the model is sequential)."""
        view = LeaseView(
            me=daemon,
            accounts=self.accounts,
            owners=dict(self.owners),
            members=frozenset(self.members),
            mine=self.held(daemon),
        )
        decided = plan(view)
        for appid in decided.release:
            assert self.owners.pop(appid) == daemon
        for appid in decided.acquire:
            if len(self.held(daemon)) >= decided.acquire_up_to:
                break
            self.owners.setdefault(appid, daemon)
        return decided


steps = st.lists(
    st.tuples(st.sampled_from(["look", "join", "die", "expire"]), st.integers(0, 5)), max_size=60
)


@settings(max_examples=300, deadline=None)
@given(accounts=st.integers(1, 40), first=st.integers(1, 4), script=steps)
def test_every_account_ends_with_one_live_daemon_and_nobody_holds_more_than_fair_plus_one(
    accounts: int, first: int, script: list[tuple[str, int]]
) -> None:
    t = Table(accounts)
    names = [f"d{i}" for i in range(6)]
    t.members = set(names[:first])
    dead: set[str] = set()
    for action, i in script:
        d = names[i]
        if action == "look" and d in t.members:
            t.look(d)
            assert len(t.held(d)) <= t.fair(), (d, t.owners)  # the bound is fair + 1: one to spare
        elif action == "join" and d not in t.members and d not in dead:
            t.members.add(d)
        elif action == "die" and d in t.members and len(t.members) > 1:
            t.members.discard(d)  # its heartbeat expired; its leases may still be live
            dead.add(d)
        elif action == "expire" and d in dead:
            for appid in t.held(d):
                del t.owners[appid]
    for d in dead:  # every lease of a dead daemon expires in the end
        for appid in t.held(d):
            del t.owners[appid]
    for _round in range(4):
        for d in sorted(t.members):
            t.look(d)
    assert set(t.owners) == set(t.accounts)
    assert set(t.owners.values()) <= t.members
    counts = [len(t.held(d)) for d in t.members]
    assert max(counts) <= t.fair(), (counts, t.fair())
    assert sum(counts) == accounts


def test_three_daemons_share_twenty_then_two_take_the_dead_ones_share() -> None:
    t = Table(20)
    t.members = {"a", "b", "c"}
    for d in ("a", "b", "c"):
        t.look(d)
    assert sorted(len(t.held(d)) for d in "abc") == [6, 7, 7]
    dead = t.held("a")
    t.members.discard("a")
    for appid in dead:
        del t.owners[appid]
    for d in ("b", "c"):
        t.look(d)
    assert sorted(len(t.held(d)) for d in "bc") == [10, 10]


def test_a_late_joiner_gets_its_share_from_a_daemon_that_took_everything() -> None:
    t = Table(10)
    t.members = {"a"}
    t.look("a")
    assert len(t.held("a")) == 10
    t.members.add("b")
    t.look("b")  # nothing free: b waits
    assert t.held("b") == frozenset()
    released = t.look("a")
    assert len(released.release) == 5 and len(t.held("a")) == 5
    assert set(released.release) == set(ranked("a", t.accounts)[5:])  # a keeps what it prefers
    t.look("b")
    assert len(t.held("b")) == 5
    assert t.look("a") == Plan((), (), 5)  # balanced: nothing moves


def test_accounts_no_longer_configured_are_given_up_first() -> None:
    view = LeaseView(
        me="a",
        accounts=frozenset({"x"}),
        owners={"x": "a", "old": "a"},
        members=frozenset({"a"}),
        mine=frozenset({"x", "old"}),
    )
    assert plan(view) == Plan(("old",), (), 0)


def test_a_view_is_checked() -> None:
    with pytest.raises(ValueError, match=r"LeaseView\.accounts: must be a frozenset"):
        LeaseView(me="a", accounts={"x"}, owners={}, members=frozenset(), mine=frozenset())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"LeaseView\.owners"):
        LeaseView(me="a", accounts=frozenset(), owners={"x": 1}, members=frozenset(), mine=frozenset())  # type: ignore[dict-item]
