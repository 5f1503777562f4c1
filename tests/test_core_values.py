"""The fast constructors of the core's hot values (CreateSession, WaitingView) make exactly the values the
public constructors make: same class, equal, same hash and repr, frozen, picklable."""

from __future__ import annotations

import pickle

import attrs
import pytest


def same_value(fast: object, public: object) -> None:
    assert type(fast) is type(public)
    assert fast == public and hash(fast) == hash(public) and repr(fast) == repr(public)
    assert pickle.loads(pickle.dumps(fast)) == public
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        fast.openid = "changed"  # type: ignore[attr-defined]
    assert attrs.evolve(fast, openid="other") == attrs.evolve(public, openid="other")  # type: ignore[misc]


def test_command_and_view_built_fast_equal_the_public_ones() -> None:
    from kfrouter.router.core.commands import CreateSession, create_session
    from kfrouter.router.core.model import WaitingView, waiting_view

    same_value(create_session("o1", "a@x"), CreateSession(openid="o1", kf_account="a@x"))
    fields = dict(
        openid="o1",
        group="sales",
        priority=1,
        arrived_at=3.0,
        preferred_agent="a@x",
        preferred_until=123.0,
        avoid=frozenset({"b@x"}),
        tags=frozenset({"vip"}),
        last_agent="c@x",
        last_served_at=2.0,
        scope=("sales", "support"),
    )
    same_value(waiting_view(**fields), WaitingView(**fields))  # type: ignore[arg-type]
