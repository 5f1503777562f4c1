"""The wire-level pieces both fake servers use (``sim.fake_server``: WeChat, ``sim.wecom_server``: WeCom):
answering JSON, reading a JSON object body, and what an injected fault does to an API call.

Rules: an API answer is UTF-8 JSON without ASCII escapes, the way WeChat and WeCom answer; a handler that
must answer at once raises ``Answer``. What a bad body answers is each platform's own (its errcodes), so
``json_object`` only says what is wrong with the bytes (``NotJsonObject``).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Protocol

from aiohttp import web

from kfrouter.sim.fake_options import Fault
from kfrouter.sim.model_base import Json


class Answer(Exception):
    """Raised inside a handler to answer at once with the platform's JSON ``payload``."""

    def __init__(self, payload: Json) -> None:
        super().__init__(payload.get("errmsg", ""))
        self.payload = payload


class NotJsonObject(ValueError):
    """Raised by ``json_object``; ``parsed``: the bytes were JSON, but not an object."""

    def __init__(self, message: str, *, parsed: bool) -> None:
        super().__init__(message)
        self.parsed = parsed


class Envelopes(Protocol):
    """A model's answers: ``err(code, hint)`` and ``ok()``."""

    def err(self, code: int, hint: str = "") -> Json: ...

    def ok(self) -> Json: ...


def json_response(payload: Json, status: int = 200) -> web.Response:
    """HTTP ``status`` with ``payload`` as UTF-8 JSON (no ASCII escapes), the way WeChat and WeCom answer."""
    return web.Response(
        status=status,
        body=json.dumps(payload, ensure_ascii=False).encode("utf-8"),
        content_type="application/json",
        charset="utf-8",
    )


def json_object(raw: bytes) -> dict[str, Any]:
    """``raw`` (not empty) decoded as UTF-8 JSON that must be an object; else ``NotJsonObject``."""
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise NotJsonObject(f"body is not JSON: {exc}", parsed=False) from None
    if not isinstance(data, dict):
        raise NotJsonObject(f"body must be a JSON object, got {type(data).__name__}", parsed=True)
    return data


async def apply_fault(fault: Fault, request: web.Request, model: Envelopes) -> web.StreamResponse | None:
    """What ``fault`` does to a call before the model sees it: wait ``delay_s``; then drop the connection
    (the response returned is what the handler gives aiohttp), or answer ``errcode`` instead (raises
    ``Answer``; 0 is a fake success); None: the call goes on."""
    if fault.delay_s > 0:
        await asyncio.sleep(fault.delay_s)
    if fault.drop_connection:
        transport = request.transport
        if transport is not None:
            transport.abort()
        return web.Response(status=500)
    if fault.errcode is not None:
        raise Answer(model.err(fault.errcode, "injected") if fault.errcode else model.ok())
    return None
