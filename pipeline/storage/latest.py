"""The newest sample of every (GPU, metric): kept in memory by each writer, written to ``gpu_latest``.

Each writer holds a dense (gpu_key x metric slot) array of the newest committed sample per series,
updated with NumPy per batch (``np.maximum.at``: no per-row Python). Every ``every_s`` seconds the
batch being written also rewrites, in its own transaction, the rows of every GPU whose values changed
since the last such flush: one row per GPU, staged by binary COPY into a temporary table and applied
with one UPDATE (and one INSERT for GPUs new to the table). So the table never holds a value whose
sample is not committed, lags the samples by at most ``every_s`` (plus one batch), and never goes
back: a row is replaced only by one at least as new (a writer that lost a GPU's partition and still
holds older values cannot overwrite the new owner's).

Flushing per GPU every few seconds, not per (GPU, metric) per batch, is what keeps the write path
cheap (docs/storage.md has the measurements). On claim a writer flushes what it holds and reloads
the table, so it resumes with every metric of the GPUs it now owns.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import psycopg

from pipeline.storage.copy_format import HEADER, TRAILER, encode_latest

__all__ = ["LatestValues", "StagedLatest"]

_STAGE = (
    "CREATE TEMP TABLE IF NOT EXISTS latest_stage (gpu_key integer, ts timestamptz, metric_ids smallint[], "
    "sample_ts timestamptz[], vals float8[]) ON COMMIT DELETE ROWS"
)
_APPLY = (
    "UPDATE gpu_latest l SET ts = s.ts, metric_ids = s.metric_ids, sample_ts = s.sample_ts, vals = s.vals "
    "FROM latest_stage s WHERE l.gpu_key = s.gpu_key AND l.ts <= s.ts"
)
_INSERT = (
    "INSERT INTO gpu_latest SELECT s.* FROM latest_stage s WHERE s.gpu_key = ANY(%s) ON CONFLICT (gpu_key) "
    "DO UPDATE SET ts = EXCLUDED.ts, metric_ids = EXCLUDED.metric_ids, sample_ts = EXCLUDED.sample_ts, "
    "vals = EXCLUDED.vals WHERE gpu_latest.ts <= EXCLUDED.ts"
)


@dataclass(slots=True)
class StagedLatest:
    """One batch applied to a copy of the state; becomes the state when its transaction commits."""

    ts: npt.NDArray[np.int64]
    val: npt.NDArray[np.float64]
    dirty: npt.NDArray[np.bool_]
    flush: bool


class LatestValues:
    """Dense newest-sample state of one writer, and its flushes into ``gpu_latest``."""

    def __init__(self, every_s: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._every = every_s
        self._clock = clock
        self._ts = np.zeros((0, 0), dtype=np.int64)  # [gpu_key, slot] -> Unix us; 0 = no sample
        self._val = np.zeros((0, 0), dtype=np.float64)
        self._dirty = np.zeros(0, dtype=bool)  # per gpu_key: changed since the last flush
        self._stored = np.zeros(0, dtype=bool)  # per gpu_key: has a row in gpu_latest
        self._slot_of = np.full(1 << 15, -1, dtype=np.int32)  # metric_id -> slot
        self._metric_of: list[int] = []
        self._flushed_at = clock()
        self._staged_in: int | None = None  # backend pid whose session has the stage table

    def value_of(self, metric_id: int) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]] | None:
        """Committed (ts, value) of one metric for every gpu_key (ts 0: none), or None if never seen."""
        slot = int(self._slot_of[metric_id])
        if slot < 0:
            return None
        return self._ts[:, slot], self._val[:, slot]

    def _grow(self, max_key: int, metric_ids: npt.NDArray[np.int16]) -> None:
        for m in metric_ids.tolist():
            if self._slot_of[m] < 0:
                self._slot_of[m] = len(self._metric_of)
                self._metric_of.append(int(m))
        rows, slots = max(self._ts.shape[0], max_key + 1), len(self._metric_of)
        if rows > self._ts.shape[0]:
            rows = max(rows, int(self._ts.shape[0] * 1.5))  # headroom: new GPUs arrive in batches
        if (rows, slots) != self._ts.shape:
            ts = np.zeros((rows, slots), dtype=np.int64)
            val = np.zeros((rows, slots), dtype=np.float64)
            ts[: self._ts.shape[0], : self._ts.shape[1]] = self._ts
            val[: self._val.shape[0], : self._val.shape[1]] = self._val
            self._ts, self._val = ts, val
            self._dirty = np.concatenate([self._dirty, np.zeros(rows - len(self._dirty), dtype=bool)])
            self._stored = np.concatenate([self._stored, np.zeros(rows - len(self._stored), dtype=bool)])

    def stage(
        self,
        gpu: npt.NDArray[np.int32],
        metric: npt.NDArray[np.int16],
        metrics_present: npt.NDArray[np.int16],
        ts: npt.NDArray[np.int64],
        value: npt.NDArray[np.float64],
    ) -> StagedLatest:
        """Apply a batch to a copy of the state (``metrics_present``: the distinct ids in ``metric``)."""
        self._grow(int(gpu.max()) if len(gpu) else 0, metrics_present)
        staged_ts, staged_val, dirty = self._ts.copy(), self._val.copy(), self._dirty.copy()
        if len(gpu):
            slots = self._ts.shape[1]
            flat = gpu.astype(np.int64) * slots + self._slot_of[metric]
            flat_ts, flat_val = staged_ts.reshape(-1), staged_val.reshape(-1)
            np.maximum.at(flat_ts, flat, ts)
            newest = ts == flat_ts[flat]  # ties (the same instant twice) keep either value
            flat_val[flat[newest]] = value[newest]
            dirty[gpu] = True
        return StagedLatest(staged_ts, staged_val, dirty, self._clock() - self._flushed_at >= self._every)

    def write(self, conn: psycopg.Connection[Any], staged: StagedLatest) -> int:
        """Inside the batch's transaction: rewrite the dirty GPUs' rows if a flush is due. Returns rows."""
        if not staged.flush:
            return 0
        keys = np.flatnonzero(staged.dirty).astype(np.int32)
        if not len(keys):
            return 0
        present = staged.ts[keys] > 0
        counts = present.sum(axis=1)
        payload = [HEADER]
        metric_of = np.array(self._metric_of, dtype=np.int16)
        for k in np.unique(counts).tolist():
            if k == 0:
                continue
            rows = np.flatnonzero(counts == k)
            cols = np.nonzero(present[rows])[1].reshape(len(rows), k)
            picked_ts = np.take_along_axis(staged.ts[keys[rows]], cols, axis=1)
            picked_val = np.take_along_axis(staged.val[keys[rows]], cols, axis=1)
            payload.append(encode_latest(keys[rows], picked_ts.max(axis=1), metric_of[cols], picked_ts, picked_val))
        payload.append(TRAILER)
        if self._staged_in != conn.info.backend_pid:  # once per connection: a temporary table is per session
            conn.execute(_STAGE)
            self._staged_in = conn.info.backend_pid
        with conn.cursor().copy("COPY latest_stage FROM STDIN (FORMAT BINARY)") as copy:
            copy.write(b"".join(payload))
        conn.execute(_APPLY)
        new = keys[~self._stored[keys]]
        if len(new):
            conn.execute(_INSERT, (new.tolist(),))
        return len(keys)

    def commit(self, staged: StagedLatest) -> None:
        """The batch's transaction committed: its values (and flush) are the state now."""
        self._ts, self._val = staged.ts, staged.val
        if staged.flush:
            self._stored |= staged.dirty
            self._dirty = np.zeros_like(staged.dirty)
            self._flushed_at = self._clock()
        else:
            self._dirty = staged.dirty

    def flush(self, conn: psycopg.Connection[Any]) -> int:
        """Write every dirty GPU now, in its own transaction (on close, and before reloading on claim)."""
        staged = StagedLatest(self._ts, self._val, self._dirty, True)
        with conn.transaction():
            written = self.write(conn, staged)
        self.commit(staged)
        return written

    def load(self, conn: psycopg.Connection[Any]) -> None:
        """Replace the state with ``gpu_latest`` (every GPU: a claim may bring any of them)."""
        rows = conn.execute(
            "SELECT gpu_key, metric_ids, (SELECT array_agg((extract(epoch FROM t) * 1000000)::int8) "
            "FROM unnest(sample_ts) t), vals FROM gpu_latest"
        ).fetchall()
        self._ts = np.zeros((0, 0), dtype=np.int64)
        self._val = np.zeros((0, 0), dtype=np.float64)
        self._dirty = np.zeros(0, dtype=bool)
        self._stored = np.zeros(0, dtype=bool)
        if not rows:
            return
        keys = np.array([r[0] for r in rows], dtype=np.int32)
        ids = np.array([m for r in rows for m in r[1]], dtype=np.int16)
        self._grow(int(keys.max()), np.unique(ids))
        gpu = np.repeat(keys, [len(r[1]) for r in rows])
        flat = gpu.astype(np.int64) * self._ts.shape[1] + self._slot_of[ids]
        self._ts.reshape(-1)[flat] = np.array([t for r in rows for t in r[2]], dtype=np.int64)
        self._val.reshape(-1)[flat] = np.array([v for r in rows for v in r[3]], dtype=np.float64)
        self._stored[keys] = True
