"""The fleet views of the reader: newest values across GPUs, allocations, events, usage and health.

Every query reads the attribution tables (sql/023), never a scan of ``telemetry``: ``gpu_latest`` for
what GPUs report now (one row per GPU), ``allocations``/``workloads`` for who holds them, ``gpu_events``
for XID errors, the usage rollups for accounting, ``rejects`` (its blank-code rows, by time) for GPUs
reporting DCGM blank codes. Lists are bounded by a limit and paged by keyset.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal

from pipeline.records import TIME_GRID_ORIGIN
from pipeline.storage import _reader_sql as q
from pipeline.storage.ranking import Rankings
from pipeline.storage.rows import (
    AllocationRow,
    BlankRow,
    EventRow,
    FleetLatestRow,
    Health,
    Holder,
    MissingGpu,
    SilentHost,
    UsageRow,
)
from pipeline.storage.usage import GROUP_DIMS

__all__ = ["GROUPS", "FleetQueries", "GroupBy", "Resolution", "usage_window"]

log = logging.getLogger(__name__)

GroupBy = Literal["namespace", "pod", "job", "hostname", "model"]
# What each usage grouping is over (w: workloads, g: gpus); a pod is named with its namespace.
GROUPS: Final[dict[str, str]] = {
    "namespace": "w.namespace",
    "pod": "CASE WHEN w.pod IS NULL THEN NULL ELSE concat_ws('/', w.namespace, w.pod) END",
    "job": "w.job",
    "hostname": "g.hostname",
    "model": "g.model",
}
# A GPU's newest value of one metric (NULL: it does not report it). Choosing a page of the fleet by value
# computes it once per row of gpu_latest and nothing else (the sample's time is read for the page only): each
# array access costs ~0.25 us a row, and the scan is most of a fleet/latest request (38 -> ~15 ms for the top
# 10 of 25,000 GPUs when the filter and the time no longer evaluated it again, EXPLAIN ANALYZE).
_VALUE = "l.vals[array_position(l.metric_ids, %(metric)s::smallint)]"
_SAMPLE_TS = "l.sample_ts[array_position(l.metric_ids, %(metric)s::smallint)]"
# A ranking: every GPU's (key, value, time) of one metric as three arrays in one row (25,000 rows as three
# arrays: 22 ms here, as rows 33 ms: a COPY row costs more than an array element).
# Rows with a NULL value or time (no writer makes one) are left out, as the query leaves them out.
_RANKING = (
    "COPY (SELECT array_agg(l.gpu_key), array_agg(l.vals[p.i]), array_agg(l.sample_ts[p.i]) FROM gpu_latest l "
    "CROSS JOIN LATERAL (SELECT array_position(l.metric_ids, {metric}::smallint) AS i) p "
    "WHERE p.i IS NOT NULL AND l.vals[p.i] IS NOT NULL AND l.sample_ts[p.i] IS NOT NULL) TO STDOUT (FORMAT binary)"
)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# One pass: the rollup rows of the window joined to their workload (and GPU) and summed per group. (A count
# of distinct GPUs per group measured 1.5-4x the whole query at 25,000 GPUs: the API reports mean GPUs.)
_USAGE_SUMS = (
    "sum(u.seconds), coalesce(sum(u.seconds) FILTER (WHERE u.workload_id <> 0), 0), sum(u.active_s), "
    "sum(u.mem_idle_s), sum(u.util_s), sum(u.energy_j)"
)
Resolution = Literal["day", "hour", "minute"]
# The usage rollups, coarsest first: what a usage query of each resolution may read.
_TIERS: Final[dict[str, tuple[str, timedelta]]] = {
    "day": ("usage_1d", timedelta(days=1)),
    "hour": ("usage_1h", timedelta(hours=1)),
    "minute": ("usage_1m", timedelta(minutes=1)),
}


def _floor(dt: datetime, width: timedelta) -> datetime:
    return TIME_GRID_ORIGIN + ((dt - TIME_GRID_ORIGIN) // width) * width


def usage_window(start: datetime, end: datetime, resolution: Resolution = "hour") -> tuple[datetime, datetime]:
    """The whole days, hours or minutes that hold an instant of the inclusive window ``[start, end]``: ``[lo, hi)``."""
    width = _TIERS[resolution][1]
    return _floor(start, width), _floor(end, width) + width


def _stretches(lo: datetime, hi: datetime, resolution: Resolution) -> list[tuple[str, datetime, datetime]]:
    """``[lo, hi)`` cut into (rollup, start, end): the coarsest rollup for each stretch it covers whole."""
    tiers = [t for t in _TIERS.values() if t[1] >= _TIERS[resolution][1]]  # coarsest first
    out: list[tuple[str, datetime, datetime]] = []
    pending = [(lo, hi)]
    for n, (table, width) in enumerate(tiers):
        finest = n == len(tiers) - 1
        rest = []
        for a, b in pending:
            inner_lo, inner_hi = (
                (a, b) if finest else (_floor(a + width - timedelta(microseconds=1), width), _floor(b, width))
            )
            if inner_lo < inner_hi:
                out.append((table, inner_lo, inner_hi))
                rest += [(a, inner_lo), (inner_hi, b)]
            else:
                rest.append((a, b))
        pending = [(a, b) for a, b in rest if a < b]
    return out


class FleetQueries:
    """Mixed into ``Reader``: the queries above, over its pool (``_fetch``, ``_copy_out``) and its rankings."""

    _rankings: Rankings  # Reader's, made with _ranking_stream

    def _fetch(self, query: str, params: Sequence[Any] | dict[str, Any], binary: bool = False) -> list[Any]:
        raise NotImplementedError  # Reader's

    def _copy_out(self, statement: str) -> bytes:
        raise NotImplementedError  # Reader's

    def _ranking_stream(self, metric_id: int) -> bytes:
        """Every GPU's newest (value, time) of one metric: one binary COPY row of three arrays (key, value, ts)."""
        return self._copy_out(_RANKING.format(metric=int(metric_id)))

    def fleet_latest(
        self,
        metric_id: int,
        order: Literal["asc", "desc"],
        limit: int,
        after: tuple[float, int] | None = None,
        hostname: str | None = None,
        namespace: str | None = None,
    ) -> list[FleetLatestRow]:
        """Each GPU's newest value of one metric, ordered by (value, gpu key), after a cursor, at most ``limit``.

        Across the whole fleet the page is cut from the metric's ranking when the reader keeps them
        (``Rankings``); otherwise, and narrowed to a host or namespace, from ``gpu_latest`` (joined to
        ``gpus`` or the holders to filter). Host, model and holder are then probed by index for the page's
        rows only (LATERAL ... LIMIT 1).
        """
        if hostname is None and namespace is None and self._rankings.enabled:
            try:
                return self._ranked_page(metric_id, order, limit, after)
            except ValueError as exc:  # a stream the ranking cannot read (a time out of range): the query copes
                log.warning("fleet ranking of metric %d unreadable (%s); answering by query", metric_id, exc)
        direction, op = ("ASC", ">") if order == "asc" else ("DESC", "<")
        where = ["TRUE"]
        params: dict[str, Any] = {"metric": metric_id, "limit": limit}
        joins = ""
        if after is not None:
            where.append(f"({_VALUE}, l.gpu_key) {op} (%(after_value)s, %(after_key)s)")
            params.update(after_value=after[0], after_key=after[1])
        if hostname is not None:
            joins += "JOIN gpus hg ON hg.gpu_key = l.gpu_key AND hg.hostname = %(hostname)s "
            params["hostname"] = hostname
        if namespace is not None:
            joins += (
                "JOIN allocations ha ON ha.gpu_key = l.gpu_key AND ha.ended IS NULL "
                "JOIN workloads hw ON hw.workload_id = ha.workload_id AND hw.namespace = %(namespace)s "
            )
            params["namespace"] = namespace
        # GPUs without the metric sort last (NULLS LAST both ways) and are dropped after the cut: a NULL
        # inside the first `limit` rows means every GPU that has a value is already in them.
        rows = self._fetch(
            f"WITH top AS (SELECT l.gpu_key, {_VALUE} AS value FROM gpu_latest l {joins}"
            f"WHERE {' AND '.join(where)} ORDER BY 2 {direction} NULLS LAST, 1 {direction} LIMIT %(limit)s) "
            f"SELECT t.gpu_key, g.uuid, g.hostname, g.gpu_index, g.model, {_SAMPLE_TS}, t.value, {q.HOLDER_COLUMNS} "
            "FROM top t CROSS JOIN LATERAL (SELECT * FROM gpus g WHERE g.gpu_key = t.gpu_key LIMIT 1) g "
            "CROSS JOIN LATERAL (SELECT * FROM gpu_latest l WHERE l.gpu_key = t.gpu_key LIMIT 1) l "
            f"{q.HOLDER} WHERE t.value IS NOT NULL "
            f"ORDER BY t.value {direction}, t.gpu_key {direction}",
            params,
        )
        return [FleetLatestRow(r[0], r[1], r[2], r[3], r[4], r[5], r[6], _holder(r[7:])) for r in rows]

    def _ranked_page(
        self, metric_id: int, order: Literal["asc", "desc"], limit: int, after: tuple[float, int] | None
    ) -> list[FleetLatestRow]:
        ranked = self._rankings.of(metric_id).page(order, limit, after)
        if not ranked:
            return []
        facts = {
            r[0]: r[1:]
            for r in self._fetch(
                f"SELECT g.gpu_key, g.uuid, g.hostname, g.gpu_index, g.model, {q.HOLDER_COLUMNS} "
                "FROM unnest(%(keys)s::int4[]) AS k(gpu_key) "
                f"CROSS JOIN LATERAL (SELECT * FROM gpus g WHERE g.gpu_key = k.gpu_key LIMIT 1) g {q.HOLDER}",
                {"keys": [key for key, _, _ in ranked]},
            )
        }
        return [
            FleetLatestRow(key, f[0], f[1], f[2], f[3], _EPOCH + timedelta(microseconds=us), value, _holder(f[4:]))
            for key, value, us in ranked
            if (f := facts.get(key)) is not None  # a GPU row is never deleted: there always is one
        ]

    def host_gpu_keys(self, hostname: str) -> list[int]:
        """The keys of a host's GPUs (MIG devices included)."""
        return [int(k) for (k,) in self._fetch("SELECT gpu_key FROM gpus WHERE hostname = %s", (hostname,))]

    def allocations(
        self, gpu_key: int, start: datetime, end: datetime, limit: int, after: tuple[datetime, int] | None = None
    ) -> list[AllocationRow]:
        """Intervals of one GPU that overlap ``[start, end]``, ordered by (start, id), after a cursor."""
        where = "a.gpu_key = %(gpu)s AND a.started <= %(end)s AND (a.ended IS NULL OR a.ended > %(start)s)"
        params: dict[str, Any] = {"gpu": gpu_key, "start": start, "end": end, "limit": limit}
        if after is not None:
            where += " AND (a.started, a.allocation_id) > (%(after_ts)s, %(after_id)s)"
            params.update(after_ts=after[0], after_id=after[1])
        rows = self._fetch(
            "SELECT a.allocation_id, w.namespace, w.pod, w.container, w.job, a.started, a.ended "
            f"FROM allocations a JOIN workloads w USING (workload_id) WHERE {where} "
            "ORDER BY a.started, a.allocation_id LIMIT %(limit)s",
            params,
        )
        return [AllocationRow(*r) for r in rows]

    def events(
        self, gpu_key: int, start: datetime, end: datetime, limit: int, after: tuple[datetime, str] | None = None
    ) -> list[EventRow]:
        """Health events of one GPU with ``start <= ts <= end``, ordered by (ts, kind), after a cursor."""
        where = "e.gpu_key = %(gpu)s AND e.ts >= %(start)s AND e.ts <= %(end)s"
        params: dict[str, Any] = {"gpu": gpu_key, "start": start, "end": end, "limit": limit}
        if after is not None:
            where += " AND (e.ts, e.kind) > (%(after_ts)s, %(after_kind)s)"
            params.update(after_ts=after[0], after_kind=after[1])
        rows = self._fetch(
            "SELECT e.ts, e.kind, e.code, x.meaning FROM gpu_events e LEFT JOIN xid_codes x ON x.code = e.code "
            f"AND e.kind = 'xid' WHERE {where} ORDER BY e.ts, e.kind LIMIT %(limit)s",
            params,
        )
        return [EventRow(*r) for r in rows]

    def usage(
        self,
        group_by: GroupBy,
        lo: datetime,
        hi: datetime,
        limit: int,
        after: str | None = None,
        resolution: Resolution = "hour",
        most_used: bool = False,
    ) -> list[UsageRow]:
        """Usage per group over ``[lo, hi)`` (whole units of ``resolution``), ordered by group (none first).

        Each stretch is read from the coarsest rollup that covers it whole (days from ``usage_1d``, the
        hours at the edges from ``usage_1h``, the minutes from ``usage_1m``); a grouping by namespace, job,
        host or model reads the same tiers of the group rollups (``usage_groups_*``, one row per group and
        bucket) instead. ``most_used``: the ``limit`` groups with the most GPU time instead, most first
        (no cursor).
        """
        grouped = group_by in GROUP_DIMS
        parts: list[str] = []
        params: dict[str, Any] = {"after": after, "limit": limit, "dim": group_by}
        for i, (table, a, b) in enumerate(_stretches(lo, hi, resolution)):
            source = (
                table.replace("usage_", "usage_groups_") + " WHERE dim = %(dim)s AND" if grouped else f"{table} WHERE"
            )
            parts.append(f"SELECT * FROM {source} bucket >= %(lo{i})s AND bucket < %(hi{i})s")
            params.update({f"lo{i}": a, f"hi{i}": b})
        if not parts:
            return []
        if grouped:
            return self._usage_of_groups(parts, params, after, most_used)
        group = GROUPS[group_by]
        gpus = "JOIN gpus g ON g.gpu_key = u.gpu_key " if group.startswith("g.") else ""
        having = "" if after is None else f"HAVING coalesce({group}, '') > %(after)s"
        order = f"sum(u.seconds) DESC, coalesce({group}, '')" if most_used else f"coalesce({group}, '')"
        # Summed per (GPU, workload) first: the grouping by name then joins over thousands of rows, not
        # over every minute or hour row of the window (about 2x faster at 25,000 GPUs).
        cells = (
            "SELECT gpu_key, workload_id, sum(seconds) AS seconds, sum(active_s) AS active_s, "
            "sum(mem_idle_s) AS mem_idle_s, sum(util_s) AS util_s, sum(energy_j) AS energy_j "
            f"FROM ({' UNION ALL '.join(parts)}) x GROUP BY 1, 2"
        )
        rows = self._fetch(
            f"SELECT {group} AS grp, {_USAGE_SUMS} FROM ({cells}) u {gpus}"
            "LEFT JOIN workloads w ON w.workload_id = u.workload_id "
            f"GROUP BY 1 {having} ORDER BY {order} LIMIT %(limit)s",
            params,
        )
        return [UsageRow(r[0], *(float(x or 0.0) for x in r[1:])) for r in rows]

    def _usage_of_groups(
        self, parts: list[str], params: dict[str, Any], after: str | None, most_used: bool
    ) -> list[UsageRow]:
        """Usage per namespace, job, host or model: the group rollups' rows of the window, summed per group."""
        having = "" if after is None else "HAVING coalesce(grp, '') > %(after)s"
        order = "sum(seconds) DESC, coalesce(grp, '')" if most_used else "coalesce(grp, '')"
        rows = self._fetch(
            "SELECT grp, sum(seconds), sum(alloc_s), sum(active_s), sum(mem_idle_s), sum(util_s), sum(energy_j) "
            f"FROM ({' UNION ALL '.join(parts)}) u GROUP BY grp {having} ORDER BY {order} LIMIT %(limit)s",
            params,
        )
        return [UsageRow(r[0], *(float(x or 0.0) for x in r[1:])) for r in rows]

    def health(self, threshold_s: float, limit: int, since: datetime) -> Health:
        """GPUs and hosts past the threshold, blank codes and XID events since ``since``: counts and lists."""
        params: dict[str, Any] = {"threshold": timedelta(seconds=threshold_s), "limit": limit, "since": since}
        ((as_of, gpus, missing_count, silent_count, blank_gpus, xids),) = self._fetch(_HEALTH_COUNTS, params)
        missing = self._fetch(
            "SELECT g.uuid, g.hostname, l.ts FROM gpu_latest l JOIN gpus g USING (gpu_key) "
            "WHERE l.ts < now() - %(threshold)s ORDER BY l.ts DESC, g.uuid LIMIT %(limit)s",
            params,
        )
        silent = self._fetch(
            "SELECT g.hostname, count(*)::int, max(l.ts) FROM gpu_latest l JOIN gpus g USING (gpu_key) "
            "WHERE g.hostname IS NOT NULL GROUP BY g.hostname HAVING max(l.ts) < now() - %(threshold)s "
            "ORDER BY max(l.ts) DESC, g.hostname LIMIT %(limit)s",
            params,
        )
        blanks = self._fetch(
            "SELECT r.uuid, r.metric, r.blank, count(*)::int, max(r.ts) FROM rejects r "
            "WHERE r.blank IS NOT NULL AND r.ts >= %(since)s GROUP BY 1, 2, 3 "
            "ORDER BY count(*) DESC, r.uuid, r.metric LIMIT %(limit)s",
            params,
        )
        return Health(
            as_of,
            threshold_s,
            gpus,
            missing_count,
            tuple(MissingGpu(*r) for r in missing),
            silent_count,
            tuple(SilentHost(*r) for r in silent),
            blank_gpus,
            tuple(BlankRow(*r) for r in blanks),
            xids,
        )

    def missing_counts(self, threshold_s: float) -> tuple[int, int]:
        """(GPUs missing, hosts silent) for the threshold: what /metrics exports."""
        params = {"threshold": timedelta(seconds=threshold_s), "since": datetime.now().astimezone(), "limit": 0}
        ((_, _, missing, silent, _, _),) = self._fetch(_HEALTH_COUNTS, params)
        return int(missing), int(silent)


_HEALTH_COUNTS = """
SELECT now(),
       (SELECT count(*) FROM gpu_latest)::int,
       (SELECT count(*) FROM gpu_latest WHERE ts < now() - %(threshold)s)::int,
       (SELECT count(*) FROM (SELECT 1 FROM gpu_latest l JOIN gpus g USING (gpu_key) WHERE g.hostname IS NOT NULL
                               GROUP BY g.hostname HAVING max(l.ts) < now() - %(threshold)s) h)::int,
       (SELECT count(DISTINCT uuid) FROM rejects WHERE blank IS NOT NULL AND ts >= %(since)s)::int,
       (SELECT count(*) FROM gpu_events WHERE kind = 'xid' AND ts >= %(since)s)::int
"""


def _holder(fields: Sequence[Any]) -> Holder | None:
    namespace, pod, container, job, since = fields
    return None if since is None else Holder(namespace, pod, container, job, since)
