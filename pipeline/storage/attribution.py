"""What a writer derives from a batch, in the batch's transaction: allocations, GPU facts, events, usage.

* **Allocations**: each writer keeps every GPU's current workload in memory (loaded on claim from the
  open intervals). A batch is compared with it row by row in NumPy; only where a GPU's workload
  changes (rare) are its rows sorted by time and the change points turned into intervals: the open
  one closed at the first sample of the next workload, new ones inserted (closed where the batch
  already shows their end). No change, no SQL.
* **GPU facts** (driver, instance, MIG parent/instance/profile): compared per GPU with what the row
  holds; a change (a new GPU, a driver upgrade) updates ``gpus``.
* **XID events**: ``DCGM_FI_DEV_XID_ERRORS`` turning to a non-zero code is a ``gpu_events`` row.
* **Latest values** (``pipeline.storage.latest``) and **usage** (``pipeline.storage.usage``).

``stage`` computes all of it before the transaction (registering new workload names in their own
small transaction, as GPU and metric names are); ``write`` runs inside the transaction; ``commit``
adopts the new state once it committed, so a failed or refused transaction leaves nothing behind.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import psycopg
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.config import AttributionSettings
from pipeline.records import FIELD_SEP, GPU_INFO_FIELDS, WORKLOAD_FIELDS, split_fields
from pipeline.storage.latest import LatestValues, StagedLatest
from pipeline.storage.usage import StagedUsage, UsageAccounting, UsageRules

__all__ = ["ROLE_METRICS", "Attribution", "KeyedBatch"]

log = logging.getLogger(__name__)

ROLE_METRICS: Final = {
    "util": "DCGM_FI_DEV_GPU_UTIL",
    "power": "DCGM_FI_DEV_POWER_USAGE",
    "fb": "DCGM_FI_DEV_FB_USED",
    "xid": "DCGM_FI_DEV_XID_ERRORS",
}
_EPOCH = "timestamptz 'epoch' + {} * interval '1 microsecond'"
_CLOSE = (
    "UPDATE allocations a SET ended = greatest(" + _EPOCH.format("v.t") + ", a.started + interval '1 microsecond') "
    "FROM unnest(%s::int[], %s::int8[]) AS v(g, t) WHERE a.gpu_key = v.g AND a.ended IS NULL"
)
_OPEN = (
    "INSERT INTO allocations (gpu_key, workload_id, started, ended) SELECT v.g, v.w, "
    + _EPOCH.format("v.s")
    + ", CASE WHEN v.e = 0 THEN NULL ELSE "
    + _EPOCH.format("v.e")
    + " END FROM unnest(%s::int[], %s::int[], %s::int8[], %s::int8[]) AS v(g, w, s, e)"
)
_EVENTS = (
    "INSERT INTO gpu_events (gpu_key, ts, kind, code) SELECT v.g, "
    + _EPOCH.format("v.t")
    + ", 'xid', v.c FROM unnest(%s::int[], %s::int8[], %s::int[]) AS v(g, t, c) ON CONFLICT DO NOTHING"
)
# DO UPDATE (a no-op write) rather than DO NOTHING so that RETURNING also gives the ids of names that exist.
_REGISTER = (
    "INSERT INTO workloads (namespace, pod, container, job) "
    "SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[]) "
    "ON CONFLICT ON CONSTRAINT workloads_key DO UPDATE SET namespace = EXCLUDED.namespace "
    "RETURNING workload_id, namespace, pod, container, job"
)
_FACTS = (
    "UPDATE gpus SET driver_version = v.d, instance = v.i, parent_uuid = v.p, mig_instance = v.m, mig_profile = v.f "
    "FROM unnest(%s::int[], %s::text[], %s::text[], %s::text[], %s::smallint[], %s::text[]) AS v(k, d, i, p, m, f) "
    "WHERE gpus.gpu_key = v.k"
)


@dataclass(frozen=True, slots=True)
class KeyedBatch:
    """A batch as the writer encoded it: one entry per row, plus the attribution columns."""

    gpu: npt.NDArray[np.int32]
    metric: npt.NDArray[np.int16]
    metrics_present: npt.NDArray[np.int16]  # the distinct metric ids of the batch
    ts: npt.NDArray[np.int64]  # Unix microseconds
    value: npt.NDArray[np.float64]
    keys: npt.NDArray[np.int32]  # the distinct GPUs of the batch ...
    first_rows: npt.NDArray[np.int64]  # ... and the row where each first appears
    workload: pa.Array | None  # dictionary-encoded canonical strings (records.WORKLOAD_FIELDS)
    gpu_info: pa.Array | None


@dataclass(slots=True)
class Staged:
    """Everything a batch adds, computed before its transaction."""

    closes: tuple[list[int], list[int]] = ([], [])
    opens: tuple[list[int], list[int], list[int], list[int]] = ([], [], [], [])
    current: tuple[npt.NDArray[np.int32], npt.NDArray[np.int32]] | None = None  # gpu -> workload after it
    facts: list[tuple[int, str | None]] = field(default_factory=list)  # (gpu_key, canonical gpu_info)
    events: tuple[list[int], list[int], list[int]] = ([], [], [])
    xid_last: tuple[npt.NDArray[np.int32], npt.NDArray[np.float64]] | None = None
    latest: StagedLatest | None = None
    usage: StagedUsage | None = None


class Attribution:
    """One writer's attribution state and the SQL that records a batch's share of it."""

    def __init__(self, settings: AttributionSettings) -> None:
        self._settings = settings
        self.latest = LatestValues(settings.latest_every_s)
        self.usage = UsageAccounting(
            UsageRules(settings.active_above_percent, settings.memory_held_mib, settings.max_gap_s)
        )
        self._workload_ids: dict[str, int] = {}
        self._known_names = pa.array([], pa.string())  # the keys of _workload_ids, as a column ...
        self._known_ids = np.zeros(0, dtype=np.int32)  # ... and their ids
        self._current = np.zeros(0, dtype=np.int32)  # per gpu_key: its workload now (0: nobody)
        self._fact_ids: dict[str, int] = {}  # canonical gpu_info -> a small local id
        self._fact_names: list[str] = []
        self._fact_of = np.full(0, -1, dtype=np.int32)  # per gpu_key: the id of what its row holds (-1: nothing)
        self._xid = np.zeros(0, dtype=np.float64)  # per gpu_key: its last XID value
        self.events_written = 0

    # --- state -------------------------------------------------------------------------------------

    def load(self, conn: psycopg.Connection[Any], metric_ids: dict[str, int]) -> None:
        """Adopt what is committed (on open and on every claim: partitions may have moved meanwhile).

        What this writer holds of the latest values is flushed first, so none of it is lost by the reload.
        """
        self.latest.flush(conn)
        with conn.transaction():
            self._workload_ids = {_canonical(r[1:]) or "": int(r[0]) for r in conn.execute("SELECT * FROM workloads")}
            self._known_names = pa.array(list(self._workload_ids), pa.string())
            self._known_ids = np.array(list(self._workload_ids.values()), dtype=np.int32)
            open_ = conn.execute("SELECT gpu_key, workload_id FROM allocations WHERE ended IS NULL").fetchall()
            facts = conn.execute(
                "SELECT gpu_key, driver_version, instance, parent_uuid, mig_instance::text, mig_profile FROM gpus"
            ).fetchall()
            xid = conn.execute(
                "SELECT DISTINCT ON (gpu_key) gpu_key, code FROM gpu_events WHERE kind = 'xid' "
                "ORDER BY gpu_key, ts DESC"
            ).fetchall()
            self.latest.load(conn)
            self.usage.load(conn)
        top = max([r[0] for r in open_ + facts + xid], default=0)
        self._current = np.zeros(top + 1, dtype=np.int32)
        for g, w in open_:
            self._current[g] = w
        self._fact_of = np.full(top + 1, -1, dtype=np.int32)
        for r in facts:
            name = _canonical(r[1:])
            if name is not None:
                self._fact_of[r[0]] = self._fact_id(name)
        self._xid = np.zeros(top + 1, dtype=np.float64)
        for g, c in xid:
            self._xid[g] = c
        # Where the latest-value table holds an XID value, it is what the GPU reported last (it may have
        # gone back to 0 since the last event).
        xid_id = metric_ids.get(ROLE_METRICS["xid"])
        known = self.latest.value_of(xid_id) if xid_id is not None else None
        if known is not None:
            ts, values = known
            self._grow(len(ts) - 1)
            seen = np.flatnonzero(ts > 0)
            self._xid[seen] = values[seen]

    def _grow(self, max_key: int) -> None:
        if max_key >= len(self._current):
            extra = max(max_key + 1, int(len(self._current) * 1.5)) - len(self._current)
            self._current = np.concatenate([self._current, np.zeros(extra, dtype=np.int32)])
            self._xid = np.concatenate([self._xid, np.zeros(extra, dtype=np.float64)])
            self._fact_of = np.concatenate([self._fact_of, np.full(extra, -1, dtype=np.int32)])

    # --- per batch -----------------------------------------------------------------------------------

    def stage(self, conn: psycopg.Connection[Any], batch: KeyedBatch, metric_ids: dict[str, int]) -> Staged:
        """Compute what ``batch`` adds (may register new workload names first, in their own transaction)."""
        self._grow(int(batch.keys.max()) if len(batch.keys) else 0)
        staged = Staged()
        workload = self._workloads(conn, batch.workload, len(batch.gpu))
        self._allocations(batch, workload, staged)
        staged.facts = self._changed_facts(batch)
        self._xid_events(batch, metric_ids.get(ROLE_METRICS["xid"]), staged)
        staged.latest = self.latest.stage(batch.gpu, batch.metric, batch.metrics_present, batch.ts, batch.value)
        roles = (metric_ids.get(ROLE_METRICS["util"]), metric_ids.get(ROLE_METRICS["power"]))
        ids = (*roles, metric_ids.get(ROLE_METRICS["fb"]))
        staged.usage = self.usage.stage(batch.gpu, batch.metric, batch.ts, batch.value, workload, ids)
        return staged

    def _workloads(self, conn: psycopg.Connection[Any], column: pa.Array | None, n: int) -> npt.NDArray[np.int32]:
        """Each row's workload id (0: nobody), registering names not seen before.

        Names are looked up as a whole column (``pc.index_in`` against the known names): no per-name Python
        but for names new to this writer.
        """
        if column is None or column.null_count == n:
            return np.zeros(n, dtype=np.int32)
        if not pa.types.is_dictionary(column.type):
            column = column.dictionary_encode()
        names = column.dictionary
        known = pc.index_in(names, value_set=self._known_names)
        if known.null_count:
            fresh = names.filter(known.is_null()).to_pylist()
            self._register_workloads(conn, fresh)
            self._known_names = pa.array(list(self._workload_ids), pa.string())
            self._known_ids = np.array(list(self._workload_ids.values()), dtype=np.int32)
            known = pc.index_in(names, value_set=self._known_names)
        lookup = np.append(self._known_ids[known.to_numpy(zero_copy_only=False)], 0).astype(np.int32)  # -1: null
        out: npt.NDArray[np.int32] = lookup[column.indices.fill_null(-1).to_numpy(zero_copy_only=False)]
        return out

    def _register_workloads(self, conn: psycopg.Connection[Any], names: list[str]) -> None:
        """Ids of new workload names: inserted, or found (one statement through the unique index)."""
        fields = [split_fields(n, len(WORKLOAD_FIELDS)) for n in names]
        with conn.transaction():
            rows = conn.execute(_REGISTER, [list(col) for col in zip(*fields, strict=True)]).fetchall()
        self._workload_ids.update({_canonical(r[1:]) or "": int(r[0]) for r in rows})

    def _allocations(self, batch: KeyedBatch, workload: npt.NDArray[np.int32], staged: Staged) -> None:
        """Change points of each GPU's workload -> intervals to close and to open."""
        changed = workload != self._current[batch.gpu]
        if not changed.any():
            return
        gpus = np.unique(batch.gpu[changed])
        sel = np.isin(batch.gpu, gpus)
        g, t, w = batch.gpu[sel], batch.ts[sel], workload[sel]
        order = np.lexsort((t, g))
        g, t, w = g[order], t[order], w[order]
        first = np.r_[True, g[1:] != g[:-1]]
        before = np.r_[0, w[:-1]]
        before[first] = self._current[g[first]]
        change = w != before
        cg, ct, cw = g[change], t[change], w[change]
        has_next = np.r_[cg[1:] == cg[:-1], False]
        ended = np.where(has_next, np.r_[ct[1:], 0], 0)
        opens = (cw != 0) & ~(has_next & (ended == ct))  # no zero-length interval (two workloads at one instant)
        head = np.r_[True, cg[1:] != cg[:-1]]
        staged.closes = (cg[head].tolist(), ct[head].tolist())
        staged.opens = (cg[opens].tolist(), cw[opens].tolist(), ct[opens].tolist(), ended[opens].tolist())
        staged.current = (cg[~has_next], cw[~has_next])

    def _changed_facts(self, batch: KeyedBatch) -> list[tuple[int, str | None]]:
        """GPUs whose facts differ from their row's (compared as small ids: no per-GPU Python)."""
        column = batch.gpu_info
        if column is None or not len(batch.keys) or column.null_count == len(column):
            return []
        if not pa.types.is_dictionary(column.type):
            column = column.dictionary_encode()
        names = column.dictionary.to_pylist()
        local = np.array([self._fact_id(n) for n in names] + [-1], dtype=np.int32)  # last entry: null
        per_gpu = local[column.indices.fill_null(-1).to_numpy(zero_copy_only=False)[batch.first_rows]]
        self._grow(int(batch.keys.max()))
        # A batch that says nothing about a GPU (a source without labels) leaves its row as it is.
        changed = (per_gpu >= 0) & (per_gpu != self._fact_of[batch.keys])
        keys, ids = batch.keys[changed].tolist(), per_gpu[changed].tolist()
        return [(int(k), self._fact_names[i]) for k, i in zip(keys, ids, strict=True)]

    def _fact_id(self, name: str | None) -> int:
        if name is None:
            return -1
        found = self._fact_ids.get(name)
        if found is None:
            found = self._fact_ids[name] = len(self._fact_names)
            self._fact_names.append(name)
        return found

    def _xid_events(self, batch: KeyedBatch, xid_id: int | None, staged: Staged) -> None:
        if xid_id is None:
            return
        sel = batch.metric == xid_id
        if not sel.any():
            return
        g, t, v = batch.gpu[sel], batch.ts[sel], batch.value[sel]
        order = np.lexsort((t, g))
        g, t, v = g[order], t[order], v[order]
        first = np.r_[True, g[1:] != g[:-1]]
        before = np.r_[0.0, v[:-1]]
        before[first] = self._xid[g[first]]
        raised = (v != before) & (v > 0) & (v < 2**31)
        staged.events = (g[raised].tolist(), t[raised].tolist(), v[raised].astype(np.int64).tolist())
        last = np.r_[g[1:] != g[:-1], True]
        staged.xid_last = (g[last], v[last])

    def write(self, conn: psycopg.Connection[Any], staged: Staged) -> None:
        """Inside the batch's transaction: record everything ``stage`` computed."""
        if staged.closes[0]:
            conn.execute(_CLOSE, staged.closes)
        if staged.opens[0]:
            conn.execute(_OPEN, staged.opens)
        if staged.facts:
            columns = [split_fields(v, len(GPU_INFO_FIELDS)) for _, v in staged.facts]
            d, i, p, m, f = ([c[n] for c in columns] for n in range(5))
            mig = [int(x) if x is not None and x.isdigit() and int(x) < 2**15 else None for x in m]
            conn.execute(_FACTS, ([k for k, _ in staged.facts], d, i, p, mig, f))
        if staged.events[0]:
            conn.execute(_EVENTS, staged.events)
        if staged.latest is not None:
            self.latest.write(conn, staged.latest)
        if staged.usage is not None:
            self.usage.write(conn, staged.usage)

    def commit(self, staged: Staged) -> None:
        """The transaction committed: adopt the batch's state."""
        if staged.current is not None:
            g, w = staged.current
            self._current[g] = w
        for key, info in staged.facts:
            self._fact_of[key] = self._fact_id(info)
        if staged.xid_last is not None:
            gpus, codes = staged.xid_last
            self._xid[gpus] = codes
        self.events_written += len(staged.events[0])
        if staged.latest is not None:
            self.latest.commit(staged.latest)
        if staged.usage is not None:
            self.usage.commit(staged.usage)


def _canonical(fields: tuple[Any, ...] | list[Any]) -> str | None:
    """The canonical string of a row's fields (as the sources build it); None when every field is empty."""
    values = ["" if f is None else str(f) for f in fields]
    return FIELD_SEP.join(values) if any(values) else None
