"""``/``: the fleet now — counts, a heatmap of hosts x GPUs by a chosen metric, the hottest and most idle GPUs.

Every GPU is a cell while a page of the fleet holds at most ``GPU_CELLS`` of them (``HOSTS_PER_PAGE``
hosts); a larger fleet is drawn one cell per host (its GPUs' mean, ``HOST_CELLS`` hosts per page)
unless ``view=gpus`` asks for GPUs, paged. A host's cell leads to that host's GPUs, a GPU's to its
page. Everything is read from the latest-value table: the API's fleet health and fleet/latest queries
(the counts, the silent GPUs, the hottest and most idle) and the heatmap's own
(``pipeline.storage.pages``), a handful of queries whose cost grows with the number of GPUs, never
with the samples. A GPU is "not reporting" by the API's rule (``GatewaySettings.missing_after_s``).
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

from pipeline.errors import InvalidParameter
from pipeline.gateway.deps import GatewayState
from pipeline.gateway.pages.catalog import FLEET_METRICS, shown, workload_name
from pipeline.gateway.pages.charts import Cell, Row, grid, heatmap, legend
from pipeline.gateway.pages.html import Markup, Node, el, gpu_path, href, join, number, time_tag, void
from pipeline.gateway.pages.scales import Scale
from pipeline.gateway.routes.fleet import HEALTH_WINDOW
from pipeline.storage import pages as q
from pipeline.storage.rows import FleetLatestRow, Health

__all__ = ["ACTIVE_ABOVE", "GPU_CELLS", "HOSTS_PER_PAGE", "HOST_CELLS", "render"]

UTIL, TEMP = "DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_GPU_TEMP"
GPU_CELLS = 2048  # at most this many GPUs in one page of the GPU heatmap
HOSTS_PER_PAGE = 256  # hosts per page of the GPU heatmap (8 GPUs each: 2,048 cells)
HOST_CELLS = 1024  # hosts per page of the per-host heatmap
TOP_N = 10
BLANK_WINDOW = HEALTH_WINDOW  # a blank code reported this recently marks the GPU (the API's health window)
ACTIVE_ABOVE = 5.0  # utilisation (%) above which a GPU counts as active (attribution.active_above_percent's default)


def render(
    state: GatewayState,
    metric: str | None,
    view: str | None,
    page: int | None,
    hostname: str | None,
    now: datetime | None = None,
) -> tuple[str, Markup]:
    """The page's title and body for the chosen metric, view, page and host."""
    metric = metric or UTIL
    if metric not in FLEET_METRICS:
        raise InvalidParameter(f"metric `{metric[:64]}` is not one of {', '.join(FLEET_METRICS)}", param="metric")
    if view not in (None, "auto", "gpus", "hosts"):
        raise InvalidParameter(f"view `{view[:16]}` is not auto, gpus or hosts", param="view")
    number_ = 1 if page is None else page
    if number_ < 1:
        raise InvalidParameter("page must be 1 or more", param="page")
    now = now or datetime.now(UTC)
    missing_after = state.settings.missing_after_s()
    stale = now - timedelta(seconds=missing_after)
    ids = state.reader.metric_ids([metric, UTIL, TEMP])
    metric_id = ids.get(metric, -1)
    counts = q.fleet_counts(state.reader, ids.get(UTIL, -1), stale, ACTIVE_ABOVE)
    health = state.reader.health(missing_after, 20, now - BLANK_WINDOW)
    by_host = hostname is None and (view == "hosts" or (view in (None, "auto") and counts.gpus > GPU_CELLS))
    per_page = HOST_CELLS if by_host else HOSTS_PER_PAGE
    hosts, total_hosts = q.host_page(state.reader, (number_ - 1) * per_page, per_page, hostname)
    pages = max(1, math.ceil(total_hosts / per_page))
    if number_ > pages:
        raise InvalidParameter(f"page {number_} is past the last page, {pages}", param="page")
    blanks = q.blank_codes(state.reader, now - BLANK_WINDOW)
    s = shown(metric)
    units = {m.name: m.unit for m in state.reader.metrics(limit=1000)}
    unit = units.get(metric)
    body: list[Node] = [el("h1", None, "Fleet" if hostname is None else f"Host {hostname}"), _counts(counts, health)]
    body.append(_form(metric, view, hostname))
    if by_host:
        cells = q.host_cells(state.reader, hosts, metric_id, stale)
        scale = Scale.around([c.mean for c in cells if c.mean is not None], unit, s.fixed)
        body += [
            legend(scale, s.label),
            el("p", {"class": "note"}, f"{counts.gpus:,} GPUs: one cell per host, coloured by the mean of its GPUs."),
            grid([_host_cell(c, scale, metric, s.label) for c in cells], scale, f"{s.label} by host", per_line=64),
        ]
    else:
        cells_g = q.gpu_cells(state.reader, hosts, metric_id, stale)
        scale = Scale.around([c.value for c in cells_g if c.value is not None and not c.missing], unit, s.fixed)
        rows = _rows(cells_g, scale, blanks, s.label)
        named = _positions_are_indices(cells_g)
        label = f"{s.label} of each GPU, one row per host"
        body += [legend(scale, s.label), heatmap(rows, scale, label, columns_named=named)]
    body.append(_pager(metric, view, hostname, number_, pages, total_hosts, per_page))
    hottest = state.reader.fleet_latest(ids.get(TEMP, -1), "desc", TOP_N)
    idle = state.reader.fleet_latest(ids.get(UTIL, -1), "asc", TOP_N)
    body.append(
        el(
            "div",
            {"class": "cols"},
            el("section", None, el("h2", {"id": "hottest"}, "Hottest now"), _top(hottest, units.get(TEMP), stale)),
            el("section", None, el("h2", {"id": "idle"}, "Most idle now"), _top(idle, "%", stale)),
        )
    )
    body += _missing(health, missing_after)
    body += _blanks(health)
    return ("Fleet" if hostname is None else f"Host {hostname}"), join(body)


def _stat(name: str, value: int, anchor: str | None = None) -> Markup:
    shown_value: Node = el("a", {"href": anchor}, f"{value:,}") if anchor and value else f"{value:,}"
    return el("div", None, el("dt", None, name), el("dd", None, shown_value))


def _counts(c: q.FleetCounts, h: Health) -> Markup:
    return el(
        "dl",
        {"class": "counts"},
        _stat("GPUs", c.gpus),
        _stat("hosts", c.hosts),
        _stat(f"active (> {ACTIVE_ABOVE:g} %)", c.active),
        _stat("idle", c.idle),
        _stat("not reporting", h.missing_count, "#missing"),
        _stat("silent hosts", h.silent_count, "#missing"),
        _stat("blank codes", h.blank_gpus, "#blank"),
        _stat(f"XID events ({BLANK_WINDOW.seconds // 3600 or 1} h)", h.xid_events),
    )


def _form(metric: str, view: str | None, hostname: str | None) -> Markup:
    options = [el("option", {"value": m, "selected": m == metric}, shown(m).label) for m in FLEET_METRICS]
    views = [
        el("option", {"value": v, "selected": v == (view or "auto")}, text)
        for v, text in (
            ("auto", "GPUs, or hosts when too many"),
            ("gpus", "one cell per GPU"),
            ("hosts", "one per host"),
        )
    ]
    hidden = void("input", {"type": "hidden", "name": "hostname", "value": hostname}) if hostname is not None else None
    return el(
        "form",
        {"method": "get", "action": "/", "class": "inline"},
        el("label", None, "Colour by ", el("select", {"name": "metric"}, options)),
        el("label", None, "Cells ", el("select", {"name": "view"}, views)) if hostname is None else hidden,
        el("button", {"type": "submit"}, "Show"),
        el("a", {"href": "/"}, "whole fleet") if hostname is not None else None,
    )


def _rows(cells: list[q.GpuCell], scale: Scale, blanks: dict[str, tuple[str, str, int]], label: str) -> list[Row]:
    rows: list[Row] = []
    current: list[Cell] = []
    host: str | None = None
    for c in cells:
        if c.hostname != host:
            if host is not None:
                rows.append(Row(host, current, href("/", hostname=host)))
            host, current = c.hostname, []
        where = f"{c.hostname} GPU {'?' if c.gpu_index is None else c.gpu_index} ({c.uuid})"
        blank = blanks.get(c.uuid)
        if c.missing and c.newest is not None:
            since = f"since {c.newest.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC"
            cell = Cell(f"{where}: not reporting ({since})", None, gpu_path(c.uuid), "missing")
        elif c.newest is None:
            cell = Cell(f"{where}: no value yet", None, gpu_path(c.uuid))
        elif c.value is None and blank is not None:
            cell = Cell(f"{where}: DCGM blank code {blank[0]} for {blank[1]}", None, gpu_path(c.uuid), "blank")
        else:
            extra = f"; blank code {blank[0]} for {blank[1]}" if blank is not None else ""
            cell = Cell(f"{where}: {label} {number(c.value, 1, scale.unit)}{extra}", c.value, gpu_path(c.uuid))
        current.append(cell)
    if host is not None:
        rows.append(Row(host, current, href("/", hostname=host)))
    return rows


def _positions_are_indices(cells: list[q.GpuCell]) -> bool:
    """Whether each host's n-th cell is its GPU n (no MIG devices or gaps): the columns can be numbered."""
    position: dict[str, int] = {}
    for c in cells:
        i = position.get(c.hostname, 0)
        if c.gpu_index != i:
            return False
        position[c.hostname] = i + 1
    return True


def _host_cell(c: q.HostCell, scale: Scale, metric: str, label: str) -> Cell:
    link = href("/", hostname=c.hostname, metric=metric)
    if c.missing == c.gpus:
        return Cell(f"{c.hostname}: all {c.gpus} GPUs not reporting", None, link, "missing")
    silent = f", {c.missing} of {c.gpus} not reporting" if c.missing else ""
    title = (
        f"{c.hostname}: {label} mean {number(c.mean, 1, scale.unit)}, max {number(c.max, 1, scale.unit)} "
        f"over {c.gpus} GPUs{silent}"
    )
    return Cell(title, c.mean, link)


def _pager(
    metric: str, view: str | None, hostname: str | None, page: int, pages: int, hosts: int, per_page: int
) -> Markup:
    first, last = (page - 1) * per_page + 1, min(page * per_page, hosts)
    links: list[Node] = [el("span", None, f"Hosts {first:,}-{last:,} of {hosts:,} (page {page} of {pages}) ")]
    if page > 1:
        links.append(el("a", {"href": href("/", metric=metric, view=view, page=page - 1), "rel": "prev"}, "« previous"))
    if page < pages:
        links.append(el("a", {"href": href("/", metric=metric, view=view, page=page + 1), "rel": "next"}, "next »"))
    return el("p", {"class": "pager"}, links) if hostname is None else el("p", {"class": "pager"})


def _top(rows: list[FleetLatestRow], unit: str | None, stale: datetime) -> Markup:
    if not rows:
        return el("p", {"class": "note"}, "No GPU reports this metric now.")
    head = el("tr", None, [el("th", {"scope": "col"}, h) for h in ("GPU", "host", "value", "held by")])
    body = []
    for r in rows:
        h = r.holder
        holder = workload_name(h.namespace, h.pod, h.container, h.job) if h else ""
        value: Node = number(r.value, 1, unit)
        if r.ts < stale:
            value = [value, el("span", {"class": "bad"}, " (not reporting)")]
        body.append(
            el(
                "tr",
                None,
                el("td", None, el("a", {"href": gpu_path(r.uuid)}, r.uuid)),
                el("td", None, r.hostname or "—"),
                el("td", {"class": "n"}, value),
                el("td", None, holder or "—"),
            )
        )
    return el("table", None, el("thead", None, head), el("tbody", None, body))


def _missing(h: Health, missing_after: float) -> list[Node]:
    out: list[Node] = [el("h2", {"id": "missing"}, f"Not reporting ({h.missing_count:,})")]
    if not h.missing:
        out.append(el("p", {"class": "note"}, f"Every GPU sent a sample in the last {missing_after:g} s."))
    else:
        body = [
            el(
                "tr",
                None,
                el("td", None, el("a", {"href": gpu_path(r.uuid)}, r.uuid)),
                el("td", None, r.hostname or "—"),
                el("td", None, time_tag(r.last_seen)),
            )
            for r in h.missing
        ]
        head = el("tr", None, [el("th", {"scope": "col"}, t) for t in ("GPU", "host", "newest sample")])
        out.append(el("table", None, el("thead", None, head), el("tbody", None, body)))
        if h.missing_count > len(h.missing):
            out.append(
                el("p", {"class": "note"}, f"The {len(h.missing)} silent most recently, of {h.missing_count:,}.")
            )
    if h.silent:
        hosts = [
            el(
                "tr",
                None,
                el("td", None, el("a", {"href": href("/", hostname=s.hostname)}, s.hostname)),
                el("td", {"class": "n"}, str(s.gpus)),
                el("td", None, time_tag(s.last_seen)),
            )
            for s in h.silent
        ]
        head = el("tr", None, [el("th", {"scope": "col"}, t) for t in ("silent host", "GPUs", "newest sample")])
        out.append(el("table", {"id": "silent"}, el("thead", None, head), el("tbody", None, hosts)))
    return out


def _blanks(h: Health) -> list[Node]:
    out: list[Node] = [el("h2", {"id": "blank"}, f"DCGM blank codes, last {BLANK_WINDOW.seconds // 60} min")]
    if not h.blanks:
        out.append(el("p", {"class": "note"}, "No GPU reported a blank code."))
        return out
    body = [
        el(
            "tr",
            None,
            el("td", None, el("a", {"href": gpu_path(b.uuid)}, b.uuid) if b.uuid else "—"),
            el("td", None, b.code),
            el("td", None, el("code", None, b.metric or "")),
            el("td", {"class": "n"}, f"{b.samples:,}"),
            el("td", None, time_tag(b.last_seen)),
        )
        for b in h.blanks
    ]
    head = el("tr", None, [el("th", {"scope": "col"}, t) for t in ("GPU", "code", "metric", "samples", "newest")])
    return [*out, el("table", None, el("thead", None, head), el("tbody", None, body))]
