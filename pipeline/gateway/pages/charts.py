"""Inline SVG charts: a heatmap of hosts x GPUs, a tile grid, line charts, stacked bars, a timeline, legends.

Every chart is one ``<svg>`` element with ``role="img"`` and an ``aria-label`` that says what it
shows in words; every mark carries a ``<title>`` (its value and unit) and, where it leads somewhere,
is a link a keyboard reaches with Tab. Colours come from ``scales`` (viridis, Okabe-Ito); states that
are not values (a GPU that went silent, a DCGM blank code) are patterns, not colours, so they read
without colour vision. Text and axes take their colours from the page's CSS (dark mode included).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal

from pipeline.gateway.pages.html import Markup, el, escape, number
from pipeline.gateway.pages.scales import Scale, category, viridis

__all__ = ["Bar", "Cell", "Lane", "Row", "Series", "bars", "grid", "heatmap", "legend", "line_chart", "timeline"]

Mark = Literal["", "missing", "blank"]
_MARKS: dict[str, str] = {"missing": "not reporting", "blank": "DCGM blank code"}


@dataclass(frozen=True, slots=True)
class Cell:
    """One square of a heatmap: a value (or a mark instead of one), a tooltip and where it leads."""

    title: str
    value: float | None
    link: str | None = None
    mark: Mark = ""


@dataclass(frozen=True, slots=True)
class Row:
    """One host of a heatmap: its label and its GPUs' cells in index order."""

    label: str
    cells: Sequence[Cell]
    link: str | None = None


def _defs(prefix: str) -> Markup:
    """Patterns for marks: diagonal hatching for "not reporting", dots for "blank code"."""
    return Markup(
        f'<defs><pattern id="{prefix}-missing" width="6" height="6" patternUnits="userSpaceOnUse" '
        'patternTransform="rotate(45)"><rect width="6" height="6" class="mark-bg"/>'
        '<line x1="0" y1="0" x2="0" y2="6" class="mark-ink" stroke-width="3"/></pattern>'
        f'<pattern id="{prefix}-blank" width="5" height="5" patternUnits="userSpaceOnUse">'
        '<rect width="5" height="5" class="mark-bg"/><circle cx="2.5" cy="2.5" r="1.3" class="mark-dot"/>'
        "</pattern></defs>"
    )


def _cell(prefix: str, cell: Cell, x: float, y: float, size: float, scale: Scale) -> str:
    if cell.mark:
        fill, cls = f"url(#{prefix}-{cell.mark})", f"cell {cell.mark}"
    elif cell.value is None or not math.isfinite(cell.value):
        fill, cls = "none", "cell empty"
    else:
        fill, cls = scale.colour(cell.value), "cell"
    rect = f'<rect x="{x:.0f}" y="{y:.0f}" width="{size:.0f}" height="{size:.0f}" fill="{fill}" class="{cls}">'
    body = f"{rect}<title>{escape(cell.title)}</title></rect>"
    if cell.link is None:
        return body
    return f'<a href="{escape(cell.link)}" aria-label="{escape(cell.title)}">{body}</a>'


def heatmap(
    rows: Sequence[Row],
    scale: Scale,
    label: str,
    prefix: str = "hm",
    width: int = 1120,
    columns_named: bool = True,
) -> Markup:
    """Hosts as labelled strips of GPU cells, in as many columns as ``width`` holds, read down each column.

    ``columns_named``: number the cell columns (0, 1, ...) above the strips, when a cell's position is
    its GPU index.
    """
    size, gap, label_w, top = 14, 3, 150, 14
    columns = max((len(r.cells) for r in rows), default=1)
    block_w = label_w + columns * (size + gap) + 18
    per_line = max(1, min(width // block_w, len(rows)))
    lines = math.ceil(len(rows) / per_line) if rows else 1
    per_line = max(1, math.ceil(len(rows) / lines))  # columns read down: as many as the rows fill
    height = top + lines * (size + gap) + 4
    parts: list[str] = [_defs(prefix)]
    for b in range(per_line if columns_named else 0):  # GPU indices above each column of strips
        for i in range(columns):
            x = b * block_w + label_w + i * (size + gap) + size / 2
            parts.append(el("text", {"x": f"{x:.1f}", "y": 10, "class": "tick", "text-anchor": "middle"}, str(i)))
    for n, row in enumerate(rows):
        bx, by = (n // lines) * block_w, top + (n % lines) * (size + gap) + 2
        text = row.label if len(row.label) <= 22 else row.label[:21] + "…"
        name = el("text", {"x": bx + label_w - 6, "y": by + size - 3, "class": "label", "text-anchor": "end"}, text)
        if row.link is not None:
            name = el("a", {"href": row.link}, el("title", None, row.label), name)
        parts.append(name)
        for i, cell in enumerate(row.cells):
            parts.append(_cell(prefix, cell, bx + label_w + i * (size + gap), by, size, scale))
    return el(
        "svg",
        {
            "viewBox": f"0 0 {width} {height}",
            "width": width,
            "height": height,
            "role": "img",
            "aria-label": label,
            "class": "chart heatmap",
        },
        Markup("".join(parts)),
    )


def grid(cells: Sequence[Cell], scale: Scale, label: str, prefix: str = "grid", per_line: int = 64) -> Markup:
    """Cells (one per host when the fleet is too large for one per GPU) in rows of ``per_line``."""
    size, gap = 14, 3
    lines = max(1, math.ceil(len(cells) / per_line))
    width, height = per_line * (size + gap), lines * (size + gap)
    parts: list[str] = [_defs(prefix)]
    for n, cell in enumerate(cells):
        parts.append(_cell(prefix, cell, (n % per_line) * (size + gap), (n // per_line) * (size + gap), size, scale))
    return el(
        "svg",
        {
            "viewBox": f"0 0 {width} {height}",
            "width": width,
            "height": height,
            "role": "img",
            "aria-label": label,
            "class": "chart grid",
        },
        Markup("".join(parts)),
    )


def legend(scale: Scale, label: str, prefix: str = "lg", marks: Sequence[str] = ("missing", "blank")) -> Markup:
    """A gradient bar with its ends, middle and unit, then a swatch per mark."""
    bar_w, x0 = 240, 4
    stops = "".join(f'<stop offset="{i / 8:.3f}" stop-color="{viridis(i / 8)}"/>' for i in range(9))
    parts = [
        f'<defs><linearGradient id="{prefix}-ramp">{stops}</linearGradient></defs>',
        _defs(prefix),
        f'<rect x="{x0}" y="4" width="{bar_w}" height="12" fill="url(#{prefix}-ramp)"/>',
    ]
    for i, v in enumerate((scale.lo, (scale.lo + scale.hi) / 2, scale.hi)):
        x = x0 + bar_w * i / 2
        anchor = ("start", "middle", "end")[i]
        parts.append(f'<line x1="{x}" y1="16" x2="{x}" y2="20" class="axis"/>')
        parts.append(el("text", {"x": x, "y": 32, "class": "tick", "text-anchor": anchor}, number(v, 1, scale.unit)))
    x = x0 + bar_w + 24
    for mark in marks:
        parts.append(f'<rect x="{x}" y="4" width="12" height="12" fill="url(#{prefix}-{mark})" class="cell"/>')
        parts.append(el("text", {"x": x + 16, "y": 14, "class": "tick"}, _MARKS[mark]))
        x += 24 + 7 * len(_MARKS[mark])
    width = x + 4
    return el(
        "svg",
        {
            "viewBox": f"0 0 {width} 36",
            "width": width,
            "height": 36,
            "role": "img",
            "class": "chart legend",
            "aria-label": f"{label}: colour from {number(scale.lo, 1, scale.unit)} (dark) to "
            f"{number(scale.hi, 1, scale.unit)} (light)",
        },
        Markup("".join(parts)),
    )


# --- time series ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Series:
    """One line: a name for the legend and (time, value) points in time order (None: no data)."""

    name: str
    points: Sequence[tuple[datetime, float | None]]
    colour: int = 4  # an index into the categorical colours (4: blue)


_STEPS = tuple(
    timedelta(seconds=s)
    for s in (10, 30, 60, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400, 172800, 604800)
)


def _time_ticks(start: datetime, end: datetime, most: int = 7) -> list[datetime]:
    span = end - start
    step = next((s for s in _STEPS if span / s <= most), _STEPS[-1])
    epoch = datetime(2000, 1, 3, tzinfo=UTC)
    first = epoch + math.ceil((start - epoch) / step) * step
    ticks = []
    t = first
    while t <= end:
        ticks.append(t)
        t += step
    return ticks


def _nice(lo: float, hi: float, most: int = 5) -> list[float]:
    if hi <= lo:
        hi = lo + 1
    raw = (hi - lo) / most
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.floor(lo / step) * step
    ticks = []
    v = first
    while v <= hi + step * 0.5:
        ticks.append(round(v, 10))
        v += step
    return ticks


def line_chart(
    series: Sequence[Series],
    start: datetime,
    end: datetime,
    unit: str | None,
    label: str,
    gap: timedelta | None = None,
    width: int = 720,
    height: int = 170,
    fixed: tuple[float, float] | None = None,
) -> Markup:
    """Lines over ``start..end`` with UTC time ticks and a value axis in ``unit``; broken where data stops.

    A jump longer than ``gap`` between two points leaves the line open (no sample is drawn as no
    line, never as a slope).
    """
    left, right, top, bottom = 64, 12, 10, 24
    values = [v for s in series for _, v in s.points if v is not None and math.isfinite(v)]
    lo, hi = fixed if fixed is not None else (min(values, default=0.0), max(values, default=1.0))
    if hi - lo < 1e-9:  # a flat line: a band around it, not a zoom into rounding noise
        pad = max(1.0, abs(hi) * 0.1)
        lo, hi = max(0.0, lo - pad) if lo >= 0 else lo - pad, hi + pad
    elif fixed is None and lo > 0 and lo < hi * 0.5:
        lo = 0.0
    ticks = _nice(lo, hi)
    lo, hi = ticks[0], ticks[-1] if ticks[-1] > ticks[0] else ticks[0] + 1
    span = max((end - start).total_seconds(), 1e-9)
    pw, ph = width - left - right, height - top - bottom

    def x_of(t: datetime) -> float:
        return left + pw * (t - start).total_seconds() / span

    def y_of(v: float) -> float:
        return top + ph * (1 - (v - lo) / (hi - lo))

    parts: list[str] = []
    for v in ticks:
        y = y_of(v)
        parts.append(f'<line x1="{left}" y1="{y:.1f}" x2="{width - right}" y2="{y:.1f}" class="gridline"/>')
        parts.append(
            el("text", {"x": left - 6, "y": f"{y + 4:.1f}", "class": "tick", "text-anchor": "end"}, number(v, 1, unit))
        )
    for t in _time_ticks(start, end):
        x = x_of(t)
        text = t.strftime("%H:%M" if span <= 2 * 86400 else "%m-%d %H:%M")
        parts.append(f'<line x1="{x:.1f}" y1="{top + ph}" x2="{x:.1f}" y2="{top + ph + 4}" class="axis"/>')
        parts.append(el("text", {"x": f"{x:.1f}", "y": height - 6, "class": "tick", "text-anchor": "middle"}, text))
    parts.append(f'<line x1="{left}" y1="{top + ph}" x2="{width - right}" y2="{top + ph}" class="axis"/>')
    for s in series:
        colour = category(s.colour)
        for run in _runs(s.points, gap):
            if len(run) == 1:
                t, v = run[0]
                parts.append(f'<circle cx="{x_of(t):.1f}" cy="{y_of(v):.1f}" r="2" fill="{colour}"/>')
                continue
            pts = " ".join(f"{x_of(t):.1f},{y_of(v):.1f}" for t, v in run)
            parts.append(f'<polyline points="{pts}" fill="none" stroke="{colour}" stroke-width="1.6"/>')
    summary = _summary(values, unit)
    return el(
        "svg",
        {
            "viewBox": f"0 0 {width} {height}",
            "width": width,
            "height": height,
            "role": "img",
            "class": "chart line",
            "aria-label": f"{label}: {summary}",
        },
        el("title", None, f"{label}: {summary}"),
        Markup("".join(parts)),
    )


def _runs(points: Sequence[tuple[datetime, float | None]], gap: timedelta | None) -> list[list[tuple[datetime, float]]]:
    runs: list[list[tuple[datetime, float]]] = []
    current: list[tuple[datetime, float]] = []
    for t, v in points:
        if v is None or not math.isfinite(v):
            if current:
                runs.append(current)
            current = []
            continue
        if current and gap is not None and t - current[-1][0] > gap:
            runs.append(current)
            current = []
        current.append((t, v))
    if current:
        runs.append(current)
    return runs


def _summary(values: list[float], unit: str | None) -> str:
    if not values:
        return "no samples in this window"
    return (
        f"min {number(min(values), 1, unit)}, mean {number(sum(values) / len(values), 1, unit)}, "
        f"max {number(max(values), 1, unit)}, last {number(values[-1], 1, unit)}"
    )


# --- bars and timelines -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Bar:
    """One horizontal bar: a label and the values of its stacked segments."""

    label: str
    values: Sequence[float]
    link: str | None = None


def bars(items: Sequence[Bar], segments: Sequence[str], unit: str | None, label: str, width: int = 720) -> Markup:
    """Horizontal stacked bars, one per item, segments coloured far apart on viridis, with a legend row."""
    row, label_w, right = 22, 180, 90
    colours = [viridis(0.15 + 0.7 * i / max(1, len(segments) - 1)) for i in range(len(segments))]
    total = max((sum(max(0.0, v) for v in b.values) for b in items), default=0.0) or 1.0
    pw = width - label_w - right
    legend_h = 22 if len(segments) > 1 else 0
    height = legend_h + row * max(1, len(items)) + 4
    parts: list[str] = []
    x = float(label_w)
    if legend_h:
        for name, colour in zip(segments, colours, strict=True):
            parts.append(f'<rect x="{x}" y="4" width="12" height="12" fill="{colour}" class="bar"/>')
            parts.append(el("text", {"x": x + 16, "y": 14, "class": "tick"}, name))
            x += 28 + 7 * len(name)
    for n, b in enumerate(items):
        y = legend_h + n * row + 2
        text = b.label if len(b.label) <= 26 else b.label[:25] + "…"
        name = el("text", {"x": label_w - 6, "y": y + 13, "class": "label", "text-anchor": "end"}, text)
        parts.append(el("a", {"href": b.link}, name) if b.link else name)
        x = float(label_w)
        for seg, value, colour in zip(segments, b.values, colours, strict=False):
            w = pw * max(0.0, value) / total
            tip = f"{b.label}: {seg} {number(value, 2, unit)}"
            parts.append(
                f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="16" fill="{colour}" class="bar">'
                f"<title>{escape(tip)}</title></rect>"
            )
            x += w
        parts.append(el("text", {"x": f"{x + 6:.1f}", "y": y + 13, "class": "tick"}, number(sum(b.values), 2, unit)))
    return el(
        "svg",
        {
            "viewBox": f"0 0 {width} {height}",
            "width": width,
            "height": height,
            "role": "img",
            "class": "chart bars",
            "aria-label": label,
        },
        Markup("".join(parts)),
    )


@dataclass(frozen=True, slots=True)
class Lane:
    """One holder of a timeline (a pod, say) and the intervals it held the GPU (end None: still holds)."""

    label: str
    spans: list[tuple[datetime, datetime | None]] = field(default_factory=list)


def timeline(lanes: Sequence[Lane], start: datetime, end: datetime, label: str, width: int = 720) -> Markup:
    """One row per holder over ``start..end``, its intervals as bars in its own colour, with time ticks."""
    row, label_w, right = 22, 180, 12
    pw = width - label_w - right
    span = max((end - start).total_seconds(), 1e-9)
    height = row * max(1, len(lanes)) + 26

    def x_of(t: datetime) -> float:
        return label_w + pw * min(max((t - start).total_seconds(), 0.0), span) / span

    parts: list[str] = []
    for n, lane in enumerate(lanes):
        y = n * row + 2
        text = lane.label if len(lane.label) <= 26 else lane.label[:25] + "…"
        parts.append(el("text", {"x": label_w - 6, "y": y + 13, "class": "label", "text-anchor": "end"}, text))
        for lo, hi in lane.spans:
            x0, x1 = x_of(lo), x_of(hi or end)
            tip = f"{lane.label}: {lo.astimezone(UTC):%H:%M:%S} to " + (
                f"{hi.astimezone(UTC):%H:%M:%S} UTC" if hi else "now"
            )
            parts.append(
                f'<rect x="{x0:.1f}" y="{y}" width="{max(x1 - x0, 1.5):.1f}" height="16" fill="{category(n)}" '
                f'class="bar"><title>{escape(tip)}</title></rect>'
            )
    base = row * max(1, len(lanes)) + 2
    parts.append(f'<line x1="{label_w}" y1="{base}" x2="{width - right}" y2="{base}" class="axis"/>')
    for t in _time_ticks(start, end):
        x = x_of(t)
        parts.append(
            el(
                "text",
                {"x": f"{x:.1f}", "y": base + 16, "class": "tick", "text-anchor": "middle"},
                t.strftime("%H:%M" if span <= 2 * 86400 else "%m-%d %H:%M"),
            )
        )
    return el(
        "svg",
        {
            "viewBox": f"0 0 {width} {height}",
            "width": width,
            "height": height,
            "role": "img",
            "class": "chart timeline",
            "aria-label": label,
        },
        Markup("".join(parts)),
    )
