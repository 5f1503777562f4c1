"""Issue 15 item 1: every ``[engine] reservation_timeout_s`` that ``check-config`` accepts serves customers.

A reservation's time is split between the wait before ``kfsession/create`` is sent and the call itself
(``router.core.reservation``); the executor measures the wait on the daemon's clock, the one the
reservation lives on. ``check-config`` refuses only a value too short for both.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import test_daemon
from hypothesis import given
from hypothesis import strategies as st
from test_daemon import EnvFactory

from kfrouter.router.cli import main
from kfrouter.router.core import events as ev
from kfrouter.router.core.commands import CreateSession
from kfrouter.router.core.reservation import CREATE_MARGIN_S, MIN_RESERVATION_S, create_budget
from kfrouter.router.daemon import DaemonOptions
from kfrouter.router.executor import Executor

make_env = test_daemon.make_env  # the fixture: a daemon in-process against the fake WeChat
EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "kfrouter.toml"


@pytest.mark.parametrize("reservation_s", [5.0, 8.0])
async def test_short_reservation_timeouts_still_serve_customers(
    make_env: EnvFactory,
    reservation_s: float,
) -> None:
    # kfrouter run's default create timeout (10 s) is longer than the reservation itself.
    env = await make_env(
        options=DaemonOptions(api_timeout_s=2.0), engine={"reservation_timeout_s": reservation_s}
    )
    await env.ctl.say("c1", "human please")
    await env.ctl.say("c2", "human please")
    assert {await env.assigned("c1"), await env.assigned("c2")} == {"a1@test", "a2@test"}
    assert not env.of_type("event", "CreateFailed")


def test_check_config_refuses_only_a_reservation_too_short_to_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    assert "reservation_timeout_s = 30.0" in text
    ok = tmp_path / "ok.toml"
    ok.write_text(
        text.replace("reservation_timeout_s = 30.0", f"reservation_timeout_s = {MIN_RESERVATION_S}")
    )
    assert main(["check-config", str(ok)]) == 0
    bad = tmp_path / "bad.toml"
    bad.write_text(text.replace("reservation_timeout_s = 30.0", "reservation_timeout_s = 2"))
    capsys.readouterr()
    assert main(["check-config", str(bad)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"{bad}: engine.reservation_timeout_s: must be >= {MIN_RESERVATION_S:g}, got 2"
    )


@given(
    reservation_s=st.floats(MIN_RESERVATION_S, 1e6, allow_nan=False),
    create_timeout_s=st.floats(0.001, 1e6, allow_nan=False),
)
def test_the_budget_always_leaves_time_to_send_and_to_call(
    reservation_s: float, create_timeout_s: float
) -> None:
    b = create_budget(reservation_s, create_timeout_s)
    assert b.send_within_s >= 1.0 and b.call_s >= 1.0
    assert b.call_s <= create_timeout_s + 1.0
    # a create sent at the last moment ends (at worst) before its reservation does
    assert b.send_within_s + b.call_s + CREATE_MARGIN_S <= reservation_s + 1e-9


class _NeverCalled:
    async def create_session(self, openid: str, kf_account: str) -> None:  # pragma: no cover - must not run
        raise AssertionError("kfsession/create sent for a reservation already over")


async def test_held_too_long_is_measured_on_the_daemons_clock() -> None:
    # The daemon's clock says the reservation began long ago; time.monotonic knows nothing of it.
    now = [1000.0]
    outcomes: list[ev.Event] = []
    executor = Executor(
        _NeverCalled(),  # type: ignore[arg-type]
        _NeverCalled(),  # type: ignore[arg-type]
        outcome=outcomes.append,
        reservation_s=8.0,
        clock=lambda: now[0],
    )
    cmd = CreateSession(openid="o1", kf_account="a1@test")
    assert executor.submit(cmd, at=now[0] - executor.send_within_s - 0.5)
    task = asyncio.create_task(executor.run())
    try:
        await asyncio.wait_for(executor.drain(5.0), 5.0)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert [type(e).__name__ for e in outcomes] == ["CreateFailed"]
    assert executor.stats == {"kfsession/create:not_sent": 1}
