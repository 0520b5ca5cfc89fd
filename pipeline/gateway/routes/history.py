"""``/gpus/{uuid}/allocations`` and ``/gpus/{uuid}/events``: who held a GPU when, and what happened to it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Depends, Request, Response

from pipeline.gateway import problems
from pipeline.gateway.deps import GatewayState, State, strict_query
from pipeline.gateway.fleet_models import AllocationPage, EventPage
from pipeline.gateway.params import (
    API,
    CursorParam,
    EndParam,
    LimitParam,
    StartParam,
    UuidParam,
    exact_times,
    from_us,
    reject_nul,
    ts_us,
    utc,
    window,
)

__all__ = ["router"]

router = APIRouter(prefix=API, tags=["gpus"], dependencies=[Depends(strict_query)])


def _iso(dt: datetime | None) -> str | None:
    return None if dt is None else utc(dt).isoformat()


def _page(
    route: str,
    request: Request,
    state: GatewayState,
    uuid: str,
    times: tuple[datetime | None, datetime | None],
    limit: int | None,
    cursor: str | None,
    cursor_types: tuple[type, type],
    fetch: Callable[[int, datetime, datetime, int, tuple[datetime, Any] | None], Sequence[Any]],
    sort_key: Callable[[Any], tuple[datetime, Any]],
    item: Callable[[Any], dict[str, Any]],
) -> Response:
    """One GPU's rows of a window, a page at a time: ``fetch`` reads them after a ``(ts, tiebreak)`` cursor
    bound to the GPU and the window; ``sort_key`` gives a row's cursor, ``item`` its JSON."""
    reject_nul(uuid=uuid)
    q = request.query_params
    start_time, end_time = exact_times(q.get("start_time"), q.get("end_time"), *times)
    start, end = window(start_time, end_time)
    state.check_span(start, end, state.settings.max_aggregate_window_s)
    n = state.page_limit(limit)
    binding = {"uuid": uuid, "start": _iso(start_time), "end": _iso(end_time)}
    after = None
    if cursor is not None:
        us, tiebreak = state.cursors.decode(route, cursor, cursor_types, binding)
        after = (from_us(us), tiebreak)

    def produce() -> dict[str, Any]:
        rows = list(fetch(state.gpu_key(uuid), start, end, n + 1, after))
        nxt = None
        if len(rows) > n:
            rows = rows[:n]
            ts, tiebreak = sort_key(rows[-1])
            nxt = state.cursors.encode(route, [ts_us(ts), tiebreak], binding)
        items = [item(r) for r in rows]
        return {"uuid": uuid, "start_time": start, "end_time": end, "items": items, "next_cursor": nxt}

    key = {**binding, "limit": n, "cursor": cursor} if state.is_recent(end_time) else None
    return state.cached_json(route, key, state.settings.recent_ttl_s, produce)


@router.get(
    "/gpus/{uuid:path}/allocations",
    response_model=AllocationPage,
    summary="Who held one GPU, when: its allocation intervals that overlap a window.",
    description="An interval opens at the first sample that carried a workload (namespace, pod, container, "
    "HPC job) and closes at the first sample that carried anything else; `end` is null while it is held.",
    responses=problems.responses(400, 404, 422, 503),
)
def allocations(
    request: Request,
    state: State,
    uuid: UuidParam,
    start_time: StartParam = None,
    end_time: EndParam = None,
    limit: LimitParam = None,
    cursor: CursorParam = None,
) -> Response:
    """A page of one GPU's intervals overlapping the window, ordered by start."""
    return _page(
        "allocations",
        request,
        state,
        uuid,
        (start_time, end_time),
        limit,
        cursor,
        (int, int),
        state.reader.allocations,
        lambda r: (r.start, r.allocation_id),
        lambda r: (
            {"namespace": r.namespace, "pod": r.pod, "container": r.container, "job": r.job}
            | {"start": r.start, "end": r.end}
        ),
    )


@router.get(
    "/gpus/{uuid:path}/events",
    response_model=EventPage,
    summary="Health events of one GPU in a window: XID errors with their code and meaning.",
    description="An XID event is recorded when DCGM_FI_DEV_XID_ERRORS changes to a non-zero code (the same "
    "code again is a new event only after the value changed in between).",
    responses=problems.responses(400, 404, 422, 503),
)
def events(
    request: Request,
    state: State,
    uuid: UuidParam,
    start_time: StartParam = None,
    end_time: EndParam = None,
    limit: LimitParam = None,
    cursor: CursorParam = None,
) -> Response:
    """A page of one GPU's events in the window, ordered by time."""
    return _page(
        "events",
        request,
        state,
        uuid,
        (start_time, end_time),
        limit,
        cursor,
        (int, str),
        state.reader.events,
        lambda r: (r.ts, r.kind),
        lambda r: {"ts": r.ts, "kind": r.kind, "code": r.code, "meaning": r.meaning},
    )
