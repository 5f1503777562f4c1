"""Small SVG charts drawn here, for the HTML report and the supervisor page's history (no JavaScript, no
library, no CDN): ``line_chart`` (series over evenly spaced slots; a missing value breaks the line) and
``bar_chart`` (categories, one bar per series side by side, or stacked).

Rules of this module:

- Pure: strings in, one ``<svg>`` element out. Every text is escaped (group and agent names come from
  configuration and WeChat).
- Presentation attributes only (``fill=``, ``stroke=``), never ``style=``: the supervisor page's
  Content-Security-Policy forbids inline styles, and an SVG served as an image has no stylesheet.
- The y axis starts at 0 and ends at a round number at or above the largest value (or ``y_max``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from html import escape
from typing import NamedTuple

PALETTE = ("#2563eb", "#16a34a", "#dc2626", "#d97706", "#7c3aed", "#0891b2", "#db2777", "#4b5563")
_FONT = 'font-family="system-ui, -apple-system, Segoe UI, sans-serif"'
_LEFT, _RIGHT, _TOP, _BOTTOM = 52, 14, 40, 34


class Series(NamedTuple):
    name: str
    values: Sequence[float | None]
    color: str = ""


def color(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def nice_ceiling(x: float) -> float:
    """The smallest of 1, 2, 2.5, 5 times a power of ten that is >= ``x`` (1 for x <= 0)."""
    if not math.isfinite(x) or x <= 0:
        return 1.0
    p = 10.0 ** math.floor(math.log10(x))
    for m in (1.0, 2.0, 2.5, 5.0, 10.0):
        if m * p >= x * (1 - 1e-12):
            return m * p
    return 10 * p


def _num(x: float) -> str:
    return f"{x:.1f}".rstrip("0").rstrip(".")


def _frame(title: str, width: int, height: int, series: Sequence[Series]) -> list[str]:
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" '
        f'height="{height}" role="img" aria-label="{escape(title)}" {_FONT} font-size="11">',
        f"<title>{escape(title)}</title>",
        f'<rect x="0" y="0" width="{width}" height="{height}" fill="#ffffff"/>',
        f'<text x="{_LEFT}" y="16" font-size="13" font-weight="600" fill="#111827">{escape(title)}</text>',
    ]
    x = _LEFT
    for i, s in enumerate(series):  # the legend, in one line under the title
        c = s.color or color(i)
        out.append(f'<rect x="{x}" y="24" width="10" height="10" rx="2" fill="{c}"/>')
        out.append(f'<text x="{x + 14}" y="33" fill="#374151">{escape(s.name)}</text>')
        x += 24 + 7 * len(s.name)
    return out


def _y_axis(
    out: list[str], width: int, height: int, top_value: float, fmt: Callable[[float], str], ticks: int = 4
) -> Callable[[float], float]:
    plot_h = height - _TOP - _BOTTOM

    def y(v: float) -> float:
        return _TOP + plot_h * (1 - min(max(v, 0.0), top_value) / top_value)

    for k in range(ticks + 1):
        v = top_value * k / ticks
        yy = y(v)
        out.append(
            f'<line x1="{_LEFT}" y1="{yy:.1f}" x2="{width - _RIGHT}" y2="{yy:.1f}" stroke="#e5e7eb" stroke-width="1"/>'
        )
        out.append(
            f'<text x="{_LEFT - 6}" y="{yy + 4:.1f}" text-anchor="end" fill="#6b7280">{escape(fmt(v))}</text>'
        )
    return y


def _x_labels(out: list[str], height: int, labels: Sequence[tuple[float, str]]) -> None:
    for x, text in labels:
        out.append(
            f'<text x="{x:.1f}" y="{height - _BOTTOM + 16}" text-anchor="middle" fill="#6b7280">{escape(text)}</text>'
        )


def line_chart(
    title: str,
    series: Sequence[Series],
    x_labels: Sequence[tuple[int, str]],
    *,
    width: int = 720,
    height: int = 220,
    y_max: float | None = None,
    y_format: Callable[[float], str] = _num,
    target: float | None = None,
    y_floor: float = 0.0,
) -> str:
    """Lines over ``len(values)`` evenly spaced slots; ``x_labels`` are (slot index, text); ``target`` draws a
    dashed horizontal line (a service level goal, say); the y axis reaches at least ``y_floor``."""
    n = max((len(s.values) for s in series), default=0)
    values = [v for s in series for v in s.values if v is not None]
    top = y_max if y_max is not None else max(y_floor, nice_ceiling(max(values, default=0.0)))
    out = _frame(title, width, height, series)
    y = _y_axis(out, width, height, top, y_format)
    plot_w = width - _LEFT - _RIGHT

    def x(i: float) -> float:
        return _LEFT + (plot_w * (i + 0.5) / n if n else 0)

    if target is not None:
        out.append(
            f'<line x1="{_LEFT}" y1="{y(target):.1f}" x2="{width - _RIGHT}" y2="{y(target):.1f}" '
            'stroke="#9ca3af" stroke-width="1" stroke-dasharray="4 3"/>'
        )
    for si, s in enumerate(series):
        c = s.color or color(si)
        parts: list[str] = []
        pen_up = True
        for i, v in enumerate(s.values):
            if v is None:
                pen_up = True
                continue
            parts.append(f"{'M' if pen_up else 'L'}{x(i):.1f} {y(v):.1f}")
            pen_up = False
        if parts:
            out.append(
                f'<path d="{" ".join(parts)}" fill="none" stroke="{c}" stroke-width="1.8" '
                f'stroke-linejoin="round" stroke-linecap="round"><title>{escape(s.name)}</title></path>'
            )
        singles = [
            i
            for i, v in enumerate(s.values)
            if v is not None
            and (i == 0 or s.values[i - 1] is None)
            and (i == len(s.values) - 1 or s.values[i + 1] is None)
        ]
        for i in singles:  # a lone value has no line: show it as a dot
            v = s.values[i]
            assert v is not None
            out.append(f'<circle cx="{x(i):.1f}" cy="{y(v):.1f}" r="2.5" fill="{c}"/>')
    _x_labels(out, height, [(x(i), text) for i, text in x_labels])
    out.append(
        f'<line x1="{_LEFT}" y1="{height - _BOTTOM}" x2="{width - _RIGHT}" y2="{height - _BOTTOM}" stroke="#9ca3af"/>'
    )
    out.append("</svg>")
    return "\n".join(out)


def bar_chart(
    title: str,
    categories: Sequence[str],
    series: Sequence[Series],
    *,
    width: int = 720,
    height: int = 220,
    stacked: bool = False,
    y_max: float | None = None,
    y_format: Callable[[float], str] = _num,
    label_every: int = 1,
) -> str:
    """One group of bars per category (side by side, or ``stacked``); ``None`` values draw nothing."""
    n = len(categories)
    if stacked:
        sums = [sum(s.values[i] or 0.0 for s in series) for i in range(n)]
        biggest = max(sums, default=0.0)
    else:
        biggest = max((v for s in series for v in s.values if v is not None), default=0.0)
    top = y_max if y_max is not None else nice_ceiling(biggest)
    out = _frame(title, width, height, series)
    y = _y_axis(out, width, height, top, y_format)
    plot_w = width - _LEFT - _RIGHT
    slot = plot_w / n if n else plot_w
    inner = slot * 0.8
    bar_w = inner if stacked else inner / max(1, len(series))
    for i, name in enumerate(categories):
        x0 = _LEFT + slot * i + slot * 0.1
        base = 0.0
        for si, s in enumerate(series):
            v = s.values[i] if i < len(s.values) else None
            if v is None:
                continue
            c = s.color or color(si)
            lo, hi = (base, base + v) if stacked else (0.0, v)
            bx = x0 if stacked else x0 + bar_w * si
            top_y, bottom_y = y(hi), y(lo)
            out.append(
                f'<rect x="{bx:.1f}" y="{top_y:.1f}" width="{max(bar_w - 1, 1):.1f}" '
                f'height="{max(bottom_y - top_y, 0):.1f}" fill="{c}"><title>{escape(name)} · '
                f"{escape(s.name)}: {escape(y_format(v))}</title></rect>"
            )
            if stacked:
                base += v
    _x_labels(
        out,
        height,
        [(_LEFT + slot * (i + 0.5), c) for i, c in enumerate(categories) if i % max(1, label_every) == 0],
    )
    out.append(
        f'<line x1="{_LEFT}" y1="{height - _BOTTOM}" x2="{width - _RIGHT}" y2="{height - _BOTTOM}" stroke="#9ca3af"/>'
    )
    out.append("</svg>")
    return "\n".join(out)


def percent(v: float) -> str:
    return f"{100 * v:.0f}%"


def seconds(v: float) -> str:
    """A duration for people: 4.2s, 38s, 3m 10s, 2h 05m."""
    if round(v, 1) < 10:
        return f"{v:.1f}s"
    if v < 120:
        return f"{v:.0f}s"
    s = round(v)
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s // 3600}h {s % 3600 // 60:02d}m"
