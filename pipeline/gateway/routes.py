"""The ``/api/v1`` endpoints: GPUs, one GPU, its telemetry (JSON pages or streamed exports), aggregates,
hosts and the metric catalogue.

Every handler validates its parameters before touching the database, answers from the cache when
one is configured and the request is cacheable, and bounds what it reads: ``limit`` for lists, the
export maximum for CSV/Arrow, the bucket cap for aggregates.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pydantic_core
from fastapi import APIRouter, Request, Response
from pydantic import BaseModel
from starlette.exceptions import HTTPException

from pipeline.config import GatewaySettings
from pipeline.errors import InvalidParameter, ResourceNotFound
from pipeline.gateway import problems
from pipeline.gateway.cache import Cache, cache_key
from pipeline.gateway.export import export_response
from pipeline.gateway.models import (
    AggregatePage,
    Gpu,
    GpuDetail,
    GpuPage,
    Host,
    HostPage,
    Latest,
    MetricCatalog,
    MetricInfo,
    TelemetryPage,
)
from pipeline.gateway.params import (
    MEDIA_ARROW,
    MEDIA_CSV,
    MEDIA_JSON,
    BucketParam,
    CursorParam,
    EndParam,
    FnParam,
    HasMetricParam,
    HostnameParam,
    LimitParam,
    MetricsParam,
    ModelParam,
    OrderParam,
    StartParam,
    TelemetryLimitParam,
    UuidParam,
    decode_cursor,
    encode_cursor,
    floor_to,
    from_us,
    negotiate,
    parse_bucket,
    reject_nul,
    ts_us,
    utc,
    window,
)
from pipeline.storage.reader import GpuRow, Reader

__all__ = ["Limits", "api_router"]

API = "/api/v1"


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds and cache timings that GatewaySettings does not (yet) carry."""

    export_max_rows: int = 1_000_000
    export_chunk_rows: int = 10_000
    max_buckets: int = 10_000
    recent_s: float = 5.0  # a window ending within this many seconds of now is "recent"
    recent_ttl_s: float = 1.0  # how long a recent-window answer is cached


def _problems(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {c: problems.PROBLEM_RESPONSES[c] for c in codes}


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


def _gpu(row: GpuRow) -> Gpu:
    return Gpu(
        uuid=row.uuid,
        hostname=row.hostname,
        gpu_index=row.gpu_index,
        device=row.device,
        model=row.model,
        first_seen=row.first_seen,
        last_seen=row.last_seen,
        metrics=list(row.metrics),
    )


def _iso(dt: datetime | None) -> str | None:
    return None if dt is None else utc(dt).isoformat()


def api_router(reader: Reader, cfg: GatewaySettings, cache: Cache | None, limits: Limits) -> APIRouter:
    """The API's routes over ``reader``, cached in ``cache`` when given."""
    router = APIRouter(prefix=API)

    def limit_of(limit: int | None) -> int:
        if limit is None:
            return cfg.default_limit
        if limit > cfg.max_limit:
            raise InvalidParameter(f"limit {limit} exceeds the maximum {cfg.max_limit}", param="limit")
        return limit

    def json_response(
        route: str, key: dict[str, Any] | None, ttl_s: float, produce: Callable[[], BaseModel | dict[str, Any]]
    ) -> Response:
        """Serve from the cache when allowed, else produce, store and serve (JSON)."""
        use = cache is not None and key is not None and ttl_s > 0
        k = cache_key(route, key or {}) if use else ""
        if use and cache is not None and (hit := cache.get(k)) is not None:
            return Response(hit, media_type=MEDIA_JSON, headers={"X-Cache": "hit"})
        value = produce()
        body = value.model_dump_json().encode() if isinstance(value, BaseModel) else pydantic_core.to_json(value)
        if use and cache is not None:
            cache.set(k, body, ttl_s)
        return Response(body, media_type=MEDIA_JSON, headers={"X-Cache": "miss"} if use else None)

    def recent(end_time: datetime | None) -> bool:
        return end_time is None or utc(end_time) >= datetime.now(UTC) - timedelta(seconds=limits.recent_s)

    def gpu_key(uuid: str) -> int:
        key = reader.gpu_key(uuid)
        if key is None:
            raise ResourceNotFound(f"GPU {uuid} not found", kind="gpu", name=uuid)
        return key

    def metric_ids(names: Sequence[str] | None) -> list[int] | None:
        if not names:
            return None
        known = reader.metric_ids(names)
        for name in names:
            if name not in known:
                raise InvalidParameter(f"metric `{name[:128]}` is not a known metric", param="metric")
        return sorted(set(known.values()))

    @router.get(
        "/gpus",
        response_model=GpuPage,
        tags=["gpus"],
        summary="List GPUs, with the metrics each reports.",
        responses=_problems(400, 422, 503),
    )
    def list_gpus(
        hostname: HostnameParam = None,
        model: ModelParam = None,
        metric: HasMetricParam = None,
        limit: LimitParam = None,
        cursor: CursorParam = None,
    ) -> Response:
        reject_nul(hostname=hostname, model=model, metric=metric)
        n = limit_of(limit)
        after = None
        if cursor is not None:
            h, i, u = decode_cursor("gpus", cursor, (str, int, str))
            after = (h, i, u)
        key = {"hostname": hostname, "model": model, "metric": metric, "limit": n, "cursor": cursor}

        def produce() -> GpuPage:
            ids = metric_ids([metric]) if metric is not None else None
            rows = reader.gpus(n + 1, after, hostname=hostname, model=model, metric_id=ids[0] if ids else None)
            nxt = None
            if len(rows) > n:
                rows = rows[:n]
                last = rows[-1]
                index = -1 if last.gpu_index is None else last.gpu_index
                nxt = encode_cursor("gpus", [last.hostname or "", index, last.uuid])
            return GpuPage(items=[_gpu(r) for r in rows], next_cursor=nxt)

        return json_response("gpus", key, cfg.gpu_list_ttl_s, produce)

    @router.get(
        "/gpus/{uuid}",
        response_model=GpuDetail,
        tags=["gpus"],
        summary="One GPU, with the newest value of each metric it reports.",
        responses=_problems(400, 404, 422, 503),
    )
    def get_gpu(uuid: UuidParam) -> Response:
        reject_nul(uuid=uuid)

        def produce() -> GpuDetail:
            row = reader.gpu(uuid)
            if row is None:
                raise ResourceNotFound(f"GPU {uuid} not found", kind="gpu", name=uuid)
            latest = [Latest(metric=r.metric, unit=r.unit, ts=r.ts, value=r.value) for r in reader.latest(row.gpu_key)]
            return GpuDetail(**_gpu(row).model_dump(), latest=latest)

        return json_response("gpu", {"uuid": uuid}, limits.recent_ttl_s, produce)

    @router.get(
        "/gpus/{uuid}/telemetry",
        response_model=TelemetryPage,
        tags=["telemetry"],
        summary="Samples of one GPU in a time window, ordered by (ts, metric); JSON pages, CSV or Arrow.",
        responses={**_TELEMETRY_200, **_problems(400, 404, 406, 422, 503)},
    )
    def telemetry(
        request: Request,
        uuid: UuidParam,
        start_time: StartParam = None,
        end_time: EndParam = None,
        metric: MetricsParam = None,
        order: OrderParam = "asc",
        limit: TelemetryLimitParam = None,
        cursor: CursorParam = None,
    ) -> Response:
        media = negotiate(request.headers.get("accept"))
        if media is None:
            raise HTTPException(406, f"Accept offers none of {MEDIA_JSON}, {MEDIA_CSV}, {MEDIA_ARROW}")
        reject_nul(uuid=uuid, metric=metric)
        n = limit_of(limit)
        start, end = window(start_time, end_time)
        after = None
        if cursor is not None:
            us, mid = decode_cursor(order, cursor, (int, int))
            after = (from_us(us), mid)
        if media != "json":
            key = gpu_key(uuid)
            ids = metric_ids(metric)
            cap = limits.export_max_rows
            if reader.count_telemetry(key, start, end, cap + 1, ids, order, after) > cap:
                raise InvalidParameter(
                    f"the window {start.isoformat()}..{end.isoformat()} holds more than {cap} samples, the export "
                    "maximum: narrow start_time/end_time",
                    param="end_time",
                )
            chunks = reader.stream_telemetry(key, start, end, cap, ids, order, after, limits.export_chunk_rows)
            return export_response(chunks, media, re.sub(r"[^A-Za-z0-9._-]", "_", uuid)[:128])
        params = {
            "uuid": uuid,
            "start": _iso(start_time),
            "end": _iso(end_time),
            "metric": sorted(set(metric or [])),
            "order": order,
            "limit": n,
            "cursor": cursor,
        }

        def produce() -> dict[str, Any]:  # a TelemetryPage, built as plain data: 5x faster to serialise
            rows = reader.telemetry(gpu_key(uuid), start, end, n + 1, metric_ids(metric), order, after)
            nxt = None
            if len(rows) > n:
                rows = rows[:n]
                nxt = encode_cursor(order, [ts_us(rows[-1].ts), rows[-1].metric_id])
            items = [{"ts": r.ts, "metric": r.metric, "value": r.value} for r in rows]
            return {"uuid": uuid, "start_time": start, "end_time": end, "items": items, "next_cursor": nxt}

        return json_response("telemetry", params if recent(end_time) else None, limits.recent_ttl_s, produce)

    @router.get(
        "/gpus/{uuid}/telemetry/aggregate",
        response_model=AggregatePage,
        tags=["telemetry"],
        summary="One aggregate per bucket and metric of one GPU's samples.",
        description="Buckets are whole: every bucket that holds an instant of [start_time, end_time] is "
        "aggregated over all its samples. TimescaleDB uses time_bucket and, where the bucket is a multiple of "
        "one, the rollup views telemetry_1h / telemetry_1m (not for p95); plain PostgreSQL uses date_bin.",
        responses=_problems(400, 404, 422, 503),
    )
    def aggregate(
        uuid: UuidParam,
        bucket: BucketParam,
        fn: FnParam = "avg",
        start_time: StartParam = None,
        end_time: EndParam = None,
        metric: MetricsParam = None,
    ) -> Response:
        reject_nul(uuid=uuid, metric=metric)
        width = parse_bucket(bucket)
        start, end = window(start_time, end_time)
        try:
            lo, hi = floor_to(start, width), floor_to(end, width) + width
        except OverflowError:
            raise InvalidParameter(f"bucket {bucket} reaches outside the representable times", param="bucket") from None
        count = (hi - lo) // width
        if count > limits.max_buckets:
            raise InvalidParameter(
                f"bucket {bucket} makes {count} buckets over {start.isoformat()}..{end.isoformat()}; at most "
                f"{limits.max_buckets} per request: widen the bucket or narrow the window",
                param="bucket",
            )
        params = {
            "uuid": uuid,
            "bucket": bucket,
            "fn": fn,
            "start": _iso(start_time),
            "end": _iso(end_time),
            "metric": sorted(set(metric or [])),
        }

        def produce() -> dict[str, Any]:  # an AggregatePage, as plain data (see telemetry)
            source, rows = reader.aggregate(gpu_key(uuid), lo, hi, width, fn, metric_ids(metric))
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

        return json_response("aggregate", params if recent(end_time) else None, limits.recent_ttl_s, produce)

    @router.get(
        "/hosts",
        response_model=HostPage,
        tags=["gpus"],
        summary="List hosts with their GPU counts.",
        responses=_problems(400, 422, 503),
    )
    def list_hosts(limit: LimitParam = None, cursor: CursorParam = None) -> Response:
        n = limit_of(limit)
        after = decode_cursor("hosts", cursor, (str,))[0] if cursor is not None else None

        def produce() -> HostPage:
            rows = reader.hosts(n + 1, after)
            nxt = encode_cursor("hosts", [rows[n - 1].hostname or ""]) if len(rows) > n else None
            items = [
                Host(
                    hostname=r.hostname,
                    gpus=r.gpus,
                    models=list(r.models),
                    first_seen=r.first_seen,
                    last_seen=r.last_seen,
                )
                for r in rows[:n]
            ]
            return HostPage(items=items, next_cursor=nxt)

        return json_response("hosts", {"limit": n, "cursor": cursor}, cfg.gpu_list_ttl_s, produce)

    @router.get(
        "/metrics/catalog",
        response_model=MetricCatalog,
        tags=["metrics"],
        summary="The metric catalogue: names, units and help (Prometheus exposition is at /metrics).",
        responses=_problems(400, 422, 503),
    )
    def catalog(limit: LimitParam = None, cursor: CursorParam = None) -> Response:
        n = limit_of(limit)
        after = decode_cursor("metrics", cursor, (str,))[0] if cursor is not None else None

        def produce() -> MetricCatalog:
            rows = reader.metrics(n + 1, after)
            nxt = encode_cursor("metrics", [rows[n - 1].name]) if len(rows) > n else None
            return MetricCatalog(
                items=[MetricInfo(name=r.name, unit=r.unit, help=r.help) for r in rows[:n]], next_cursor=nxt
            )

        return json_response("catalog", {"limit": n, "cursor": cursor}, cfg.gpu_list_ttl_s, produce)

    return router
