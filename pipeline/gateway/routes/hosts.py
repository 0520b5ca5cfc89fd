"""``/hosts``: hosts with their GPU counts."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request, Response

from pipeline.errors import ResourceNotFound
from pipeline.gateway import problems
from pipeline.gateway.deps import State, strict_query
from pipeline.gateway.fleet_models import HostAggregatePage
from pipeline.gateway.models import HostPage
from pipeline.gateway.params import (
    API,
    BucketParam,
    CursorParam,
    EndParam,
    FnParam,
    HostnamePath,
    LimitParam,
    MetricsParam,
    StartParam,
    reject_nul,
    shown,
    utc,
)
from pipeline.gateway.routes.telemetry import aggregate_window

__all__ = ["router"]

router = APIRouter(prefix=API, tags=["gpus"], dependencies=[Depends(strict_query)])


@router.get(
    "/hosts",
    response_model=HostPage,
    summary="List hosts with their GPU counts.",
    responses=problems.responses(400, 422, 503),
)
async def list_hosts(state: State, limit: LimitParam = None, cursor: CursorParam = None) -> Response:
    """A page of hosts ordered by hostname."""
    n = state.page_limit(limit)
    after = state.cursors.decode("hosts", cursor, (str,))[0] if cursor is not None else None

    def produce() -> dict[str, Any]:  # a HostPage, as plain data
        rows = state.reader.hosts(n + 1, after)
        nxt = state.cursors.encode("hosts", [rows[n - 1].hostname or ""]) if len(rows) > n else None
        items = [
            {
                "hostname": r.hostname,
                "gpus": r.gpus,
                "models": list(r.models),
                "first_seen": r.first_seen,
                "last_seen": r.last_seen,
            }
            for r in rows[:n]
        ]
        return {"items": items, "next_cursor": nxt}

    return await state.cached("hosts", {"limit": n, "cursor": cursor}, state.settings.gpu_list_ttl_s, produce)


@router.get(
    "/hosts/{hostname}/telemetry/aggregate",
    response_model=HostAggregatePage,
    summary="One aggregate per bucket and metric over every GPU of one host.",
    description="As /gpus/{uuid}/telemetry/aggregate, over the samples of all the host's GPUs (and MIG "
    "devices) together: avg is the mean of every sample in the bucket, count their number.",
    responses=problems.responses(400, 404, 422, 503),
)
def host_aggregate(
    request: Request,
    state: State,
    hostname: HostnamePath,
    bucket: BucketParam,
    fn: FnParam = "avg",
    start_time: StartParam = None,
    end_time: EndParam = None,
    metric: MetricsParam = None,
) -> Response:
    """``fn`` of each metric per bucket over the host's GPUs."""
    reject_nul(hostname=hostname, metric=metric)
    start_time, end_time, lo, hi, width = aggregate_window(state, request, bucket, start_time, end_time)
    params = {
        "hostname": hostname,
        "bucket": bucket,
        "fn": fn,
        "start": None if start_time is None else utc(start_time).isoformat(),
        "end": None if end_time is None else utc(end_time).isoformat(),
        "metric": sorted(set(metric or [])),
    }

    def produce() -> dict[str, Any]:  # a HostAggregatePage
        keys = state.reader.host_gpu_keys(hostname)
        if not keys:
            raise ResourceNotFound(f"host {shown(hostname)} not found", kind="host", name=hostname)
        source, rows = state.reader.aggregate(keys, lo, hi, width, fn, state.metric_ids(metric))
        items = [{"ts": r.ts, "metric": r.metric, "value": r.value} for r in rows]
        return {
            "hostname": hostname,
            "gpus": len(keys),
            "bucket": bucket,
            "fn": fn,
            "start_time": lo,
            "end_time": hi,
            "source": source,
            "items": items,
        }

    key = params if state.is_recent(end_time) else None
    return state.cached_json("host_aggregate", key, state.settings.recent_ttl_s, produce)
