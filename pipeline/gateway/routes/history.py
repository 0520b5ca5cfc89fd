"""``/gpus/{uuid}/allocations`` and ``/gpus/{uuid}/events``: who held a GPU when, and what happened to it."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Depends, Request, Response

from pipeline.gateway import problems
from pipeline.gateway.deps import State, strict_query
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
    reject_nul(uuid=uuid)
    q = request.query_params
    start_time, end_time = exact_times(q.get("start_time"), q.get("end_time"), start_time, end_time)
    start, end = window(start_time, end_time)
    state.check_span(start, end, state.settings.max_aggregate_window_s)
    n = state.page_limit(limit)
    binding = {"uuid": uuid, "start": _iso(start_time), "end": _iso(end_time)}
    after = None
    if cursor is not None:
        us, allocation_id = state.cursors.decode("allocations", cursor, (int, int), binding)
        after = (from_us(us), allocation_id)

    def produce() -> dict[str, Any]:  # an AllocationPage
        rows = state.reader.allocations(state.gpu_key(uuid), start, end, n + 1, after)
        nxt = None
        if len(rows) > n:
            rows = rows[:n]
            nxt = state.cursors.encode("allocations", [ts_us(rows[-1].start), rows[-1].allocation_id], binding)
        items = [
            {"namespace": r.namespace, "pod": r.pod, "container": r.container, "job": r.job, "start": r.start}
            | {"end": r.end}
            for r in rows
        ]
        return {"uuid": uuid, "start_time": start, "end_time": end, "items": items, "next_cursor": nxt}

    key = {**binding, "limit": n, "cursor": cursor} if state.is_recent(end_time) else None
    return state.cached_json("allocations", key, state.settings.recent_ttl_s, produce)


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
    reject_nul(uuid=uuid)
    q = request.query_params
    start_time, end_time = exact_times(q.get("start_time"), q.get("end_time"), start_time, end_time)
    start, end = window(start_time, end_time)
    state.check_span(start, end, state.settings.max_aggregate_window_s)
    n = state.page_limit(limit)
    binding = {"uuid": uuid, "start": _iso(start_time), "end": _iso(end_time)}
    after = None
    if cursor is not None:
        us, kind = state.cursors.decode("events", cursor, (int, str), binding)
        after = (from_us(us), kind)

    def produce() -> dict[str, Any]:  # an EventPage
        rows = state.reader.events(state.gpu_key(uuid), start, end, n + 1, after)
        nxt = None
        if len(rows) > n:
            rows = rows[:n]
            nxt = state.cursors.encode("events", [ts_us(rows[-1].ts), rows[-1].kind], binding)
        items = [{"ts": r.ts, "kind": r.kind, "code": r.code, "meaning": r.meaning} for r in rows]
        return {"uuid": uuid, "start_time": start, "end_time": end, "items": items, "next_cursor": nxt}

    key = {**binding, "limit": n, "cursor": cursor} if state.is_recent(end_time) else None
    return state.cached_json("events", key, state.settings.recent_ttl_s, produce)
