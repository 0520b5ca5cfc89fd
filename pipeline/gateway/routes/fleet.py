"""``/fleet/latest`` (every GPU's newest value of a metric, sorted) and ``/fleet/health``."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import APIRouter, Depends, Request, Response

from pipeline.errors import InvalidParameter
from pipeline.gateway import problems
from pipeline.gateway.deps import State, strict_query
from pipeline.gateway.fleet_models import FleetHealth, FleetLatestPage
from pipeline.gateway.params import (
    API,
    CursorParam,
    HostnameParam,
    IntervalsParam,
    LimitParam,
    MetricParam,
    NamespaceParam,
    SortParam,
    StartParam,
    exact_times,
    reject_nul,
    utc,
)
from pipeline.gateway.routes.gpus import holder

__all__ = ["router"]

router = APIRouter(prefix=API, tags=["fleet"], dependencies=[Depends(strict_query)])
HEALTH_WINDOW = timedelta(hours=1)


@router.get(
    "/fleet/latest",
    response_model=FleetLatestPage,
    summary="Every GPU's newest value of one metric, sorted: the hottest, the most idle, in one request.",
    description="Read from the latest-value table (one row per GPU, rewritten by the collectors every few "
    "seconds), with each GPU's host, model and current holder, ordered by value (ties in a fixed order). "
    "Fleet-wide pages come from the replica's ranking of the metric, kept for `gateway.recent_ttl_s` and "
    "refreshed behind requests (values at most twice that older than the table, and a cached body one more "
    "`recent_ttl_s`); `namespace`/`hostname` narrow the fleet (read from the table for each page).",
    responses=problems.responses(400, 422, 503),
)
def fleet_latest(
    state: State,
    metric: MetricParam,
    sort: SortParam = "desc",
    hostname: HostnameParam = None,
    namespace: NamespaceParam = None,
    limit: LimitParam = None,
    cursor: CursorParam = None,
) -> Response:
    """A page of (GPU, newest value) ordered by value."""
    reject_nul(metric=metric, hostname=hostname, namespace=namespace)
    n = state.page_limit(limit)
    binding = {"metric": metric, "sort": sort, "hostname": hostname, "namespace": namespace}
    after = None
    if cursor is not None:
        value, gpu_key = state.cursors.decode("fleet", cursor, (float, int), binding)
        after = (value, gpu_key)

    def produce() -> dict[str, Any]:  # a FleetLatestPage
        (metric_id,) = state.metric_ids([metric]) or [0]
        rows = state.reader.fleet_latest(metric_id, sort, n + 1, after, hostname, namespace)
        nxt = None
        if len(rows) > n:
            rows = rows[:n]
            nxt = state.cursors.encode("fleet", [float(rows[-1].value), rows[-1].gpu_key], binding)
        items = [
            {
                "uuid": r.uuid,
                "hostname": r.hostname,
                "gpu_index": r.gpu_index,
                "model": r.model,
                "ts": r.ts,
                "value": r.value,
                "allocation": holder(r.holder),
            }
            for r in rows
        ]
        return {"metric": metric, "sort": sort, "items": items, "next_cursor": nxt}

    key = {**binding, "limit": n, "cursor": cursor}
    return state.cached_json("fleet_latest", key, state.settings.recent_ttl_s, produce)


@router.get(
    "/fleet/health",
    response_model=FleetHealth,
    summary="What is wrong now: GPUs that stopped reporting, silent exporters, DCGM blank codes, XID errors.",
    description="A GPU is missing when its newest sample is older than `intervals` scrape intervals plus the "
    "gateway's health_grace_s; a host is silent when all its GPUs are. Blank codes (values DCGM cannot give: not "
    "supported, no permission, ...) and XID events are counted since `start_time` (default: one hour ago). "
    "Each list holds at most `limit` entries; the counts are complete.",
    responses=problems.responses(400, 422, 503),
)
def fleet_health(
    request: Request,
    state: State,
    intervals: IntervalsParam = None,
    start_time: StartParam = None,
    limit: LimitParam = None,
) -> Response:
    """Counts and the first entries of each kind of trouble."""
    cfg = state.settings
    n = state.page_limit(limit if limit is not None else 100)
    start_time, _ = exact_times(request.query_params.get("start_time"), None, start_time, None)
    try:
        since = utc(start_time) if start_time is not None else datetime.now(UTC) - HEALTH_WINDOW
    except OverflowError:
        raise InvalidParameter(f"start_time {start_time} is out of range", param="start_time") from None
    threshold = cfg.missing_after_s(intervals)

    def produce() -> dict[str, Any]:  # a FleetHealth
        h = state.reader.health(threshold, n, since)
        return {
            "as_of": h.as_of,
            "threshold_s": h.threshold_s,
            "start_time": since,
            "gpus": h.gpus,
            "missing_gpus": {"count": h.missing_count, "items": [m._asdict() for m in h.missing]},
            "silent_hosts": {"count": h.silent_count, "items": [s._asdict() for s in h.silent]},
            "blank_codes": {
                "count": h.blank_gpus,
                "items": [
                    {"uuid": b.uuid, "metric": b.metric, "code": b.code, "count": b.samples, "last_seen": b.last_seen}
                    for b in h.blanks
                ],
            },
            "xid_events": h.xid_events,
        }

    key = {"intervals": intervals, "start": None if start_time is None else utc(start_time).isoformat(), "limit": n}
    return state.cached_json("fleet_health", key if start_time is not None else None, cfg.recent_ttl_s, produce)
