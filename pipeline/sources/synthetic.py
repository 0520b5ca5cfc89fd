"""A realistic synthetic fleet: N hosts x G GPUs x the ten DCGM fields of ../shared/data.

Each pass is one scrape of the fleet. GPUs carry a slowly drifting load, and every field follows
from it within the ranges seen on H100 hosts (utilisation %, temperature C, power W, framebuffer
MiB, clocks MHz). The generator feeds Arrow batches directly (static columns are built once; a pass
only computes values) and writes the dcgm-exporter CSV format.
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

from pipeline.queue.keys import KeyHasher
from pipeline.records import DCGM_FIELDS, SAMPLE_SCHEMA, TS_TYPE, WIRE_SCHEMA
from pipeline.sources.base import Shard, SourceBatch

__all__ = ["FLEET_MODEL", "SyntheticFleet", "write_csv"]

FLEET_MODEL: Final = "NVIDIA H100 80GB HBM3"
_FB_TOTAL_MIB: Final = 81559
_METRICS: Final = tuple(DCGM_FIELDS)
_DRIVER: Final = "535.129.03"


class SyntheticFleet:
    """A deterministic fleet (same seed, same GPUs and values) usable as a Source."""

    def __init__(
        self,
        hosts: int = 32,
        gpus_per_host: int = 8,
        batch_rows: int = 20_000,
        seed: int = 7,
        host_prefix: str = "gpu-node",
    ) -> None:
        self.hosts = hosts
        self.gpus_per_host = gpus_per_host
        self._batch_rows = batch_rows
        self._seed = seed
        rng = np.random.default_rng(seed)
        n = hosts * gpus_per_host
        self.uuids = [f"GPU-{uuidlib.UUID(bytes=rng.bytes(16))}" for _ in range(n)]
        self.hostnames = [f"{host_prefix}-{h + 1:03d}" for h in range(hosts) for _ in range(gpus_per_host)]
        self.gpu_indexes = [g for _ in range(hosts) for g in range(gpus_per_host)]
        self._load = rng.uniform(0.0, 1.0, n)
        self._rng = rng
        self._static: dict[Shard, tuple[npt.NDArray[np.int64], list[pa.Array]]] = {}
        self._wire_static: dict[Shard, list[pa.Array]] = {}

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
        """Samples in one scrape of the whole fleet."""
        return len(self.uuids) * len(_METRICS)

    def open(self) -> None:
        """Nothing to check: the fleet is generated."""

    def close(self) -> None:
        """Drop cached columns."""
        self._static.clear()
        self._wire_static.clear()

    def values(self, gpus: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
        """One scrape of the given GPUs: a (len(gpus), 10) array in DCGM_FIELDS order; advances load."""
        rng = self._rng
        load = np.clip(self._load[gpus] + rng.normal(0.0, 0.05, len(gpus)), 0.0, 1.0)
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

    def _columns(self, shard: Shard) -> tuple[npt.NDArray[np.int64], list[pa.Array]]:
        cached = self._static.get(shard)
        if cached is None:
            hasher = KeyHasher()
            gpus = np.array(
                [i for i, u in enumerate(self.uuids) if hasher.shard_of(u, shard.count) == shard.index], dtype=np.int64
            )
            rows = np.repeat(gpus, len(_METRICS))
            metric_idx = np.tile(np.arange(len(_METRICS)), len(gpus))
            uuids = pa.array(self.uuids, pa.string()).take(pa.array(rows))
            hosts = pa.array(self.hostnames, pa.string()).take(pa.array(rows))
            index = pa.array(np.array(self.gpu_indexes, dtype=np.int16)[rows], pa.int16())
            device = pa.array([f"nvidia{g}" for g in range(self.gpus_per_host)], pa.string()).take(
                pa.array(np.array(self.gpu_indexes, dtype=np.int64)[rows])
            )
            model = pa.array([FLEET_MODEL] * len(rows), pa.string())
            metric = pa.array(list(_METRICS), pa.string()).take(pa.array(metric_idx))
            cached = (gpus, [uuids, hosts, index, device, model, metric])
            self._static[shard] = cached
        return cached

    def read_pass(self, shard: Shard, start: int = 0) -> Iterator[SourceBatch]:
        """One scrape of the shard's GPUs, in batches; positions count rows within the pass."""
        gpus, static = self._columns(shard)
        values = self.values(gpus).reshape(-1)
        n = len(values)
        now_us = time.time_ns() // 1000
        source_ts = pa.array(np.full(n, now_us, dtype=np.int64)).cast(TS_TYPE)
        zeros = pa.array(np.zeros(n, dtype=np.int64)).cast(TS_TYPE)
        labels = pa.nulls(n, SAMPLE_SCHEMA.field("labels").type)
        uuids, hosts, index, device, model, metric = static
        value_array = pa.array(values)
        whole = pa.RecordBatch.from_arrays(
            [zeros, source_ts, uuids, hosts, index, device, model, metric, value_array, labels],
            schema=SAMPLE_SCHEMA,
        )
        encoded = self._wire_columns(shard, static)
        wire = pa.RecordBatch.from_arrays(
            [zeros, encoded[0], encoded[1], index, encoded[2], encoded[3], encoded[4], value_array], schema=WIRE_SCHEMA
        )
        for offset in range(start, n, self._batch_rows):
            piece = whole.slice(offset, self._batch_rows)
            yield SourceBatch(piece, None, offset + piece.num_rows, wire.slice(offset, self._batch_rows), True)

    def _wire_columns(self, shard: Shard, static: list[pa.Array]) -> list[pa.Array]:
        """The string columns dictionary-encoded once per shard (they never change)."""
        cached = self._wire_static.get(shard)
        if cached is None:
            uuids, hosts, _, device, model, metric = static
            cached = [c.dictionary_encode() for c in (uuids, hosts, device, model, metric)]
            self._wire_static[shard] = cached
        return cached


def write_csv(
    path: str | Path, hosts: int = 32, gpus_per_host: int = 8, scrapes: int = 1, seed: int = 7, interval_s: float = 1.0
) -> int:
    """Write the fleet as a dcgm-exporter CSV (every field quoted); returns the rows written."""
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
            values = fleet.values(everyone)
            for m, metric in enumerate(_METRICS):
                for g in range(len(fleet.uuids)):
                    host, index, uuid = fleet.hostnames[g], fleet.gpu_indexes[g], fleet.uuids[g]
                    v = values[g, m]
                    text = f"{v:.3f}" if metric == "DCGM_FI_DEV_POWER_USAGE" else str(int(v))
                    labels = (
                        f'DCGM_FI_DRIVER_VERSION="{_DRIVER}",Hostname="{host}",UUID="{uuid}",'
                        f'__name__="{metric}",device="nvidia{index}",gpu="{index}",'
                        f'instance="{host}:9400",job="dcgm_exporter",modelName="{FLEET_MODEL}"'
                    )
                    writer.writerow(
                        [stamp, metric, index, f"nvidia{index}", uuid, FLEET_MODEL, host, "", "", "", text, labels]
                    )
                    rows += 1
    return rows
