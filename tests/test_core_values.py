"""The core's hot values are built by their own constructors: the engine's names ``create_session`` and
``waiting_view`` are ``CreateSession`` and ``WaitingView`` themselves. The engine passes their fields by
position, so each position must land in the field of its name; the values are immutable and picklable."""

from __future__ import annotations

import pickle

import attrs
import pytest

from kfrouter.router.core.commands import CloseSession, CreateSession, SendText, create_session
from kfrouter.router.core.model import WaitingView, waiting_view


def test_the_engine_builds_values_with_their_own_constructors() -> None:
    assert create_session is CreateSession
    assert waiting_view is WaitingView


def test_commands_by_position_equal_commands_by_keyword() -> None:
    cmd = create_session("o1", "a@x")
    assert cmd == CreateSession(openid="o1", kf_account="a@x")
    assert (cmd.openid, cmd.kf_account) == ("o1", "a@x")
    assert cmd != CloseSession(openid="o1", kf_account="a@x")  # same fields, another command
    assert CloseSession("o1", "a@x") == CloseSession(openid="o1", kf_account="a@x")
    assert SendText("o1", "hi") == SendText(openid="o1", text="hi", kind="info", kf_account=None)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        cmd.openid = "changed"  # type: ignore[misc]
    assert pickle.loads(pickle.dumps(cmd)) == cmd
    assert attrs.asdict(cmd) == {"openid": "o1", "kf_account": "a@x"}  # how the daemon logs commands


def test_waiting_view_takes_the_engines_order() -> None:
    view = waiting_view(
        "o1",
        "sales",
        1,
        3.0,
        "a@x",
        123.0,
        frozenset({"b@x"}),
        frozenset({"vip"}),
        "c@x",
        2.0,
        ("sales", "support"),
    )
    assert view == WaitingView(
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
    assert (view.preferred_until, view.avoid, view.last_served_at) == (123.0, frozenset({"b@x"}), 2.0)
    with pytest.raises(AttributeError):
        view.openid = "changed"  # type: ignore[misc]
    assert pickle.loads(pickle.dumps(view)) == view
    # a view built by keyword with only what a policy needs gets the neutral rest
    bare = WaitingView(openid="o2", group=None, priority=0, arrived_at=0.0, preferred_agent=None)
    assert (bare.preferred_until, bare.avoid, bare.tags, bare.last_agent, bare.scope) == (
        float("-inf"),
        frozenset(),
        frozenset(),
        None,
        (None,),
    )
