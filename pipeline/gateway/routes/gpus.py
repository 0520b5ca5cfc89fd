"""``/gpus`` and ``/gpus/{uuid}``: the fleet, and one GPU with its newest values."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Response

from pipeline.errors import ResourceNotFound
from pipeline.gateway import problems
from pipeline.gateway.deps import State, strict_query
from pipeline.gateway.models import GpuDetail, GpuPage
from pipeline.gateway.params import (
    API,
    CursorParam,
    HasMetricParam,
    HostnameParam,
    LimitParam,
    ModelParam,
    NamespaceParam,
    ParentParam,
    PodParam,
    UuidParam,
    reject_nul,
    shown,
)
from pipeline.storage.reader import GpuRow, Holder

__all__ = ["router"]

router = APIRouter(prefix=API, tags=["gpus"], dependencies=[Depends(strict_query)])


def _gpu(row: GpuRow) -> dict[str, Any]:
    """A ``Gpu`` as plain data (pages are serialised without a model object per row)."""
    return {
        "uuid": row.uuid,
        "hostname": row.hostname,
        "gpu_index": row.gpu_index,
        "device": row.device,
        "model": row.model,
        "first_seen": row.first_seen,
        "last_seen": row.last_seen,
        "metrics": list(row.metrics),
        "driver_version": row.driver_version,
        "instance": row.instance,
        "parent_uuid": row.parent_uuid,
        "mig_instance": row.mig_instance,
        "mig_profile": row.mig_profile,
        "allocation": holder(row.holder),
    }


def holder(h: Holder | None) -> dict[str, Any] | None:
    """An ``Allocation`` as plain data (null: nobody holds the GPU)."""
    if h is None:
        return None
    return {"namespace": h.namespace, "pod": h.pod, "container": h.container, "job": h.job, "since": h.since}


@router.get(
    "/gpus",
    response_model=GpuPage,
    summary="List GPUs, with the metrics each reports, its facts and who holds it now.",
    description="Read from the latest-value table (one row per GPU) and the open allocation intervals: no "
    "scan of the samples. `namespace`/`pod` filter by the current holder; `parent_uuid` lists a GPU's MIG devices.",
    responses=problems.responses(400, 422, 503),
)
async def list_gpus(
    state: State,
    hostname: HostnameParam = None,
    model: ModelParam = None,
    metric: HasMetricParam = None,
    namespace: NamespaceParam = None,
    pod: PodParam = None,
    parent_uuid: ParentParam = None,
    limit: LimitParam = None,
    cursor: CursorParam = None,
) -> Response:
    """A page of GPUs ordered by (hostname, gpu_index, uuid), optionally filtered."""
    reject_nul(hostname=hostname, model=model, metric=metric, namespace=namespace, pod=pod, parent_uuid=parent_uuid)
    n = state.page_limit(limit)
    binding = {"hostname": hostname, "model": model, "metric": metric, "namespace": namespace, "pod": pod}
    binding["parent_uuid"] = parent_uuid
    held = {k: v for k, v in (("namespace", namespace), ("pod", pod)) if v is not None}
    after = None
    if cursor is not None:
        h, i, u = state.cursors.decode("gpus", cursor, (str, int, str), binding)
        after = (h, i, u)
    key = {**binding, "limit": n, "cursor": cursor}

    def produce() -> dict[str, Any]:  # a GpuPage
        ids = state.metric_ids([metric]) if metric is not None else None
        rows = state.reader.gpus(
            n + 1,
            after,
            hostname=hostname,
            model=model,
            metric_id=ids[0] if ids else None,
            held_by=held,
            parent_uuid=parent_uuid,
        )
        nxt = None
        if len(rows) > n:
            rows = rows[:n]
            last = rows[-1]
            index = -1 if last.gpu_index is None else last.gpu_index
            nxt = state.cursors.encode("gpus", [last.hostname or "", index, last.uuid], binding)
        return {"items": [_gpu(r) for r in rows], "next_cursor": nxt}

    return await state.cached("gpus", key, state.settings.gpu_list_ttl_s, produce)


@router.get(
    "/gpus/{uuid:path}",
    response_model=GpuDetail,
    summary="One GPU, with the newest value of each metric it reports.",
    responses=problems.responses(400, 404, 422, 503),
)
async def get_gpu(state: State, uuid: UuidParam) -> Response:
    """One GPU and the newest sample of each of its metrics."""
    reject_nul(uuid=uuid)

    def produce() -> dict[str, Any]:  # a GpuDetail
        row = state.reader.gpu(uuid)
        if row is None:
            raise ResourceNotFound(f"GPU {shown(uuid)} not found", kind="gpu", name=uuid)
        latest = [
            {"metric": r.metric, "unit": r.unit, "ts": r.ts, "value": r.value} for r in state.reader.latest(row.gpu_key)
        ]
        return {**_gpu(row), "latest": latest}

    return await state.cached("gpu", {"uuid": uuid}, state.settings.recent_ttl_s, produce)
