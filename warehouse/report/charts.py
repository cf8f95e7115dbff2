"""Inline SVG charts for the overview: time-series lines, horizontal bars, interval (forest) plots, timelines.

Each chart is one `<svg class="plot">` string with fixed pixel geometry (no script, no external font or style), so
the page draws the same in any browser, mail client or file viewer. Every drawn data mark has class `mark` and a
`<title>` (the browser's tooltip) stating its values; the test counts the marks a real browser laid out.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone

PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7", "#9c755f",
           "#bab0ac")
OK, BAD, WARN, MUTED = "#2e7d32", "#c62828", "#e0a800", "#888"
_FONT = "font-family='system-ui,sans-serif' font-size='11'"


@dataclass(frozen=True)
class Series:
    name: str
    points: tuple[tuple[datetime, float], ...]
    color: str


@dataclass(frozen=True)
class Bar:
    label: str
    value: float
    color: str
    title: str


@dataclass(frozen=True)
class Interval:
    label: str
    value: float
    low: float | None
    high: float | None
    title: str
    color: str
    """Green where the candidate is better, red where worse: whether higher is better depends on the metric."""


@dataclass(frozen=True)
class Mark:
    row: str
    at: datetime
    color: str
    title: str
    text: str = ""


def color(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def _e(s: object) -> str:
    return html.escape(str(s), quote=True)


def _ticks(lo: float, hi: float, n: int = 4) -> list[float]:
    """Round tick values covering [lo, hi] (about n of them)."""
    if hi <= lo:
        hi = lo + 1
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    out = [math.floor(lo / step) * step]
    while out[-1] < hi - step * 1e-9:  # the last tick is at or above hi, so nothing is drawn above the frame
        out.append(round(out[-1] + step, 10))
    return out


def _time_axis(t0: float, t1: float, x: Callable[[float], float], y: float, n: int = 6) -> str:
    span = t1 - t0
    fmt = "%H:%M" if span <= 86400 else "%m-%d %H:%M" if span <= 3 * 86400 else "%m-%d"
    parts = []
    for i in range(n + 1):
        t = t0 + span * i / n
        label = datetime.fromtimestamp(t, timezone.utc).strftime(fmt)
        anchor = "start" if i == 0 else "end" if i == n else "middle"  # the outer labels stay inside the frame
        parts.append(f"<line x1='{x(t):.1f}' x2='{x(t):.1f}' y1='{y:.1f}' y2='{y + 4:.1f}' stroke='#999'/>"
                     f"<text x='{x(t):.1f}' y='{y + 15:.1f}' text-anchor='{anchor}' {_FONT} fill='#555'>{label}</text>")
    return "".join(parts)


def _epoch(t: datetime) -> float:
    return t.timestamp()


def line_chart(series: Sequence[Series], *, y_label: str, fmt: Callable[[float], str] = "{:,.0f}".format,
               threshold: float | None = None, y_max: float | None = None, width: int = 760,
               height: int = 220) -> str:
    """Lines over time, one per series (points marked, each with a tooltip); `threshold` is drawn dashed red."""
    pts = [p for s in series for p in s.points]
    if not pts:
        return ""
    left, right, top, bottom = 56, 12, 12, 30
    t0, t1 = min(_epoch(t) for t, _ in pts), max(_epoch(t) for t, _ in pts)
    if t1 == t0:
        t0, t1 = t0 - 1800, t1 + 1800
    hi = max([v for _, v in pts] + ([threshold * 1.2] if threshold else []) + ([y_max] if y_max else []))
    ticks = _ticks(0.0, hi if hi > 0 else 1.0)
    top_v = ticks[-1]
    x = lambda t: left + (t - t0) / (t1 - t0) * (width - left - right)
    y = lambda v: top + (1 - v / top_v) * (height - top - bottom)
    out = [f"<svg class='plot' xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' "
           f"viewBox='0 0 {width} {height}' role='img' aria-label='{_e(y_label)}'>"]
    for v in ticks:
        out.append(f"<line x1='{left}' x2='{width - right}' y1='{y(v):.1f}' y2='{y(v):.1f}' stroke='#eee'/>"
                   f"<text x='{left - 6}' y='{y(v) + 4:.1f}' text-anchor='end' {_FONT} fill='#555'>{_e(fmt(v))}</text>")
    out.append(f"<text x='12' y='{top + (height - top - bottom) / 2:.0f}' {_FONT} fill='#555' text-anchor='middle' "
               f"transform='rotate(-90 12 {top + (height - top - bottom) / 2:.0f})'>{_e(y_label)}</text>")
    out.append(f"<line x1='{left}' x2='{width - right}' y1='{height - bottom}' y2='{height - bottom}' stroke='#999'/>")
    out.append(_time_axis(t0, t1, x, height - bottom, n=max(2, min(6, (width - left - right) // 80))))
    if threshold is not None:
        out.append(f"<line x1='{left}' x2='{width - right}' y1='{y(threshold):.1f}' y2='{y(threshold):.1f}' "
                   "stroke='#c62828' stroke-dasharray='4,3'><title>threshold</title></line>")
    for s in series:
        xy = [(x(_epoch(t)), y(v), t, v) for t, v in s.points]
        if len(xy) > 1:
            out.append(f"<polyline class='mark' fill='none' stroke='{s.color}' stroke-width='1.8' points='"
                       + " ".join(f"{a:.1f},{b:.1f}" for a, b, _, _ in xy)
                       + f"'><title>{_e(s.name)}</title></polyline>")
        for a, b, t, v in xy:
            out.append(f"<circle class='mark' cx='{a:.1f}' cy='{b:.1f}' r='2.6' fill='{s.color}'><title>"
                       f"{_e(s.name)}: {_e(fmt(v))} at {t:%Y-%m-%d %H:%M}</title></circle>")
    out.append("</svg>")
    return "".join(out)


def legend(series: Sequence[Series | Bar]) -> str:
    names = [(s.name if isinstance(s, Series) else s.label, s.color) for s in series]
    return "<div class='legend'>" + "".join(
        f"<span><i style='background:{c}'></i>{_e(n)}</span>" for n, c in names) + "</div>"


def bar_chart(bars: Sequence[Bar], *, fmt: Callable[[float], str] = "{:,.0f}".format, width: int = 760,
              row: int = 20, reference: float | None = None) -> str:
    """Horizontal bars, one per row, labelled on the left (long labels cut, whole in the tooltip) and valued on
    the right; `reference` is drawn as a dashed red line."""
    if not bars:
        return ""
    left, right = 250, 70
    hi = max([b.value for b in bars] + [reference or 0.0]) or 1.0
    height = row * len(bars) + 8
    out = [f"<svg class='plot' xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' "
           f"viewBox='0 0 {width} {height}'>"]
    if reference is not None:
        rx = left + reference / hi * (width - left - right)
        out.append(f"<line x1='{rx:.1f}' x2='{rx:.1f}' y1='0' y2='{height}' stroke='#c62828' "
                   "stroke-dasharray='4,3'/>")
    for i, b in enumerate(bars):
        y0 = 4 + i * row
        w = max(b.value / hi * (width - left - right), 1.0)
        out.append(f"<text x='{left - 6}' y='{y0 + row * 0.65:.1f}' text-anchor='end' {_FONT} fill='#333'>"
                   f"{_e(b.label if len(b.label) <= 40 else b.label[:39] + '…')}</text>"
                   f"<rect class='mark' x='{left}' y='{y0 + 2}' width='{w:.1f}' "
                   f"height='{row - 5}' fill='{b.color}'><title>{_e(b.title)}</title></rect>"
                   f"<text x='{left + w + 4:.1f}' y='{y0 + row * 0.65:.1f}' {_FONT} fill='#333'>{_e(fmt(b.value))}"
                   "</text>")
    out.append("</svg>")
    return "".join(out)


def interval_chart(rows: Sequence[Interval], *, width: int = 760, row: int = 22) -> str:
    """Deltas with their intervals around a zero line (a forest plot): left of zero is lower."""
    if not rows:
        return ""
    left, right = 220, 80
    reach = max([abs(v) for r in rows for v in (r.value, r.low, r.high) if v is not None] + [0.05]) * 1.1
    x = lambda v: left + (v + reach) / (2 * reach) * (width - left - right)
    height = row * len(rows) + 26
    out = [f"<svg class='plot' xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' "
           f"viewBox='0 0 {width} {height}'>",
           f"<line x1='{x(0):.1f}' x2='{x(0):.1f}' y1='2' y2='{height - 20}' stroke='#999'/>"]
    for v in (-reach / 1.1, reach / 1.1):
        out.append(f"<text x='{x(v):.1f}' y='{height - 6}' text-anchor='middle' {_FONT} fill='#555'>{v:+.2f}</text>")
    out.append(f"<text x='{x(0):.1f}' y='{height - 6}' text-anchor='middle' {_FONT} fill='#555'>0</text>")
    for i, r in enumerate(rows):
        cy = 4 + i * row + row / 2
        c = r.color
        out.append(f"<text x='{left - 6}' y='{cy + 4:.1f}' text-anchor='end' {_FONT} fill='#333'>{_e(r.label)}</text>")
        if r.low is not None and r.high is not None:
            out.append(f"<line x1='{x(r.low):.1f}' x2='{x(r.high):.1f}' y1='{cy:.1f}' y2='{cy:.1f}' stroke='{c}' "
                       "stroke-width='2'/>")
        out.append(f"<circle class='mark' cx='{x(r.value):.1f}' cy='{cy:.1f}' r='4' fill='{c}'><title>"
                   f"{_e(r.title)}</title></circle><text x='{width - right + 6}' y='{cy + 4:.1f}' {_FONT} "
                   f"fill='#333'>{r.value:+.3f}</text>")
    out.append("</svg>")
    return "".join(out)


def timeline(marks: Sequence[Mark], *, width: int = 760, row: int = 24) -> str:
    """Events over time, one row per `row` name; each a dot with a tooltip and an optional short label. When two
    dots of a row would overlap (a demo's releases seconds apart), the marks are spaced in time order instead and
    the axis says so."""
    if not marks:
        return ""
    rows = list(dict.fromkeys(m.row for m in marks))
    left, right, bottom, r = 160, 110, 30, 5
    t0, t1 = min(_epoch(m.at) for m in marks), max(_epoch(m.at) for m in marks)
    if t1 - t0 < 60:
        t0, t1 = t0 - 1800, t1 + 1800
    x = lambda t: left + (t - t0) / (t1 - t0) * (width - left - right)
    at = {id(m): x(_epoch(m.at)) for m in marks}
    by_row: dict[str, list[float]] = {}
    for m in marks:
        by_row.setdefault(m.row, []).append(at[id(m)])
    ordered = any(b - a < 2.5 * r for xs in by_row.values() for a, b in zip(sorted(xs), sorted(xs)[1:]))
    if ordered:
        order = sorted(marks, key=lambda m: m.at)
        at = {id(m): left + (i + 0.5) / len(order) * (width - left - right) for i, m in enumerate(order)}
    height = row * len(rows) + bottom + 6
    out = [f"<svg class='plot' xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' "
           f"viewBox='0 0 {width} {height}'>"]
    for i, name in enumerate(rows):
        cy = 6 + i * row + row / 2
        out.append(f"<line x1='{left}' x2='{width - right}' y1='{cy:.1f}' y2='{cy:.1f}' stroke='#eee'/>"
                   f"<text x='{left - 6}' y='{cy + 4:.1f}' text-anchor='end' {_FONT} fill='#333'>{_e(name)}</text>")
    for k, m in enumerate(sorted(marks, key=lambda m: at[id(m)])):
        cy = 6 + rows.index(m.row) * row + row / 2
        cx = at[id(m)]
        out.append(f"<circle class='mark' cx='{cx:.1f}' cy='{cy:.1f}' r='{r}' fill='{m.color}' stroke='#fff'>"
                   f"<title>{_e(m.title)} ({m.at:%Y-%m-%d %H:%M:%S} UTC)</title></circle>")
        if m.text:  # labels alternate above and below the row, so neighbours do not overwrite each other
            out.append(f"<text x='{cx + 6:.1f}' y='{cy - 6 if k % 2 == 0 else cy + 13:.1f}' {_FONT} fill='#333'>"
                       f"{_e(m.text)}</text>")
    out.append(f"<line x1='{left}' x2='{width - right}' y1='{height - bottom}' y2='{height - bottom}' stroke='#999'/>")
    if ordered:
        out.append(f"<text x='{left}' y='{height - bottom + 15}' {_FONT} fill='#555'>in time order, "
                   f"{min(m.at for m in marks):%Y-%m-%d %H:%M}"
                   " onwards (too close in time to place; each dot's time is in its tooltip)</text>")
    else:
        out.append(_time_axis(t0, t1, x, height - bottom, n=5))
    out.append("</svg>")
    return "".join(out)
