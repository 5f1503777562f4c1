"""Metrics of simulator runs, and the report: a text table (one column per policy) or one JSON object.

Definitions (docs/simulator.md has the long form):

- waits are measured from arrival to session creation, over *served* customers; percentiles use the
  nearest-rank method on the sorted waits — exact: the run keeps every served wait in an ``array('d')``
  (``sim.tally.Tally``, 8 bytes a customer) and nothing else per customer;
- ``service_level_20s``: share of all arrivals served within 20 s;
- ``utilization``: session-seconds / (max_sessions × online seconds), agents' online time clipped to the
  last customer event;
- ``handle_mean_s``: session-seconds per session that served a customer (ghost sessions excluded): with
  match-dependent service (``sim/service.py``) it shows how much agent time the routing costs;
- ``recontact_rate`` (only when the trace models re-contact): sessions that did not resolve — the
  customer came back — per served customer; the re-contacts are arrivals, counted in ``customers``;
- ``load_fairness``: Jain's index (Σx)² / (n Σx²) of per-agent session-seconds over the agents that were
  online before the last customer event (agents whose shift starts later do not count);
- hit rates are shares of *served* customers: ``affinity_hit_rate`` among those with a group,
  ``sticky_hit_rate`` among returning customers (back within the engine's sticky window of when they
  last left), ``preference_hit_rate`` among those naming an agent;
- ``messages_sent``, ``messages_per_customer_max``, ``notify_budget_violations`` (``sim run --notify``): the
  texts the Desk's notifier planned for waiting customers, as the daemon sends them; the most one customer
  got in one waiting spell; texts past the budget (must be 0: checked independently of the notifier).
- ``eta_*``: accuracy of the wait estimates given to customers who had to wait (``sim.eta``,
  docs/estimates.md): ``eta_rrmse`` = RMSE / mean actual wait, ``eta_bias_s``, and the baselines.

Everything except ``wall_s`` and ``customers_per_s`` is a function of the trace, the policy and the seed.

Replications (``build_replicated_report``): every numeric metric of a policy is the mean over the
replications, with ``<metric>_ci95``, the half-width of its 95 % Student-t confidence interval
(``sim.confidence``), over the replications where the metric is defined (None with fewer than two);
``vs_<baseline>`` compares the means; each replication's own rows are kept under ``replications``.
"""

from __future__ import annotations

import json
import math
from bisect import bisect_right
from collections.abc import Sequence
from typing import Any, TypeGuard

from kfrouter.sim.confidence import mean_ci95
from kfrouter.sim.runner import RunResult

BASELINE = "wechat-native"
SERVICE_LEVEL_S = 20.0
_NONDETERMINISTIC = ("wall_s", "customers_per_s")


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of already sorted values."""
    if not sorted_values:
        raise ValueError("percentile of no values")
    rank = max(1, math.ceil(q / 100.0 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def jain(values: Sequence[float]) -> float | None:
    """Jain's fairness index: 1 when all equal, 1/n when one takes everything; None when all zero."""
    total = sum(values)
    squares = sum(v * v for v in values)
    if not values or squares == 0:
        return None
    return total * total / (len(values) * squares)


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 6)


def metrics(res: RunResult) -> dict[str, Any]:
    """The report row of one run."""
    n = res.customers
    tally = res.tally
    waits = sorted(tally.waits)
    served = len(waits)
    abandoned = tally.abandoned
    unserved = n - served - abandoned
    end = res.end_t
    capacity_s = 0.0
    busy: list[float] = []  # per agent online at some time before the end
    sessions = sum(st.served for st in res.agents.values())
    handle_s = math.fsum(st.busy_s for st in res.agents.values())
    for st in res.agents.values():
        online_s = sum(max(0.0, min(off, end) - on) for on, off, _cap in st.intervals)
        capacity_s += sum(max(0.0, min(off, end) - on) * cap for on, off, cap in st.intervals)
        if online_s > 0 or st.busy_s > 0:
            busy.append(st.busy_s)
    row: dict[str, Any] = {
        "policy": res.policy,
        "customers": n,
        "served": served,
        "abandoned": abandoned,
        "unserved": unserved,
        "abandon_rate": _r(abandoned / n) if n else None,
        "wait_mean_s": _r(math.fsum(waits) / served) if served else None,
        "wait_p50_s": _r(percentile(waits, 50)) if served else None,
        "wait_p90_s": _r(percentile(waits, 90)) if served else None,
        "wait_p95_s": _r(percentile(waits, 95)) if served else None,
        "wait_p99_s": _r(percentile(waits, 99)) if served else None,
        "p_wait": _r((served - bisect_right(waits, 0.0)) / served) if served else None,
        "service_level_20s": _r(bisect_right(waits, SERVICE_LEVEL_S) / n) if n else None,
        "utilization": _r(math.fsum(busy) / capacity_s) if capacity_s > 0 else None,
        "handle_mean_s": _r(handle_s / sessions) if sessions else None,
        "load_fairness": _r(jain(busy)),
        "affinity_hit_rate": _r(tally.affinity.rate()),
        "sticky_hit_rate": _r(tally.sticky.rate()),
        "preference_hit_rate": _r(tally.preference.rate()),
        "capacity_violations": res.capacity_violations,
        "double_assignments": res.double_assignments,
        "absorbed_arrivals": res.absorbed_arrivals,
        "ghost_sessions": res.ghost_sessions,
        "reassignments": res.reassignments,
        "sessions_cut": res.sessions_cut,
        "api_calls": res.api_calls,
        "api_failures": res.api_failures,
        "texts_sent": res.texts_sent,
        "events": res.events + res.ticks,
        "end_s": _r(end),
        "wall_s": round(res.wall_s, 3),
        "customers_per_s": round(n / res.wall_s, 1) if res.wall_s > 0 else None,
    }
    if res.header.meta.get("recontact") is not None:  # re-contact modelled (sim/service.py)
        row["recontact_rate"] = _r(res.recontacts / served) if served else None
    if res.unrouted_groups:
        row["unrouted_groups"] = sorted(res.unrouted_groups)
    if res.config.notify:  # texts planned by the production notifier (RunConfig.notify)
        row["messages_sent"] = res.texts_sent
        row["messages_per_customer_max"] = res.messages_per_customer_max
        row["notify_budget_violations"] = res.notify_budget_violations
    if res.eta is not None:
        row.update(res.eta)
    return row


def compare(rows: list[dict[str, Any]], baseline: str = BASELINE) -> None:
    """Add ``vs_<baseline>`` to every other row: ratios of mean wait, p90 wait and abandonment
    (policy / baseline: below 1 is better) and the service-level gain in points."""
    base = next((r for r in rows if r["policy"] == baseline), None)
    if base is None:
        return

    def ratio(a: float | None, b: float | None) -> float | None:
        if a is None or b is None:
            return None
        if b == 0:
            return 1.0 if a == 0 else None
        return round(a / b, 4)

    for r in rows:
        if r is base:
            continue
        sl = r["service_level_20s"]
        bsl = base["service_level_20s"]
        r[f"vs_{baseline}"] = {
            "wait_mean_ratio": ratio(r["wait_mean_s"], base["wait_mean_s"]),
            "wait_p90_ratio": ratio(r["wait_p90_s"], base["wait_p90_s"]),
            "abandon_ratio": ratio(r["abandon_rate"], base["abandon_rate"]),
            "service_level_gain": None if sl is None or bsl is None else round(sl - bsl, 6),
        }


def trace_summary(res: RunResult, file: str | None) -> dict[str, Any]:
    h = res.header
    return {
        "file": file,
        "name": h.name,
        "version": h.version,
        "seed": h.seed,
        "created_by": h.created_by,
        "customers": res.customers + res.absorbed_arrivals,
        "agents": len(res.agents),
        "skipped": dict(sorted(res.skipped.items())),
    }


def build_report(
    results: list[RunResult], file: str | None = None, baseline: str = BASELINE
) -> dict[str, Any]:
    if not results:
        raise ValueError("no runs to report")
    rows = [metrics(r) for r in results]
    compare(rows, baseline)
    cfg = results[0].config
    return {
        "trace": trace_summary(results[0], file),
        "run": {
            "seed": cfg.seed,
            "overflow_after_s": cfg.overflow_after_s,
            "create_latency_s": cfg.create_latency_s,
            "create_failure_rate": cfg.create_failure_rate,
            "baseline": baseline if any(r["policy"] == baseline for r in rows) else None,
        },
        "policies": rows,
    }


def _is_number(v: object) -> TypeGuard[float]:
    return isinstance(v, int | float) and not isinstance(v, bool)


def mean_row(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One policy's rows from several replications as one: every numeric metric's mean and ``_ci95``;
    any other value kept when the replications agree, else the list of them."""
    out: dict[str, Any] = {"policy": rows[0]["policy"]}
    for key in rows[0]:
        if key == "policy" or key.startswith("vs_"):
            continue  # compare() works on the means
        values = [r.get(key) for r in rows]
        numbers = [v for v in values if _is_number(v)]
        if numbers and all(v is None or _is_number(v) for v in values):
            mean, half = mean_ci95(numbers)
            out[key] = _r(mean)
            out[f"{key}_ci95"] = _r(half)
        elif all(v is None for v in values):  # a metric undefined in every replication
            out[key] = None
            out[f"{key}_ci95"] = None
        else:
            out[key] = values[0] if all(v == values[0] for v in values) else values
    return out


def build_replicated_report(
    replications: list[list[RunResult]], file: str | None = None, baseline: str = BASELINE
) -> dict[str, Any]:
    """The report of the same policies over several replications (each a list of results in the same
    policy order): means with 95 % intervals per policy, each replication's rows under ``replications``.
    One replication gives the plain report."""
    if not replications:
        raise ValueError("no replications to report")
    if len(replications) == 1:
        return build_report(replications[0], file, baseline)
    reports = [build_report(results, file, baseline) for results in replications]
    names = [r["policy"] for r in reports[0]["policies"]]
    for k, rep in enumerate(reports):
        if [r["policy"] for r in rep["policies"]] != names:
            raise ValueError(f"replication {k} ran other policies than replication 0")
    rows = [mean_row([rep["policies"][i] for rep in reports]) for i in range(len(names))]
    compare(rows, baseline)
    return {
        "trace": reports[0]["trace"],
        "run": {**reports[0]["run"], "replications": len(reports)},
        "policies": rows,
        "replications": [
            {
                "replication": k,
                "trace_seed": results[0].header.seed,
                "run_seed": results[0].config.seed,
                "policies": rep["policies"],
            }
            for k, (results, rep) in enumerate(zip(replications, reports, strict=True))
        ],
    }


def to_json(report: dict[str, Any]) -> str:
    return json.dumps(report, ensure_ascii=False, sort_keys=False, allow_nan=False)


def strip_nondeterministic(report: dict[str, Any]) -> dict[str, Any]:
    """The report without the wall-clock fields and their intervals (for comparing runs)."""
    drop = {*_NONDETERMINISTIC, *(f"{k}_ci95" for k in _NONDETERMINISTIC)}

    def rows(policies: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{k: v for k, v in row.items() if k not in drop} for row in policies]

    out = {**report, "policies": rows(report["policies"])}
    if "replications" in report:
        out["replications"] = [{**r, "policies": rows(r["policies"])} for r in report["replications"]]
    return out


_TABLE_ROWS = (
    "customers",
    "served",
    "abandoned",
    "unserved",
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
    "eta_rrmse",
    "eta_bias_s",
    "eta_rrmse_qlen",
    "eta_rrmse_les",
    "eta_rrmse_hol",
    "messages_sent",
    "messages_per_customer_max",
    "notify_budget_violations",
    "capacity_violations",
    "double_assignments",
    "api_calls",
    "events",
    "wall_s",
    "customers_per_s",
)


_OPTIONAL_ROWS = frozenset(
    k for k in _TABLE_ROWS if k.startswith(("eta_", "messages_", "notify_")) or k == "recontact_rate"
)


def _cell(v: object, ci95: object = None) -> str:
    if v is None:
        return "-"
    text = str(v) if not isinstance(v, float) else f"{v:.4g}" if abs(v) < 1e5 else f"{v:.0f}"
    if isinstance(ci95, float | int) and not isinstance(ci95, bool):
        text += f"±{ci95:.2g}"
    return text


def to_text(report: dict[str, Any]) -> str:
    """A fixed-width table, metrics down, policies across, then the comparison with the baseline."""
    rows = report["policies"]
    t = report["trace"]
    lines = [
        f"trace {t['name'] or '-'} ({t['file'] or 'in memory'}): {t['customers']} arrivals, {t['agents']} agents"
        + (f", skipped {t['skipped']}" if t["skipped"] else "")
    ]
    k = report["run"].get("replications")
    if k:
        lines.append(f"{k} replications: mean ± half-width of the 95% confidence interval")
    names = [r["policy"] for r in rows]
    table = [
        (key, [_cell(r.get(key), r.get(f"{key}_ci95")) for r in rows])
        for key in _TABLE_ROWS
        # not measured in this run (sim run --eta, --notify)
        if not (key in _OPTIONAL_ROWS and all(r.get(key) is None for r in rows))
    ]
    width = max(12, *(len(n) + 2 for n in names), *(len(c) + 2 for _, cells in table for c in cells))
    head = f"{'':<26}" + "".join(f"{n:>{width}}" for n in names)
    lines += [head, "-" * len(head)]
    lines += [f"{key:<26}" + "".join(f"{c:>{width}}" for c in cells) for key, cells in table]
    baseline = report["run"]["baseline"]
    if baseline:
        lines.append("")
        lines.append(f"compared with {baseline} (ratio = policy / {baseline}; below 1 is better):")
        for r in rows:
            vs = r.get(f"vs_{baseline}")
            if not vs:
                continue
            lines.append(
                f"  {r['policy']:<20} mean wait x{_cell(vs['wait_mean_ratio'])}, p90 wait x{_cell(vs['wait_p90_ratio'])},"
                f" abandonment x{_cell(vs['abandon_ratio'])}, service level {_signed(vs['service_level_gain'])}"
            )
    for r in rows:
        if r.get("unrouted_groups"):
            lines.append(f"note: {r['policy']}: groups without a route (no overflow): {r['unrouted_groups']}")
    return "\n".join(lines)


def _signed(v: float | None) -> str:
    return "-" if v is None else f"{v * 100:+.1f} points"
