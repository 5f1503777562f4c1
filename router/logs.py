"""Logging setup for ``kfrouter run``: text or JSON lines, always behind a redaction filter.

- ``setup_logging(level, as_json, secrets=...)`` installs one stderr handler on the root logger.
- ``JsonFormatter``: one JSON object per line — ``t`` (unix seconds), ``time`` (ISO 8601 UTC), ``level``,
  ``logger``, ``msg``, the structured ``fields`` a record carries (``log.info(..., extra={"fields": {...}})``)
  merged at the top level, and ``exc`` for a traceback.
- ``RedactFilter``: the last line of defence. Whatever a message says, the value after ``access_token=``
  / ``secret=`` (query or JSON style) becomes ``***`` and every configured secret value (AppSecret,
  callback token, AES keys, admin token) becomes ``[redacted]`` — in the message, the structured fields
  and the traceback. Callers still must not log secrets; this catches mistakes.
- ``EventLog``: a daemon observer writing one structured line per input event and per command to
  ``kfrouter.events`` (type, openid, agent, group, errcode ...; never message texts). In JSON mode it
  replaces the daemon's own free-text ``event ...`` / ``command ...`` lines (``DuplicateFilter``), so
  each event is one line. A push that asks for a human is one line too: the intake's (router/inbox.py,
  ``event CustomerRequested ... matched=...``; in JSON mode EventLog's, from ``HumanAsked``, with
  ``matched``) — the daemon does not log that event again when it applies it.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Iterable, Mapping
from typing import IO, Any

from kfrouter.router.core.events import AgentSessionsSeen, AgentsSeen, CustomerRequested
from kfrouter.router.edges.errors import redact
from kfrouter.router.observe import HumanAsked, Observation, Stepped

REDACTED = "[redacted]"
_MIN_SECRET_LEN = 4  # shorter "secrets" would redact ordinary words; config enforces longer ones
_EXTRA_KEYS = re.compile(
    r"(?i)\b(appsecret|admin_token|readonly_token|encoding_aes_key|aes_key)=[^&\s'\"<>]*"
)

# The daemon's own one-line-per-event/command messages (format strings), replaced by EventLog in JSON mode.
_DAEMON_EVENT_FORMATS = frozenset(
    {
        "event %s %s",
        "event AgentsSeen: %d online",
        "command CreateSession %s -> %s",
        "command CloseSession %s (%s)",
        "command SendText %s (%s)",
    }
)

# Fields of events and commands that may be logged: identifiers and codes, never texts.
LOGGABLE_FIELDS = (
    "openid",
    "kf_account",
    "from_account",
    "to_account",
    "group",
    "priority",
    "source",
    "errcode",
    "reason",
    "kind",
    "preferred_agent",
    "paused",
    "max_sessions",
    "complete",
)


def scrub(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with token/secret query and JSON values and every literal secret value removed."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, REDACTED)
    text = redact(text)
    return _EXTRA_KEYS.sub(lambda m: f"{m.group(1)}=***", text)


def _scrub_value(value: Any, secrets: tuple[str, ...]) -> Any:
    if isinstance(value, str):
        return scrub(value, secrets)
    if isinstance(value, Mapping):
        return {str(k): _scrub_value(v, secrets) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_scrub_value(v, secrets) for v in value]
    return value


class RedactFilter(logging.Filter):
    """Rewrites every record so no secret survives formatting (attach it to the handler)."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.secrets = tuple(
            sorted({s for s in secrets if s and len(s) >= _MIN_SECRET_LEN}, key=len, reverse=True)
        )

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: keep what we can, never raise from logging
            message = f"{record.msg!r} {record.args!r}"
        record.msg = scrub(message, self.secrets)
        record.args = None
        fields = getattr(record, "fields", None)
        if isinstance(fields, Mapping):
            record.fields = _scrub_value(fields, self.secrets)
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = scrub(record.exc_text, self.secrets)
            record.exc_info = None  # formatted (and scrubbed) already
        if record.stack_info:
            record.stack_info = scrub(record.stack_info, self.secrets)
        return True


class DuplicateFilter(logging.Filter):
    """Drops the daemon's free-text per-event / per-command lines (``EventLog`` writes them structured)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (
            record.name == "kfrouter.daemon"
            and record.levelno <= logging.INFO
            and isinstance(record.msg, str)
            and record.msg in _DAEMON_EVENT_FORMATS
        )


class JsonFormatter(logging.Formatter):
    """One JSON object per line (see the module docstring)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "t": round(record.created, 3),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, Mapping):
            for key, value in fields.items():
                if key not in out:
                    out[str(key)] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            out["exc"] = record.exc_text
        return json.dumps(out, ensure_ascii=False, default=str)


def _text_formatter() -> logging.Formatter:
    fmt = logging.Formatter("%(asctime)s.%(msecs)03d %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
    fmt.converter = time.gmtime
    return fmt


def setup_logging(
    level: str, as_json: bool, *, secrets: Iterable[str] = (), stream: IO[str] | None = None
) -> logging.Handler:
    """Replace the root logger's handlers with one writing to ``stream`` (default stderr); returns it."""
    if level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ValueError(f"log level must be debug, info, warning or error, got {level!r}")
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    if as_json:
        handler.addFilter(DuplicateFilter())  # first: it matches the unformatted message
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(_text_formatter())
    handler.addFilter(RedactFilter(secrets))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    return handler


def config_secrets(config: Any) -> list[str]:
    """The secret values of a ``router.config.Config`` — of each of its accounts — (for ``RedactFilter``)."""
    out: list[str] = []
    server = getattr(config, "server", None)
    accounts = getattr(config, "accounts", ()) or (config,)  # every account of an [[accounts]] file
    pairs: list[tuple[Any, tuple[str, ...]]] = [
        (getattr(a, "wechat", None), ("secret", "token", "aes_key", "previous_aes_key")) for a in accounts
    ]
    for obj, names in (*pairs, (server, ("admin_token", "readonly_token"))):
        for name in names:
            value = getattr(obj, name, None)
            if isinstance(value, str) and value:
                out.append(value)
    return out


def fields_of(value: object) -> dict[str, Any]:
    """The loggable identifiers of an input event or a command (``LOGGABLE_FIELDS``; never texts), plus
    counts for poll snapshots. A command's ``kind`` (of text) is ``command_kind``."""
    out: dict[str, Any] = {}
    for name in LOGGABLE_FIELDS:
        v = getattr(value, name, None)
        if v is not None:
            out["command_kind" if name == "kind" else name] = v
    if isinstance(value, AgentsSeen):
        out["online"] = sum(1 for r in value.rows if r.online)
        out["rows"] = len(value.rows)
    elif isinstance(value, AgentSessionsSeen):
        out["sessions"] = len(value.openids)
    return out


def words(value: object, **more: Any) -> str:
    """``key=value ...`` of ``fields_of(value)`` and ``more``: the free-text form of an event's line."""
    return " ".join(f"{k}={v}" for k, v in {**fields_of(value), **more}.items())


class EventLog:
    """Daemon observer: one structured ``kfrouter.events`` line per input event and per command.

    Poll snapshots (``AgentsSeen``, ``AgentSessionsSeen``) are logged at DEBUG, everything else at INFO.
    A request the intake announced (``HumanAsked``) is written then, with ``matched``, and not again when
    its step comes (the announced ones wait in ``_announced``, at most ``ANNOUNCED_MAX``: past that the
    oldest is forgotten — its step would be logged as well, never lost)."""

    QUIET = frozenset({"AgentsSeen", "AgentSessionsSeen"})
    ANNOUNCED_MAX = 4096

    def __init__(self, logger: logging.Logger | None = None, *, appid: str | None = None) -> None:
        self.log = logger if logger is not None else logging.getLogger("kfrouter.events")
        self.appid = appid  # the account, in every line's fields when given (a process of several)
        self._announced: dict[CustomerRequested, None] = {}  # in arrival order

    def observe(self, observation: Observation, now: float) -> None:
        if isinstance(observation, HumanAsked):
            self._announce(observation)
            return
        if not isinstance(observation, Stepped):
            return
        cause = observation.cause
        if cause is not None and not self._was_announced(cause):
            self._line("event", cause)
        for cmd in observation.commands:
            self._line("command", cmd)

    def _announce(self, asked: HumanAsked) -> None:
        self._announced[asked.event] = None
        if len(self._announced) > self.ANNOUNCED_MAX:
            del self._announced[next(iter(self._announced))]
        self._line("event", asked.event, matched=asked.matched)

    def _was_announced(self, cause: object) -> bool:
        if not isinstance(cause, CustomerRequested) or cause not in self._announced:
            return False
        del self._announced[cause]
        return True

    def _line(self, kind: str, value: object, **more: Any) -> None:
        fields = {"kind": kind, "type": type(value).__name__, **fields_of(value), **more}
        if self.appid is not None:
            fields["appid"] = self.appid
        level = logging.DEBUG if fields["type"] in self.QUIET else logging.INFO
        if not self.log.isEnabledFor(level):
            return
        who = " ".join(
            f"{k}={fields[k]}" for k in ("openid", "kf_account", "group", "errcode") if k in fields
        )
        self.log.log(level, "%s %s %s", kind, fields["type"], who, extra={"fields": fields})
