"""Validation of API answers and call arguments, shared by the WeChat and WeCom clients.

Answers are read leniently where the APIs drift (an integer may arrive as a numeric string, an id as a
string or a number, an absent list as empty where allowed) but their shape is checked: a bad field
raises ``BadResponse`` naming the endpoint and the field's path (``kf_list[2].kf_id``). Arguments from
our own callers are checked by ``require_text`` and raise ``ValueError``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kfrouter.router.edges.errors import BadResponse


def where(endpoint: str, path: str, msg: str) -> BadResponse:
    return BadResponse(f"field {path!r} {msg}", endpoint)


def get_int(endpoint: str, row: Mapping[str, Any], key: str, path: str, *, default: int | None = None) -> int:
    raw = row.get(key)
    if raw is None:
        if default is not None:
            return default
        raise where(endpoint, path, "is missing")
    if isinstance(raw, bool):
        raise where(endpoint, path, f"must be an integer, got {raw!r}")
    if isinstance(raw, int):
        return raw
    if isinstance(raw, float) and raw.is_integer():
        return int(raw)
    if isinstance(raw, str):
        text = raw.strip()
        if text.lstrip("-").isdigit() and len(text) <= 20:
            return int(text)
    raise where(endpoint, path, f"must be an integer, got {str(raw)[:40]!r}")


def get_str(endpoint: str, row: Mapping[str, Any], key: str, path: str, *, default: str | None = None) -> str:
    raw = row.get(key)
    if raw is None:
        if default is not None:
            return default
        raise where(endpoint, path, "is missing")
    if not isinstance(raw, str):
        raise where(endpoint, path, f"must be a string, got {type(raw).__name__}")
    return raw


def get_opt_str(endpoint: str, row: Mapping[str, Any], key: str, path: str) -> str | None:
    raw = row.get(key)
    if raw is None or raw == "":
        return None
    if not isinstance(raw, str):
        raise where(endpoint, path, f"must be a string, got {type(raw).__name__}")
    return raw


def get_id(endpoint: str, row: Mapping[str, Any], key: str, path: str) -> str:
    """``kf_id`` arrives as a string in the examples and as a number per the newer doc (§2.6)."""
    raw = row.get(key)
    if raw is None:
        return ""
    if isinstance(raw, bool) or not isinstance(raw, str | int):
        raise where(endpoint, path, f"must be a string or an integer, got {type(raw).__name__}")
    return str(raw)


def get_list(endpoint: str, data: Mapping[str, Any], key: str, *, default_empty: bool = False) -> list[Any]:
    raw = data.get(key)
    if raw is None and default_empty:
        return []
    if not isinstance(raw, list):
        what = "is missing" if raw is None else f"must be a list, got {type(raw).__name__}"
        raise where(endpoint, key, what)
    return raw


def rows(
    endpoint: str, data: Mapping[str, Any], key: str, *, default_empty: bool = False
) -> list[tuple[str, Mapping[str, Any]]]:
    out = []
    for i, row in enumerate(get_list(endpoint, data, key, default_empty=default_empty)):
        path = f"{key}[{i}]"
        if not isinstance(row, Mapping):
            raise where(endpoint, path, f"must be an object, got {type(row).__name__}")
        out.append((path, row))
    return out


def require_text(name: str, value: object, *, max_len: int | None = None) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be a non-empty string, got {value!r}")
    if max_len is not None and len(value) > max_len:
        raise ValueError(f"{name} must be at most {max_len} characters, got {len(value)}")
    return value


def require_field_text(endpoint: str, row: Mapping[str, Any], key: str, path: str) -> str:
    value = get_str(endpoint, row, key, f"{path}.{key}")
    if not value:
        raise where(endpoint, f"{path}.{key}", "must not be empty")
    return value


def get_opt_bool(endpoint: str, row: Mapping[str, Any], key: str, path: str) -> bool | None:
    """A JSON boolean (0 / 1 accepted, as some answers use them); None when absent."""
    raw = row.get(key)
    if raw is None:
        return None
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, int) and raw in (0, 1):
        return bool(raw)
    raise where(endpoint, path, f"must be true or false, got {str(raw)[:40]!r}")


def get_opt_map(endpoint: str, row: Mapping[str, Any], key: str, path: str) -> Mapping[str, Any] | None:
    """A JSON object; None when absent."""
    raw = row.get(key)
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise where(endpoint, path, f"must be an object, got {type(raw).__name__}")
    return raw
