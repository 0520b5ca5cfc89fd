"""Usage accounting: GPU time per workload, active and idle, memory held idle, utilisation and energy.

The rule (docs/storage.md): each ``DCGM_FI_DEV_GPU_UTIL`` sample holds until the GPU's next one (a
gap above ``max_gap_s`` holds nothing), and its hold counts, in the minute of the sample, for the
workload that held the GPU then: seconds; active seconds (utilisation above ``active_above``);
memory-held-idle seconds (not active, and ``DCGM_FI_DEV_FB_USED`` above ``memory_held_mib`` at that
instant); utilisation x seconds; and joules (``DCGM_FI_DEV_POWER_USAGE`` at that instant x seconds).

Writers compute a batch's cells with NumPy and append them, with each GPU's last sample (whose hold
the next sample decides), as ONE ``usage_log`` row of arrays in the batch's transaction: usage is
exactly-once like the samples, and the write path pays one small COPY per transaction. A writer that
claims partitions reloads the last samples from ``usage_state`` and the log, so a GPU's hold is counted
once whichever collector sees its next sample. ``compact`` (a storage job the supervisor runs) folds
the log into ``usage_1m`` (and ``usage_1h`` on plain PostgreSQL; a continuous aggregate on TimescaleDB)
and ``usage_state``, deleting what it folded, in one transaction.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import psycopg

from pipeline.records import TIME_GRID_ORIGIN
from pipeline.storage.copy_format import (
    HEADER,
    OID_FLOAT8,
    OID_INT4,
    OID_TIMESTAMPTZ,
    TRAILER,
    array_value,
    encode_row,
)

__all__ = ["GROUP_DIMS", "UsageAccounting", "UsageRules", "compact", "rebuild_groups"]

log = logging.getLogger(__name__)

ORIGIN_US: Final = int(TIME_GRID_ORIGIN.timestamp() * 1_000_000)
MINUTE_US: Final = 60_000_000
LOCK_KEY: Final = 0x6770_7575_7361  # "gpuusa": one compaction at a time
_MATCH_SPAN_US: Final = 1 << 42  # (gpu, ts) pairs are matched on gpu << 42 | ts - first: ~50 days of range


@dataclass(frozen=True, slots=True)
class UsageRules:
    """Thresholds of the accounting (from ``AttributionSettings``)."""

    active_above: float = 5.0
    memory_held_mib: float = 1024.0
    max_gap_s: float = 120.0


@dataclass(slots=True)
class StagedUsage:
    """One batch's usage: the log row to COPY (None: nothing to add) and the GPUs' new last samples."""

    payload: bytes | None
    last: tuple[npt.NDArray[Any], ...]  # gpu, ts, util, power, fb, workload
    cells: tuple[npt.NDArray[Any], ...] = ()  # bucket us, gpu, workload, seconds, active, memory idle, util s, J


class UsageAccounting:
    """Each writer's last sample per GPU, and the usage cells of its batches."""

    def __init__(self, rules: UsageRules) -> None:
        self._rules = rules
        self._ts = np.zeros(0, dtype=np.int64)  # per gpu_key: last sample's Unix us, 0 = none
        self._util = np.zeros(0, dtype=np.float64)
        self._power = np.zeros(0, dtype=np.float64)
        self._fb = np.zeros(0, dtype=np.float64)
        self._wl = np.zeros(0, dtype=np.int32)

    def _grow(self, max_key: int) -> None:
        if max_key < len(self._ts):
            return
        extra = max(max_key + 1, int(len(self._ts) * 1.5)) - len(self._ts)
        self._ts = np.concatenate([self._ts, np.zeros(extra, dtype=np.int64)])
        self._util = np.concatenate([self._util, np.full(extra, np.nan)])
        self._power = np.concatenate([self._power, np.full(extra, np.nan)])
        self._fb = np.concatenate([self._fb, np.full(extra, np.nan)])
        self._wl = np.concatenate([self._wl, np.zeros(extra, dtype=np.int32)])

    def stage(
        self,
        gpu: npt.NDArray[np.int32],
        metric: npt.NDArray[np.int16],
        ts: npt.NDArray[np.int64],
        value: npt.NDArray[np.float64],
        workload: npt.NDArray[np.int32],
        ids: tuple[int | None, int | None, int | None],
    ) -> StagedUsage:
        """The cells and last samples of a batch; ``ids`` are the metric ids of (util, power, fb)."""
        util_id, power_id, fb_id = ids
        if util_id is None:
            return StagedUsage(None, ())
        is_util = metric == util_id
        if not is_util.any():
            return StagedUsage(None, ())
        g, t, u, w = gpu[is_util], ts[is_util], value[is_util], workload[is_util]
        power = _at_same_instant(gpu, metric, ts, value, power_id, g, t)
        fb = _at_same_instant(gpu, metric, ts, value, fb_id, g, t)
        self._grow(int(g.max()))
        # Every GPU's timeline: its last sample so far (if any), then this batch's, in time order.
        seen = np.unique(g)
        before = seen[self._ts[seen] > 0]
        g = np.concatenate([before, g])
        t = np.concatenate([self._ts[before], t])
        u = np.concatenate([self._util[before], u])
        power = np.concatenate([self._power[before], power])
        fb = np.concatenate([self._fb[before], fb])
        w = np.concatenate([self._wl[before], w])
        fresh = np.concatenate([np.zeros(len(before), dtype=bool), np.ones(len(t) - len(before), dtype=bool)])
        order = np.lexsort((fresh, t, g))  # the stored last sample first at a tie
        g, t, u, power, fb, w = g[order], t[order], u[order], power[order], fb[order], w[order]
        same = g[1:] == g[:-1]
        keep = np.r_[True, ~(same & (t[1:] == t[:-1]))]  # one sample per GPU and instant
        g, t, u, power, fb, w = g[keep], t[keep], u[keep], power[keep], fb[keep], w[keep]
        has_next = np.r_[g[1:] == g[:-1], False]
        hold_us = np.where(has_next, np.r_[t[1:] - t[:-1], 0], 0)
        hold_us[hold_us > self._rules.max_gap_s * 1e6] = 0
        last = ~has_next
        counted = has_next & (hold_us > 0)
        cells = self._cells(
            g[counted], t[counted], u[counted], power[counted], fb[counted], w[counted], hold_us[counted]
        )
        last_state = (g[last], t[last], u[last], power[last], fb[last], w[last])
        return StagedUsage(_log_row(cells, last_state), last_state, cells)

    def _cells(
        self,
        g: npt.NDArray[np.int32],
        t: npt.NDArray[np.int64],
        u: npt.NDArray[np.float64],
        power: npt.NDArray[np.float64],
        fb: npt.NDArray[np.float64],
        w: npt.NDArray[np.int32],
        hold_us: npt.NDArray[np.int64],
    ) -> tuple[npt.NDArray[Any], ...]:
        """(bucket us, gpu, workload, seconds, active, memory-idle, util x s, joules), one per cell."""
        if not len(g):
            empty_f = np.zeros(0, dtype=np.float64)
            return (np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int32), np.zeros(0, dtype=np.int32)) + (
                empty_f,
            ) * 5
        seconds = hold_us / 1e6
        active = u > self._rules.active_above
        held = ~active & (np.nan_to_num(fb, nan=0.0) > self._rules.memory_held_mib)
        minute = (t - ORIGIN_US) // MINUTE_US
        order = np.lexsort((w, g, minute))
        minute, g, w = minute[order], g[order], w[order]
        starts = np.flatnonzero(np.r_[True, (minute[1:] != minute[:-1]) | (g[1:] != g[:-1]) | (w[1:] != w[:-1])])

        def total(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
            return np.add.reduceat(x[order], starts)

        return (
            ORIGIN_US + minute[starts] * MINUTE_US,
            g[starts],
            w[starts],
            total(seconds),
            total(seconds * active),
            total(seconds * held),
            total(seconds * u),
            total(seconds * np.nan_to_num(power, nan=0.0)),
        )

    def write(self, conn: psycopg.Connection[Any], staged: StagedUsage) -> None:
        """Inside the batch's transaction: append its log row."""
        if staged.payload is not None:
            with conn.cursor().copy("COPY usage_log (" + _LOG_COLUMNS + ") FROM STDIN (FORMAT BINARY)") as copy:
                copy.write(staged.payload)

    def commit(self, staged: StagedUsage) -> None:
        """The batch's transaction committed: its last samples are the state now."""
        if not staged.last:
            return
        g, t, u, power, fb, w = staged.last
        self._ts[g], self._util[g], self._power[g], self._fb[g], self._wl[g] = t, u, power, fb, w

    def load(self, conn: psycopg.Connection[Any]) -> None:
        """Every GPU's last sample as committed: ``usage_state`` and the log rows not yet compacted."""
        rows = conn.execute(_LOAD).fetchall()
        self._ts = np.zeros(0, dtype=np.int64)
        self._grow(max((r[0] for r in rows), default=0))
        if rows:
            g = np.array([r[0] for r in rows], dtype=np.int64)
            self._ts[g] = [r[1] for r in rows]
            self._util[g] = [r[2] for r in rows]
            self._power[g] = [r[3] for r in rows]
            self._fb[g] = [r[4] for r in rows]
            self._wl[g] = [r[5] for r in rows]


def _at_same_instant(
    gpu: npt.NDArray[np.int32],
    metric: npt.NDArray[np.int16],
    ts: npt.NDArray[np.int64],
    value: npt.NDArray[np.float64],
    metric_id: int | None,
    g: npt.NDArray[np.int32],
    t: npt.NDArray[np.int64],
) -> npt.NDArray[np.float64]:
    """The value of ``metric_id`` for each (g, t), from the batch's samples of the same GPU and instant (NaN: none)."""
    out = np.full(len(g), np.nan)
    if metric_id is None:
        return out
    sel = metric == metric_id
    if not sel.any():
        return out
    first = int(min(ts[sel].min(), t.min()))
    if int(max(ts[sel].max(), t.max())) - first >= _MATCH_SPAN_US:
        return out  # a batch spanning ~50 days: leave these instants without power/memory
    keys = (gpu[sel].astype(np.int64) << 42) | (ts[sel] - first)
    order = np.argsort(keys, kind="stable")
    keys, values = keys[order], value[sel][order]
    wanted = (g.astype(np.int64) << 42) | (t - first)
    pos = np.minimum(np.searchsorted(keys, wanted), len(keys) - 1)
    hit = keys[pos] == wanted
    out[hit] = values[pos[hit]]
    return out


_LOG_COLUMNS = (
    "bucket, gpu_key, workload_id, seconds, active_s, mem_idle_s, util_s, energy_j, "
    "last_gpu, last_ts, last_util, last_power, last_fb, last_wl"
)
_OIDS: Final = (
    (OID_TIMESTAMPTZ, OID_INT4, OID_INT4)
    + (OID_FLOAT8,) * 5
    + (OID_INT4, OID_TIMESTAMPTZ)
    + (OID_FLOAT8,) * 3
    + (OID_INT4,)
)


def _log_row(cells: tuple[npt.NDArray[Any], ...], last: tuple[npt.NDArray[Any], ...]) -> bytes | None:
    if not len(cells[0]) and not len(last[0]):
        return None
    fields = [array_value(a, oid) for a, oid in zip((*cells, *last), _OIDS, strict=True)]
    return HEADER + encode_row(fields) + TRAILER


_LOAD = """
SELECT DISTINCT ON (gpu_key) gpu_key, (extract(epoch FROM ts) * 1000000)::int8, util, power, fb, workload_id
  FROM (SELECT gpu_key, ts, util, power, fb, workload_id FROM usage_state
        UNION ALL
        SELECT l.* FROM usage_log m
         CROSS JOIN LATERAL unnest(m.last_gpu, m.last_ts, m.last_util, m.last_power, m.last_fb, m.last_wl)
               AS l(gpu_key, ts, util, power, fb, workload_id)) x
 ORDER BY gpu_key, ts DESC
"""
_SUMS = ("seconds", "active_s", "mem_idle_s", "util_s", "energy_j")
_ADD = ", ".join(f"{c} = {{t}}.{c} + EXCLUDED.{c}" for c in _SUMS)
_SUM = ", ".join(f"sum({c})" for c in _SUMS)
_COMPACT = f"""
WITH moved AS (
    DELETE FROM usage_log WHERE log_id IN (SELECT log_id FROM usage_log ORDER BY log_id LIMIT %(limit)s)
    RETURNING *
), cells AS (
    SELECT c.* FROM moved m
     CROSS JOIN LATERAL unnest(m.bucket, m.gpu_key, m.workload_id, m.seconds, m.active_s, m.mem_idle_s,
                               m.util_s, m.energy_j)
           AS c(bucket, gpu_key, workload_id, seconds, active_s, mem_idle_s, util_s, energy_j)
), minute AS (
    INSERT INTO usage_1m SELECT bucket, gpu_key, workload_id, {_SUM} FROM cells GROUP BY 1, 2, 3
    ON CONFLICT (bucket, gpu_key, workload_id) DO UPDATE SET {_ADD.format(t="usage_1m")}
    RETURNING 1
), {{hour}} {{groups}} last AS (
    SELECT DISTINCT ON (l.gpu_key) l.* FROM moved m
     CROSS JOIN LATERAL unnest(m.last_gpu, m.last_ts, m.last_util, m.last_power, m.last_fb, m.last_wl)
           AS l(gpu_key, ts, util, power, fb, workload_id)
     ORDER BY l.gpu_key, l.ts DESC
), state AS (
    INSERT INTO usage_state SELECT * FROM last
    ON CONFLICT (gpu_key) DO UPDATE SET ts = EXCLUDED.ts, util = EXCLUDED.util, power = EXCLUDED.power,
        fb = EXCLUDED.fb, workload_id = EXCLUDED.workload_id
     WHERE usage_state.ts < EXCLUDED.ts
    RETURNING 1
)
SELECT (SELECT count(*) FROM moved), (SELECT count(*) FROM minute), (SELECT count(*) FROM state)
"""
_HOUR = "".join(
    f"""{name} AS (
    INSERT INTO {table} SELECT date_bin(INTERVAL '{width}', bucket, %(origin)s), gpu_key, workload_id, {_SUM}
      FROM cells GROUP BY 1, 2, 3
    ON CONFLICT (bucket, gpu_key, workload_id) DO UPDATE SET {_ADD.format(t=table)}
    RETURNING 1
), """
    for name, table, width in (("hour", "usage_1h", "1 hour"), ("day", "usage_1d", "1 day"))
)
# The cells summed per namespace, job, host and model (025), into the three tiers of usage_groups on
# both platforms: a cell counts for its workload's namespace and job and its GPU's host and model.
GROUP_DIMS: Final = ("namespace", "job", "hostname", "model")
_GROUP_SUMS = ("seconds", "alloc_s", *_SUMS[1:])
# One source's cells (the compaction's batch, or a per-GPU rollup) summed per (bucket, grouping, group).
_BY_GROUP = """
    SELECT c.bucket, d.dim, d.grp, sum(c.seconds) AS seconds,
           coalesce(sum(c.seconds) FILTER (WHERE c.workload_id <> 0), 0) AS alloc_s, sum(c.active_s) AS active_s,
           sum(c.mem_idle_s) AS mem_idle_s, sum(c.util_s) AS util_s, sum(c.energy_j) AS energy_j
      FROM {source} c
      LEFT JOIN workloads w ON w.workload_id = c.workload_id
      LEFT JOIN gpus g ON g.gpu_key = c.gpu_key
     CROSS JOIN LATERAL (VALUES ('namespace', w.namespace), ('job', w.job), ('hostname', g.hostname),
                                ('model', g.model)) AS d(dim, grp)
     GROUP BY 1, 2, 3
"""
_GROUPS = (
    "grouped AS ("
    + _BY_GROUP.format(source="cells")
    + "), "
    + "".join(
        f"""{name} AS (
    INSERT INTO {table} SELECT date_bin(INTERVAL '{width}', bucket, %(origin)s), dim, grp,
           {", ".join(f"sum({c})" for c in _GROUP_SUMS)}
      FROM grouped GROUP BY 1, 2, 3
    ON CONFLICT (dim, bucket, grp) DO UPDATE SET {", ".join(f"{c} = {table}.{c} + EXCLUDED.{c}" for c in _GROUP_SUMS)}
    RETURNING 1
), """
        for name, table, width in (
            ("groups_minute", "usage_groups_1m", "1 minute"),
            ("groups_hour", "usage_groups_1h", "1 hour"),
            ("groups_day", "usage_groups_1d", "1 day"),
        )
    )
)
# Plain PostgreSQL keeps the rollups like TimescaleDB's retention policies (024) would.
_EXPIRE = (
    "DELETE FROM {table} WHERE ctid = ANY(ARRAY(SELECT ctid FROM {table} WHERE bucket < now() - %s::interval LIMIT %s))"
)
RETENTION: Final = (("usage_1m", "7 days"), ("usage_1h", "365 days"), ("usage_1d", "1825 days"))
# The group rollups are plain tables on TimescaleDB too: the compaction expires them on both.
GROUP_RETENTION: Final = (
    ("usage_groups_1m", "7 days"),
    ("usage_groups_1h", "365 days"),
    ("usage_groups_1d", "1825 days"),
)


def rebuild_groups(conn: psycopg.Connection[Any]) -> None:
    """Recompute the group rollups from the per-GPU ones (what 025 does once): for data loaded into them directly."""
    with conn.transaction():
        for table, _ in RETENTION:
            groups = table.replace("usage_", "usage_groups_")
            conn.execute(f"DELETE FROM {groups}")
            conn.execute(f"INSERT INTO {groups} {_BY_GROUP.format(source=table)}")


@dataclass(frozen=True, slots=True)
class CompactReport:
    """What one compaction did."""

    log_rows: int = 0
    minutes: int = 0
    gpus: int = 0
    expired: int = 0
    skipped: bool = False  # another compaction held the lock


def compact(
    conn: psycopg.Connection[Any], timescaledb: bool, limit: int = 1000, expire: int = 100_000
) -> CompactReport:
    """Fold up to ``limit`` log rows into the rollups and the last-sample state, in one transaction.

    Runs under a transaction-level advisory lock (a second compaction returns ``skipped``). It maintains
    the group rollups (``usage_groups_*``) and expires them; on plain PostgreSQL it also maintains
    ``usage_1h`` and ``usage_1d``. Expiry deletes up to ``expire`` rows past the retention per table.
    """
    with conn.transaction():
        (locked,) = conn.execute("SELECT pg_try_advisory_xact_lock(%s)", (LOCK_KEY,)).fetchone() or (False,)
        if not locked:
            return CompactReport(skipped=True)
        query = _COMPACT.replace("{hour}", "" if timescaledb else _HOUR).replace("{groups}", _GROUPS)
        row = conn.execute(query, {"limit": limit, "origin": TIME_GRID_ORIGIN}).fetchone()
        moved, minutes, gpus = (int(x) for x in row) if row else (0, 0, 0)
        expired = 0
        for table, keep in GROUP_RETENTION if timescaledb else RETENTION + GROUP_RETENTION:
            expired += conn.execute(_EXPIRE.format(table=table), (keep, expire)).rowcount
    if moved:
        log.debug("usage: folded %d log rows into %d minute cells (%d GPUs)", moved, minutes, gpus)
    return CompactReport(moved, minutes, gpus, expired)
