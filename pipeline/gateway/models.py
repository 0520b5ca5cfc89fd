"""The gateway's response bodies (they generate the OpenAPI schemas, examples included)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

__all__ = [
    "AggregatePage",
    "AggregatePoint",
    "Allocation",
    "Gpu",
    "GpuDetail",
    "GpuPage",
    "Health",
    "Host",
    "HostPage",
    "Latest",
    "MetricCatalog",
    "MetricInfo",
    "ProblemModel",
    "Sample",
    "TelemetryPage",
]

_UUID = "GPU-5fd4f087-86f3-7a43-b711-4771313afc50"
_TS = "2025-07-18T20:42:34.000123Z"
_NEXT = "Pass as `cursor` for the next page; null on the last page."


class Allocation(BaseModel):
    """Who holds a GPU now: its open allocation interval."""

    namespace: str | None = Field(examples=["ml-train"])
    pod: str | None = Field(examples=["train-llm-0"])
    container: str | None = Field(examples=["main"])
    job: str | None = Field(description="The HPC job (`hpc_job` label), where there is one.", examples=[None])
    since: datetime = Field(description="The first sample that carried this workload.", examples=[_TS])


class Gpu(BaseModel):
    """One GPU (or MIG device)."""

    uuid: str = Field(description="The GPU's identity; a MIG device's is `<GPU UUID>/mig-<id>`.", examples=[_UUID])
    hostname: str | None = Field(examples=["mtv5-dgx1-hgpu-031"])
    gpu_index: int | None = Field(description="Local index on its host (0-7).", examples=[0])
    device: str | None = Field(examples=["nvidia0"])
    model: str | None = Field(examples=["NVIDIA H100 80GB HBM3"])
    first_seen: datetime = Field(examples=["2025-07-18T13:42:33Z"])
    last_seen: datetime = Field(examples=[_TS])
    metrics: list[str] = Field(
        description="Metrics the GPU reports: those with a sample within 15 minutes of its newest sample.",
        examples=[["DCGM_FI_DEV_GPU_TEMP", "DCGM_FI_DEV_GPU_UTIL"]],
    )
    driver_version: str | None = Field(default=None, examples=["535.129.03"])
    instance: str | None = Field(default=None, description="The exporter that reports it.", examples=["node:9400"])
    parent_uuid: str | None = Field(default=None, description="A MIG device's GPU; null for a GPU.", examples=[None])
    mig_instance: int | None = Field(default=None, description="A MIG device's GPU instance id.", examples=[None])
    mig_profile: str | None = Field(default=None, description="A MIG device's profile.", examples=[None])
    allocation: Allocation | None = Field(default=None, description="Who holds it now; null: nobody.")


class GpuPage(BaseModel):
    """A page of GPUs, ordered by (hostname, gpu_index, uuid)."""

    items: list[Gpu]
    next_cursor: str | None = Field(description=_NEXT, examples=[None])


class Latest(BaseModel):
    """The newest sample of one metric."""

    metric: str = Field(examples=["DCGM_FI_DEV_GPU_TEMP"])
    unit: str | None = Field(examples=["C"])
    ts: datetime = Field(examples=[_TS])
    value: float = Field(examples=[41.0])


class GpuDetail(Gpu):
    """One GPU with the newest value of each metric it reports."""

    latest: list[Latest] = Field(description="One entry per metric, ordered by metric name.")


class Sample(BaseModel):
    """One sample."""

    ts: datetime = Field(examples=[_TS])
    metric: str = Field(examples=["DCGM_FI_DEV_GPU_UTIL"])
    value: float = Field(examples=[87.0])


class TelemetryPage(BaseModel):
    """A page of one GPU's samples, ordered by (ts, metric)."""

    uuid: str = Field(examples=[_UUID])
    start_time: datetime = Field(description="The window's inclusive start.", examples=["2025-07-18T19:42:34Z"])
    end_time: datetime = Field(description="The window's inclusive end.", examples=["2025-07-18T20:42:34Z"])
    items: list[Sample]
    next_cursor: str | None = Field(description=_NEXT, examples=["WyJhc2MiLDE3NTI4NzEzNTQwMDAxMjMsMV0"])


class AggregatePoint(BaseModel):
    """One bucket of one metric."""

    ts: datetime = Field(description="The bucket's start.", examples=["2025-07-18T20:42:00Z"])
    metric: str = Field(examples=["DCGM_FI_DEV_POWER_USAGE"])
    value: float | None = Field(examples=[312.5])


class AggregatePage(BaseModel):
    """Aggregated samples of one GPU: one point per (bucket, metric), ordered by (ts, metric)."""

    uuid: str = Field(examples=[_UUID])
    bucket: str = Field(examples=["1m"])
    fn: Literal["avg", "min", "max", "count", "last", "p95"] = Field(examples=["avg"])
    start_time: datetime = Field(
        description="Start of the first bucket (start_time rounded down to a bucket boundary).",
        examples=["2025-07-18T19:42:00Z"],
    )
    end_time: datetime = Field(
        description="End (exclusive) of the last bucket (end_time rounded up to the next boundary).",
        examples=["2025-07-18T20:43:00Z"],
    )
    source: str = Field(
        description="Where the points come from: `raw` samples or a rollup view (`telemetry_1m`, `telemetry_1h`).",
        examples=["raw"],
    )
    items: list[AggregatePoint]


class Host(BaseModel):
    """One host and its GPUs."""

    hostname: str | None = Field(examples=["mtv5-dgx1-hgpu-031"])
    gpus: int = Field(description="GPUs registered on the host.", examples=[8])
    models: list[str] = Field(examples=[["NVIDIA H100 80GB HBM3"]])
    first_seen: datetime = Field(examples=["2025-07-18T13:42:33Z"])
    last_seen: datetime = Field(examples=[_TS])


class HostPage(BaseModel):
    """A page of hosts, ordered by hostname."""

    items: list[Host]
    next_cursor: str | None = Field(description=_NEXT, examples=[None])


class MetricInfo(BaseModel):
    """One metric of the catalogue."""

    name: str = Field(examples=["DCGM_FI_DEV_GPU_TEMP"])
    unit: str | None = Field(examples=["C"])
    help: str | None = Field(examples=["GPU temperature"])


class MetricCatalog(BaseModel):
    """A page of the metric catalogue, ordered by name."""

    items: list[MetricInfo]
    next_cursor: str | None = Field(description=_NEXT, examples=[None])


class Health(BaseModel):
    """Liveness or readiness."""

    status: Literal["ok", "unavailable"] = Field(examples=["ok"])
    detail: str | None = Field(default=None, examples=[None])


class ProblemModel(BaseModel):
    """RFC 9457 problem details."""

    type: str = Field(default="about:blank", examples=["about:blank"])
    title: str = Field(examples=["Bad Request"])
    status: int = Field(examples=[400])
    detail: str = Field(examples=["limit 20000 exceeds the maximum 10000"])
    param: str | None = Field(
        default=None, description="The offending parameter, when one is to blame.", examples=["limit"]
    )
