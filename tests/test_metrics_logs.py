"""Structured logs: JSON lines that parse, one line per input event and per command with the openid, never a
token or a secret (the redaction filter as a unit, as a property, in-process and through ``kfrouter run``);
a push that asks for a human is one line, in text and in JSON, with what matched."""

from __future__ import annotations

import contextlib
import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    ADMIN_TOKEN,
    AES_KEY,
    CB_TOKEN,
    FakeControl,
    Processes,
    config_dict,
    free_port,
    toml_text,
    wait_until,
)
from hypothesis import given
from hypothesis import strategies as st
from test_metrics_env import SECRET, running_env

from kfrouter.router.core.commands import SendText
from kfrouter.router.core.events import AgentsSeen, CustomerRequested
from kfrouter.router.core.model import AgentRow
from kfrouter.router.logs import REDACTED, EventLog, JsonFormatter, RedactFilter, scrub, setup_logging
from kfrouter.router.observe import HumanAsked, PushReceived, Stepped


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


def _record(msg: str, *args: Any, exc: BaseException | None = None, **extra: Any) -> logging.LogRecord:
    rec = logging.LogRecord("kfrouter.test", logging.INFO, __file__, 1, msg, args or None, None)
    if exc is not None:
        rec.exc_info = (type(exc), exc, exc.__traceback__)
    for k, v in extra.items():
        setattr(rec, k, v)
    return rec


def _format(rec: logging.LogRecord, secrets: tuple[str, ...] = ()) -> dict[str, Any]:
    assert RedactFilter(secrets).filter(rec)
    line = JsonFormatter().format(rec)
    assert "\n" not in line
    data: dict[str, Any] = json.loads(line)
    return data


# ------------------------------------------------------------------------------------ units


def test_access_tokens_in_urls_and_json_are_scrubbed() -> None:
    out = _format(_record("GET %s -> 200", "https://api.weixin.qq.com/x?access_token=ACCESS123&openid=o1"))
    assert "ACCESS123" not in out["msg"] and "access_token=***" in out["msg"] and "openid=o1" in out["msg"]
    out = _format(_record('answer {"access_token": "ACCESS456", "expires_in": 7200}'))
    assert "ACCESS456" not in out["msg"] and "7200" in out["msg"]
    out = _format(_record("token url ?grant_type=x&appid=wx1&secret=SECRET789"))
    assert "SECRET789" not in out["msg"] and "appid=wx1" in out["msg"]


def test_configured_secrets_are_scrubbed_everywhere() -> None:
    secrets = (SECRET, CB_TOKEN, AES_KEY, ADMIN_TOKEN)
    try:
        raise RuntimeError(f"failed with {ADMIN_TOKEN} and {AES_KEY}")
    except RuntimeError as exc:
        rec = _record(
            "login %s / %s",
            SECRET,
            CB_TOKEN,
            exc=exc,
            fields={"kind": "event", "note": f"secret is {SECRET}", "nested": [{"t": CB_TOKEN}]},
        )
    out = _format(rec, secrets)
    text = json.dumps(out)
    for s in secrets:
        assert s not in text
    assert out["msg"] == f"login {REDACTED} / {REDACTED}"
    assert "RuntimeError" in out["exc"] and REDACTED in out["exc"]
    assert out["kind"] == "event" and out["nested"] == [{"t": REDACTED}]


def test_short_values_are_not_treated_as_secrets() -> None:
    # a three-letter "secret" would blank ordinary words; config enforces long secrets anyway
    out = _format(_record("the cat sat"), ("cat",))
    assert out["msg"] == "the cat sat"


def test_a_bad_format_string_does_not_break_logging() -> None:
    out = _format(_record("%d customers", "many"))
    assert "customers" in out["msg"]


@given(
    secret=st.text(
        alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-", min_size=16, max_size=48
    ),
    before=st.text(max_size=40),
    after=st.text(max_size=40),
    copies=st.integers(min_value=1, max_value=3),
)
def test_property_a_secret_never_survives_scrubbing(
    secret: str, before: str, after: str, copies: int
) -> None:
    text = before + (secret + after) * copies
    out = scrub(text, (secret,))
    assert secret not in out
    assert scrub(f"x?access_token={secret}&y=1") == "x?access_token=***&y=1"


@contextlib.contextmanager
def json_lines(level: int = logging.DEBUG) -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A logger of its own writing JSON lines to the stream it yields with it."""
    stream = io.StringIO()
    logger = logging.getLogger("kfrouter.test.events")
    logger.propagate = False
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger.handlers[:] = [handler]
    logger.setLevel(level)
    try:
        yield logger, stream
    finally:
        logger.handlers[:] = []


def test_event_log_writes_ids_never_texts() -> None:
    with json_lines() as (logger, stream):
        events = EventLog(logger)
        requested = CustomerRequested(openid="o1", group="g", text="my phone is 555-0199")
        told = SendText(openid="o1", text="you are third", kind="queued")
        events.observe(Stepped(requested, (), (told,)), 0.0)
        seen = AgentsSeen(
            rows=[AgentRow(kf_account="a@x", status=1, accepted_case=0, auto_accept=3)], complete=True
        )
        events.observe(Stepped(seen, (), ()), 0.0)
        events.observe(PushReceived("UserMessage", "o1"), 0.0)  # not an event or command: no line
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(x["kind"], x["type"]) for x in lines] == [
        ("event", "CustomerRequested"),
        ("command", "SendText"),
        ("event", "AgentsSeen"),
    ]
    assert lines[0]["openid"] == "o1" and lines[0]["group"] == "g"
    assert lines[1]["command_kind"] == "queued"
    assert lines[2]["level"] == "debug" and lines[2]["online"] == 1
    assert "555-0199" not in stream.getvalue() and "third" not in stream.getvalue()  # a time may hold 555


def test_a_request_the_intake_announced_is_one_line_with_what_matched() -> None:
    with json_lines(logging.INFO) as (logger, stream):
        events = EventLog(logger, appid="wx1")
        pushed = CustomerRequested(openid="o1", group="g", text="my phone is 555-0199", arrived_at=5.0)
        events.observe(HumanAsked(pushed, "keyword:human"), 5.0)
        events.observe(Stepped(pushed, (), ()), 5.1)  # applied: not logged again
        waitlist = CustomerRequested(openid="o2", source="waitlist")
        events.observe(Stepped(waitlist, (), ()), 6.0)  # not announced: logged
        events.observe(Stepped(pushed, (), ()), 7.0)  # the same again (not announced again): logged
        events.ANNOUNCED_MAX = 1  # more announced than applied: the oldest is forgotten, never lost
        events.observe(HumanAsked(CustomerRequested(openid="o3"), "always"), 8.0)
        events.observe(HumanAsked(CustomerRequested(openid="o4"), "always"), 8.0)
        events.observe(Stepped(CustomerRequested(openid="o3"), (), ()), 9.0)
        events.observe(Stepped(CustomerRequested(openid="o4"), (), ()), 9.0)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(x["openid"], x.get("matched")) for x in lines] == [
        ("o1", "keyword:human"),
        ("o2", None),
        ("o1", None),
        ("o3", "always"),
        ("o4", "always"),
        ("o3", None),
    ]
    assert lines[0] | {"t": 0, "time": ""} == {
        "t": 0,
        "time": "",
        "level": "info",
        "logger": "kfrouter.test.events",
        "msg": "event CustomerRequested openid=o1 group=g",
        "kind": "event",
        "type": "CustomerRequested",
        "openid": "o1",
        "group": "g",
        "priority": 0,
        "source": "push",
        "matched": "keyword:human",
        "appid": "wx1",
    }
    assert "555-0199" not in stream.getvalue()


# ------------------------------------------------------------------------------------ in-process


@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
async def test_a_push_asking_for_a_human_is_one_line_at_info(
    tmp_path: Path, restore_logging: None, as_json: bool
) -> None:
    """The intake's line and the daemon's event line were the same facts twice (~10 % CPU under load):
    one line now, with the event's fields and what matched."""
    stream = io.StringIO()
    async with running_env(tmp_path, log={"level": "info", "json": as_json}) as env:
        setup_logging("info", as_json, stream=stream)
        await env.ctl.say("c1", "human please")
        await env.assigned("c1")
    lines = stream.getvalue().splitlines()
    asked = [line for line in lines if "CustomerRequested" in line or "asks for a human" in line]
    assert len(asked) == 1, asked
    if as_json:
        x = json.loads(asked[0])
        assert (x["logger"], x["type"], x["openid"], x["group"], x["source"]) == (
            "kfrouter.events",
            "CustomerRequested",
            "c1",
            "general",
            "push",
        )
        assert x["matched"] and x["priority"] == 0
    else:
        assert (
            "kfrouter.daemon: event CustomerRequested openid=c1 group=general priority=0 source=push matched="
            in (asked[0])
        )
    assert any("CreateSession" in line and "c1" in line for line in lines)  # the rest is still told


async def test_daemon_json_lines_parse_and_carry_no_secret(tmp_path: Path, restore_logging: None) -> None:
    stream = io.StringIO()
    async with running_env(tmp_path, log={"level": "debug", "json": True}) as env:
        setup_logging("debug", True, secrets=(SECRET, CB_TOKEN, ADMIN_TOKEN), stream=stream)
        await env.ctl.say("c1", "human please, my card is 4111")
        await env.assigned("c1")
        client = env.daemon.client
        assert client is not None
        first = client.tokens.current  # the token the assignment used
        await env.ctl.fault("getonlinekflist", errcode=40001, times=1)  # a token WeChat rejects: refresh
        await wait_until(
            lambda: client.stats.token_invalidations >= 1 and client.tokens.current is not None,
            message="a token refresh",
        )
        access_tokens = {t for t in (first, client.tokens.current) if t}
        await env.get("/metrics", auth=True)
    text = stream.getvalue()
    lines = [json.loads(line) for line in text.splitlines()]
    assert lines, "nothing was logged"
    for secret in (SECRET, CB_TOKEN, ADMIN_TOKEN, *access_tokens):
        assert secret not in text
    assert access_tokens, "the daemon never held an access token"
    assert "4111" not in text  # what customers write is not logged
    assert all({"t", "time", "level", "logger", "msg"} <= set(x) for x in lines)
    requested = [x for x in lines if x.get("kind") == "event" and x.get("type") == "CustomerRequested"]
    assert [(x["openid"], x["group"], x["logger"]) for x in requested] == [
        ("c1", "general", "kfrouter.events")
    ]
    creates = [x for x in lines if x.get("kind") == "command" and x.get("type") == "CreateSession"]
    assert len(creates) == 1 and creates[0]["openid"] == "c1" and creates[0]["kf_account"]
    created = [x for x in lines if x.get("type") == "SessionCreated" and x.get("openid") == "c1"]
    assert "api" in {x["source"] for x in created}  # (WeChat's kf_create_session push is an input too)
    # the daemon's free-text copy of the same line is not written in JSON mode: one line per event
    assert not [
        x for x in lines if x["logger"] == "kfrouter.daemon" and x["msg"].startswith("event Customer")
    ]
    assert not [
        x for x in lines if x["logger"] == "kfrouter.daemon" and x["msg"].startswith("command Create")
    ]


async def test_kfrouter_run_log_json(tmp_path: Path, processes: Processes, http: Any) -> None:
    """``kfrouter run --log-json`` end to end: the fake and the daemon as real processes."""
    port = free_port()
    fake = await processes.fake(webhook=f"http://127.0.0.1:{port}/wechat", options={"check_openid": False})
    ctl = FakeControl(fake.url, http)
    await ctl.agents("a1@test")
    data = config_dict(
        api_base=fake.url,
        store=tmp_path / "kf.db",
        port=port,
        groups=[{"name": "general", "agents": ["a1@test"]}],
    )
    config = tmp_path / "kfrouter.toml"
    config.write_text(toml_text(data), encoding="utf-8")
    daemon = await processes.daemon(config, "--log-json")
    await ctl.say("p1", "human")
    await wait_until(lambda: _in_session(ctl, "p1"), message="p1 in a session")
    assert await daemon.terminate() == 0
    text = daemon.log_path.read_text(encoding="utf-8")
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]
    assert any(x.get("type") == "CustomerRequested" and x.get("openid") == "p1" for x in lines)
    assert any(x.get("type") == "CreateSession" and x.get("openid") == "p1" for x in lines)
    for secret in (SECRET, CB_TOKEN, ADMIN_TOKEN):
        assert secret not in text


async def _in_session(ctl: FakeControl, openid: str) -> bool:
    return openid in await ctl.sessions()
