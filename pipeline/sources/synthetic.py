"""A realistic synthetic fleet: N hosts x G GPUs x the ten DCGM fields of ../shared/data.

Each pass is one scrape of the fleet. GPUs carry a slowly drifting load, and every field follows
from it within the ranges seen on H100 hosts (utilisation %, temperature C, power W, framebuffer
MiB, clocks MHz). The generator feeds Arrow batches directly (static columns are built once; a pass
only computes values) and writes the dcgm-exporter CSV format.

Workloads (``workloads=True``, the default) come and go: every GPU runs a sequence of jobs, each a
pod of one of four namespaces (the ``hpc`` one names an HPC job too), with idle gaps between jobs in
which nobody holds the GPU and its load falls to nothing (see ``allocation``). ``events=True`` adds
what health views are for: the fleet's last GPU is split into two MIG instances, every device
reports ``DCGM_FI_DEV_XID_ERRORS`` (a few raise an XID code now and then), and the fleet's second
device stops reporting after ``silent_after`` passes. Everything is a function of the seed and the
pass number, so two fleets with the same seed produce the same data.
"""

from __future__ import annotations

import csv
import time
import uuid as uuidlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.queue.keys import KeyHasher
from pipeline.records import DCGM_FIELDS, FIELD_SEP, SAMPLE_SCHEMA, TS_TYPE, WIRE_SCHEMA
from pipeline.sources.base import Shard, SourceBatch

__all__ = ["FLEET_MODEL", "NAMESPACES", "XID_CODES", "XID_METRIC", "SyntheticFleet", "write_csv"]

FLEET_MODEL: Final = "NVIDIA H100 80GB HBM3"
NAMESPACES: Final = ("ml-train", "ml-infer", "research", "hpc")
XID_METRIC: Final = "DCGM_FI_DEV_XID_ERRORS"
XID_CODES: Final = (13, 31, 43, 48, 79, 94)  # raised now and then by every 50th device (events=True)
_FB_TOTAL_MIB: Final = 81559
_METRICS: Final = tuple(DCGM_FIELDS)
_DRIVER: Final = "535.129.03"
_MIG_PROFILE: Final = "3g.40gb"


class SyntheticFleet:
    """A deterministic fleet (same seed, same GPUs, workloads and values) usable as a Source."""

    def __init__(
        self,
        hosts: int = 32,
        gpus_per_host: int = 8,
        batch_rows: int = 20_000,
        seed: int = 7,
        host_prefix: str = "gpu-node",
        *,
        workloads: bool = True,
        events: bool = False,
        silent_after: int = 60,
    ) -> None:
        self.hosts = hosts
        self.gpus_per_host = gpus_per_host
        self._batch_rows = batch_rows
        self._seed = seed
        self._workloads = workloads
        self._events = events
        self.silent_after = silent_after
        rng = np.random.default_rng(seed)
        n = hosts * gpus_per_host
        self.uuids = [f"GPU-{uuidlib.UUID(bytes=rng.bytes(16))}" for _ in range(n)]
        self.hostnames = [f"{host_prefix}-{h + 1:03d}" for h in range(hosts) for _ in range(gpus_per_host)]
        self.gpu_indexes = [g for _ in range(hosts) for g in range(gpus_per_host)]
        self.parents: list[str | None] = [None] * n
        self.mig_ids: list[int | None] = [None] * n
        if events:  # the last GPU becomes two MIG instances (devices of their own, same host and index)
            parent = self.uuids.pop()
            host, index = self.hostnames.pop(), self.gpu_indexes.pop()
            self.parents.pop()
            self.mig_ids.pop()
            for instance in (1, 2):
                self.uuids.append(f"{parent}/mig-{instance}")
                self.hostnames.append(host)
                self.gpu_indexes.append(index)
                self.parents.append(parent)
                self.mig_ids.append(instance)
        devices = len(self.uuids)
        self._load = rng.uniform(0.0, 1.0, devices)
        self._rng = rng
        schedule = np.random.default_rng(seed + 1)
        self._job_len = schedule.integers(60, 600, devices)  # passes a job lasts
        self._gap = schedule.integers(0, 30, devices)  # idle passes before each job
        self._phase = schedule.integers(0, 100_000, devices)
        self._metrics = _METRICS + ((XID_METRIC,) if events else ())
        self.passes = 0  # passes generated so far (the schedule's clock)
        self._static: dict[tuple[Shard, bool], tuple[npt.NDArray[np.int64], list[pa.Array]]] = {}
        self._rows: dict[tuple[int, int], pa.Array] = {}

    @property
    def replayable(self) -> bool:
        """Each pass is a new scrape: values drift from read to read."""
        return False

    @property
    def name(self) -> str:
        """A descriptive name recorded with rejects (a synthetic fleet has none)."""
        return f"synthetic:{self.hosts}x{self.gpus_per_host}"

    @property
    def rows_per_pass(self) -> int:
        """Samples in one scrape of the whole fleet (before any device went silent)."""
        return len(self.uuids) * len(self._metrics)

    @property
    def silent_device(self) -> int | None:
        """The device that stops reporting after ``silent_after`` passes (events=True), else None."""
        return 1 if self._events and len(self.uuids) > 1 else None

    def open(self) -> None:
        """Nothing to check: the fleet is generated."""

    def close(self) -> None:
        """Drop cached columns."""
        self._static.clear()
        self._rows.clear()

    def allocation(self, k: int, devices: npt.NDArray[np.int64]) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
        """At pass ``k``: each device's job number and whether a job holds it (False: the idle gap)."""
        t = k + self._phase[devices]
        cycle = self._job_len[devices] + self._gap[devices]
        held = (t % cycle) >= self._gap[devices] if self._workloads else np.zeros(len(devices), dtype=bool)
        return t // cycle, held

    def workloads_at(self, k: int, devices: npt.NDArray[np.int64]) -> pa.Array:
        """The ``workload`` string of each device at pass ``k`` (null in an idle gap)."""
        job, held = self.allocation(k, devices)
        ns_index = (devices + job) % len(NAMESPACES)
        namespace = pa.array(NAMESPACES).take(pa.array(ns_index))
        pod = pc.binary_join_element_wise(
            pa.array(np.array(["job"] * len(devices))),
            pc.cast(pa.array(devices), pa.string()),
            pc.cast(pa.array(job), pa.string()),
            "-",
        )
        container = pa.array(["main"] * len(devices))
        hpc = pc.binary_join_element_wise("slurm-", pc.cast(pa.array(job * 1000 + devices), pa.string()), "")
        is_hpc = pa.array(ns_index == NAMESPACES.index("hpc"))
        job_label = pc.if_else(is_hpc, hpc, pa.scalar("", pa.string()))
        joined = pc.binary_join_element_wise(namespace, pod, container, job_label, FIELD_SEP)
        return pc.if_else(pa.array(held), joined, pa.scalar(None, pa.string()))

    def gpu_info(self, devices: npt.NDArray[np.int64]) -> pa.Array:
        """The static ``gpu_info`` string of each device (driver, instance, MIG parent/id/profile)."""
        out = []
        for d in devices.tolist():
            mig = self.mig_ids[d]
            fields = [_DRIVER, f"{self.hostnames[d]}:9400", self.parents[d] or "", "" if mig is None else str(mig)]
            out.append(FIELD_SEP.join([*fields, _MIG_PROFILE if mig is not None else ""]))
        return pa.array(out, pa.string())

    def values(self, gpus: npt.NDArray[np.int64], idle: npt.NDArray[np.bool_] | None = None) -> npt.NDArray[np.float64]:
        """One scrape of the given GPUs: a (len(gpus), 10) array in DCGM_FIELDS order; advances load.

        ``idle`` marks GPUs nobody holds: their load falls towards nothing.
        """
        rng = self._rng
        load = np.clip(self._load[gpus] + rng.normal(0.0, 0.05, len(gpus)), 0.0, 1.0)
        if idle is not None:
            load = np.where(idle, load * 0.1, np.maximum(load, 0.05))
        self._load[gpus] = load
        util = np.round(load * 100.0)
        out = np.empty((len(gpus), len(_METRICS)), dtype=np.float64)
        out[:, 0] = util
        out[:, 1] = np.round(util * rng.uniform(0.2, 0.6, len(gpus)))
        out[:, 2] = 0.0
        out[:, 3] = 0.0
        out[:, 4] = np.round(31.0 + 50.0 * load + rng.normal(0.0, 1.0, len(gpus)))
        out[:, 5] = np.round(70.0 + 610.0 * load + rng.normal(0.0, 5.0, len(gpus)), 3)
        used = np.round(load * (_FB_TOTAL_MIB - 600)) + 600
        out[:, 6] = used
        out[:, 7] = _FB_TOTAL_MIB - used
        out[:, 8] = np.where(load > 0.05, 1980.0, 345.0)
        out[:, 9] = 2619.0
        return out

    def xid_at(self, k: int, devices: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
        """``DCGM_FI_DEV_XID_ERRORS`` of each device at pass ``k``: 0, or a code held for 5 passes."""
        t = k + self._phase[devices]
        raising = (devices % 50 == 7) & ((t % 400) < 5)
        code = np.array(XID_CODES, dtype=np.float64)[(t // 400 + devices) % len(XID_CODES)]
        return np.where(raising, code, 0.0)

    def _row_devices(self, devices: int, metrics: int) -> pa.Array:
        """Each row's device position (rows are device-major: every metric of a device in turn)."""
        cached = self._rows.get((devices, metrics))
        if cached is None:
            cached = self._rows[(devices, metrics)] = pa.array(np.repeat(np.arange(devices), metrics))
        return cached

    def _columns(self, shard: Shard, silent: bool) -> tuple[npt.NDArray[np.int64], list[pa.Array]]:
        """Per shard: its devices and the static row columns (strings plain and dictionary-encoded)."""
        cached = self._static.get((shard, silent))
        if cached is None:
            hasher = KeyHasher()
            gpus = np.array(
                [
                    i
                    for i, u in enumerate(self.uuids)
                    if hasher.shard_of(u, shard.count) == shard.index and not (silent and i == self.silent_device)
                ],
                dtype=np.int64,
            )
            m = len(self._metrics)
            rows = self._row_devices(len(gpus), m)
            uuids = pa.array([self.uuids[g] for g in gpus.tolist()], pa.string())
            hosts = pa.array([self.hostnames[g] for g in gpus.tolist()], pa.string())
            index = pa.array(np.array(self.gpu_indexes, dtype=np.int16)[gpus], pa.int16())
            device = pa.array([f"nvidia{self.gpu_indexes[g]}" for g in gpus.tolist()], pa.string())
            model = pa.array([FLEET_MODEL] * len(gpus), pa.string())
            metric = pa.array(list(self._metrics), pa.string()).take(pa.array(np.tile(np.arange(m), len(gpus))))
            per_device = [uuids, hosts, device, model, self.gpu_info(gpus)]
            plain = [c.take(rows) for c in per_device]
            encoded = [pa.DictionaryArray.from_arrays(rows.cast(pa.int32()), c) for c in per_device]
            cached = (gpus, [*plain, index.take(rows), metric, *encoded, metric.dictionary_encode()])
            self._static[(shard, silent)] = cached
        return cached

    def read_pass(self, shard: Shard, start: int = 0) -> Iterator[SourceBatch]:
        """One scrape of the shard's devices, in batches; positions count rows within the pass."""
        k = self.passes
        self.passes += 1
        silent = self.silent_device is not None and k >= self.silent_after
        gpus, static = self._columns(shard, silent)
        uuids, hosts, device, model, info, index, metric, e_uuid, e_host, e_device, e_model, e_info, e_metric = static
        _, held = self.allocation(k, gpus)
        per_gpu = self.values(gpus, idle=~held)
        if self._events:
            per_gpu = np.column_stack([per_gpu, self.xid_at(k, gpus)])
        values = per_gpu.reshape(-1)
        n = len(values)
        m = len(self._metrics)
        rows_workload = self.workloads_at(k, gpus).dictionary_encode().take(self._row_devices(len(gpus), m))
        now_us = time.time_ns() // 1000
        source_ts = pa.array(np.full(n, now_us, dtype=np.int64)).cast(TS_TYPE)
        zeros = pa.array(np.zeros(n, dtype=np.int64)).cast(TS_TYPE)
        labels = pa.nulls(n, SAMPLE_SCHEMA.field("labels").type)
        value_array = pa.array(values)
        workload_info = [rows_workload.cast(pa.string()), info]
        whole = pa.RecordBatch.from_arrays(
            [zeros, source_ts, uuids, hosts, index, device, model, metric, value_array, labels, *workload_info],
            schema=SAMPLE_SCHEMA,
        )
        wire = pa.RecordBatch.from_arrays(
            [zeros, e_uuid, e_host, index, e_device, e_model, e_metric, value_array, rows_workload, e_info],
            schema=WIRE_SCHEMA,
        )
        for offset in range(start, n, self._batch_rows):
            piece = whole.slice(offset, self._batch_rows)
            yield SourceBatch(piece, None, offset + piece.num_rows, wire.slice(offset, self._batch_rows), True)


def write_csv(
    path: str | Path, hosts: int = 32, gpus_per_host: int = 8, scrapes: int = 1, seed: int = 7, interval_s: float = 1.0
) -> int:
    """Write the fleet as a dcgm-exporter CSV (every field quoted); returns the rows written.

    The ``container``, ``pod`` and ``namespace`` columns carry each scrape's workloads (empty in idle
    gaps), and an HPC job is an ``hpc_job`` label, as dcgm-exporter writes them.
    """
    fleet = SyntheticFleet(hosts, gpus_per_host, seed=seed)
    everyone = np.arange(len(fleet.uuids), dtype=np.int64)
    start = datetime.now(UTC).replace(microsecond=0)
    rows = 0
    with Path(path).open("w", newline="") as f:
        writer = csv.writer(f, quoting=csv.QUOTE_ALL)
        writer.writerow(
            [
                "timestamp",
                "metric_name",
                "gpu_id",
                "device",
                "uuid",
                "modelName",
                "Hostname",
                "container",
                "pod",
                "namespace",
                "value",
                "labels_raw",
            ]
        )
        for scrape in range(scrapes):
            stamp = (start + timedelta(seconds=scrape * interval_s)).strftime("%Y-%m-%dT%H:%M:%SZ")
            _, held = fleet.allocation(scrape, everyone)
            workloads = fleet.workloads_at(scrape, everyone).to_pylist()
            values = fleet.values(everyone, idle=~held)
            for m, metric in enumerate(_METRICS):
                for g in range(len(fleet.uuids)):
                    host, index, uuid = fleet.hostnames[g], fleet.gpu_indexes[g], fleet.uuids[g]
                    v = values[g, m]
                    text = f"{v:.3f}" if metric == "DCGM_FI_DEV_POWER_USAGE" else str(int(v))
                    namespace, pod, container, job = (workloads[g] or FIELD_SEP * 3).split(FIELD_SEP)
                    labels = (
                        f'DCGM_FI_DRIVER_VERSION="{_DRIVER}",Hostname="{host}",UUID="{uuid}",'
                        f'__name__="{metric}",device="nvidia{index}",gpu="{index}",'
                        f'instance="{host}:9400",job="dcgm_exporter",modelName="{FLEET_MODEL}"'
                        + (f',hpc_job="{job}"' if job else "")
                    )
                    identity = [stamp, metric, index, f"nvidia{index}", uuid, FLEET_MODEL, host]
                    writer.writerow([*identity, container, pod, namespace, text, labels])
                    rows += 1
    return rows
