"""The REST gateway as a plain FastAPI app: ``build_app(reader, settings)``.

Ray Serve hosts it (``pipeline.gateway.serve``); tests drive it with ``TestClient``. Every list is
bounded by ``limit`` (requests above the maximum are refused with 400, not silently clamped) and paged
with an opaque keyset cursor.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import FastAPI, Path, Query, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from pydantic import BaseModel, Field

from pipeline import metrics
from pipeline.config import GatewaySettings
from pipeline.errors import DatabaseUnavailable, NotFound, ValidationError
from pipeline.gateway import problems
from pipeline.storage.reader import GpuRow, Reader

__all__ = ["build_app", "decode_cursor", "encode_cursor"]

API = "/api/v1"
DEFAULT_WINDOW = timedelta(hours=1)


# --- response models -------------------------------------------------------------------------------


class Gpu(BaseModel):
    """One GPU."""

    uuid: str = Field(examples=["GPU-5fd4f087-86f3-7a43-b711-4771313afc50"])
    hostname: str | None = Field(examples=["mtv5-dgx1-hgpu-031"])
    gpu_index: int | None = Field(examples=[0])
    device: str | None = Field(examples=["nvidia0"])
    model: str | None = Field(examples=["NVIDIA H100 80GB HBM3"])
    first_seen: datetime
    last_seen: datetime


class GpuPage(BaseModel):
    """A page of GPUs."""

    items: list[Gpu]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null on the last page.")


class Sample(BaseModel):
    """One sample."""

    ts: datetime = Field(examples=["2025-07-18T20:42:34.000123Z"])
    metric: str = Field(examples=["DCGM_FI_DEV_GPU_UTIL"])
    value: float = Field(examples=[87.0])


class TelemetryPage(BaseModel):
    """A page of one GPU's samples, ordered by (ts, metric)."""

    uuid: str
    start_time: datetime
    end_time: datetime
    items: list[Sample]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null on the last page.")


class Health(BaseModel):
    """Liveness or readiness."""

    status: Literal["ok", "unavailable"]
    detail: str | None = None


class ProblemModel(BaseModel):
    """RFC 9457 problem details."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str


# --- parameters shared by list endpoints -------------------------------------------------------------

LimitParam = Annotated[
    int | None,
    Query(
        ge=1,
        description="Page size: default 1000, at most 10000 (the gateway's default_limit / max_limit); "
        "a larger value is refused with 400.",
    ),
]
CursorParam = Annotated[str | None, Query(description="`next_cursor` of the previous page.")]


# --- cursors ---------------------------------------------------------------------------------------------


def encode_cursor(kind: str, values: Iterable[Any]) -> str:
    """An opaque cursor: the last row's sort key."""
    raw = json.dumps([kind, *values], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(kind: str, cursor: str, arity: int) -> list[Any]:
    """Decode a cursor of ``kind``; 400 naming the parameter if it is not one of ours."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        data = json.loads(base64.urlsafe_b64decode(padded.encode()))
        if not isinstance(data, list) or data[0] != kind or len(data) != arity + 1:
            raise ValueError
        return data[1:]
    except (ValueError, binascii.Error, json.JSONDecodeError, UnicodeDecodeError, IndexError, TypeError):
        raise ValidationError(f"cursor `{cursor[:64]}` is not a valid {kind} cursor", param="cursor") from None


def _utc(dt: datetime) -> datetime:
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def _ts_us(dt: datetime) -> int:
    return int((dt - datetime(1970, 1, 1, tzinfo=UTC)) / timedelta(microseconds=1))


def _from_us(us: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=us)


def _gpu(row: GpuRow) -> Gpu:
    return Gpu(
        uuid=row.uuid,
        hostname=row.hostname,
        gpu_index=row.gpu_index,
        device=row.device,
        model=row.model,
        first_seen=row.first_seen,
        last_seen=row.last_seen,
    )


# --- the app -----------------------------------------------------------------------------------------------


def build_app(
    reader: Reader,
    settings: GatewaySettings | None = None,
    queue_stats: Callable[[], list[dict[str, Any]]] | None = None,
) -> FastAPI:
    """The gateway over a ``Reader``; ``queue_stats`` (optional) feeds the queue lag gauges."""
    cfg = settings or GatewaySettings()  # type: ignore[call-arg]
    app = FastAPI(
        title="GPU Telemetry API",
        version="1.0.0",
        summary="DCGM telemetry of a GPU fleet: GPUs and their samples over time.",
        description=(
            "Errors are `application/problem+json` (RFC 9457). Time parameters are RFC 3339 (a time "
            "without an offset is UTC) and both bounds are inclusive. Lists are paged with `limit` and an "
            f"opaque `cursor`; `limit` above {cfg.max_limit} is refused with 400."
        ),
        responses={422: problems.PROBLEM_RESPONSES[422]},
    )
    problems.install(app)
    registry = CollectorRegistry(auto_describe=True)
    duration = Histogram(
        metrics.HTTP_DURATION.name,
        metrics.HTTP_DURATION.help,
        metrics.HTTP_DURATION.labels,
        buckets=metrics.HTTP_DURATION.buckets,
        registry=registry,
    )
    requests = Counter(
        metrics.HTTP_REQUESTS.name.removesuffix("_total"),
        metrics.HTTP_REQUESTS.help,
        metrics.HTTP_REQUESTS.labels,
        registry=registry,
    )
    registry.register(_QueueCollector(queue_stats, reader))
    app.state.reader = reader

    @app.middleware("http")
    async def observe(request: Request, call_next: Callable[[Request], Any]) -> Response:
        started = time.perf_counter()
        status = 500
        try:
            response: Response = await call_next(request)
            status = response.status_code
            return response
        finally:
            route = request.scope.get("route")
            path = getattr(route, "path", "unmatched")
            labels = (path, request.method, str(status))
            duration.labels(*labels).observe(time.perf_counter() - started)
            requests.labels(*labels).inc()

    def limit_of(limit: int | None) -> int:
        if limit is None:
            return cfg.default_limit
        if limit > cfg.max_limit:
            raise ValidationError(f"limit {limit} exceeds the maximum {cfg.max_limit}", param="limit")
        return limit

    @app.get("/health", response_model=Health, tags=["operations"], summary="Liveness: the process answers.")
    def health() -> Health:
        return Health(status="ok")

    @app.get(
        "/ready",
        response_model=Health,
        tags=["operations"],
        summary="Readiness: the database answers.",
        responses={503: {"model": Health}},
    )
    def ready() -> Any:
        try:
            reader.ping()
        except DatabaseUnavailable as exc:
            return JSONResponse(Health(status="unavailable", detail=str(exc)).model_dump(), status_code=503)
        return Health(status="ok")

    @app.get(
        "/metrics",
        tags=["operations"],
        summary="Prometheus exposition of the gateway's metrics.",
        response_class=Response,
        responses={200: {"content": {"text/plain": {}}}},
    )
    def prometheus() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get(
        f"{API}/gpus",
        response_model=GpuPage,
        tags=["gpus"],
        summary="List GPUs.",
        responses={400: problems.PROBLEM_RESPONSES[400], 503: problems.PROBLEM_RESPONSES[503]},
    )
    def list_gpus(
        hostname: Annotated[str | None, Query(description="Only GPUs of this host.")] = None,
        model: Annotated[str | None, Query(description="Only GPUs of this model.")] = None,
        limit: LimitParam = None,
        cursor: CursorParam = None,
    ) -> GpuPage:
        n = limit_of(limit)
        after = None
        if cursor is not None:
            h, i, u = decode_cursor("gpus", cursor, 3)
            after = (str(h), int(i), str(u))
        rows = reader.gpus(n + 1, after, hostname=hostname, model=model)
        more = len(rows) > n
        rows = rows[:n]
        nxt = None
        if more:
            last = rows[-1]
            nxt = encode_cursor(
                "gpus", [last.hostname or "", -1 if last.gpu_index is None else last.gpu_index, last.uuid]
            )
        return GpuPage(items=[_gpu(r) for r in rows], next_cursor=nxt)

    @app.get(
        f"{API}/gpus/{{uuid}}/telemetry",
        response_model=TelemetryPage,
        tags=["telemetry"],
        summary="Samples of one GPU in a time window, ordered by time.",
        responses={
            400: problems.PROBLEM_RESPONSES[400],
            404: problems.PROBLEM_RESPONSES[404],
            503: problems.PROBLEM_RESPONSES[503],
        },
    )
    def telemetry(
        uuid: Annotated[str, Path(description="The GPU's UUID.")],
        start_time: Annotated[
            datetime | None, Query(description="Inclusive start (RFC 3339); default end_time minus one hour.")
        ] = None,
        end_time: Annotated[datetime | None, Query(description="Inclusive end (RFC 3339); default now.")] = None,
        metric: Annotated[list[str] | None, Query(description="Only these metrics (repeatable).")] = None,
        order: Annotated[Literal["asc", "desc"], Query(description="Time order.")] = "asc",
        limit: LimitParam = None,
        cursor: CursorParam = None,
    ) -> TelemetryPage:
        n = limit_of(limit)
        end = _utc(end_time) if end_time is not None else datetime.now(UTC)
        start = _utc(start_time) if start_time is not None else end - DEFAULT_WINDOW
        if start > end:
            raise ValidationError(
                f"start_time {start.isoformat()} is after end_time {end.isoformat()}", param="start_time"
            )
        gpu = reader.gpu(uuid)
        if gpu is None:
            raise NotFound(f"GPU {uuid} not found")
        metric_ids = None
        if metric:
            known = reader.metric_ids(metric)
            unknown = [m for m in metric if m not in known]
            if unknown:
                raise ValidationError(f"metric `{unknown[0]}` is not a known metric", param="metric")
            metric_ids = sorted(set(known.values()))
        after = None
        if cursor is not None:
            ts_us, metric_id = decode_cursor(order, cursor, 2)
            after = (_from_us(int(ts_us)), int(metric_id))
        rows = reader.telemetry(gpu.gpu_key, start, end, n + 1, metric_ids, order, after)
        more = len(rows) > n
        rows = rows[:n]
        nxt = encode_cursor(order, [_ts_us(rows[-1].ts), rows[-1].metric_id]) if more else None
        return TelemetryPage(
            uuid=uuid,
            start_time=start,
            end_time=end,
            next_cursor=nxt,
            items=[Sample(ts=r.ts, metric=r.metric, value=r.value) for r in rows],
        )

    app.openapi_schema = None
    _add_problem_schema(app)
    return app


def _add_problem_schema(app: FastAPI) -> None:
    original = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = original()
        schema.setdefault("components", {}).setdefault("schemas", {})["Problem"] = ProblemModel.model_json_schema()
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


class _QueueCollector:
    """Exposes the queue's lag under the seed's metric name, read from the brokers on scrape."""

    def __init__(self, queue_stats: Callable[[], list[dict[str, Any]]] | None, reader: Reader) -> None:
        self._stats = queue_stats
        self._reader = reader

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterable[Any]:
        pool = GaugeMetricFamily(metrics.GATEWAY_POOL.name, metrics.GATEWAY_POOL.help, labels=["state"])
        for state, value in self._reader.pool_stats().items():
            pool.add_metric([state], value)
        yield pool
        if self._stats is None:
            return
        lag = GaugeMetricFamily(metrics.CONSUMER_LAG.name, metrics.CONSUMER_LAG.help, labels=["group", "partition"])
        lag_b = GaugeMetricFamily(
            metrics.CONSUMER_LAG_BATCHES.name, metrics.CONSUMER_LAG_BATCHES.help, labels=["group", "partition"]
        )
        try:
            brokers = self._stats()
        except Exception:  # a scrape must not fail because a broker is restarting
            brokers = []
        for b in brokers:
            for partition, p in b["partitions"].items():
                for group, g in p["groups"].items():
                    lag.add_metric([group, str(partition)], g["lag_rows"])
                    lag_b.add_metric([group, str(partition)], g["lag_batches"])
        yield lag
        yield lag_b
