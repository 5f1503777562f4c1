"""``kfrouter report --html OUT``: the report (``router.report.build_report``) as one self-contained HTML
file — inline CSS, inline SVG charts from ``router.charts``, no script, nothing fetched from anywhere — that
can be mailed or opened offline.

Every value from the database (group and agent names) is escaped.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, tzinfo
from html import escape
from typing import Any

from kfrouter.router.charts import Series, bar_chart, line_chart, percent, seconds

_CSS = """
:root { color-scheme: light; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #111827; background: #f3f4f6;
       margin: 0; padding: 24px; }
main { max-width: 1180px; margin: 0 auto; }
h1 { font-size: 22px; margin: 0 0 4px; }
h2 { font-size: 16px; margin: 28px 0 10px; }
.muted { color: #6b7280; }
.tiles { display: grid; grid-template-columns: repeat(auto-fill, minmax(150px, 1fr)); gap: 10px; margin: 16px 0; }
.tile { background: #fff; border-radius: 8px; padding: 10px 14px; box-shadow: 0 1px 2px rgba(0,0,0,.06); }
.tile .label { color: #6b7280; font-size: 12px; text-transform: uppercase; letter-spacing: .03em; }
.tile .value { font-size: 22px; font-weight: 600; }
.charts { display: grid; grid-template-columns: repeat(auto-fill, minmax(560px, 1fr)); gap: 12px; }
.chart { background: #fff; border-radius: 8px; padding: 8px; box-shadow: 0 1px 2px rgba(0,0,0,.06); }
.chart svg { width: 100%; height: auto; display: block; }
table { border-collapse: collapse; background: #fff; width: 100%; font-size: 13px; border-radius: 8px;
        overflow: hidden; box-shadow: 0 1px 2px rgba(0,0,0,.06); }
th, td { padding: 5px 8px; border-bottom: 1px solid #eef0f3; text-align: right; white-space: nowrap; }
th:first-child, td:first-child { text-align: left; }
th { background: #f9fafb; font-weight: 600; color: #374151; }
dl { background: #fff; border-radius: 8px; padding: 12px 16px; font-size: 13px; }
dt { font-weight: 600; margin-top: 6px; }
dd { margin: 0 0 0 12px; color: #374151; }
"""


def _s(v: Any) -> str:
    return "–" if v is None else seconds(float(v))


def _p(v: Any) -> str:
    return "–" if v is None else f"{100 * float(v):.1f}%"


def _n(v: Any) -> str:
    return "–" if v is None else f"{v:,}" if isinstance(v, int) else str(v)


_COLUMNS: tuple[tuple[str, str, Callable[[Any], str]], ...] = (
    ("requests", "Requests", _n),
    ("served", "Served", _n),
    ("abandoned", "Abandoned", _n),
    ("waiting", "Waiting", _n),
    ("wait_p50_s", "Wait p50", _s),
    ("wait_p90_s", "p90", _s),
    ("wait_p95_s", "p95", _s),
    ("service_level_20s", "SL 20 s", _p),
    ("service_level", "SL {t}", _p),
    ("handle_mean_s", "Handle (mean)", _s),
    ("utilisation", "Utilisation", _p),
    ("notifications", "Notified", _n),
)


def _table(first: str, key: str, rows: Sequence[dict[str, Any]], threshold: str) -> str:
    head = "".join(f"<th>{escape(label.format(t=threshold))}</th>" for _k, label, _f in _COLUMNS)
    body = []
    for r in rows:
        cells = "".join(f"<td>{escape(f(r[k]))}</td>" for k, _l, f in _COLUMNS)
        body.append(f"<tr><td>{escape(str(r[key]))}</td>{cells}</tr>")
    return (
        f"<table><thead><tr><th>{escape(first)}</th>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
    )


def _when(iso: str) -> str:
    """``2026-12-01T08:00:00+08:00`` as ``2026-12-01 08:00``."""
    return iso[:16].replace("T", " ")


def _tile(label: str, value: str) -> str:
    return f'<div class="tile"><div class="label">{escape(label)}</div><div class="value">{escape(value)}</div></div>'


def _chart(svg: str) -> str:
    return f'<div class="chart">{svg}</div>'


def _every(n: int, most: int = 16) -> int:
    return max(1, -(-n // most))


def render_html(report: dict[str, Any]) -> str:
    """The whole page as a string."""
    w, t = report["window"], report["totals"]
    threshold = f"{report['threshold_s']:g} s"
    days, hours, groups, agents = report["days"], report["hours"], report["groups"], report["agents"]
    tiles = "".join(
        (
            _tile("Requests", _n(t["requests"])),
            _tile("Served", _n(t["served"])),
            _tile("Abandoned", f"{_n(t['abandoned'])} ({_p(t['abandon_rate'])})"),
            _tile("Wait p50 / p90", f"{_s(t['wait_p50_s'])} / {_s(t['wait_p90_s'])}"),
            _tile("Service level 20 s", _p(t["service_level_20s"])),
            _tile(f"Service level {threshold}", _p(t["service_level"])),
            _tile("Handle time (mean)", _s(t["handle_mean_s"])),
            _tile("Utilisation", _p(t["utilisation"])),
            _tile("Notifications", _n(t["notifications"])),
        )
    )
    day_labels = [d["date"][5:] for d in days]
    charts = [
        bar_chart(
            "Requests per day",
            day_labels,
            [
                Series("served", [d["served"] for d in days], "#16a34a"),
                Series("abandoned", [d["abandoned"] for d in days], "#dc2626"),
                Series("still waiting", [d["waiting"] for d in days], "#d97706"),
            ],
            stacked=True,
            label_every=_every(len(days)),
        ),
        line_chart(
            "Service level per day",
            [
                Series("within 20 s", [d["service_level_20s"] for d in days]),
                Series(f"within {threshold}", [d["service_level"] for d in days]),
            ],
            [(i, day_labels[i]) for i in range(0, len(days), _every(len(days)))],
            y_max=1.0,
            y_format=percent,
            target=0.8,
        ),
        bar_chart(
            "Requests by hour of the day",
            [f"{h['hour']:02d}" for h in hours],
            [
                Series("served", [h["served"] for h in hours], "#16a34a"),
                Series("abandoned", [h["abandoned"] for h in hours], "#dc2626"),
            ],
            stacked=True,
            label_every=2,
        ),
        line_chart(
            "Wait by hour of the day",
            [
                Series("p50", [h["wait_p50_s"] for h in hours]),
                Series("p90", [h["wait_p90_s"] for h in hours]),
                Series("p95", [h["wait_p95_s"] for h in hours]),
            ],
            [(h, f"{h:02d}:00") for h in range(0, 24, 3)],
            y_format=seconds,
        ),
        bar_chart(
            "Service level per group",
            [g["label"] for g in groups],
            [
                Series("within 20 s", [g["service_level_20s"] for g in groups]),
                Series(f"within {threshold}", [g["service_level"] for g in groups]),
            ],
            y_max=1.0,
            y_format=percent,
        ),
        bar_chart(
            "Utilisation per agent",
            [a["agent"].partition("@")[0] for a in agents],
            [Series("utilisation", [a["utilisation"] for a in agents], "#7c3aed")],
            y_max=max([1.0, *(a["utilisation"] or 0.0 for a in agents)]),
            y_format=percent,
            label_every=_every(len(agents), 12),
        ),
    ]
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>kfrouter report · {escape(_when(w["since_local"]))} – {escape(_when(w["until_local"]))}</title>
<style>{_CSS}</style>
</head>
<body>
<main>
<h1>kfrouter report</h1>
<div class="muted">{escape(_when(w["since_local"]))} – {escape(_when(w["until_local"]))} ({escape(w["tz"])}) ·
{escape(report["database"])} · service level threshold {escape(threshold)}</div>
<section class="tiles">{tiles}</section>
<section class="charts">{"".join(_chart(c) for c in charts)}</section>
<h2>Per day</h2>
{_table("Day", "date", days, threshold)}
<h2>Per hour of the day</h2>
{_table("Hour", "hour", hours, threshold)}
<h2>Per group</h2>
{_table("Group", "label", groups, threshold)}
<h2>Per agent</h2>
{_table("Agent", "agent", agents, threshold)}
<h2>What the figures mean</h2>
<dl>
<dt>Requests</dt><dd>requests for a human, counted in the day and hour they were made: served + abandoned +
still waiting + superseded (asked again before being served).</dd>
<dt>Wait</dt><dd>from the request to the start of the session, over served customers (p50/p90/p95).</dd>
<dt>Service level</dt><dd>customers served within 20 s (and within {escape(threshold)}) divided by served +
abandoned.</dd>
<dt>Handle time</dt><dd>from the start of a session to its end.</dd>
<dt>Utilisation</dt><dd>session time divided by the agents' online time times their maximum sessions: the
share of session slots in use while agents were online. A group counts every agent who serves it.</dd>
<dt>Notifications</dt><dd>messages sent to waiting customers (their place, estimates).</dd>
</dl>
</main>
</body>
</html>
"""


# ============================================================================ the supervisor page's history

# chart name -> (title, field of the history, y axis maximum or None, format)
HISTORY_CHARTS: dict[str, tuple[str, str, float | None, Callable[[float], str]]] = {
    "waiting": ("Waiting (average per 15 min)", "waiting", None, lambda v: f"{v:g}"),
    "in_session": ("In session (average per 15 min)", "in_session", None, lambda v: f"{v:g}"),
    "service_level": ("Service level per 15 min (served within {t})", "service_level", 1.0, percent),
    "abandoned": ("Abandoned per 15 min (share of those who asked)", "abandon_rate", 1.0, percent),
}


def history_chart(history: dict[str, Any], name: str, tz: tzinfo) -> str:
    """One chart of ``router.report.build_history``'s output: a line per group (and everyone, when there
    are several groups), clock times of ``tz`` on the x axis."""
    title, field, y_max, fmt = HISTORY_CHARTS[name]
    title = title.format(t=f"{history['threshold_s']:g} s")
    groups = history["groups"]
    series = [Series(g["label"], g[field]) for g in groups]
    if len(groups) != 1:
        series.append(Series("everyone", history["all"][field], "#111827"))
    start, slot = history["start"], history["slot_s"]
    labels = []
    for i in range(history["slots"]):
        local = datetime.fromtimestamp(start + i * slot, tz)
        if local.minute == 0 and local.hour % 4 == 0:
            labels.append((i, local.strftime("%H:%M")))
    return line_chart(title, series, labels, width=560, height=200, y_max=y_max, y_format=fmt, y_floor=1.0)
