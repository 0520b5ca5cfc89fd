"""What the reader's queries return: small frozen rows, one type per kind of answer."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import NamedTuple

__all__ = [
    "AggregateRow",
    "AllocationRow",
    "BlankRow",
    "EventRow",
    "Features",
    "FleetLatestRow",
    "GpuRow",
    "Health",
    "Holder",
    "HostRow",
    "LatestRow",
    "MetricRow",
    "MissingGpu",
    "SamplePage",
    "SampleRow",
    "SilentHost",
    "UsageRow",
]


class Holder(NamedTuple):
    """Who holds a GPU now (its open allocation interval; a tuple: a page of GPUs builds a thousand)."""

    namespace: str | None
    pod: str | None
    container: str | None
    job: str | None
    since: datetime


class GpuRow(NamedTuple):
    """One GPU, as the gateway lists it (a tuple: a page builds a thousand of them)."""

    gpu_key: int
    uuid: str
    hostname: str | None
    gpu_index: int | None
    device: str | None
    model: str | None
    first_seen: datetime
    last_seen: datetime
    metrics: tuple[str, ...] = ()
    driver_version: str | None = None
    instance: str | None = None
    parent_uuid: str | None = None  # a MIG device's GPU
    mig_instance: int | None = None
    mig_profile: str | None = None
    holder: Holder | None = None


@dataclass(frozen=True, slots=True)
class LatestRow:
    """The newest sample of one metric of one GPU."""

    metric: str
    unit: str | None
    ts: datetime
    value: float


@dataclass(frozen=True, slots=True)
class HostRow:
    """One host and its GPUs."""

    hostname: str | None
    gpus: int
    models: tuple[str, ...]
    first_seen: datetime
    last_seen: datetime


@dataclass(frozen=True, slots=True)
class MetricRow:
    """One entry of the metric catalogue."""

    metric_id: int
    name: str
    unit: str | None
    help: str | None


class SampleRow(NamedTuple):
    """One sample of one GPU (a tuple: pages hold up to 10,000 of them, and tuples build fastest)."""

    ts: datetime
    metric_id: int
    metric: str
    value: float


class SamplePage(NamedTuple):
    """A page of samples as fetched: ``(ts, metric_id, value)`` tuples, the metric names by id, more or not.

    No object per row: the gateway writes its JSON straight from these tuples.
    """

    rows: list[tuple[datetime, int, float]]
    names: dict[int, str]
    more: bool


class AggregateRow(NamedTuple):
    """One bucket of one metric."""

    ts: datetime
    metric_id: int
    metric: str
    value: float | None


@dataclass(frozen=True, slots=True)
class Features:
    """What this database offers beyond the core schema (detected once per pool)."""

    timescaledb: bool = False
    gpu_metrics: bool = False
    rollups: tuple[tuple[str, timedelta], ...] = ()


class FleetLatestRow(NamedTuple):
    """One GPU's newest value of one metric, with where it is and who holds it."""

    gpu_key: int
    uuid: str
    hostname: str | None
    gpu_index: int | None
    model: str | None
    ts: datetime
    value: float
    holder: Holder | None


class AllocationRow(NamedTuple):
    """Workload W held the GPU over [start, end); end None: still held."""

    allocation_id: int
    namespace: str | None
    pod: str | None
    container: str | None
    job: str | None
    start: datetime
    end: datetime | None


class EventRow(NamedTuple):
    """One health event of a GPU."""

    ts: datetime
    kind: str
    code: int
    meaning: str | None


class UsageRow(NamedTuple):
    """Usage of one group over a window (seconds and joules; the gateway converts to hours and kWh)."""

    group: str | None
    seconds: float
    allocated_s: float
    active_s: float
    mem_idle_s: float
    util_s: float
    energy_j: float


class MissingGpu(NamedTuple):
    """A GPU whose newest sample is older than the threshold."""

    uuid: str
    hostname: str | None
    last_seen: datetime


class SilentHost(NamedTuple):
    """A host none of whose GPUs reported within the threshold."""

    hostname: str
    gpus: int
    last_seen: datetime


class BlankRow(NamedTuple):
    """DCGM blank codes one GPU reported for one metric."""

    uuid: str | None
    metric: str | None
    code: str
    samples: int
    last_seen: datetime


@dataclass(frozen=True, slots=True)
class Health:
    """The fleet's health as of ``as_of``: counts, and at most ``limit`` of each kind."""

    as_of: datetime
    threshold_s: float
    gpus: int
    missing_count: int
    missing: tuple[MissingGpu, ...]
    silent_count: int
    silent: tuple[SilentHost, ...]
    blank_gpus: int
    blanks: tuple[BlankRow, ...]
    xid_events: int
