"""``/gpus/{uuid}/telemetry`` (JSON pages, CSV or Arrow exports) and ``/gpus/{uuid}/telemetry/aggregate``."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Any, Literal

from fastapi import APIRouter, Depends, Request, Response
from starlette.exceptions import HTTPException

from pipeline.errors import InvalidParameter
from pipeline.gateway import bodies, problems
from pipeline.gateway.deps import GatewayState, State, strict_query
from pipeline.gateway.export import export_response
from pipeline.gateway.models import AggregatePage, TelemetryPage
from pipeline.gateway.params import (
    API,
    MEDIA_ARROW,
    MEDIA_CSV,
    MEDIA_JSON,
    BucketParam,
    CursorParam,
    EndParam,
    FnParam,
    Media,
    MetricsParam,
    OrderParam,
    StartParam,
    TelemetryLimitParam,
    UuidParam,
    exact_times,
    floor_to,
    from_us,
    negotiate,
    parse_bucket,
    reject_nul,
    ts_us,
    utc,
    window,
)

__all__ = ["aggregate_window", "router", "window_response"]

router = APIRouter(prefix=API, tags=["telemetry"], dependencies=[Depends(strict_query)])

_CSV_EXAMPLE = "ts,metric,value\n2025-07-18T20:42:34Z,DCGM_FI_DEV_GPU_TEMP,41.0\n"
_TELEMETRY_200: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "A page of samples (JSON), or the whole window streamed as CSV or an Arrow IPC stream "
        "when `Accept` asks for `text/csv` or `application/vnd.apache.arrow.stream`. Exports ignore `limit`, "
        "honour `cursor`, and hold at most 1000000 samples: a larger window is refused with 400.",
        "content": {
            MEDIA_CSV: {"schema": {"type": "string"}, "example": _CSV_EXAMPLE},
            MEDIA_ARROW: {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


def _iso(dt: datetime | None) -> str | None:
    return None if dt is None else utc(dt).isoformat()


@router.get(
    "/gpus/{uuid:path}/telemetry",
    response_model=TelemetryPage,
    summary="Samples of one GPU in a time window, ordered by (ts, metric); JSON pages, CSV or Arrow.",
    responses={**_TELEMETRY_200, **problems.responses(400, 404, 406, 422, 503)},
)
def telemetry(
    request: Request,
    state: State,
    uuid: UuidParam,
    start_time: StartParam = None,
    end_time: EndParam = None,
    metric: MetricsParam = None,
    order: OrderParam = "asc",
    limit: TelemetryLimitParam = None,
    cursor: CursorParam = None,
) -> Response:
    """A page of one GPU's samples in a window, or the whole window as an export."""
    media = negotiate(request.headers.get("accept"))
    if media is None:
        raise HTTPException(406, f"Accept offers none of {MEDIA_JSON}, {MEDIA_CSV}, {MEDIA_ARROW}")
    return window_response(request, state, media, uuid, start_time, end_time, metric, order, limit, cursor)


def window_response(
    request: Request,
    state: GatewayState,
    media: Media,
    uuid: str,
    start_time: datetime | None,
    end_time: datetime | None,
    metric: list[str] | None = None,
    order: Literal["asc", "desc"] = "asc",
    limit: int | None = None,
    cursor: str | None = None,
) -> Response:
    """One GPU's samples in a window as ``media``: a JSON page, or the whole window as CSV or Arrow.

    The API's telemetry route and the GPU page's download links both answer with it.
    """
    reject_nul(uuid=uuid, metric=metric)
    q = request.query_params
    start_time, end_time = exact_times(q.get("start_time"), q.get("end_time"), start_time, end_time)
    start, end = window(start_time, end_time)
    state.check_span(start, end, state.settings.max_window_s)
    binding = {"uuid": uuid, "start": _iso(start_time), "end": _iso(end_time), "metric": sorted(set(metric or []))}
    after = None
    if cursor is not None:
        us, mid = state.cursors.decode(order, cursor, (int, int), binding)
        after = (from_us(us), mid)
    if media != "json":
        return _export(state, media, uuid, start, end, metric, order, after)  # exports ignore limit
    n = state.page_limit(limit)
    params = {**binding, "order": order, "limit": n, "cursor": cursor}

    def produce() -> bytes:  # a TelemetryPage, written from the fetched rows (see bodies)
        key, ids = state.gpu_key(uuid), state.metric_ids(metric)
        page = state.reader.telemetry_page(key, start, end, n, ids, order, after)
        nxt = None
        if page.more:
            ts, metric_id, _ = page.rows[-1]
            nxt = state.cursors.encode(order, [ts_us(ts), metric_id], binding)
        return bodies.telemetry_page(uuid, start, end, page, nxt)

    key = params if state.is_recent(end_time) else None
    return state.cached_json("telemetry", key, state.settings.recent_ttl_s, produce)


def _export(
    state: GatewayState,
    media: Media,
    uuid: str,
    start: datetime,
    end: datetime,
    metric: list[str] | None,
    order: Literal["asc", "desc"],
    after: tuple[datetime, int] | None,
) -> Response:
    key = state.gpu_key(uuid)
    ids = state.metric_ids(metric)
    cap = state.settings.export_max_rows
    if state.reader.count_telemetry(key, start, end, cap + 1, ids, order, after) > cap:
        raise InvalidParameter(
            f"the window {start.isoformat()}..{end.isoformat()} holds more than {cap} samples, the export "
            "maximum: narrow start_time/end_time",
            param="end_time",
        )
    chunks = state.reader.stream_telemetry(key, start, end, cap, ids, order, after, state.settings.export_chunk_rows)
    kind: Literal["csv", "arrow"] = "csv" if media == "csv" else "arrow"
    name = re.sub(r"[^A-Za-z0-9._-]", "_", uuid)[:128]
    return export_response(chunks, kind, name, state.exports, state.settings)


def aggregate_window(
    state: GatewayState, request: Request, bucket: str, start_time: datetime | None, end_time: datetime | None
) -> tuple[datetime | None, datetime | None, datetime, datetime, timedelta]:
    """An aggregate's window as sent, its whole buckets ``[lo, hi)`` and width; 400 past the bounds."""
    width = parse_bucket(bucket)
    q = request.query_params
    start_time, end_time = exact_times(q.get("start_time"), q.get("end_time"), start_time, end_time)
    start, end = window(start_time, end_time)
    try:
        lo, hi = floor_to(start, width), floor_to(end, width) + width
    except OverflowError:
        raise InvalidParameter(f"bucket {bucket} reaches outside the representable times", param="bucket") from None
    if width.total_seconds() > state.settings.max_aggregate_window_s:
        state.check_span(lo, lo + width, state.settings.max_aggregate_window_s, param="bucket")
    state.check_span(lo, hi, state.settings.max_aggregate_window_s)
    count = (hi - lo) // width
    max_buckets = state.settings.max_buckets
    if count > max_buckets:
        raise InvalidParameter(
            f"bucket {bucket} makes {count} buckets over {start.isoformat()}..{end.isoformat()}; at most "
            f"{max_buckets} per request: widen the bucket or narrow the window",
            param="bucket",
        )
    return start_time, end_time, lo, hi, width


@router.get(
    "/gpus/{uuid:path}/telemetry/aggregate",
    response_model=AggregatePage,
    summary="One aggregate per bucket and metric of one GPU's samples.",
    description="Buckets are whole: every bucket that holds an instant of [start_time, end_time] is "
    "aggregated over all its samples. TimescaleDB uses time_bucket and, where the bucket is a multiple of "
    "one, the rollup views telemetry_1h / telemetry_1m (not for p95); plain PostgreSQL uses date_bin.",
    responses=problems.responses(400, 404, 422, 503),
)
def aggregate(
    request: Request,
    state: State,
    uuid: UuidParam,
    bucket: BucketParam,
    fn: FnParam = "avg",
    start_time: StartParam = None,
    end_time: EndParam = None,
    metric: MetricsParam = None,
) -> Response:
    """``fn`` of each metric per bucket over the window."""
    reject_nul(uuid=uuid, metric=metric)
    start_time, end_time, lo, hi, width = aggregate_window(state, request, bucket, start_time, end_time)
    params = {
        "uuid": uuid,
        "bucket": bucket,
        "fn": fn,
        "start": _iso(start_time),
        "end": _iso(end_time),
        "metric": sorted(set(metric or [])),
    }

    def produce() -> dict[str, Any]:  # an AggregatePage, as plain data (see telemetry)
        source, rows = state.reader.aggregate(state.gpu_key(uuid), lo, hi, width, fn, state.metric_ids(metric))
        items = [{"ts": r.ts, "metric": r.metric, "value": r.value} for r in rows]
        return {
            "uuid": uuid,
            "bucket": bucket,
            "fn": fn,
            "start_time": lo,
            "end_time": hi,
            "source": source,
            "items": items,
        }

    key = params if state.is_recent(end_time) else None
    return state.cached_json("aggregate", key, state.settings.recent_ttl_s, produce)
