"""``/metrics/catalog``: the metric names, units and help texts."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Response

from pipeline.gateway import problems
from pipeline.gateway.deps import State, strict_query
from pipeline.gateway.models import MetricCatalog
from pipeline.gateway.params import API, CursorParam, LimitParam

__all__ = ["router"]

router = APIRouter(prefix=API, tags=["metrics"], dependencies=[Depends(strict_query)])


@router.get(
    "/metrics/catalog",
    response_model=MetricCatalog,
    summary="The metric catalogue: names, units and help (Prometheus exposition is at /metrics).",
    responses=problems.responses(400, 422, 503),
)
async def catalog(state: State, limit: LimitParam = None, cursor: CursorParam = None) -> Response:
    """A page of the catalogue ordered by name."""
    n = state.page_limit(limit)
    after = state.cursors.decode("metrics", cursor, (str,))[0] if cursor is not None else None

    def produce() -> dict[str, Any]:  # a MetricCatalog, as plain data
        rows = state.reader.metrics(n + 1, after)
        nxt = state.cursors.encode("metrics", [rows[n - 1].name]) if len(rows) > n else None
        items = [{"name": r.name, "unit": r.unit, "help": r.help} for r in rows[:n]]
        return {"items": items, "next_cursor": nxt}

    return await state.cached("catalog", {"limit": n, "cursor": cursor}, state.settings.gpu_list_ttl_s, produce)
