"""What the gateway's HTML pages read beyond the API's own queries, each bounded like them.

Functions over a ``Reader`` (its pool, its error translation). The fleet views read the latest-value
table (``gpu_latest``: one row per GPU) joined to ``gpus``, never ``telemetry``: their cost grows with
the number of GPUs, not of samples (about 25,000 rows at the largest fleet the pages are sized for),
and the heatmap's rows come a page of hosts at a time. Blank codes come from the recent rejects that
carry one (``rejects_blank_idx``), at most ``at_most`` of them. The queue's committed offsets are one
row per partition; the rejects by reason read at most ``at_most`` newest rejects (``rejects_ts_idx``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from pipeline.storage.reader import Reader

__all__ = [
    "Allocation",
    "Committed",
    "Event",
    "FleetCounts",
    "GpuCell",
    "HostCell",
    "RejectReason",
    "TopRow",
    "UsageRow",
    "allocations",
    "blank_codes",
    "committed",
    "events",
    "fleet_counts",
    "gpu_cells",
    "host_cells",
    "host_page",
    "not_reporting",
    "rejects_by_reason",
    "top",
    "usage",
]

# A GPU's newest value of one metric, from its gpu_latest row l (NULL when it never reported the metric).
_VALUE = "l.vals[array_position(l.metric_ids, %(metric)s::smallint)]"
_SAMPLE_TS = "l.sample_ts[array_position(l.metric_ids, %(metric)s::smallint)]"
_HOST = "coalesce(g.hostname, '')"


@dataclass(frozen=True, slots=True)
class Committed:
    """Where a consumer group stands in one partition, and what it stored there."""

    partition: int
    next_offset: int
    generation: int
    rows: int
    rejects: int
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class RejectReason:
    """Rejects of one kind: the reason with its quoted values elided, how many, the newest, one example."""

    reason: str
    count: int
    newest: datetime
    example: str


def committed(reader: Reader, group: str) -> list[Committed]:
    """The group's row of ``consumer_offsets`` per partition, by partition."""
    rows = reader._fetch(
        "SELECT partition, next_offset, generation, rows_committed, rejects_committed, updated_at "
        "FROM consumer_offsets WHERE group_id = %s ORDER BY partition",
        (group,),
    )
    return [Committed(*r) for r in rows]


def rejects_by_reason(reader: Reader, since: datetime, at_most: int = 100_000, limit: int = 20) -> list[RejectReason]:
    """The newest ``at_most`` rejects since ``since``, grouped by reason (values in backquotes elided).

    Reasons name the offending value (``value `abc` for DCGM_FI_DEV_GPU_TEMP is not a number``);
    grouping on the text with the quoted parts replaced counts kinds of fault, not distinct values.
    """
    rows = reader._fetch(
        "SELECT regexp_replace(r.reason, '`[^`]*`', '`…`', 'g') AS kind, count(*)::bigint, max(r.ts), "
        "(array_agg(r.reason ORDER BY r.ts DESC))[1] "
        "FROM (SELECT ts, reason FROM rejects WHERE ts >= %(since)s ORDER BY ts DESC LIMIT %(at_most)s) r "
        "GROUP BY kind ORDER BY count(*) DESC, kind LIMIT %(limit)s",
        {"since": since, "at_most": at_most, "limit": limit},
    )
    return [RejectReason(kind, int(n), newest, example) for kind, n, newest, example in rows]


@dataclass(frozen=True, slots=True)
class FleetCounts:
    """The fleet in numbers: GPUs, hosts, and how many are active, idle or not reporting."""

    gpus: int
    hosts: int
    active: int
    idle: int
    missing: int


@dataclass(frozen=True, slots=True)
class GpuCell:
    """One GPU of the heatmap: where it is, its newest value of the metric, and whether it went silent."""

    uuid: str
    hostname: str
    gpu_index: int | None
    value: float | None
    newest: datetime | None
    missing: bool


@dataclass(frozen=True, slots=True)
class HostCell:
    """One host of the aggregated heatmap: its GPUs' mean and max of the metric, how many went silent."""

    hostname: str
    gpus: int
    mean: float | None
    max: float | None
    missing: int


@dataclass(frozen=True, slots=True)
class TopRow:
    """One GPU of a top-N table, with who holds it now."""

    uuid: str
    hostname: str | None
    model: str | None
    value: float
    ts: datetime
    namespace: str | None
    pod: str | None


def fleet_counts(reader: Reader, util_metric: int, stale_before: datetime, active_above: float) -> FleetCounts:
    """GPUs, hosts, active (utilisation above ``active_above``), idle, and not reporting since ``stale_before``."""
    ((gpus, hosts, active, idle, missing),) = reader._fetch(
        "SELECT count(*), count(DISTINCT g.hostname), "
        f"count(*) FILTER (WHERE l.ts >= %(stale)s AND {_VALUE} > %(above)s), "
        f"count(*) FILTER (WHERE l.ts >= %(stale)s AND {_VALUE} <= %(above)s), "
        "count(*) FILTER (WHERE l.ts IS NULL OR l.ts < %(stale)s) "
        "FROM gpus g LEFT JOIN gpu_latest l USING (gpu_key)",
        {"metric": util_metric, "stale": stale_before, "above": active_above},
    )
    return FleetCounts(int(gpus), int(hosts), int(active), int(idle), int(missing))


def host_page(reader: Reader, offset: int, limit: int, hostname: str | None = None) -> tuple[list[str], int]:
    """A page of host names in order (``hostname`` alone when given), and how many hosts there are."""
    if hostname is not None:
        rows = reader._fetch("SELECT count(*) FROM gpus WHERE hostname = %s", (hostname,))
        return ([hostname] if rows[0][0] else []), 1 if rows[0][0] else 0
    rows = reader._fetch(
        f"SELECT h, count(*) OVER () FROM (SELECT DISTINCT {_HOST} AS h FROM gpus g) x "
        "ORDER BY h OFFSET %(offset)s LIMIT %(limit)s",
        {"offset": offset, "limit": limit},
    )
    if not rows and offset:
        total = reader._fetch(f"SELECT count(DISTINCT {_HOST}) FROM gpus g", ())[0][0]
        return [], int(total)
    return [r[0] for r in rows], int(rows[0][1]) if rows else 0


def gpu_cells(reader: Reader, hosts: list[str], metric: int, stale_before: datetime) -> list[GpuCell]:
    """Every GPU of ``hosts`` with its newest value of ``metric``, by host and index."""
    rows = reader._fetch(
        f"SELECT g.uuid, {_HOST}, g.gpu_index, {_VALUE}, l.ts, (l.ts IS NULL OR l.ts < %(stale)s) "
        f"FROM unnest(%(hosts)s::text[]) p(h) JOIN gpus g ON {_HOST} = p.h LEFT JOIN gpu_latest l USING (gpu_key) "
        f"ORDER BY {_HOST}, g.gpu_index NULLS LAST, g.uuid",
        {"metric": metric, "stale": stale_before, "hosts": hosts},
    )
    return [GpuCell(*r) for r in rows]


def host_cells(reader: Reader, hosts: list[str], metric: int, stale_before: datetime) -> list[HostCell]:
    """Per host of ``hosts``: GPUs, the mean and max of their newest ``metric``, how many went silent."""
    rows = reader._fetch(
        f"SELECT {_HOST}, count(*), avg(v.value), max(v.value), "
        "count(*) FILTER (WHERE l.ts IS NULL OR l.ts < %(stale)s) "
        f"FROM unnest(%(hosts)s::text[]) p(h) JOIN gpus g ON {_HOST} = p.h LEFT JOIN gpu_latest l USING (gpu_key) "
        f"CROSS JOIN LATERAL (SELECT CASE WHEN l.ts >= %(stale)s THEN {_VALUE} END AS value) v "
        "GROUP BY 1 ORDER BY 1",
        {"metric": metric, "stale": stale_before, "hosts": hosts},
    )
    return [HostCell(h, int(n), mean, peak, int(m)) for h, n, mean, peak, m in rows]


def top(reader: Reader, metric: int, order: str, limit: int, stale_before: datetime) -> list[TopRow]:
    """The ``limit`` reporting GPUs with the highest (``desc``) or lowest (``asc``) newest ``metric``."""
    direction = "DESC" if order == "desc" else "ASC"
    rows = reader._fetch(
        f"SELECT g.uuid, g.hostname, g.model, t.value, t.ts, w.namespace, w.pod FROM ("
        f"SELECT l.gpu_key, {_VALUE} AS value, {_SAMPLE_TS} AS ts FROM gpu_latest l WHERE l.ts >= %(stale)s "
        f"AND {_VALUE} IS NOT NULL ORDER BY 2 {direction}, 1 LIMIT %(limit)s) t "
        "JOIN gpus g USING (gpu_key) "
        "LEFT JOIN allocations a ON a.gpu_key = t.gpu_key AND a.ended IS NULL "
        "LEFT JOIN workloads w USING (workload_id) "
        f"ORDER BY t.value {direction}, t.gpu_key",
        {"metric": metric, "stale": stale_before, "limit": limit},
    )
    return [TopRow(*r) for r in rows]


def not_reporting(reader: Reader, stale_before: datetime, limit: int) -> list[GpuCell]:
    """Up to ``limit`` GPUs with no sample since ``stale_before``, the longest silent first."""
    rows = reader._fetch(
        f"SELECT g.uuid, {_HOST}, g.gpu_index, NULL::float8, l.ts, TRUE FROM gpus g "
        "LEFT JOIN gpu_latest l USING (gpu_key) WHERE l.ts IS NULL OR l.ts < %(stale)s "
        "ORDER BY l.ts NULLS FIRST, g.uuid LIMIT %(limit)s",
        {"stale": stale_before, "limit": limit},
    )
    return [GpuCell(*r) for r in rows]


def blank_codes(reader: Reader, since: datetime, at_most: int = 100_000) -> dict[str, tuple[str, str, int]]:
    """GPUs that reported a DCGM blank code since ``since``: uuid -> (newest code, its metric, how many)."""
    rows = reader._fetch(
        "SELECT uuid, (array_agg(blank ORDER BY ts DESC))[1], (array_agg(metric ORDER BY ts DESC))[1], count(*) "
        "FROM (SELECT ts, uuid, metric, blank FROM rejects WHERE blank IS NOT NULL AND ts >= %(since)s "
        "ORDER BY ts DESC LIMIT %(at_most)s) r WHERE uuid IS NOT NULL GROUP BY uuid",
        {"since": since, "at_most": at_most},
    )
    return {u: (code, metric or "", int(n)) for u, code, metric, n in rows}


@dataclass(frozen=True, slots=True)
class UsageRow:
    """One group's use of GPUs over a window (seconds of GPU time; joules)."""

    group: str | None  # None: time nobody held the GPUs (allocations only)
    gpus: int
    seconds: float
    active_s: float
    mem_idle_s: float
    util_s: float
    energy_j: float


_GROUPS = {
    "namespace": "w.namespace",
    "pod": "CASE WHEN w.pod IS NOT NULL THEN coalesce(w.namespace || '/', '') || w.pod END",
    "job": "w.job",
    "hostname": "g.hostname",
    "model": "g.model",
}


def usage(reader: Reader, group_by: str, lo: datetime, hi: datetime, limit: int) -> tuple[str, list[UsageRow]]:
    """GPU time per group over ``lo <= bucket < hi`` from the usage rollups, the most used first.

    Hour rollups (``usage_1h``) when both bounds are whole hours and the window spans 6 hours or more,
    minute rollups (``usage_1m``, kept 7 days) otherwise; the source is returned with the rows. At
    25,000 GPUs that is at most 1.5 M minute rows (an hour) or 4.2 M hour rows (a week).
    """
    expr = _GROUPS[group_by]
    hourly = hi - lo >= timedelta(hours=6) and lo.minute == lo.second == hi.minute == hi.second == 0
    source = "usage_1h" if hourly else "usage_1m"
    # Summed per (GPU, workload) first: the outer grouping then counts distinct GPUs over thousands of rows.
    rows = reader._fetch(
        f"SELECT {expr} AS grp, count(DISTINCT u.gpu_key)::int, sum(u.seconds), sum(u.active_s), "
        "sum(u.mem_idle_s), sum(u.util_s), sum(u.energy_j) FROM (SELECT gpu_key, workload_id, sum(seconds) AS seconds, "
        "sum(active_s) AS active_s, sum(mem_idle_s) AS mem_idle_s, sum(util_s) AS util_s, sum(energy_j) AS energy_j "
        f"FROM {source} WHERE bucket >= %(lo)s AND bucket < %(hi)s GROUP BY 1, 2) u JOIN gpus g USING (gpu_key) "
        "LEFT JOIN workloads w ON w.workload_id = u.workload_id "
        "GROUP BY 1 ORDER BY 3 DESC, 1 NULLS LAST LIMIT %(limit)s",
        {"lo": lo, "hi": hi, "limit": limit},
    )
    return source, [UsageRow(grp, n, *(float(x or 0.0) for x in rest)) for grp, n, *rest in rows]


@dataclass(frozen=True, slots=True)
class Allocation:
    """Who held a GPU over [started, ended) (ended None: still holds it)."""

    namespace: str | None
    pod: str | None
    container: str | None
    job: str | None
    started: datetime
    ended: datetime | None


@dataclass(frozen=True, slots=True)
class Event:
    """A health event of a GPU (an XID error: its code and what it means)."""

    ts: datetime
    kind: str
    code: int
    meaning: str | None


def allocations(reader: Reader, gpu_key: int, lo: datetime, hi: datetime, limit: int = 200) -> list[Allocation]:
    """The GPU's allocations that overlap [lo, hi], oldest first, at most ``limit`` (the newest kept)."""
    rows = reader._fetch(
        "SELECT * FROM (SELECT w.namespace, w.pod, w.container, w.job, a.started, a.ended FROM allocations a "
        "JOIN workloads w USING (workload_id) WHERE a.gpu_key = %(gpu)s AND a.started <= %(hi)s "
        "AND (a.ended IS NULL OR a.ended > %(lo)s) ORDER BY a.started DESC LIMIT %(limit)s) x ORDER BY started",
        {"gpu": gpu_key, "lo": lo, "hi": hi, "limit": limit},
    )
    return [Allocation(*r) for r in rows]


def events(reader: Reader, gpu_key: int, lo: datetime, hi: datetime, limit: int = 200) -> list[Event]:
    """The GPU's events in [lo, hi], newest first, at most ``limit``."""
    rows = reader._fetch(
        "SELECT e.ts, e.kind, e.code, x.meaning FROM gpu_events e LEFT JOIN xid_codes x ON x.code = e.code "
        "WHERE e.gpu_key = %(gpu)s AND e.ts >= %(lo)s AND e.ts <= %(hi)s ORDER BY e.ts DESC LIMIT %(limit)s",
        {"gpu": gpu_key, "lo": lo, "hi": hi, "limit": limit},
    )
    return [Event(*r) for r in rows]
