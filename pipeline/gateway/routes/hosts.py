"""``/hosts``: hosts with their GPU counts."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Response

from pipeline.gateway import problems
from pipeline.gateway.deps import State, strict_query
from pipeline.gateway.models import HostPage
from pipeline.gateway.params import API, CursorParam, LimitParam

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
