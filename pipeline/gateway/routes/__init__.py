"""The gateway's endpoints, one module per resource: GPUs (and their allocation and event history),
telemetry, hosts, the fleet views, usage, the metric catalogue, operations.

Every API handler validates its parameters before touching the database, answers from the cache
when one is configured and the request is cacheable, and bounds what it reads: ``limit`` for lists,
the export maximum for CSV/Arrow, the bucket cap for aggregates. Handlers reach the reader, settings
and cache through ``pipeline.gateway.deps``.
"""

from __future__ import annotations

from fastapi import APIRouter

from pipeline.gateway.routes import fleet, gpus, history, hosts, metrics_catalog, operations, telemetry, usage

__all__ = ["ROUTERS"]

# Each router carries its full path prefix, so a matched route's ``path`` is the whole template
# (the request metrics label requests with it). Telemetry and history come before gpus:
# ``/gpus/{uuid:path}`` takes slashes (MIG instances) and would otherwise swallow ``/gpus/<uuid>/telemetry``.
ROUTERS: tuple[APIRouter, ...] = (
    operations.router,
    telemetry.router,
    history.router,
    gpus.router,
    hosts.router,
    fleet.router,
    usage.router,
    metrics_catalog.router,
)
