"""The SQL text of the gateway's queries (``Reader``): column lists, per-GPU probes, aggregate expressions.

Kept apart from ``reader.py`` so the reader reads as what it asks, not how; every fragment is a
constant (identifiers never come from a request).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal

GPU_COLUMNS = "g.gpu_key, g.uuid, g.hostname, g.gpu_index, g.device, g.model, g.first_seen, g.last_seen"
# With the attribution tables (sql/023): the GPU's facts, its current holder, its newest sample.
FACT_COLUMNS = "g.driver_version, g.instance, g.parent_uuid, g.mig_instance, g.mig_profile"
NO_FACTS = "NULL::text, NULL::text, NULL::text, NULL::smallint, NULL::text"
# The look-ups of a page of GPUs are LATERAL ... LIMIT 1, which the planner cannot flatten into joins: an
# index probe per GPU of the page. As plain joins it hashed all of gpu_latest, allocations and workloads
# for every page (29 ms for 1,000 of 25,000 GPUs, against ~10 ms probing).
HOLDER = (
    "LEFT JOIN LATERAL (SELECT w.namespace, w.pod, w.container, w.job, a.started FROM allocations a "
    "JOIN workloads w ON w.workload_id = a.workload_id WHERE a.gpu_key = g.gpu_key AND a.ended IS NULL LIMIT 1) h "
    "ON TRUE"
)
HOLDER_COLUMNS = "h.namespace, h.pod, h.container, h.job, h.started"
NO_HOLDER = "NULL::text, NULL::text, NULL::text, NULL::text, NULL::timestamptz"
NEWEST_SEEN = "greatest(g.last_seen, (SELECT l.ts FROM gpu_latest l WHERE l.gpu_key = g.gpu_key))"
# One GPU row with its gpu_latest row joined once: the newest sample, and the ids of the metrics reported
# within the window of it (names are mapped by the reader from its catalogue).
LATEST_JOIN = "LEFT JOIN LATERAL (SELECT * FROM gpu_latest l WHERE l.gpu_key = g.gpu_key LIMIT 1) l ON TRUE"
# Usually every metric is that recent: then the ids are the row's own (a scalar-array test, ~0.5 us a GPU, where
# unnesting and aggregating cost ~5 us: 5 of the 12 ms of a 1,000-GPU page's SQL).
RECENT_IDS = (
    "CASE WHEN l.ts - %(window)s <= ALL (l.sample_ts) THEN l.metric_ids ELSE ("
    "SELECT coalesce(array_agg(u.metric_id), '{}') FROM unnest(l.metric_ids, l.sample_ts) AS u(metric_id, ts) "
    "WHERE u.ts >= l.ts - %(window)s) END"
)
HELD_BY = (
    "EXISTS (SELECT 1 FROM allocations ha JOIN workloads hw USING (workload_id) WHERE ha.gpu_key = g.gpu_key "
    "AND ha.ended IS NULL AND ({conditions}))"
)
GPU_ORDER = "coalesce(g.hostname, ''), coalesce(g.gpu_index, -1), g.uuid"
# Per GPU g: its newest sample time (one backward index probe), then the metrics it reported recently.
NEWEST = "SELECT max(x.ts) AS newest FROM telemetry x WHERE x.gpu_key = g.gpu_key"
RECENT = "t.gpu_key = g.gpu_key AND t.metric_id = {m} AND t.ts >= ({newest}) - %(window)s"
NAMES_FALLBACK = (
    "SELECT coalesce(array_agg(m.name ORDER BY m.name), '{}') FROM metrics m "
    "WHERE EXISTS (SELECT 1 FROM telemetry t WHERE " + RECENT.format(m="m.metric_id", newest="n.newest") + ")"
)
NAMES_TABLE = (
    "SELECT coalesce(array_agg(m.name ORDER BY m.name), '{}') FROM gpu_latest l "
    "CROSS JOIN LATERAL unnest(l.metric_ids, l.sample_ts) AS u(metric_id, ts) JOIN metrics m USING (metric_id) "
    "WHERE l.gpu_key = g.gpu_key AND u.ts >= l.ts - %(window)s"
)
HAS_METRIC_FALLBACK = "EXISTS (SELECT 1 FROM telemetry t WHERE " + RECENT.format(m="%(metric)s", newest=NEWEST) + ")"
HAS_METRIC_TABLE = (
    "EXISTS (SELECT 1 FROM gpu_latest l CROSS JOIN LATERAL unnest(l.metric_ids, l.sample_ts) AS u(metric_id, ts) "
    "WHERE l.gpu_key = g.gpu_key AND u.metric_id = %(metric)s AND u.ts >= l.ts - %(window)s)"
)
LATEST_FALLBACK = (
    "WITH n AS (SELECT max(ts) AS newest FROM telemetry WHERE gpu_key = %(gpu)s) "
    "SELECT m.name, m.unit, l.ts, l.value FROM metrics m, n CROSS JOIN LATERAL ("
    "SELECT t.ts, t.value FROM telemetry t WHERE t.gpu_key = %(gpu)s AND t.metric_id = m.metric_id "
    "AND t.ts >= n.newest - %(window)s ORDER BY t.ts DESC LIMIT 1) l ORDER BY m.name"
)
LATEST_TABLE = (
    "SELECT m.name, m.unit, u.ts, u.value FROM gpu_latest l "
    "CROSS JOIN LATERAL unnest(l.metric_ids, l.sample_ts, l.vals) AS u(metric_id, ts, value) "
    "JOIN metrics m USING (metric_id) WHERE l.gpu_key = %(gpu)s AND u.ts >= l.ts - %(window)s ORDER BY m.name"
)
AGG_RAW: dict[str, str] = {
    "avg": "avg(t.value)",
    "min": "min(t.value)",
    "max": "max(t.value)",
    "count": "count(*)::float8",
    "last": "(array_agg(t.value ORDER BY t.ts DESC))[1]",
    "p95": "percentile_cont(0.95) WITHIN GROUP (ORDER BY t.value)",
}
# Re-aggregating a rollup view (columns bucket, gpu_key, metric_id, avg, min, max, count, last); p95 cannot be.
AGG_ROLLUP: dict[str, str] = {
    "avg": "sum(t.avg * t.count) / nullif(sum(t.count), 0)",
    "min": "min(t.min)",
    "max": "max(t.max)",
    "count": "sum(t.count)::float8",
    "last": "(array_agg(t.last ORDER BY t.bucket DESC))[1]",
}


def samples_where(
    gpu_key: int,
    start: datetime,
    end: datetime,
    metric_ids: Sequence[int] | None,
    order: Literal["asc", "desc"],
    after: tuple[datetime, int] | None,
) -> tuple[str, dict[str, Any], str]:
    """The WHERE clause, parameters and direction of one GPU's samples in a window, after a cursor."""
    op, direction = (">", "ASC") if order == "asc" else ("<", "DESC")
    where = ["t.gpu_key = %(gpu)s", "t.ts >= %(start)s", "t.ts <= %(end)s"]
    params: dict[str, Any] = {"gpu": gpu_key, "start": start, "end": end}
    if metric_ids is not None:
        where.append("t.metric_id = ANY(%(metrics)s)")
        params["metrics"] = list(metric_ids)
    if after is not None:
        where.append(f"(t.ts, t.metric_id) {op} (%(after_ts)s, %(after_metric)s)")
        params.update(after_ts=after[0], after_metric=after[1])
    return " AND ".join(where), params, direction
