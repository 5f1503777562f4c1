"""Issue 15 item 6: one source for each default and rule. The pure core holds the definitions; config,
admin, the daemon, the fake WeChat and the simulator's tools import them instead of restating them."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest
from conftest import config_dict

from kfrouter.router import config as config_mod
from kfrouter.router.admin import ApiError, _Fields
from kfrouter.router.core import errors as core_errors
from kfrouter.router.core import events as ev
from kfrouter.router.core import notify as core_notify
from kfrouter.router.core import policy, pool

ROOT = Path(__file__).resolve().parent.parent


def _config(**kw: Any) -> config_mod.Config:
    return config_mod.Config.from_dict(
        config_dict(api_base="http://127.0.0.1:9", store=":memory:", **kw), env={}
    )


def test_one_config_error() -> None:
    assert config_mod.ConfigError is core_errors.ConfigError
    with pytest.raises(core_errors.ConfigError) as info:
        _config(engine={"avoid_s": -1})
    assert info.value.problems == (("engine.avoid_s", "must be > 0, got -1"),)


def test_notify_defaults_come_from_the_planner() -> None:
    core = core_notify.NotifyConfig()
    section = _config(notify={}).notify
    assert (section.max_per_customer, section.eta_change_min_s) == (core.max_per_customer, core.eta_change_s)
    assert not any(
        isinstance(n, ast.ClassDef) and n.name == "NotifyConfig"
        for n in ast.parse((ROOT / "router" / "config.py").read_text(encoding="utf-8")).body
    )


def test_one_clock() -> None:
    from kfrouter.router import clock, daemon, inbox
    from kfrouter.sim import fake_server

    assert inbox.Clock is clock.Clock
    assert not hasattr(daemon, "LoopClock") and not hasattr(fake_server, "Clock")
    c = clock.SteadyClock(start=100.0, frozen=True)
    assert c.now() == 100.0 and c.advance(5) == 105.0


def test_one_order() -> None:
    assert pool.Order is policy.Order
    defined = [
        path.name
        for path in (ROOT / "router" / "core").glob("*.py")
        for node in ast.parse(path.read_text(encoding="utf-8")).body
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "Order" for t in node.targets)
    ]
    assert defined == ["policy.py"]


@pytest.mark.parametrize("account", ["a1@te/st", "a1@te st", "toolongprefix1@x", "a1@x@y"])
def test_config_and_admin_refuse_the_same_kf_accounts(account: str) -> None:
    with pytest.raises(config_mod.ConfigError):
        _config(groups=[{"name": "general", "agents": [account]}])
    with pytest.raises(ApiError):
        _Fields({"kf_account": account}, ("kf_account",)).kf_account("kf_account")


def test_65414_is_named_once() -> None:
    assert ev.ERR_SERVED_BY_OTHER == 65414
    places = []
    for path in [*(ROOT / "router").rglob("*.py"), ROOT / "sim" / "eta.py", ROOT / "sim" / "runner.py"]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and node.value == 65414:
                places.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert len(places) == 1 and places[0].startswith("router/core/events.py:"), places


def test_the_kf_account_rule_lives_in_the_core() -> None:
    from kfrouter.router.core import model

    assert model.KF_ACCOUNT_RE.fullmatch("alice@shop") and not model.KF_ACCOUNT_RE.fullmatch("a@b/c")
