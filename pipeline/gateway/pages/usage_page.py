"""``/usage``: GPU-hours active and idle, memory held idle and energy per namespace, pod, job, host or model.

The API's usage query (``Reader.usage``), ordered by GPU time: whole hours inside the window from
``usage_1h``, the minutes at its edges from ``usage_1m``, never the samples. The last hour is in whole
minutes, like the API's windows; 6 hours and more are whole hours up to the end of the current one,
so they read the hour rollups alone (at 25,000 GPUs a day's edges in minutes would cost more than the
day in hours).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import cast

from pipeline.errors import InvalidParameter
from pipeline.gateway.deps import GatewayState
from pipeline.gateway.pages.catalog import WINDOWS
from pipeline.gateway.pages.charts import Bar, bars
from pipeline.gateway.pages.html import Markup, Node, el, join, number, time_tag
from pipeline.gateway.params import floor_to
from pipeline.storage.fleet import GroupBy, Resolution, usage_window
from pipeline.storage.rows import UsageRow

__all__ = ["GROUPS", "render"]

GROUPS = ("namespace", "pod", "job", "hostname", "model")
_WINDOWS = ("1h", "6h", "24h", "7d")
LIMIT = 50


def render(
    state: GatewayState, group_by: str | None, window_name: str | None, now: datetime | None = None
) -> tuple[str, Markup]:
    """The page's title and body."""
    group = group_by or "namespace"
    if group not in GROUPS:
        raise InvalidParameter(f"group_by `{group[:32]}` is not one of {', '.join(GROUPS)}", param="group_by")
    name = window_name or "24h"
    if name not in _WINDOWS:
        raise InvalidParameter(f"window `{name[:16]}` is not one of {', '.join(_WINDOWS)}", param="window")
    end = now or datetime.now(UTC)
    span = WINDOWS[name]
    resolution: Resolution = "hour"
    if span >= timedelta(hours=6):  # whole hours (to the end of this one): the hour rollups alone
        hi = floor_to(end, timedelta(hours=1)) + timedelta(hours=1)
        lo = hi - span
    else:  # whole minutes, the hours inside from the hour rollups
        resolution = "minute"
        lo, hi = usage_window(end - span, end, resolution)
    rows = state.reader.usage(cast(GroupBy, group), lo, hi, LIMIT, resolution=resolution, most_used=True)
    body: list[Node] = [
        el("h1", None, "Usage"),
        _form(group, name),
        el(
            "p",
            {"class": "note"},
            "From ",
            time_tag(lo),
            " to ",
            time_tag(hi),
            ". Each utilisation sample holds until the GPU's next one; a GPU is active above the collectors' "
            "threshold (5 % by default) and holds memory idle when it is not active with memory in use; the "
            "rollups trail ingest by the compaction period (30 s by default).",
        ),
    ]
    if not rows:
        body.append(el("p", {"class": "note"}, "No GPU time was recorded in this window."))
        return "Usage", join(body)
    labels = [_label(r, group) for r in rows]
    body += [
        el("h2", None, f"GPU-hours per {group}"),
        bars(
            [Bar(_label(r, group), [r.active_s / 3600, (r.seconds - r.active_s) / 3600]) for r in rows[:20]],
            ["active", "idle"],
            "GPU-h",
            f"GPU-hours active and idle per {group}",
        ),
        el("h2", None, f"Energy per {group}"),
        bars([Bar(_label(r, group), [r.energy_j / 3.6e6]) for r in rows[:20]], ["energy"], "kWh", f"kWh per {group}"),
        el("h2", None, "Table"),
        _table(rows, labels, group, (hi - lo).total_seconds()),
    ]
    if len(rows) == LIMIT:
        body.append(el("p", {"class": "note"}, f"The {LIMIT} {group}s with the most GPU time."))
    return "Usage", join(body)


def _label(r: UsageRow, group: str) -> str:
    if r.group is not None:
        return r.group
    return "(no host)" if group == "hostname" else "(no model)" if group == "model" else f"(no {group})"


def _form(group: str, window: str) -> Markup:
    groups = [el("option", {"value": g, "selected": g == group}, g) for g in GROUPS]
    windows = [el("option", {"value": w, "selected": w == window}, f"last {w}") for w in _WINDOWS]
    return el(
        "form",
        {"method": "get", "action": "/usage", "class": "inline"},
        el("label", None, "Per ", el("select", {"name": "group_by"}, groups)),
        el("label", None, "Window ", el("select", {"name": "window"}, windows)),
        el("button", {"type": "submit"}, "Show"),
    )


def _table(rows: list[UsageRow], labels: list[str], group: str, span_s: float) -> Markup:
    head = [
        group,
        "mean GPUs",
        "GPU-h",
        "allocated GPU-h",
        "active GPU-h",
        "idle GPU-h",
        "memory held idle GPU-h",
        "mean util",
        "kWh",
    ]
    th = el("tr", None, [el("th", {"scope": "col", "class": None if i == 0 else "n"}, h) for i, h in enumerate(head)])
    body = []
    for r, label in zip(rows, labels, strict=True):
        mean = r.util_s / r.seconds if r.seconds else None
        values = [
            number(r.seconds / span_s, 2),  # GPU time over the window: the API's mean_gpus
            number(r.seconds / 3600, 2),
            number(r.allocated_s / 3600, 2),
            number(r.active_s / 3600, 2),
            number((r.seconds - r.active_s) / 3600, 2),
            number(r.mem_idle_s / 3600, 2),
            number(mean, 1, "%"),
            number(r.energy_j / 3.6e6, 3),
        ]
        body.append(el("tr", None, el("td", None, label), [el("td", {"class": "n"}, v) for v in values]))
    return el("table", {"id": "usage"}, el("thead", None, th), el("tbody", None, body))
