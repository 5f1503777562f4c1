"""Property: whatever JSON an admin client sends as agent settings, the API either accepts it as a valid
``AgentConfigured`` or answers 400 naming a field — validation never lets a bad value reach the engine
(which would be a 500) and never refuses a good one."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from kfrouter.router.admin import AdminApi, ApiError, _Fields
from kfrouter.router.core import events as ev

GROUPS = ("sales", "support")
FIELDS = ("groups", "max_sessions", "paused", "tags")

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 2000) | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=2),
    max_leaves=5,
)
plausible = {
    "groups": st.none() | st.lists(st.sampled_from([*GROUPS, "vip", "", " "]), max_size=3) | json_values,
    "max_sessions": st.none() | st.integers(-2, 1002) | json_values,
    "paused": st.none() | st.booleans() | json_values,
    "tags": st.none() | st.lists(st.text(max_size=4), max_size=3) | json_values,
}
bodies = st.fixed_dictionaries({}, optional=plausible) | st.dictionaries(
    st.sampled_from([*FIELDS, "nickname", "capacity"]), json_values, max_size=4
)


def api() -> AdminApi:
    daemon = SimpleNamespace(config=SimpleNamespace(groups=[SimpleNamespace(name=g) for g in GROUPS]))
    return AdminApi(daemon)  # type: ignore[arg-type]


def expected_ok(body: dict[str, Any]) -> bool:
    if set(body) - set(FIELDS):
        return False
    for name in ("groups", "tags"):
        v = body.get(name)
        if v is not None and not (isinstance(v, list) and all(isinstance(x, str) and x.strip() for x in v)):
            return False
    g = body.get("groups")
    if isinstance(g, list) and any(x not in GROUPS for x in g):
        return False
    n = body.get("max_sessions")
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= 1000):
        return False
    p = body.get("paused")
    return p is None or isinstance(p, bool)


@settings(max_examples=400, deadline=None)
@given(bodies)
def test_settings_are_valid_events_or_a_400_naming_a_field(body: dict[str, Any]) -> None:
    try:
        out = api()._settings(_Fields(body, FIELDS))
    except ApiError as exc:
        assert exc.status == 400
        assert "body" in exc.message and exc.extra.get("field") is not None
        assert not expected_ok(body), (body, exc.message)
        return
    assert expected_ok(body), body
    event = ev.AgentConfigured(kf_account="a@x", **out)  # never raises: the engine accepts it
    if "max_sessions" in body:
        assert (event.max_sessions, event.clear_max_sessions) == (
            (body["max_sessions"], False) if body["max_sessions"] is not None else (None, True)
        )
    if body.get("groups") is not None:
        assert event.groups == frozenset(body["groups"])
