"""The fast constructors of the core's hot values (events, commands, views) make exactly the values the
public constructors make: same class, equal, same hash and repr, frozen, picklable; and anything the
public constructor would refuse is refused with its message."""

from __future__ import annotations

import pickle

import attrs
import pytest

from router.core import events as ev
from router.core.errors import CoreError


def same_value(fast: object, public: object) -> None:
    assert type(fast) is type(public)
    assert fast == public and hash(fast) == hash(public) and repr(fast) == repr(public)
    assert pickle.loads(pickle.dumps(fast)) == public
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        fast.openid = "changed"  # type: ignore[attr-defined]
    assert attrs.evolve(fast, openid="other") == attrs.evolve(public, openid="other")  # type: ignore[misc]


def test_events_built_fast_equal_the_public_ones() -> None:
    tags = frozenset({"vip"})
    same_value(
        ev.customer_requested("o1", "sales", 2, "hi", "trace", "a@x", tags),
        ev.CustomerRequested(
            openid="o1",
            group="sales",
            priority=2,
            text="hi",
            source="trace",
            preferred_agent="a@x",
            tags=tags,
        ),
    )
    same_value(
        ev.session_created("o1", "a@x", "api"), ev.SessionCreated(openid="o1", kf_account="a@x", source="api")
    )
    same_value(ev.session_closed("o1", "a@x"), ev.SessionClosed(openid="o1", kf_account="a@x"))


def test_bad_values_get_the_public_constructors_errors() -> None:
    with pytest.raises(CoreError, match="openid"):
        ev.customer_requested("", None, 0, "", "trace", None, frozenset())
    with pytest.raises(CoreError, match="priority"):
        ev.customer_requested("o1", None, "high", "", "trace", None, frozenset())  # type: ignore[arg-type]
    with pytest.raises(CoreError, match="kf_account"):
        ev.session_created("o1", "", "api")
    with pytest.raises(CoreError, match="openid"):
        ev.session_closed(None, "a@x")  # type: ignore[arg-type]


def test_command_and_view_built_fast_equal_the_public_ones() -> None:
    from router.core.commands import CreateSession, create_session
    from router.core.model import WaitingView, waiting_view

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
