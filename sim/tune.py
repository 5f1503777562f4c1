"""``kfrouter sim tune``: search routing settings on a trace for the best one that meets a target.

Rules (docs/simulator.md, "Tuning"):

- a target is ``METRIC OP NUMBER`` (``OP`` one of ``<=``, ``>=``, ``<``, ``>``), METRIC a numeric column of
  the report (``wait_p90_s<=60``); several targets must all hold;
- a setting varies ``overflow_after``, ``preferred_wait``, ``reservation_timeout`` (seconds), ``policy``
  (names, ``a,b``) and policy options (``best-fit.unlisted_skill``: passed as ``best-fit(unlisted_skill=…)``);
  values are ``LO..HI[:STEP]`` (STEP default: five values from LO to HI) or a list ``a,b,c``;
- every combination (the grid, at most ``max_runs``) is replayed once, in parallel over worker processes;
- the best setting meets every target and has the lowest ``minimize`` (or highest ``maximize``) metric,
  ties going to the earlier setting of the grid; the grid order is the order of ``--vary`` options.

Parsing is strict: every error is a :class:`TuneError` naming the option and what was expected.
"""

from __future__ import annotations

import itertools
import math
import operator
import os
import re
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

from kfrouter.sim.report import metrics
from kfrouter.sim.runner import RunConfig, run_trace

NUMERIC_METRICS = (
    "abandon_rate",
    "wait_mean_s",
    "wait_p50_s",
    "wait_p90_s",
    "wait_p95_s",
    "wait_p99_s",
    "p_wait",
    "service_level_20s",
    "utilization",
    "handle_mean_s",
    "recontact_rate",
    "load_fairness",
    "affinity_hit_rate",
    "sticky_hit_rate",
    "preference_hit_rate",
    "abandoned",
    "served",
    "unserved",
)
_OPS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le,
    ">=": operator.ge,
    "<": operator.lt,
    ">": operator.gt,
}
# engine settings that can be varied, and the RunConfig field each sets
SETTINGS = {
    "overflow_after": "overflow_after_s",
    "preferred_wait": "preferred_wait_s",
    "reservation_timeout": "reservation_timeout_s",
}
MAX_RUNS = 500


class TuneError(ValueError):
    """A bad target, ``--vary`` or option; the message names it."""


@dataclass(frozen=True)
class Target:
    metric: str
    op: str
    value: float

    def holds(self, row: dict[str, Any]) -> bool:
        v = row.get(self.metric)
        return v is not None and _OPS[self.op](float(v), self.value)

    def __str__(self) -> str:
        return f"{self.metric}{self.op}{self.value:g}"


_TARGET = re.compile(r"^\s*([a-z0-9_]+)\s*(<=|>=|<|>)\s*(\S+)\s*$")


def parse_target(text: str) -> Target:
    """``"wait_p90_s<=60"`` → Target. TuneError names the expression."""
    m = _TARGET.match(text)
    if m is None:
        raise TuneError(f"--target {text!r}: expected METRIC OP NUMBER with OP one of <=, >=, <, >")
    metric, op, num = m.groups()
    if metric not in NUMERIC_METRICS:
        raise TuneError(f"--target {text!r}: unknown metric {metric!r} (one of {', '.join(NUMERIC_METRICS)})")
    try:
        value = float(num)
    except ValueError:
        raise TuneError(f"--target {text!r}: {num!r} is not a number") from None
    if not math.isfinite(value):
        raise TuneError(f"--target {text!r}: {num!r} is not a finite number")
    return Target(metric, op, value)


@dataclass(frozen=True)
class Vary:
    name: str  # a SETTINGS key, "policy", or "POLICY.OPTION"
    values: tuple[Any, ...]


def _number(text: str, where: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise TuneError(f"{where}: {text!r} is not a number") from None
    if not math.isfinite(v):
        raise TuneError(f"{where}: {text!r} is not a finite number")
    return v


def _range(text: str, where: str) -> tuple[float, ...]:
    """``LO..HI[:STEP]`` → the values LO, LO+STEP, … up to HI (HI included when on the grid)."""
    span, colon, step_text = text.partition(":")
    lo_text, _, hi_text = span.partition("..")
    lo, hi = _number(lo_text, where), _number(hi_text, where)
    if hi < lo:
        raise TuneError(f"{where}: the range {span!r} runs backwards")
    if colon:
        step = _number(step_text, where)
        if step <= 0:
            raise TuneError(f"{where}: STEP must be > 0, got {step_text!r}")
    else:
        step = (hi - lo) / 4 if hi > lo else 1.0
    n = math.floor((hi - lo) / step + 1e-9) + 1
    if n > MAX_RUNS:
        raise TuneError(f"{where}: {n} values (at most {MAX_RUNS})")
    return tuple(round(lo + i * step, 9) for i in range(n))


def parse_vary(text: str, policies: Sequence[str] = ()) -> Vary:
    """``NAME=LO..HI[:STEP]`` or ``NAME=a,b,c``. ``policies``: installed policy names (checked for
    ``policy=`` and ``POLICY.OPTION``; empty: not checked)."""
    name, eq, spec = text.partition("=")
    name = name.strip()
    where = f"--vary {text!r}"
    if not eq or not name or not spec.strip():
        raise TuneError(f"{where}: expected NAME=LO..HI[:STEP] or NAME=a,b,c")
    if name == "policy":
        values = tuple(v.strip() for v in spec.split(","))
        if any(not v for v in values):
            raise TuneError(f"{where}: an empty policy name")
        if len(set(values)) != len(values):
            raise TuneError(f"{where}: a policy is named twice")
        if policies:
            for v in values:
                if v.split("(", 1)[0] not in policies:
                    raise TuneError(f"{where}: unknown policy {v!r} (installed: {', '.join(policies)})")
        return Vary(name, values)
    if name not in SETTINGS:
        pol, dot, option = name.partition(".")
        if not dot or not pol or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", option):
            raise TuneError(
                f"{where}: unknown setting {name!r} (one of {', '.join([*SETTINGS, 'policy'])}, "
                "or POLICY.OPTION such as best-fit.unlisted_skill)"
            )
        if policies and pol not in policies:
            raise TuneError(f"{where}: unknown policy {pol!r} (installed: {', '.join(policies)})")
    spec = spec.strip()
    if ".." in spec:
        values_f = _range(spec, where)
    else:
        values_f = tuple(_number(v.strip(), where) for v in spec.split(","))
        if len(set(values_f)) != len(values_f):
            raise TuneError(f"{where}: a value is given twice")
    if name in SETTINGS and any(v < 0 for v in values_f):
        raise TuneError(f"{where}: seconds must be >= 0")
    return Vary(name, values_f)


@dataclass(frozen=True)
class Setting:
    """One point of the grid: the varied values by name, and the run configuration they make."""

    values: tuple[tuple[str, Any], ...]
    config: RunConfig

    def label(self) -> str:
        return ", ".join(f"{k}={_fmt(v)}" for k, v in self.values)


def _fmt(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def grid(base: RunConfig, varies: Sequence[Vary]) -> list[Setting]:
    """Every combination of the varied values, in order (the last ``--vary`` changes fastest)."""
    names = [v.name for v in varies]
    if len(set(names)) != len(names):
        raise TuneError(f"--vary: a setting is varied twice ({', '.join(names)})")
    combos = list(itertools.product(*(v.values for v in varies)))
    if len(combos) > MAX_RUNS:
        raise TuneError(f"--vary: {len(combos)} combinations, at most {MAX_RUNS}")
    out = []
    for combo in combos:
        values = tuple(zip(names, combo, strict=True))
        chosen = dict(values)
        policy = str(chosen.get("policy", base.policy))
        options = [(n.split(".", 1)[1], v) for n, v in values if "." in n and n.split(".", 1)[0] == policy]
        if options:
            if "(" in policy:
                raise TuneError(
                    f"--vary: policy {policy!r} already has options; vary them with POLICY.OPTION"
                )
            policy = f"{policy}({', '.join(f'{k}={_fmt(v)}' for k, v in options)})"
        fields: dict[str, Any] = {"policy": policy}
        for n, v in values:
            if n in SETTINGS:
                fields[SETTINGS[n]] = float(v)
        out.append(Setting(values, replace(base, **fields)))
    return out


def _run_one(job: tuple[str, RunConfig]) -> dict[str, Any]:
    path, cfg = job
    return metrics(run_trace(path, cfg))


def run_grid(path: str, settings: Sequence[Setting], jobs: int) -> list[dict[str, Any]]:
    """The report row of every setting (same order), over ``jobs`` worker processes (1: in this one)."""
    work = [(path, s.config) for s in settings]
    if jobs <= 1 or len(work) <= 1:
        return [_run_one(w) for w in work]
    with ProcessPoolExecutor(max_workers=min(jobs, len(work))) as pool:
        return list(pool.map(_run_one, work))


def best_index(
    rows: Sequence[dict[str, Any]], targets: Sequence[Target], objective: str, maximize: bool
) -> int | None:
    """Index of the best row meeting every target (None: no row does)."""
    best: int | None = None
    for i, row in enumerate(rows):
        if not all(t.holds(row) for t in targets) or row.get(objective) is None:
            continue
        if best is None:
            best = i
            continue
        a, b = float(row[objective]), float(rows[best][objective])
        if (a > b) if maximize else (a < b):
            best = i
    return best


def default_jobs() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


_TABLE = (
    "wait_mean_s",
    "wait_p90_s",
    "abandon_rate",
    "service_level_20s",
    "affinity_hit_rate",
    "handle_mean_s",
)


def table(
    settings: Sequence[Setting],
    rows: Sequence[dict[str, Any]],
    targets: Sequence[Target],
    objective: str,
    best: int | None,
) -> str:
    """The trade-off table: one line per setting, the target metrics and the usual ones, ``*`` = meets the
    targets, ``>`` = the best."""
    cols = list(dict.fromkeys([*(t.metric for t in targets), objective, *_TABLE]))
    names = [n for n, _ in settings[0].values] if settings else []
    widths = [max(len(n), *(len(_fmt(dict(s.values)[n])) for s in settings)) for n in names]
    head = "   " + "  ".join(f"{n:>{w}}" for n, w in zip(names, widths, strict=True))
    head += "".join(f"{c:>19}" for c in cols)
    lines = [head, "-" * len(head)]
    for i, (s, row) in enumerate(zip(settings, rows, strict=True)):
        mark = ">" if i == best else ("*" if all(t.holds(row) for t in targets) else " ")
        vals = dict(s.values)
        line = f"{mark}  " + "  ".join(f"{_fmt(vals[n]):>{w}}" for n, w in zip(names, widths, strict=True))
        line += "".join(f"{_cell(row.get(c)):>19}" for c in cols)
        lines.append(line)
    return "\n".join(lines)


def _cell(v: object) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)
