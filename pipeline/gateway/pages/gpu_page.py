"""``/gpus/{uuid}``: one GPU over a window — its newest values, a chart per metric, downloads of the window.

Reads what the API reads: the GPU's row, its newest values (the latest-value table where there is
one) and one aggregate query over the window (the rollups where they serve the bucket), at most
``catalog.MAX_POINTS`` buckets per metric.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime, timedelta

from pipeline.errors import ResourceNotFound
from pipeline.gateway.deps import GatewayState
from pipeline.gateway.pages.catalog import WINDOWS, bucket_for, shown, workload_name
from pipeline.gateway.pages.charts import Lane, Series, line_chart, timeline
from pipeline.gateway.pages.html import Markup, Node, el, gpu_path, href, join, number, time_tag
from pipeline.gateway.params import API, floor_to
from pipeline.gateway.params import shown as cut
from pipeline.storage.rows import AllocationRow, EventRow, GpuRow, LatestRow

__all__ = ["render"]

LIST_LIMIT = 200  # allocations and events shown per window (the oldest allocations, the newest events first)


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


def render(state: GatewayState, uuid: str, window_name: str, now: datetime | None = None) -> tuple[str, Markup]:
    """The page's title and body; 404 when there is no such GPU."""
    row = state.reader.gpu(uuid)
    if row is None:
        raise ResourceNotFound(f"GPU {cut(uuid)} not found", kind="gpu", name=uuid)
    span = WINDOWS[window_name]
    end = now or datetime.now(UTC)
    start = end - span
    bucket = bucket_for(span)
    lo, hi = floor_to(start, bucket), floor_to(end, bucket) + bucket
    latest = state.reader.latest(row.gpu_key)
    _, points = state.reader.aggregate(row.gpu_key, lo, hi, bucket, "avg")
    units = {m.name: m.unit for m in state.reader.metrics(limit=1000)}
    by_metric: dict[str, list[tuple[datetime, float | None]]] = defaultdict(list)
    for p in points:
        by_metric[p.metric].append((p.ts + bucket / 2, p.value))
    newest = max((r.ts for r in latest), default=None)
    facts = el(
        "dl",
        {"class": "counts facts"},
        _fact("host", el("a", {"href": href("/", hostname=row.hostname or "")}, row.hostname or "—")),
        _fact("GPU index", "—" if row.gpu_index is None else str(row.gpu_index)),
        _fact("model", row.model or "—"),
        _fact("device", row.device or "—"),
        _fact("newest sample", time_tag(newest)),
        _fact("status", _status(newest, end, state.settings.missing_after_s())),
        _fact("held by", _held(row)),
        *_extra_facts(row),
    )
    body: list[Node] = [
        el("p", None, el("a", {"href": "/"}, "← Fleet")),
        el("h1", None, "GPU ", el("code", None, uuid)),
        facts,
        _window_form(uuid, window_name),
        el("h2", None, "Now"),
        _latest_table(latest),
        el("h2", None, f"Last {window_name}, mean per {_span_text(bucket)}"),
    ]
    metrics = sorted(set(by_metric) | {r.metric for r in latest}, key=lambda m: (shown(m).order, m))
    if not metrics:
        body.append(el("p", {"class": "note"}, "No samples in this window."))
    charts: list[Node] = []
    for metric in metrics:
        s = shown(metric)
        unit = units.get(metric)
        chart = line_chart(
            [Series("mean", by_metric.get(metric, []))],
            start,
            end,
            unit,
            f"{s.label} of GPU {cut(uuid, 48)}, last {window_name}",
            gap=bucket * 3,
            fixed=s.fixed,
            width=560,
        )
        charts.append(
            el("figure", None, el("figcaption", None, s.label, " ", el("span", {"class": "note"}, unit or "")), chart)
        )
    body.append(el("div", {"class": "cols charts"}, charts))
    body += _allocations(state.reader.allocations(row.gpu_key, start, end, LIST_LIMIT), start, end, window_name)
    body += _events(list(reversed(state.reader.events(row.gpu_key, start, end, LIST_LIMIT))), window_name)
    body += _downloads(uuid, start, end)
    return f"GPU {cut(uuid, 48)}", join(body)


def _fact(name: str, value: Node) -> Markup:
    return el("div", None, el("dt", None, name), el("dd", None, value))


def _span_text(bucket: timedelta) -> str:
    s = int(bucket.total_seconds())
    return f"{s // 3600} h" if s % 3600 == 0 else f"{s // 60} min" if s % 60 == 0 else f"{s} s"


def _window_form(uuid: str, current: str) -> Markup:
    options = [el("option", {"value": w, "selected": w == current}, w) for w in WINDOWS]
    return el(
        "form",
        {"method": "get", "action": gpu_path(uuid), "class": "inline"},
        el("label", None, "Window ", el("select", {"name": "window"}, options)),
        el("button", {"type": "submit"}, "Show"),
    )


def _latest_table(latest: list[LatestRow]) -> Markup:
    rows = []
    for r in sorted(latest, key=lambda r: (shown(r.metric).order, r.metric)):
        metric, unit, ts, value = r.metric, r.unit, r.ts, r.value
        rows.append(
            el(
                "tr",
                None,
                el("td", None, shown(metric).label),
                el("td", {"class": "n"}, number(value, 1, unit)),
                el("td", None, time_tag(ts)),
                el("td", None, el("code", None, metric)),
            )
        )
    if not rows:
        return el("p", {"class": "note"}, "This GPU has reported nothing recently.")
    head = el("tr", None, [el("th", {"scope": "col"}, h) for h in ("metric", "value", "at", "DCGM field")])
    return el("table", None, el("thead", None, head), el("tbody", None, rows))


def _downloads(uuid: str, start: datetime, end: datetime) -> list[Node]:
    window = {"start_time": _iso(start), "end_time": _iso(end)}
    links = [
        el("a", {"href": href(gpu_path(uuid, "/export"), format=fmt, **window)}, label)
        for fmt, label in (("csv", "CSV"), ("arrow", "Arrow IPC stream"), ("json", "JSON (first page)"))
    ]
    api = href(f"{API}{gpu_path(uuid, '/telemetry')}", **window)
    return [
        el("h2", None, "This window's samples"),
        el("p", {"class": "pager"}, links),
        el(
            "p",
            {"class": "note"},
            "The same from the API (a bearer token where authentication is on; ",
            el("code", None, "Accept: text/csv"),
            " or ",
            el("code", None, "application/vnd.apache.arrow.stream"),
            " for an export): ",
            el("code", None, api),
        ),
    ]


def _holder(a: AllocationRow) -> str:
    return workload_name(a.namespace, a.pod, a.container, a.job)


def _allocations(rows: list[AllocationRow], start: datetime, end: datetime, window: str) -> list[Node]:
    out: list[Node] = [el("h2", {"id": "allocations"}, f"Who held it, last {window}")]
    if not rows:
        out.append(el("p", {"class": "note"}, "No workload held this GPU in this window."))
        return out
    lanes: dict[str, Lane] = {}
    for a in rows:
        lanes.setdefault(_holder(a), Lane(_holder(a))).spans.append((a.start, a.end))
    out.append(timeline(list(lanes.values())[:20], start, end, f"Allocations of this GPU, last {window}"))
    body = [
        el(
            "tr",
            None,
            el("td", None, _holder(a)),
            el("td", None, time_tag(a.start)),
            el("td", None, time_tag(a.end) if a.end else "still holds it"),
            el("td", {"class": "n"}, number(((a.end or end) - a.start).total_seconds() / 60, 1, "min")),
        )
        for a in reversed(rows)
    ]
    head = el("tr", None, [el("th", {"scope": "col"}, h) for h in ("workload", "from", "to", "held")])
    out.append(el("table", None, el("thead", None, head), el("tbody", None, body)))
    return out


def _events(rows: list[EventRow], window: str) -> list[Node]:
    out: list[Node] = [el("h2", {"id": "events"}, f"Events, last {window}")]
    if not rows:
        out.append(el("p", {"class": "note"}, "No XID errors or other events in this window."))
        return out
    body = [
        el(
            "tr",
            None,
            el("td", None, time_tag(e.ts)),
            el("td", None, e.kind),
            el("td", {"class": "n"}, str(e.code)),
            el("td", None, e.meaning or "—"),
        )
        for e in rows
    ]
    head = el("tr", None, [el("th", {"scope": "col"}, h) for h in ("when", "kind", "code", "meaning")])
    out.append(el("table", None, el("thead", None, head), el("tbody", None, body)))
    return out


def _status(newest: datetime | None, now: datetime, missing_after: float) -> Node:
    if newest is None:
        return "no value yet"
    if (now - newest).total_seconds() > missing_after:
        return el("span", {"class": "bad"}, "not reporting")
    return "reporting"


def _held(row: GpuRow) -> str:
    h = row.holder
    return "nobody" if h is None else workload_name(h.namespace, h.pod, h.container, h.job)


def _extra_facts(row: GpuRow) -> list[Markup]:
    facts = [_fact("driver", row.driver_version)] if row.driver_version else []
    if row.parent_uuid:
        profile = f" ({row.mig_profile})" if row.mig_profile else ""
        parent = el("a", {"href": gpu_path(row.parent_uuid)}, row.parent_uuid)
        facts.append(_fact("MIG instance", [f"{row.mig_instance}{profile} of ", parent]))
    facts.append(_fact("first seen", time_tag(row.first_seen)))
    return facts
