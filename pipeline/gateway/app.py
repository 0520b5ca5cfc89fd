"""The REST gateway as a plain FastAPI app: ``build_app(reader, settings, cache=..., queue_stats=...)``.

Ray Serve hosts it (``pipeline.gateway.serve``); tests drive it with ``TestClient``. The API's routes
live in ``routes``; this module adds the operational endpoints (/health, /ready, /metrics), the request
metrics and the problem handlers. Every list is bounded by ``limit`` (above the maximum: 400, never
clamped) and paged with an opaque keyset cursor.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pipeline import metrics
from pipeline.config import GatewaySettings
from pipeline.errors import DatabaseUnavailable
from pipeline.gateway import problems
from pipeline.gateway.cache import Cache
from pipeline.gateway.models import Health, ProblemModel
from pipeline.gateway.params import decode_cursor, encode_cursor
from pipeline.gateway.routes import API, Limits, api_router
from pipeline.storage.reader import Reader

__all__ = ["API", "Limits", "build_app", "decode_cursor", "encode_cursor"]


def build_app(
    reader: Reader,
    settings: GatewaySettings | None = None,
    cache: Cache | None = None,
    queue_stats: Callable[[], list[dict[str, Any]]] | None = None,
    limits: Limits | None = None,
) -> FastAPI:
    """The gateway over a ``Reader``; ``cache`` (optional) caches lists and recent windows, ``queue_stats``
    (optional) feeds the queue lag gauges, ``limits`` overrides the export and aggregate bounds."""
    cfg = settings or GatewaySettings()  # type: ignore[call-arg]
    bounds = limits or Limits(
        export_max_rows=cfg.export_max_rows,
        export_chunk_rows=cfg.export_chunk_rows,
        max_buckets=cfg.max_buckets,
        recent_s=cfg.recent_window_s,
        recent_ttl_s=cfg.recent_ttl_s,
    )
    app = FastAPI(
        title="GPU Telemetry API",
        version="1.1.0",
        summary="DCGM telemetry of a GPU fleet: GPUs, hosts, metrics and samples over time.",
        description=(
            "Errors are `application/problem+json` (RFC 9457) with `title`, `status` and a `detail` naming the "
            "offending parameter or value. Time parameters are RFC 3339 (a time without an offset is UTC) and "
            "both bounds are inclusive. Lists are paged with `limit` and an opaque `cursor`; `limit` above "
            f"{cfg.max_limit} is refused with 400 (never clamped). Telemetry can be exported as CSV or an Arrow "
            f"IPC stream (`Accept` header), at most {bounds.export_max_rows} samples per request; aggregates "
            f"span at most {bounds.max_buckets} buckets."
        ),
        responses={422: problems.PROBLEM_RESPONSES[422]},
    )
    problems.install(app)
    registry = CollectorRegistry(auto_describe=True)
    registry.register(_GatewayCollector(queue_stats, reader, cache))
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
    app.add_middleware(_Observe, duration=duration, requests=requests)  # type: ignore[arg-type]
    app.state.reader = reader
    app.state.cache = cache

    @app.get("/health", response_model=Health, tags=["operations"], summary="Liveness: the process answers.")
    def health() -> Health:
        return Health(status="ok")

    @app.get(
        "/ready",
        response_model=Health,
        tags=["operations"],
        summary="Readiness: the database answers.",
        responses={503: {"model": Health, "description": "The database is unreachable."}},
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
        responses={200: {"content": {"text/plain": {"example": "http_requests_total{...} 1.0"}}}},
    )
    def prometheus() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    app.include_router(api_router(reader, cfg, cache, bounds))
    app.openapi_schema = None
    _add_problem_schema(app)
    return app


class _Observe:
    """ASGI middleware: request latency and counts by route template, method and status."""

    def __init__(self, app: ASGIApp, duration: Histogram, requests: Counter) -> None:
        self._app = app
        self._duration = duration
        self._requests = requests

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self._app(scope, receive, send_status)
        finally:
            path = getattr(scope.get("route"), "path", "unmatched")
            labels = (path, scope.get("method", "GET"), str(status))
            self._duration.labels(*labels).observe(time.perf_counter() - started)
            self._requests.labels(*labels).inc()


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


class _GatewayCollector:
    """Pool usage, and the queue's lag under the seed's metric name (read from the brokers on scrape)."""

    def __init__(
        self, queue_stats: Callable[[], list[dict[str, Any]]] | None, reader: Reader, cache: Cache | None = None
    ) -> None:
        self._stats = queue_stats
        self._reader = reader
        self._cache = cache

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterable[Any]:
        pool = GaugeMetricFamily(metrics.GATEWAY_POOL.name, metrics.GATEWAY_POOL.help, labels=["state"])
        for state, value in self._reader.pool_stats().items():
            pool.add_metric([state], value)
        yield pool
        if self._cache is not None and hasattr(self._cache, "hits"):
            lookups = CounterMetricFamily(
                metrics.GATEWAY_CACHE.name.removesuffix("_total"), metrics.GATEWAY_CACHE.help, labels=["result"]
            )
            for label, attr in (("hit", "hits"), ("miss", "misses"), ("error", "errors")):
                lookups.add_metric([label], getattr(self._cache, attr))
            yield lookups
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
