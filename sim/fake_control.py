"""The request side of both fakes' control API (``/_fake/…``): reading a request and checking its fields.

Rules: a control request is a JSON object body (empty means ``{}``) plus the query string
(``ControlCall``, whose methods read the body's fields; ``need_str`` and ``check_keys`` read any object,
such as a row of a list). Anything wrong raises ``ControlError`` naming the field and what was expected;
the server answers HTTP 400 with that message. Nothing here knows which fake it serves.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from aiohttp import web
from attrs import frozen

from kfrouter.sim.fake_http import NotJsonObject, json_object
from kfrouter.sim.fake_options import Fault


class ControlError(Exception):
    """A bad control-API request: answered with HTTP 400 and ``{"error": message}``."""


@frozen
class ControlCall:
    """One control request: its JSON object ``body`` (``{}`` when empty) and its ``query``."""

    body: dict[str, Any]
    query: Mapping[str, str]

    @classmethod
    async def read(cls, request: web.Request) -> ControlCall:
        raw = await request.read()
        try:
            body = json_object(raw) if raw.strip() else {}
        except NotJsonObject as exc:
            raise ControlError(str(exc)) from None
        return cls(body, request.query)

    def need_str(self, key: str) -> str:
        return need_str(self.body, key)

    def opt_str(self, key: str) -> str:
        """The body's ``key``: a string if given (``""`` when absent)."""
        v = self.body.get(key, "")
        if not isinstance(v, str):
            raise ControlError(f"field {key!r} must be a string, got {v!r}")
        return v

    def str_or_none(self, key: str) -> str | None:
        """The body's ``key``: a string, or None when absent or null."""
        v = self.body.get(key)
        if v is not None and not isinstance(v, str):
            raise ControlError(f"field {key!r} must be a string, got {v!r}")
        return v

    def rows(self, key: str, shape: str) -> list[dict[str, Any]]:
        """The body's ``key``: a list of objects (``shape`` says which, for the error)."""
        found = self.body.get(key)
        if not isinstance(found, list) or not all(isinstance(r, dict) for r in found):
            raise ControlError(f"field {key!r} must be a list of {shape}")
        return found

    def settle_timeout(self) -> float:
        """``POST settle``'s ``timeout``: a positive number of seconds, 30 when absent."""
        timeout = self.body.get("timeout", 30.0)
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
            raise ControlError(f"timeout must be a positive number, got {timeout!r}")
        return float(timeout)

    def fault_rules(self, not_rule: Collection[str]) -> dict[str, Fault | None]:
        """The rules of a ``POST faults`` body, endpoint (as given) -> rule, None to clear: either
        ``{"faults": {endpoint: rule | null}}`` or one rule ``{"endpoint", rule fields..., "clear"?}``,
        where the keys in ``not_rule`` (the control API's own, such as ``wait``) are not rule fields."""
        rules = self.body.get("faults")
        if rules is None:
            ep = self.need_str("endpoint")
            rule = {k: v for k, v in self.body.items() if k not in ("endpoint", "clear", *not_rule)}
            rules = {ep: None if self.body.get("clear") else rule}
        if not isinstance(rules, dict):
            raise ControlError("faults must be an object endpoint -> rule (or null to clear)")
        return {
            ep: (None if rule is None else Fault.from_json(rule, f"faults[{ep!r}]"))
            for ep, rule in rules.items()
        }


def need_str(data: Mapping[str, Any], key: str) -> str:
    """``data[key]``, which must be a non-empty string."""
    v = data.get(key)
    if not isinstance(v, str) or not v:
        raise ControlError(f"field {key!r} must be a non-empty string, got {v!r}")
    return v


def check_keys(row: Mapping[str, Any], where: str, known: Collection[str]) -> None:
    """Refuse keys of ``row`` (``where`` names it) that are not ``known``."""
    extra = set(row) - set(known)
    if extra:
        raise ControlError(f"{where}: unknown keys {sorted(extra)}; known: {sorted(known)}")
