"""``kfrouter report --db kfrouter.db [--since DATE] [--until DATE] [--threshold-s N] [--tz ZONE]
[--json | --html OUT]``: waits, service level, abandonment, handle time, utilisation and notifications per
day, hour of the day, group and agent, from a kfrouter database (docs/observability.md).

The database is only read (``router.traffic``: read-only, one snapshot), so a live daemon's database can be
reported on while it runs. Output: a text summary, the report as JSON (``--json``) or one self-contained HTML
file with charts (``--html OUT``).

Exit codes: 0 done; 2 bad arguments (a date that does not parse, ``--since`` after ``--until``, an unknown
time zone) or a database that cannot be read (missing, not kfrouter's, newer schema). Each error names the
argument or the file and what was expected.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable
from datetime import date, datetime, timedelta, tzinfo
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

EXIT_USAGE = 2


class _Usage(Exception):
    """A bad argument: reported on stderr with exit 2."""


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "report",
        help="waits, service level, abandonment and utilisation from a kfrouter database",
        description="Report on recorded traffic per day, hour of the day, group and agent. The database is "
        "opened read-only: reporting on a running daemon's database is safe.",
    )
    p.add_argument("--db", required=True, metavar="FILE", help="the kfrouter SQLite database ([store] path)")
    p.add_argument(
        "--since",
        metavar="DATE",
        help="start (included): YYYY-MM-DD, an ISO 8601 time (without an offset: in --tz) or unix seconds; "
        "default: the first recorded request",
    )
    p.add_argument(
        "--until",
        metavar="DATE",
        help="end (excluded); a bare date YYYY-MM-DD means the end of that day; default: the last recorded "
        "moment",
    )
    p.add_argument(
        "--threshold-s",
        type=_threshold,
        default=20.0,
        metavar="N",
        help="service level threshold in seconds, besides the fixed 20 s one (default 20)",
    )
    p.add_argument(
        "--tz",
        metavar="ZONE",
        help="time zone of the days and hours, e.g. Asia/Shanghai (default: this machine's UTC offset)",
    )
    p.add_argument(
        "--default-capacity",
        type=_capacity,
        default=3,
        metavar="N",
        help="max sessions of an agent whose online entry does not record it (default 3)",
    )
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print the report as one JSON object")
    out.add_argument(
        "--html", metavar="OUT", help="write one self-contained HTML file with charts ('-': stdout)"
    )
    p.set_defaults(func=_report)


def _threshold(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {text!r}")
    return value


def _capacity(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= 1000:
        raise argparse.ArgumentTypeError(f"expected an integer 1..1000, got {text!r}")
    return value


def time_zone(name: str | None) -> tzinfo:
    """``--tz``: a zone name, or this machine's current UTC offset."""
    if name is None:
        local = datetime.now().astimezone().tzinfo
        assert local is not None
        return local
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise _Usage(
            f"--tz: unknown time zone {name!r} (expected a name such as Asia/Shanghai or UTC)"
        ) from None


def parse_when(option: str, text: str, tz: tzinfo, *, end_of_day: bool = False) -> float:
    """A ``--since``/``--until`` value as unix seconds: unix seconds, ``YYYY-MM-DD`` (midnight in ``tz``;
    with ``end_of_day`` the next midnight) or an ISO 8601 time (in ``tz`` when it has no offset)."""
    text = text.strip()
    try:
        value = float(text)
    except ValueError:
        pass
    else:
        if not math.isfinite(value):
            raise _Usage(f"{option}: expected a date, a time or unix seconds, got {text!r}")
        return value
    try:
        day = date.fromisoformat(text)
    except ValueError:
        day = None
    if day is not None and len(text) == 10:
        start = datetime(day.year, day.month, day.day, tzinfo=tz)
        return (start + timedelta(days=1) if end_of_day else start).timestamp()
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise _Usage(
            f"{option}: expected YYYY-MM-DD, an ISO 8601 time such as 2026-12-01T08:00 or "
            f"2026-12-01T08:00+08:00, or unix seconds; got {text!r}"
        ) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=tz)
    return dt.timestamp()


def _report(args: argparse.Namespace) -> int:
    from kfrouter.router.report import ReportError, build_report
    from kfrouter.router.traffic import TrafficError, read_traffic

    try:
        tz = time_zone(args.tz)
        since = None if args.since is None else parse_when("--since", args.since, tz)
        until = None if args.until is None else parse_when("--until", args.until, tz, end_of_day=True)
        if since is not None and until is not None and since >= until:
            raise _Usage(f"--since ({args.since}) must be before --until ({args.until})")
        traffic = read_traffic(args.db, since, until)
        report = build_report(
            traffic, tz=tz, threshold_s=args.threshold_s, default_capacity=args.default_capacity
        )
    except (_Usage, TrafficError, ReportError) as exc:
        print(f"kfrouter report: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.json:
        json.dump(report, sys.stdout, ensure_ascii=False, indent=1)
        sys.stdout.write("\n")
        return 0
    if args.html is not None:
        from kfrouter.router.report_html import render_html

        page = render_html(report)
        if args.html == "-":
            sys.stdout.write(page)
            return 0
        try:
            Path(args.html).write_text(page, encoding="utf-8")
        except OSError as exc:
            print(
                f"kfrouter report: error: --html: cannot write {args.html}: {exc.strerror}", file=sys.stderr
            )
            return EXIT_USAGE
        print(f"wrote {args.html} ({len(page.encode()):,} bytes)", file=sys.stderr)
        return 0
    sys.stdout.write(render_text(report))
    return 0


# ============================================================================ text


def _fmt_s(v: Any) -> str:
    from kfrouter.router.charts import seconds

    return "-" if v is None else seconds(float(v))


def _fmt_pct(v: Any) -> str:
    return "-" if v is None else f"{100 * float(v):.1f}%"


def _fmt_n(v: Any) -> str:
    return "-" if v is None else str(v)


_COLUMNS: tuple[tuple[str, str, Callable[[Any], str]], ...] = (
    ("requests", "requests", _fmt_n),
    ("served", "served", _fmt_n),
    ("abandoned", "abandoned", _fmt_n),
    ("wait_p50_s", "wait p50", _fmt_s),
    ("wait_p90_s", "p90", _fmt_s),
    ("wait_p95_s", "p95", _fmt_s),
    ("service_level_20s", "SL 20s", _fmt_pct),
    ("service_level", "SL {t}", _fmt_pct),
    ("handle_mean_s", "handle", _fmt_s),
    ("utilisation", "util", _fmt_pct),
    ("notifications", "notified", _fmt_n),
)


def _table(title: str, key: str, rows: list[dict[str, Any]], threshold: str) -> list[str]:
    head = [title] + [label.format(t=threshold) for _k, label, _f in _COLUMNS]
    body = [[str(r[key])] + [f(r[k]) for k, _l, f in _COLUMNS] for r in rows]
    widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head))]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    return [line(head), *(line(r) for r in body), ""]


def render_text(report: dict[str, Any]) -> str:
    """The report as plain-text tables (the default output)."""
    w = report["window"]
    t = report["threshold_s"]
    threshold = f"{t:g}s"
    lines = [
        f"kfrouter report: {report['database']}",
        f"window {w['since_local']} .. {w['until_local']} ({w['tz']})",
        "",
        *_table("total", "name", [{"name": "all", **report["totals"]}], threshold),
        *_table("day", "date", report["days"], threshold),
        *_table("hour", "hour", [r for r in report["hours"] if r["requests"] or r["session_s"]], threshold),
        *_table("group", "label", report["groups"], threshold),
        *_table("agent", "agent", report["agents"], threshold),
    ]
    return "\n".join(lines)
