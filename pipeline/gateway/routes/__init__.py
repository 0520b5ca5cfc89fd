"""The gateway's endpoints, one module per resource: GPUs, telemetry, hosts, the metric catalogue, operations.

Every API handler validates its parameters before touching the database, answers from the cache
when one is configured and the request is cacheable, and bounds what it reads: ``limit`` for lists,
the export maximum for CSV/Arrow, the bucket cap for aggregates. Handlers reach the reader, settings
and cache through ``pipeline.gateway.deps``.
"""

from __future__ import annotations

from fastapi import APIRouter

from pipeline.gateway.routes import gpus, hosts, metrics_catalog, operations, telemetry

__all__ = ["ROUTERS"]

# Each router carries its full path prefix, so a matched route's ``path`` is the whole template
# (the request metrics label requests with it). Telemetry comes before gpus: ``/gpus/{uuid:path}`` takes
# slashes (MIG instances) and would otherwise swallow ``/gpus/<uuid>/telemetry``.
ROUTERS: tuple[APIRouter, ...] = (
    operations.router,
    telemetry.router,
    gpus.router,
    hosts.router,
    metrics_catalog.router,
)
