"""Response bodies of the fleet views: newest values, allocations, events, usage, health."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from pipeline.gateway.models import AggregatePoint, Allocation

__all__ = [
    "AllocationInterval",
    "AllocationPage",
    "BlankCode",
    "EventPage",
    "FleetHealth",
    "FleetLatest",
    "FleetLatestPage",
    "GpuEvent",
    "HostAggregatePage",
    "MissingGpu",
    "SilentHost",
    "UsageGroup",
    "UsagePage",
]

_UUID = "GPU-5fd4f087-86f3-7a43-b711-4771313afc50"
_TS = "2025-07-18T20:42:34.000123Z"
_NEXT = "Pass as `cursor` for the next page; null on the last page."


class FleetLatest(BaseModel):
    """One GPU's newest value of the metric."""

    uuid: str = Field(examples=[_UUID])
    hostname: str | None = Field(examples=["mtv5-dgx1-hgpu-031"])
    gpu_index: int | None = Field(examples=[0])
    model: str | None = Field(examples=["NVIDIA H100 80GB HBM3"])
    ts: datetime = Field(description="When the value was sampled.", examples=[_TS])
    value: float = Field(examples=[83.0])
    allocation: Allocation | None = Field(description="Who holds the GPU now; null: nobody.")


class FleetLatestPage(BaseModel):
    """Each GPU's newest value of one metric, ordered by (value, uuid) in the requested direction."""

    metric: str = Field(examples=["DCGM_FI_DEV_GPU_TEMP"])
    sort: Literal["asc", "desc"] = Field(examples=["desc"])
    items: list[FleetLatest]
    next_cursor: str | None = Field(description=_NEXT, examples=[None])


class HostAggregatePage(BaseModel):
    """Aggregates over every GPU of one host: one point per (bucket, metric), ordered by (ts, metric)."""

    hostname: str = Field(examples=["mtv5-dgx1-hgpu-031"])
    gpus: int = Field(description="GPUs (and MIG devices) of the host aggregated.", examples=[8])
    bucket: str = Field(examples=["1m"])
    fn: Literal["avg", "min", "max", "count", "last", "p95"] = Field(examples=["avg"])
    start_time: datetime = Field(description="Start of the first bucket.", examples=["2025-07-18T19:42:00Z"])
    end_time: datetime = Field(description="End (exclusive) of the last bucket.", examples=["2025-07-18T20:43:00Z"])
    source: str = Field(description="`raw` samples or a rollup view.", examples=["raw"])
    items: list[AggregatePoint]


class AllocationInterval(BaseModel):
    """A workload held the GPU over [start, end)."""

    namespace: str | None = Field(examples=["ml-train"])
    pod: str | None = Field(examples=["train-llm-0"])
    container: str | None = Field(examples=["main"])
    job: str | None = Field(examples=[None])
    start: datetime = Field(description="Its first sample.", examples=["2025-07-18T19:42:34Z"])
    end: datetime | None = Field(
        description="The first sample of whatever came next (exclusive); null while it is still held.",
        examples=[None],
    )


class AllocationPage(BaseModel):
    """Who held one GPU, when: intervals overlapping the window, ordered by start."""

    uuid: str = Field(examples=[_UUID])
    start_time: datetime = Field(examples=["2025-07-18T19:42:34Z"])
    end_time: datetime = Field(examples=["2025-07-18T20:42:34Z"])
    items: list[AllocationInterval]
    next_cursor: str | None = Field(description=_NEXT, examples=[None])


class GpuEvent(BaseModel):
    """One health event: an XID error (its code and what NVIDIA's catalogue says it means)."""

    ts: datetime = Field(examples=[_TS])
    kind: Literal["xid"] = Field(examples=["xid"])
    code: int = Field(examples=[79])
    meaning: str | None = Field(
        description="Null for a code the catalogue lacks.", examples=["GPU has fallen off the bus"]
    )


class EventPage(BaseModel):
    """Health events of one GPU in a window, ordered by time."""

    uuid: str = Field(examples=[_UUID])
    start_time: datetime = Field(examples=["2025-07-18T19:42:34Z"])
    end_time: datetime = Field(examples=["2025-07-18T20:42:34Z"])
    items: list[GpuEvent]
    next_cursor: str | None = Field(description=_NEXT, examples=[None])


class UsageGroup(BaseModel):
    """Usage of one group over the window."""

    group: str | None = Field(
        description="The group's value (a pod as `namespace/pod`); null: time nobody held a GPU (for "
        "namespace, pod and job) or GPUs without the field.",
        examples=["ml-train"],
    )
    mean_gpus: float = Field(
        description="GPUs the group used on average over the window (gpu_hours / the window's hours).", examples=[61.5]
    )
    gpu_hours: float = Field(description="GPU time observed (sample holds), in hours.", examples=[61.5])
    gpu_hours_allocated: float = Field(description="Of it, while a workload held the GPU.", examples=[61.5])
    gpu_hours_active: float = Field(description="Utilisation above the active threshold.", examples=[48.2])
    gpu_hours_idle: float = Field(description="At or below it.", examples=[13.3])
    memory_idle_hours: float = Field(
        description="Idle while holding framebuffer memory above the collectors' memory threshold.", examples=[9.1]
    )
    mean_utilization: float | None = Field(description="Time-weighted mean GPU_UTIL, %.", examples=[71.4])
    energy_kwh: float = Field(description="Energy from DCGM_FI_DEV_POWER_USAGE, kWh.", examples=[38.7])


class UsagePage(BaseModel):
    """Usage per group, ordered by group (null first)."""

    group_by: Literal["namespace", "pod", "job", "hostname", "model"] = Field(examples=["namespace"])
    start_time: datetime = Field(
        description="Start of the first whole minute counted.", examples=["2025-07-18T19:42:00Z"]
    )
    end_time: datetime = Field(
        description="End (exclusive) of the last whole minute.", examples=["2025-07-18T20:43:00Z"]
    )
    items: list[UsageGroup]
    next_cursor: str | None = Field(description=_NEXT, examples=[None])


class MissingGpu(BaseModel):
    """A GPU with no sample within the threshold."""

    uuid: str = Field(examples=[_UUID])
    hostname: str | None = Field(examples=["mtv5-dgx1-hgpu-031"])
    last_seen: datetime = Field(description="Its newest sample.", examples=[_TS])


class SilentHost(BaseModel):
    """A host none of whose GPUs reported within the threshold: its exporter went silent."""

    hostname: str = Field(examples=["mtv5-dgx1-hgpu-031"])
    gpus: int = Field(examples=[8])
    last_seen: datetime = Field(examples=[_TS])


class BlankCode(BaseModel):
    """A GPU reporting DCGM blank codes for a metric (values it cannot give: not supported, no permission...)."""

    uuid: str | None = Field(examples=[_UUID])
    metric: str | None = Field(examples=["DCGM_FI_DEV_ENC_UTIL"])
    code: str = Field(description="The blank code, as DCGM names it.", examples=["int64 not supported"])
    count: int = Field(description="Samples that carried it since start_time.", examples=[120])
    last_seen: datetime = Field(examples=[_TS])


class Counted(BaseModel):
    """A count, and at most `limit` of the items counted."""

    count: int = Field(examples=[1])


class MissingList(Counted):
    """GPUs that stopped reporting."""

    items: list[MissingGpu]


class SilentList(Counted):
    """Hosts whose exporter went silent."""

    items: list[SilentHost]


class BlankList(Counted):
    """GPUs reporting DCGM blank codes (count: distinct GPUs)."""

    items: list[BlankCode]


class FleetHealth(BaseModel):
    """What is wrong with the fleet now."""

    as_of: datetime = Field(examples=[_TS])
    threshold_s: float = Field(
        description="A GPU is missing without a sample for this long: intervals x the scrape interval, plus "
        "the latest-value table's grace.",
        examples=[13.0],
    )
    start_time: datetime = Field(description="Blank codes and XID events are counted since.", examples=[_TS])
    gpus: int = Field(description="GPUs with a newest sample on record.", examples=[256])
    missing_gpus: MissingList
    silent_hosts: SilentList
    blank_codes: BlankList
    xid_events: int = Field(description="XID errors recorded since start_time.", examples=[0])
