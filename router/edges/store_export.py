"""Recorded traffic as a simulator trace (spec/trace-format.md, version 1): what ``Store.export_trace``
writes, from the session log, the agent events and the stored agent settings read in one snapshot.

Rules: pure (no database here: the store reads, this module writes the lines); times are relative to
``since`` (default: the first logged input); customers still waiting or in session are skipped; a
customer who left was never served, so their ``service_s`` is the median of the served ones (60 s if
none), marked ``"x-imputed_service": true``.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Mapping, Sequence
from typing import IO, Any

from kfrouter.router.edges.store_values import AgentSettings, ExportStats, SessionRow, StoreError

AGENT_EVENT_KINDS = ("agent_online", "agent_offline")
_MIN_DURATION_S = 0.001  # a trace needs service_s / patience_s > 0
_DEFAULT_SERVICE_S = 60.0  # imputed service time when an export has no served customer to learn from

AgentEvent = tuple[int, float, str, dict[str, Any]]  # (seq, t, kind, payload) as Store.events gives them


def write_trace(
    out: IO[str],
    cases: Sequence[SessionRow],
    agent_events: Sequence[AgentEvent],
    agents: Mapping[str, AgentSettings],
    *,
    since: float | None,
    name: str,
    default_capacity: int,
) -> ExportStats:
    """Write the trace of ``cases`` (the session log from ``since``) to ``out``; see the module docstring.
    Agent lines come from ``agent_events``; an agent who served someone but never appears there is put
    online at ``t = 0`` with its settings from ``agents``."""
    served: list[tuple[SessionRow, float]] = []  # (case, service_s)
    left: list[tuple[SessionRow, float]] = []  # (case, patience_s)
    for c in cases:
        if c.outcome is None or c.ended_at is None:
            continue
        if c.outcome == "served" and c.started_at is not None:
            served.append((c, max(_MIN_DURATION_S, c.ended_at - c.started_at)))
        elif c.started_at is None:
            left.append((c, max(_MIN_DURATION_S, c.ended_at - c.requested_at)))
    firsts = [c.requested_at for c in cases] + [t for _s, t, _k, _p in agent_events]
    t0 = since if since is not None else (min(firsts) if firsts else 0.0)
    lines: list[tuple[float, int, dict[str, Any]]] = []  # (t, 0 agent / 1 arrival, line)

    # Agent lines: the state before t0 folded into t = 0, later changes at their time.
    before: dict[str, dict[str, Any] | None] = {}
    for seq, t, kind, payload in agent_events:
        line = _agent_line(seq, kind, payload, default_capacity)
        if t < t0:
            before[line["agent"]] = line if kind == "agent_online" else None
        else:
            lines.append((t - t0, 0, {"t": t - t0, **line}))
    for initial in before.values():
        if initial is not None:
            lines.append((0.0, 0, {"t": 0.0, **initial}))
    described = {p.get("agent") for _s, _t, _k, p in agent_events}
    for kf in sorted({c.kf_account for c, _ in served if c.kf_account is not None} - described):
        a = agents.get(kf)
        line = {
            "t": 0.0,
            "kind": "agent_online",
            "agent": kf,
            "groups": list(a.groups) if a is not None and a.groups is not None else [],
            "max_sessions": a.max_sessions
            if a is not None and a.max_sessions is not None
            else default_capacity,
        }
        lines.append((0.0, 0, line))

    imputed = statistics.median(s for _c, s in served) if served else _DEFAULT_SERVICE_S
    for c, service in served:
        lines.append((c.requested_at - t0, 1, _arrival(c, t0, service, None)))
    for c, patience in left:
        lines.append(
            (c.requested_at - t0, 1, {**_arrival(c, t0, imputed, patience), "x-imputed_service": True})
        )

    lines.sort(key=lambda item: (item[0], item[1]))
    header = {
        "kind": "header",
        "version": 1,
        "name": name,
        "seed": None,
        "created_by": "kfrouter trace export",
        "recorded_from": t0,
    }
    out.write(_dumps_line(header))
    for _t, _order, line in lines:
        out.write(_dumps_line(line))
    return ExportStats(
        arrivals=len(served) + len(left),
        served=len(served),
        left=len(left),
        open=len(cases) - len(served) - len(left),
        agent_lines=sum(1 for _t, order, _l in lines if order == 0),
    )


def _agent_line(seq: int, kind: str, payload: Mapping[str, Any], default_capacity: int) -> dict[str, Any]:
    agent = payload.get("agent")
    if not isinstance(agent, str) or not agent:
        raise StoreError(f"event {seq} ({kind}): payload needs a non-empty 'agent', got {payload!r}")
    if kind == "agent_offline":
        return {"kind": kind, "agent": agent}
    groups = payload.get("groups") or []
    cap = payload.get("max_sessions") or default_capacity
    if not isinstance(groups, list) or not all(isinstance(g, str) and g for g in groups):
        raise StoreError(f"event {seq} (agent_online): 'groups' must be a list of names, got {groups!r}")
    if not isinstance(cap, int) or isinstance(cap, bool) or cap < 1:
        raise StoreError(f"event {seq} (agent_online): 'max_sessions' must be an integer >= 1, got {cap!r}")
    line = {"kind": kind, "agent": agent, "groups": groups, "max_sessions": cap}
    nickname = payload.get("nickname")
    if isinstance(nickname, str) and nickname:
        line["nickname"] = nickname  # replays tell customers the same name
    return line


def _arrival(c: SessionRow, t0: float, service_s: float, patience_s: float | None) -> dict[str, Any]:
    line: dict[str, Any] = {
        "t": c.requested_at - t0,
        "kind": "arrival",
        "customer": c.openid,
        "group": c.group,
        "priority": c.priority,
        "service_s": service_s,
        "patience_s": patience_s,
    }
    if c.text:
        line["text"] = c.text
    if c.preferred:
        line["preferred_agent"] = c.preferred
    if c.tags:
        line["tags"] = list(c.tags)
    return line


def _dumps_line(obj: Mapping[str, Any]) -> str:
    return json.dumps(obj, ensure_ascii=False, allow_nan=False) + "\n"
