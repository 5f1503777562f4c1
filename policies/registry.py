"""Finding policies by name: the built-ins plus plug-ins published under the entry-point group
``kfrouter.policies``.

A plug-in entry point names a class (or factory) that takes no arguments and returns an object with a
``name`` attribute equal to the entry point's name and a ``pick(pool, customer, now)`` method. Loading
checks both and fails with a message naming the plug-in and its distribution.

A policy may be named with options, ``NAME(key=value, ...)`` (values are numbers), e.g.
``best-fit(unlisted_skill=0.9)``: the class is then called with those keyword arguments. The simulator
and ``sim tune`` use this to compare settings of one policy; the object's ``name`` stays ``NAME``.
"""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Mapping
from importlib.metadata import EntryPoint, entry_points

from kfrouter.policies.builtin import BUILTINS
from kfrouter.router.core.errors import ConfigError
from kfrouter.router.core.policy import Policy

GROUP = "kfrouter.policies"


class PluginError(ConfigError):
    """A plug-in policy could not be loaded; the message names it and its distribution."""


def _entry_points() -> list[EntryPoint]:
    return sorted(entry_points(group=GROUP), key=lambda e: e.name)


def _origin(ep: EntryPoint) -> str:
    dist = ep.dist
    return f"{dist.name} {dist.version}" if dist is not None else "unknown distribution"


def available_policies() -> list[tuple[str, str]]:
    """(name, origin) of every installed policy: ``built-in`` or the providing distribution."""
    found = [(name, "built-in") for name in sorted(BUILTINS)]
    found += [(ep.name, _origin(ep)) for ep in _entry_points() if ep.name not in BUILTINS]
    return found


def _validate(obj: object, name: str, origin: str) -> Policy:
    if getattr(obj, "name", None) != name:
        raise PluginError(
            f"policy plug-in {name!r} from {origin}: its object's name is {getattr(obj, 'name', None)!r}, "
            f"expected {name!r}"
        )
    pick = getattr(obj, "pick", None)
    if not callable(pick):
        raise PluginError(
            f"policy plug-in {name!r} from {origin}: it has no callable pick(pool, customer, now)"
        )
    try:
        inspect.signature(pick).bind(None, None, 0.0)
    except TypeError as exc:
        raise PluginError(
            f"policy plug-in {name!r} from {origin}: pick must accept (pool, customer, now): {exc}"
        ) from exc
    return obj  # type: ignore[return-value]


_SPEC = re.compile(r"^\s*([^()\s]+)\s*(?:\((.*)\))?\s*$", re.DOTALL)
_OPTION = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(\S+?)\s*$")


def parse_policy_spec(spec: str) -> tuple[str, dict[str, int | float]]:
    """``"best-fit(unlisted_skill=0.9, horizon=8)"`` → ("best-fit", {"unlisted_skill": 0.9, "horizon": 8}).
    A plain name has no options. ConfigError names the spec and what is wrong."""
    m = _SPEC.match(spec)
    if m is None or not m.group(1):
        raise ConfigError(f"policy {spec!r}: expected NAME or NAME(key=value, ...)")
    name, body = m.group(1), m.group(2)
    options: dict[str, int | float] = {}
    if body is None:
        return name, options
    for part in body.split(","):
        if not part.strip():
            raise ConfigError(f"policy {spec!r}: empty option (expected key=value, ...)")
        om = _OPTION.match(part)
        if om is None:
            raise ConfigError(f"policy {spec!r}: option {part.strip()!r} is not key=value")
        key, text = om.group(1), om.group(2)
        if key in options:
            raise ConfigError(f"policy {spec!r}: option {key!r} given twice")
        value: int | float
        try:
            value = int(text)
        except ValueError:
            try:
                value = float(text)
            except ValueError:
                raise ConfigError(f"policy {spec!r}: option {key}={text!r} is not a number") from None
        if not math.isfinite(value):
            raise ConfigError(f"policy {spec!r}: option {key}={text!r} is not a finite number")
        options[key] = value
    return name, options


def _make(factory: object, options: dict[str, int | float], spec: str) -> object:
    if not options:
        return factory()  # type: ignore[operator]
    try:
        inspect.signature(factory).bind(**options)  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"policy {spec!r}: {exc}") from None
    return factory(**options)  # type: ignore[operator]


def load_policy(name: str) -> Policy:
    """A fresh instance of the policy called ``name`` (optionally ``NAME(key=value, ...)``)."""
    spec = name
    name, options = parse_policy_spec(spec)
    if name in BUILTINS:
        obj: object = _make(BUILTINS[name], options, spec)
        return _validate(obj, name, "built-in")
    for ep in _entry_points():
        if ep.name != name:
            continue
        origin = _origin(ep)
        try:
            factory = ep.load()
            obj = _make(factory, options, spec)
        except ConfigError:
            raise
        except Exception as exc:
            raise PluginError(
                f"policy plug-in {name!r} from {origin} ({ep.value}) failed to load: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        return _validate(obj, name, origin)
    known = ", ".join(n for n, _ in available_policies())
    raise ConfigError(f"unknown policy {name!r} (installed: {known})")


def load_policies(names: Mapping[str, object] | list[str] | set[str] | tuple[str, ...]) -> dict[str, Policy]:
    """Instances for each name (e.g. every policy a config's routes use)."""
    return {n: load_policy(n) for n in names}


def load_all() -> dict[str, Policy]:
    """Every installed policy, by name."""
    return {n: load_policy(n) for n, _ in available_policies()}
