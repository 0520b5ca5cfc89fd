"""The REST gateway as a plain FastAPI app: ``build_app(reader, settings, cache=..., pipeline=...)``.

Ray Serve hosts it (``pipeline.gateway.serve``); tests drive it with ``TestClient``. The routes live in
``routes`` (one module per resource), what they need in ``deps``, the request metrics in ``observe``
and the problem handlers in ``problems``; the HTML pages for people in ``pages``. Every list is
bounded by ``limit`` (above the maximum: 400, never clamped) and paged with an opaque keyset cursor.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from pipeline.config import GatewaySettings
from pipeline.gateway import auth, problems
from pipeline.gateway.auth import BearerAuth
from pipeline.gateway.cache import Cache, ResponseCache
from pipeline.gateway.cursors import Cursors
from pipeline.gateway.deps import GatewayState, install_state
from pipeline.gateway.export import ExportSlots
from pipeline.gateway.http import BoundedRequests, GzipLarge, HeadAsGet
from pipeline.gateway.models import ProblemModel
from pipeline.gateway.observe import Observe, QueueStats, request_metrics
from pipeline.gateway.pages import PAGE_ACCESS, PipelineView, page_router
from pipeline.gateway.params import API
from pipeline.gateway.routes import ROUTERS
from pipeline.storage.reader import Reader

__all__ = ["API", "build_app", "cursor_key"]

log = logging.getLogger(__name__)


def build_app(
    reader: Reader,
    settings: GatewaySettings | None = None,
    cache: Cache | None = None,
    queue_stats: QueueStats | None = None,
    pipeline: PipelineView | None = None,
) -> FastAPI:
    """The gateway over a ``Reader``; ``cache`` (optional, shared by replicas: Redis) caches lists and recent
    windows behind this app's own in-memory copy, ``queue_stats`` (optional) feeds the queue lag gauges,
    ``pipeline`` (optional) shows the queue and actors on /pipeline."""
    cfg = settings or GatewaySettings()  # type: ignore[call-arg]
    app = FastAPI(
        title="GPU Telemetry API",
        version="1.2.0",
        summary="DCGM telemetry of a GPU fleet: GPUs, hosts, metrics, samples over time, who used the GPUs "
        "and how (allocations, usage), and fleet health.",
        description=_description(cfg),
        responses={422: problems.PROBLEM_RESPONSES[422]},
    )
    problems.install(app)
    missing_after = cfg.missing_after_s()
    responses = ResponseCache(cache) if cache is not None else None
    registry, recorder = request_metrics(reader, responses, queue_stats, missing_after)
    # Added last runs first: CORS (when configured) answers preflights, oversized requests are refused,
    # tokens are checked, HEAD becomes GET, large bodies are gzipped (HEAD's headers say so too), then
    # the request metrics see what the routes saw.
    app.add_middleware(Observe, recorder=recorder)  # type: ignore[arg-type]
    app.add_middleware(GzipLarge, min_bytes=cfg.gzip_min_bytes)  # type: ignore[arg-type]
    app.add_middleware(HeadAsGet)
    if auth.enabled(cfg):
        app.add_middleware(BearerAuth, tokens=cfg.tokens(), pages=PAGE_ACCESS)  # type: ignore[arg-type]
    elif cfg.auth == "on":
        log.warning("no API tokens configured: the gateway serves its API without authentication")
    app.add_middleware(BoundedRequests, max_url_bytes=cfg.max_url_bytes)  # type: ignore[arg-type]
    if cfg.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=cfg.cors_origins,
            allow_methods=["GET", "HEAD"],
            allow_headers=["Authorization", "Accept"],
            max_age=600,
        )
    state = GatewayState(
        reader=reader,
        settings=cfg,
        cache=responses,
        registry=registry,
        exports=ExportSlots(cfg.export_concurrency),
        cursors=Cursors(cursor_key(cfg)),
    )
    install_state(app, state)
    for router in ROUTERS:
        app.include_router(router)
    app.include_router(page_router(pipeline))
    app.openapi_schema = None
    _complete_openapi(app, bearer=cfg.auth == "on")
    return app


def _description(cfg: GatewaySettings) -> str:
    return (
        "Errors are `application/problem+json` (RFC 9457) with `title`, `status` and a `detail` naming the "
        "offending parameter or value. Time parameters are RFC 3339 (a time without an offset is UTC; numbers "
        "are refused) and both bounds are inclusive. A query parameter a route does not declare, or a "
        "single-valued one given twice, is refused with 400 (`metric` is the one that repeats). Lists are "
        f"paged with `limit` and an opaque `cursor` bound to its query; `limit` above {cfg.max_limit} is "
        "refused with 400 (never clamped). Telemetry can be exported as CSV or an Arrow IPC stream (`Accept` "
        f"header), at most {cfg.export_max_rows} samples per request and {cfg.export_concurrency} exports at "
        "once per replica. One request spans at most "
        f"{cfg.max_window_s:.0f} s of telemetry; an aggregate at most {cfg.max_aggregate_window_s:.0f} s (whole "
        f"buckets included) and {cfg.max_buckets} buckets. `GET` routes answer `HEAD` too."
        + (
            " Authentication: `Authorization: Bearer <token>`; a `read` token for the API and its docs, a "
            "`metrics` token for /metrics; /health and /ready are open. A missing or unknown token is a 401, "
            "a token without the scope a 403 (problem+json)."
            if cfg.auth == "on"
            else " Authentication is off."
        )
    )


def cursor_key(settings: GatewaySettings) -> bytes:
    """The HMAC key of page cursors: ``cursor_secret``, else one derived from the API tokens (shared by replicas)."""
    if settings.cursor_secret is not None:
        return settings.cursor_secret.get_secret_value().encode()
    tokens = settings.api_tokens.get_secret_value() if settings.api_tokens is not None else ""
    return hashlib.sha256(b"gpu-telemetry-cursor:" + tokens.encode()).digest()


def _complete_openapi(app: FastAPI, bearer: bool) -> None:
    """Add the Problem schema and, with authentication on, the bearer scheme on every protected operation."""
    original = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = original()
        components = schema.setdefault("components", {})
        components.setdefault("schemas", {})["Problem"] = ProblemModel.model_json_schema()
        if bearer:
            components["securitySchemes"] = {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A token of `gateway.api_tokens`: scope `read` for the API, `metrics` for "
                    "/metrics. /health and /ready need none.",
                }
            }
            for path, item in schema["paths"].items():
                for op in item.values():
                    if path in auth.OPEN_PATHS:
                        op["security"] = []
                        continue
                    op["security"] = [{"bearer": []}]
                    op["responses"].update({str(k): v for k, v in problems.responses(401, 403).items()})
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
