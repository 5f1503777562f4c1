"""Unit tests of the daemon's parts that need no network: the poll schedule, the snapshot guard, the
wait-list request, the engine loop (``router.inbox.drive``), upstream request building, options and the
``kfrouter run`` command line."""

from __future__ import annotations

import asyncio
import math
import random
from pathlib import Path
from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kfrouter.router.cli import main
from kfrouter.router.config import Config
from kfrouter.router.core.model import AgentRow, AgentView
from kfrouter.router.daemon import DaemonOptions
from kfrouter.router.desk_setup import notify_config
from kfrouter.router.edges.upstream import build_forward
from kfrouter.router.inbox import Inbox, Item, drive
from kfrouter.router.pollers import AgentPoller, LastSnapshot, PollSchedule, SnapshotGuard, waitlist_request
from kfrouter.router.wechat import replies, signature
from kfrouter.router.wechat.crypto import SafeModeCrypto

# ------------------------------------------------------------------------------------------ schedule


def test_poll_schedule_fast_when_busy_slow_when_idle() -> None:
    s = PollSchedule(2.0, 15.0, 300.0)
    assert s.next_delay(ok=True, busy=True) == 2.0
    assert s.next_delay(ok=True, busy=False) == 15.0


def test_poll_schedule_backs_off_then_recovers_at_once() -> None:
    s = PollSchedule(2.0, 15.0, 60.0)
    delays = [s.next_delay(ok=False, busy=True) for _ in range(8)]
    assert delays == [4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0, 60.0]
    assert s.next_delay(ok=True, busy=False) == 15.0
    assert s.failures == 0
    assert s.next_delay(ok=False, busy=False) == 4.0  # the backoff starts over


@given(
    outcomes=st.lists(st.tuples(st.booleans(), st.booleans()), max_size=80),
    jitter=st.floats(0, 0.5),
    seed=st.integers(0, 2**16),
)
def test_poll_schedule_stays_within_bounds(
    outcomes: list[tuple[bool, bool]], jitter: float, seed: int
) -> None:
    s = PollSchedule(1.0, 10.0, 120.0, jitter, random.Random(seed))
    for ok, busy in outcomes:
        d = s.next_delay(ok=ok, busy=busy)
        assert (1.0 - jitter) * 1.0 - 1e-9 <= d <= 120.0
        if ok:
            base = 1.0 if busy else 10.0
            assert base * (1 - jitter) - 1e-9 <= d <= base * (1 + jitter) + 1e-9


def test_poll_schedule_refuses_inconsistent_bounds() -> None:
    with pytest.raises(ValueError, match="fast_s <= slow_s"):
        PollSchedule(10.0, 2.0, 300.0)
    with pytest.raises(ValueError, match="jitter"):
        PollSchedule(1.0, 2.0, 3.0, jitter=1.5)


# ------------------------------------------------------------------------------------------ snapshot guard


def _view(kf: str, sessions: int, reserved: int = 0) -> AgentView:
    return AgentView(
        kf_account=kf,
        nickname="",
        online=True,
        status=1,
        paused=False,
        groups=frozenset(),
        tags=frozenset(),
        capacity=3,
        sessions=sessions,
        reserved=reserved,
        last_assigned_at=-math.inf,
    )


def _row(kf: str, accepted: int, status: int = 1) -> AgentRow:
    return AgentRow(kf_account=kf, status=status, accepted_case=accepted)


def test_guard_passes_agreeing_and_unknown_rows() -> None:
    g = SnapshotGuard()
    rows = (_row("a@x", 2), _row("new@x", 5))
    assert g.apply(rows, {"a@x": _view("a@x", 2)}, lambda kf: False) == rows


def test_guard_keeps_the_engine_count_while_reservations_are_pending_or_inputs_raced() -> None:
    g = SnapshotGuard()
    views = {"a@x": _view("a@x", 1, reserved=1), "b@x": _view("b@x", 1)}
    out = g.apply((_row("a@x", 2), _row("b@x", 0, status=0)), views, lambda kf: kf == "b@x")
    assert [(r.accepted_case, r.status) for r in out] == [(1, 1), (1, 0)]  # status is always taken


def test_guard_takes_a_difference_seen_in_two_polls_in_a_row() -> None:
    g = SnapshotGuard()
    views = {"a@x": _view("a@x", 2)}
    assert g.apply((_row("a@x", 1),), views, lambda kf: False)[0].accepted_case == 2  # maybe a race
    assert g.apply((_row("a@x", 1),), views, lambda kf: False)[0].accepted_case == 1  # real drift
    # a difference that changes between polls is not confirmed
    assert g.apply((_row("a@x", 0),), views, lambda kf: False)[0].accepted_case == 2
    assert g.apply((_row("a@x", 3),), views, lambda kf: False)[0].accepted_case == 2


def test_last_snapshot_repeats_only_the_same_rows_over_the_same_agents() -> None:
    last = LastSnapshot()
    rows = (_row("a@x", 1), _row("b@x", 0, status=0))
    views = [_view("a@x", 1), _view("b@x", 0)]
    assert not last.repeats(rows, views)  # nothing applied yet
    last.applied(rows, views)
    assert last.repeats(rows, list(views))
    assert not last.repeats((_row("a@x", 2), rows[1]), views)  # WeChat's answer changed
    assert not last.repeats(rows[:1], views)  # an agent left WeChat's list
    assert not last.repeats(rows, [_view("a@x", 1, reserved=1), views[1]])  # the engine changed
    assert not last.repeats(rows, views[:1])  # an agent the engine no longer has


# ------------------------------------------------------------------------------------------ wait list


def _config(tmp_path: Path, **routing: Any) -> Config:
    from conftest import config_dict

    data = config_dict(
        api_base="https://api.weixin.qq.com",
        store=tmp_path / "x.db",
        groups=[
            {"name": "general", "agents": ["a1@test"]},
            {"name": "vip", "agents": ["v1@test"], "priority": 5},
        ],
        routing=routing,
    )
    return Config.from_dict(data, env={})


def test_waitlist_request_uses_the_customer_entry_then_the_default_group(tmp_path: Path) -> None:
    cfg = _config(
        tmp_path, customers=[{"openids": ["o_vip"], "group": "vip", "priority": 9, "tags": ["gold"]}]
    )
    vip = waitlist_request(cfg.routing, "o_vip")
    assert (vip.group, vip.priority, vip.tags) == ("vip", 9, frozenset({"gold"}))
    anyone = waitlist_request(cfg.routing, "o_other")
    assert (anyone.group, anyone.priority, anyone.tags) == ("general", 0, frozenset())


# ------------------------------------------------------------------------------------------ engine loop


class _Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def now(self) -> float:
        return self.t


async def test_drive_applies_items_in_order_ticks_at_deadlines_and_survives_errors() -> None:
    inbox = Inbox()
    clock = _Clock()
    applied: list[Any] = []
    ticks: list[float] = []
    errors: list[tuple[Any, str]] = []
    deadline = [math.inf]
    done = asyncio.Event()

    def step(item: Item, now: float) -> Any:
        if item.payload == "boom":
            raise ValueError("bad input")
        applied.append(item.payload)
        if item.payload == "last":
            done.set()
        return f"ok:{item.payload}"

    def tick(now: float) -> None:
        ticks.append(now)
        if now >= deadline[0]:
            deadline[0] = math.inf

    task = asyncio.create_task(
        drive(
            inbox,
            step=step,
            tick=tick,
            next_deadline=lambda: deadline[0],
            now=clock.now,
            on_error=lambda item, exc: errors.append((item.payload, str(exc))),
            sweep_s=60.0,
        )
    )
    try:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        inbox.put("a", future=fut)
        inbox.put("boom")
        inbox.put("b")
        assert await asyncio.wait_for(fut, 5) == "ok:a"
        deadline[0] = 1005.0
        clock.t = 1006.0  # the deadline passed while nothing arrived
        inbox.wake()
        inbox.put("last")
        await asyncio.wait_for(done.wait(), 5)
        assert applied == ["a", "b", "last"]
        assert errors == [("boom", "bad input")]
        assert 1006.0 in ticks and deadline[0] == math.inf
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_inbox_get_times_out_and_drains() -> None:
    inbox = Inbox()
    assert await inbox.get(0.0) is None
    inbox.put(1)
    inbox.put(2)
    assert len(inbox) == 2
    assert [i.payload for i in inbox.drain_pending()] == [1, 2]
    assert len(inbox) == 0


# ------------------------------------------------------------------------------------------ upstream


def test_forward_keeps_query_and_body_in_plain_mode() -> None:
    xml = replies.build_text_message("gh_x", "o1", 1700000000, "hi", 1)
    q = {"signature": "s", "timestamp": "1700000000", "nonce": "9", "openid": "o1"}
    fwd = build_forward(q, xml, crypto=None)
    assert fwd.body == xml.encode()
    assert fwd.query == "signature=s&timestamp=1700000000&nonce=9&openid=o1"


def test_forward_re_encrypts_in_safe_mode_with_a_valid_msg_signature() -> None:
    crypto = SafeModeCrypto("tok123", "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG", "wx_app")
    xml = replies.build_text_message("gh_x", "o1", 1700000000, "secret text", 1)
    q = {"signature": signature.sign("tok123", "1700000000", "9"), "timestamp": "1700000000", "nonce": "9"}
    q |= {"encrypt_type": "aes", "msg_signature": "stale"}
    fwd = build_forward(q, xml, crypto=crypto, random_bytes=lambda n: bytes(range(n)))
    from urllib.parse import parse_qs

    params = {k: v[0] for k, v in parse_qs(fwd.query).items()}
    assert params["msg_signature"] != "stale" and b"secret text" not in fwd.body
    assert crypto.decrypt_push(fwd.body, params["msg_signature"], "1700000000", "9") == xml


def test_forward_without_the_original_query_signs_nothing_but_dates_it() -> None:
    fwd = build_forward(
        None, "<xml/>", crypto=None, clock=lambda: 1700000123.5, random_bytes=lambda n: b"\x00" * n
    )
    assert fwd.query == "timestamp=1700000123&nonce=0"


# ------------------------------------------------------------------------------------------ options, notify


def test_options_name_the_bad_value() -> None:
    with pytest.raises(ValueError, match="create_timeout_s must be a number > 0"):
        DaemonOptions(create_timeout_s=0)
    with pytest.raises(ValueError, match="create_concurrency must be an integer >= 1"):
        DaemonOptions(create_concurrency=0)


def test_notify_templates_from_the_config_reach_the_planner_unchanged(tmp_path: Path) -> None:
    from conftest import config_dict

    data = config_dict(api_base="https://api.weixin.qq.com", store=tmp_path / "x.db")
    data["notify"] = {
        "enabled": True,
        "language": "en",
        "templates": {"en": {"queued": "#{position}, ~{eta_min}; say {cancel}", "assigned": "{agent} here"}},
    }
    ncfg = notify_config(Config.from_dict(data, env={}))
    assert ncfg is not None
    # one set of placeholders (router.core.notify.FIELDS): nothing is renamed; {cancel} is filled in
    assert ncfg.template("queued") == "#{position}, ~{eta_min}; say {cancel}"
    assert ncfg.render("queued", position=2, ahead=1, wait="w", eta_min="3") == "#2, ~3; say 取消"
    assert ncfg.template("assigned") == "{agent} here"
    data["notify"] = {"enabled": False}
    assert notify_config(Config.from_dict(data, env={})) is None


# ------------------------------------------------------------------------------------------ command line


def test_run_with_a_bad_config_exits_2_naming_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[wechat]\nappid = "wx1"\nsecret = "s"\ntoken = "tok123"\n[server]\nport = "eighty"\n')
    assert main(["run", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "server.port" in err and "server.admin_token" in err


def test_run_refuses_a_bad_option(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from conftest import config_dict, toml_text

    good = tmp_path / "good.toml"
    good.write_text(toml_text(config_dict(api_base="https://api.weixin.qq.com", store=tmp_path / "x.db")))
    assert main(["run", "--config", str(good), "--create-timeout", "-1"]) == 2
    assert "create_timeout_s" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ pollers


async def test_a_poll_failing_outside_wechat_is_recorded_not_raised() -> None:
    class Client:
        async def get_online_kf_list(self) -> list[AgentRow]:
            return [_row("a@x", 0)]

        async def get_kf_list(self) -> list[Any]:
            return []

    async def publish(rows: tuple[AgentRow, ...], mark: object) -> None:
        raise OSError("disk full")

    poller = AgentPoller(Client(), PollSchedule(1.0, 1.0, 2.0), publish=publish, busy=lambda: False)  # type: ignore[arg-type]
    assert await poller.poll_once() is False
    assert (poller.last_ok, poller.last_error, poller.polls) == (False, "OSError", 1)


async def test_agent_rows_are_named_again_when_the_answer_or_the_nicknames_change() -> None:
    clock = [0.0]

    class Client:
        def __init__(self) -> None:
            self.answer = [_row("a@x", 0), AgentRow(kf_account="b@x", status=1, nickname="Bee")]
            self.kf_list = [("a@x", "Ann"), ("b@x", "B")]

        async def get_online_kf_list(self) -> list[AgentRow]:
            return list(self.answer)

        async def get_kf_list(self) -> list[Any]:
            return [attrs.make_class("Kf", ["kf_account", "nickname"])(k, n) for k, n in self.kf_list]

    published: list[tuple[AgentRow, ...]] = []

    async def publish(rows: tuple[AgentRow, ...], mark: object) -> None:
        published.append(rows)

    client = Client()
    poller = AgentPoller(
        client,  # type: ignore[arg-type]
        PollSchedule(1.0, 1.0, 2.0),
        publish=publish,
        busy=lambda: False,
        nickname_refresh_s=10.0,
        clock=lambda: clock[0],
    )

    def names() -> list[str]:
        return [r.nickname for r in published[-1]]

    assert await poller.poll_once()
    assert names() == ["Ann", "Bee"]  # the answer's own nickname is kept
    assert await poller.poll_once()
    assert published[-1] == published[-2] and poller.rows == published[-1]
    client.answer = [_row("a@x", 1), _row("c@x", 0)]  # the answer changed
    assert await poller.poll_once()
    assert [(r.kf_account, r.accepted_case, r.nickname) for r in published[-1]] == [
        ("a@x", 1, "Ann"),
        ("c@x", 0, ""),
    ]
    client.kf_list = [("a@x", "Anna"), ("c@x", "Cy")]
    assert await poller.poll_once()
    assert names() == ["Ann", ""]  # nicknames are refreshed every 10 s only
    clock[0] = 10.0
    assert await poller.poll_once()
    assert names() == ["Anna", "Cy"]  # the same answer, named with the new nicknames
