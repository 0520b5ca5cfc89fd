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
from datetime import datetime

from pipeline.storage.reader import Reader

__all__ = [
    "Committed",
    "FleetCounts",
    "GpuCell",
    "HostCell",
    "RejectReason",
    "blank_codes",
    "committed",
    "fleet_counts",
    "gpu_cells",
    "host_cells",
    "host_page",
    "rejects_by_reason",
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
    """The fleet in numbers: GPUs, hosts, and how many of the reporting GPUs are active or idle."""

    gpus: int
    hosts: int
    active: int
    idle: int


@dataclass(frozen=True, slots=True)
class GpuCell:
    """One GPU of the heatmap: where it is, its newest value of the metric, and whether it went silent.

    ``newest`` None: no latest value yet (a GPU seen moments ago); that is not "missing".
    """

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


def fleet_counts(reader: Reader, util_metric: int, stale_before: datetime, active_above: float) -> FleetCounts:
    """GPUs, hosts, and GPUs reporting since ``stale_before`` with utilisation above ``active_above`` or not."""
    ((gpus, hosts, active, idle),) = reader._fetch(
        "SELECT count(*), count(DISTINCT g.hostname), "
        f"count(*) FILTER (WHERE l.ts >= %(stale)s AND {_VALUE} > %(above)s), "
        f"count(*) FILTER (WHERE l.ts >= %(stale)s AND {_VALUE} <= %(above)s) "
        "FROM gpus g LEFT JOIN gpu_latest l USING (gpu_key)",
        {"metric": util_metric, "stale": stale_before, "above": active_above},
    )
    return FleetCounts(int(gpus), int(hosts), int(active), int(idle))


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
        f"SELECT g.uuid, {_HOST}, g.gpu_index, {_VALUE}, l.ts, coalesce(l.ts < %(stale)s, FALSE) "
        f"FROM unnest(%(hosts)s::text[]) p(h) JOIN gpus g ON {_HOST} = p.h LEFT JOIN gpu_latest l USING (gpu_key) "
        f"ORDER BY {_HOST}, g.gpu_index NULLS LAST, g.uuid",
        {"metric": metric, "stale": stale_before, "hosts": hosts},
    )
    return [GpuCell(*r) for r in rows]


def host_cells(reader: Reader, hosts: list[str], metric: int, stale_before: datetime) -> list[HostCell]:
    """Per host of ``hosts``: GPUs, the mean and max of their newest ``metric``, how many went silent."""
    rows = reader._fetch(
        f"SELECT {_HOST}, count(*), avg(v.value), max(v.value), count(*) FILTER (WHERE l.ts < %(stale)s) "
        f"FROM unnest(%(hosts)s::text[]) p(h) JOIN gpus g ON {_HOST} = p.h LEFT JOIN gpu_latest l USING (gpu_key) "
        f"CROSS JOIN LATERAL (SELECT CASE WHEN l.ts >= %(stale)s THEN {_VALUE} END AS value) v "
        "GROUP BY 1 ORDER BY 1",
        {"metric": metric, "stale": stale_before, "hosts": hosts},
    )
    return [HostCell(h, int(n), mean, peak, int(m)) for h, n, mean, peak, m in rows]


def blank_codes(reader: Reader, since: datetime, at_most: int = 100_000) -> dict[str, tuple[str, str, int]]:
    """GPUs that reported a DCGM blank code since ``since``: uuid -> (newest code, its metric, how many)."""
    rows = reader._fetch(
        "SELECT uuid, (array_agg(blank ORDER BY ts DESC))[1], (array_agg(metric ORDER BY ts DESC))[1], count(*) "
        "FROM (SELECT ts, uuid, metric, blank FROM rejects WHERE blank IS NOT NULL AND ts >= %(since)s "
        "ORDER BY ts DESC LIMIT %(at_most)s) r WHERE uuid IS NOT NULL GROUP BY uuid",
        {"since": since, "at_most": at_most},
    )
    return {u: (code, metric or "", int(n)) for u, code, metric, n in rows}
