"""Operational endpoints: liveness, readiness and the Prometheus exposition."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.responses import Response

from pipeline.errors import DatabaseUnavailable
from pipeline.gateway.deps import State
from pipeline.gateway.models import Health

__all__ = ["router"]

router = APIRouter(tags=["operations"])
_OK = Health(status="ok").model_dump_json().encode()


@router.get("/health", response_model=Health, summary="Liveness: the process answers.")
async def health() -> Response:
    """Always ok while the process serves (async, a constant body: the floor of every request)."""
    return Response(_OK, media_type="application/json")


@router.get(
    "/ready",
    response_model=Health,
    summary="Readiness: the database answers.",
    responses={503: {"model": Health, "description": "The database is unreachable."}},
)
def ready(state: State) -> Any:
    """Ok when the database answers, 503 otherwise."""
    try:
        state.reader.ping()
    except DatabaseUnavailable as exc:
        return JSONResponse(Health(status="unavailable", detail=str(exc)).model_dump(), status_code=503)
    return Health(status="ok")


@router.get(
    "/metrics",
    summary="Prometheus exposition of the gateway's metrics.",
    response_class=Response,
    responses={200: {"content": {"text/plain": {"example": "http_requests_total{...} 1.0"}}}},
)
def prometheus(state: State) -> Response:
    """The gateway's registry in the Prometheus text format."""
    return Response(generate_latest(state.registry), media_type=CONTENT_TYPE_LATEST)
