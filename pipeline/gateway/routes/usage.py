"""``/usage``: GPU-hours allocated, active and idle, memory held idle, utilisation and energy, per group."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request, Response

from pipeline.gateway import problems
from pipeline.gateway.deps import State, strict_query
from pipeline.gateway.fleet_models import UsagePage
from pipeline.gateway.params import (
    API,
    CursorParam,
    EndParam,
    GroupByParam,
    LimitParam,
    ResolutionParam,
    StartParam,
    exact_times,
    reject_nul,
    utc,
    window,
)
from pipeline.storage.fleet import usage_window

__all__ = ["router"]

router = APIRouter(prefix=API, tags=["fleet"], dependencies=[Depends(strict_query)])
HOUR_S = 3600.0


@router.get(
    "/usage",
    response_model=UsagePage,
    summary="Usage per namespace, pod, HPC job, host or model over a window, from the usage rollups.",
    description="Each DCGM_FI_DEV_GPU_UTIL sample holds until the GPU's next one (a gap over the collectors' "
    "max_gap_s, 120 s, holds nothing) and counts for the workload that held the GPU then. Active: utilisation "
    "above the collectors' active_above_percent (5 %); memory idle: not active while DCGM_FI_DEV_FB_USED is above "
    "memory_held_mib (1024 MiB); energy: DCGM_FI_DEV_POWER_USAGE x hold. Whole units of `resolution` that hold "
    "an instant of the window count: days (usage_1d), hours (the default: whole days inside from usage_1d, the "
    "hours at the edges from usage_1h) or minutes (the minutes at the edges from usage_1m: up to 118 rows per GPU "
    "more to read). The rollups lag ingest by the compaction period (attribution.compact_every_s, 30 s).",
    responses=problems.responses(400, 422, 503),
)
def usage(
    request: Request,
    state: State,
    group_by: GroupByParam,
    start_time: StartParam = None,
    end_time: EndParam = None,
    resolution: ResolutionParam = "hour",
    limit: LimitParam = None,
    cursor: CursorParam = None,
) -> Response:
    """A page of groups ordered by name, each with its usage over the window."""
    q = request.query_params
    start_time, end_time = exact_times(q.get("start_time"), q.get("end_time"), start_time, end_time)
    start, end = window(start_time, end_time)
    lo, hi = usage_window(start, end, resolution)
    state.check_span(lo, hi, state.settings.max_aggregate_window_s)
    n = state.page_limit(limit)
    binding = {
        "resolution": resolution,
        "group_by": group_by,
        "start": None if start_time is None else utc(start_time).isoformat(),
        "end": None if end_time is None else utc(end_time).isoformat(),
    }
    after = None
    if cursor is not None:
        (after,) = state.cursors.decode("usage", cursor, (str,), binding)
        reject_nul(cursor=after)

    def produce() -> dict[str, Any]:  # a UsagePage
        rows = state.reader.usage(group_by, lo, hi, n + 1, after, resolution)
        nxt = None
        if len(rows) > n:
            rows = rows[:n]
            nxt = state.cursors.encode("usage", [rows[-1].group or ""], binding)
        span = (hi - lo).total_seconds()
        items = [
            {
                "group": r.group,
                "mean_gpus": r.seconds / span,
                "gpu_hours": r.seconds / HOUR_S,
                "gpu_hours_allocated": r.allocated_s / HOUR_S,
                "gpu_hours_active": r.active_s / HOUR_S,
                "gpu_hours_idle": (r.seconds - r.active_s) / HOUR_S,
                "memory_idle_hours": r.mem_idle_s / HOUR_S,
                "mean_utilization": r.util_s / r.seconds if r.seconds else None,
                "energy_kwh": r.energy_j / 3.6e6,
            }
            for r in rows
        ]
        return {
            "group_by": group_by,
            "resolution": resolution,
            "start_time": lo,
            "end_time": hi,
            "items": items,
            "next_cursor": nxt,
        }

    key = {**binding, "limit": n, "cursor": cursor}
    return state.cached_json("usage", key, state.settings.gpu_list_ttl_s, produce)
