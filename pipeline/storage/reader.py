"""Queries the gateway answers: GPUs, hosts, metrics, and samples of one GPU over a time range.

Every query is bounded: lists take a limit and a keyset cursor (the last row's sort key), never an
offset, so paging stays cheap and complete while new samples arrive; per-GPU look-ups walk the
``(gpu_key, ts, metric_id)`` index inside a recent window; exports and aggregates are capped by the
caller and by the statement timeout.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime, timedelta
from typing import Any, Literal, TypeVar

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from pipeline.errors import DatabaseUnavailable, InvalidParameter, StorageError
from pipeline.records import TIME_GRID_ORIGIN
from pipeline.storage import _reader_sql as q
from pipeline.storage.fleet import FleetQueries
from pipeline.storage.ranking import Rankings
from pipeline.storage.rows import (
    AggregateRow,
    Features,
    GpuRow,
    Holder,
    HostRow,
    LatestRow,
    MetricRow,
    SamplePage,
    SampleRow,
)

__all__ = [
    "AGGREGATE_ORIGIN",
    "METRIC_WINDOW",
    "AggregateRow",
    "Features",
    "GpuRow",
    "Holder",
    "HostRow",
    "LatestRow",
    "MetricRow",
    "Reader",
    "SamplePage",
    "SampleRow",
]

log = logging.getLogger(__name__)
T = TypeVar("T")

Order = Literal["asc", "desc"]
AggFn = Literal["avg", "min", "max", "count", "last", "p95"]

# Without a gpu_metrics table, "the metrics of a GPU" are those with a sample within this window of
# the GPU's newest sample: a bounded walk of the (gpu_key, ts, metric_id) index per GPU.
METRIC_WINDOW = timedelta(minutes=15)
# Bucket boundaries are multiples of the bucket since this instant (TimescaleDB's time_bucket default),
# so date_bin and time_bucket agree and minute/hour rollups line up with any multiple of them.
AGGREGATE_ORIGIN = TIME_GRID_ORIGIN  # buckets of aggregates start on the one time grid
_ROLLUPS = (("telemetry_1h", timedelta(hours=1)), ("telemetry_1m", timedelta(minutes=1)))
_KEY_CACHE_MAX = 100_000


class Reader(FleetQueries):
    """Read-only queries over a connection pool."""

    def __init__(
        self,
        conninfo: str,
        min_size: int = 1,
        max_size: int = 8,
        timeout_s: float = 5.0,
        statement_timeout_ms: int = 10_000,
        ranking_ttl_s: float = 0.0,
    ) -> None:
        """``ranking_ttl_s``: how long a metric's fleet-wide ranking serves ``fleet_latest`` pages (0: each page)."""
        self._conninfo = conninfo
        self._timeout = timeout_s
        self._features: Features | None = None
        self._keys: dict[str, int] = {}
        self._names: dict[int, str] = {}
        self._rankings = Rankings(self._ranking_stream, ranking_ttl_s)
        self._pool = ConnectionPool(
            conninfo,
            min_size=min_size,
            max_size=max_size,
            open=False,
            timeout=timeout_s,
            kwargs={
                "autocommit": True,
                "options": f"-c statement_timeout={statement_timeout_ms} -c TimeZone=UTC",
            },
            name="gateway",
        )

    def open(self, wait: bool = False) -> None:
        """Open the pool (``wait``: fail now if the database is unreachable)."""
        try:
            self._pool.open(wait=wait, timeout=self._timeout)
        except PoolTimeout:
            raise DatabaseUnavailable(f"database unreachable: no connection within {self._timeout:.0f}s") from None

    def close(self) -> None:
        """Close the pool."""
        self._pool.close()

    def pool_stats(self) -> dict[str, int]:
        """Pool size, available and waiting connections."""
        s = self._pool.get_stats()
        return {
            "size": s.get("pool_size", 0),
            "available": s.get("pool_available", 0),
            "waiting": s.get("requests_waiting", 0),
        }

    def _fetch(self, query: str, params: Sequence[Any] | dict[str, Any], binary: bool = False) -> list[Any]:
        return self._on_connection(lambda conn: conn.cursor(binary=binary).execute(query, params).fetchall())  # type: ignore[arg-type]

    def _copy_out(self, statement: str) -> bytes:
        """The whole output of a ``COPY ... TO STDOUT`` statement (built from constants only)."""

        def copy(conn: psycopg.Connection[Any]) -> bytes:
            with conn.cursor().copy(statement) as out:  # type: ignore[arg-type]
                return b"".join(bytes(chunk) for chunk in out)

        return self._on_connection(copy)

    def _on_connection(self, work: Callable[[psycopg.Connection[Any]], T]) -> T:
        # A pooled connection that died while idle (a database restart) fails at once; the pool drops it
        # and the work runs again on the next one. Cheaper than checking every connection on checkout
        # (a round trip per request), and no request fails on a dead connection.
        attempts = self._pool.max_size + 1  # every pooled connection may have died with the server
        for attempt in range(1, attempts + 1):
            used: list[psycopg.Connection[Any]] = []
            try:
                with self._pool.connection() as conn:
                    used.append(conn)
                    return work(conn)
            except psycopg.OperationalError as exc:
                if attempt < attempts and used and used[0].broken:
                    log.info("a pooled connection was dead (%s); retrying on a fresh one", str(exc).strip())
                    continue
                raise _translate(exc) from None
            except Exception as exc:
                raise _translate(exc) from None
        raise AssertionError("unreachable")

    def _metric_names(self, ids: Iterable[int]) -> dict[int, str]:
        """Metric names by id, remembered (the catalogue only grows; an unknown id reloads it)."""
        if any(i not in self._names for i in ids):
            self._names = {int(i): n for i, n in self._fetch("SELECT metric_id, name FROM metrics", ())}
        return self._names

    def ping(self) -> None:
        """Raise ``DatabaseUnavailable`` unless the database answers."""
        self._fetch("SELECT 1", ())

    def features(self) -> Features:
        """TimescaleDB, the gpu_metrics table and rollup views, detected on first use."""
        if self._features is None:
            ((tsdb, gpu_metrics, *views),) = self._fetch(
                "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'), "
                "to_regclass('gpu_metrics') IS NOT NULL, "
                + ", ".join(f"to_regclass('{name}') IS NOT NULL" for name, _ in _ROLLUPS),
                (),
            )
            rollups = tuple(r for r, present in zip(_ROLLUPS, views, strict=True) if present)
            self._features = Features(bool(tsdb), bool(gpu_metrics), rollups)
        return self._features

    def gpu(self, uuid: str) -> GpuRow | None:
        """One GPU by UUID, with the metrics it reports, its facts and who holds it."""
        rows = self._fetch(
            f"SELECT {self._gpu_select()} FROM gpus g {self._gpu_joins()} WHERE g.uuid = %(uuid)s",
            {"uuid": uuid, "window": METRIC_WINDOW},
        )
        return self._gpu_rows(rows)[0] if rows else None

    def _gpu_select(self) -> str:
        """The columns of a GPU row: facts, holder and the newest sample where the attribution tables exist."""
        if self.features().gpu_metrics:
            seen = "greatest(g.last_seen, l.ts)"
            return f"{q.GPU_COLUMNS.replace('g.last_seen', seen)}, {q.RECENT_IDS}, {q.FACT_COLUMNS}, {q.HOLDER_COLUMNS}"
        return f"{q.GPU_COLUMNS}, ({q.NAMES_FALLBACK}), {q.NO_FACTS}, {q.NO_HOLDER}"

    def _gpu_joins(self) -> str:
        if self.features().gpu_metrics:
            return f"{q.LATEST_JOIN} {q.HOLDER}"
        return f"LEFT JOIN LATERAL ({q.NEWEST}) n ON TRUE"

    def _gpu_rows(self, rows: Sequence[Sequence[Any]]) -> list[GpuRow]:
        """Rows as ``GpuRow``; metric ids (the latest-value table's) named from the catalogue."""
        lists = {tuple(r[8] or ()) for r in rows}  # a fleet's GPUs mostly report the same metrics
        ids = {i for ids in lists for i in ids if isinstance(i, int)}
        names = self._metric_names(ids) if ids else {}
        named = {k: tuple(sorted(names[i] if isinstance(i, int) else i for i in k)) for k in lists}
        return [_gpu_row([*r[:8], named[tuple(r[8] or ())], *r[9:]]) for r in rows]

    def gpu_key(self, uuid: str) -> int | None:
        """The key of a GPU by UUID (remembered: a GPU's key never changes)."""
        key = self._keys.get(uuid)
        if key is None:
            rows = self._fetch("SELECT gpu_key FROM gpus WHERE uuid = %s", (uuid,))
            if not rows:
                return None
            if len(self._keys) >= _KEY_CACHE_MAX:
                self._keys.clear()
            key = self._keys[uuid] = int(rows[0][0])
        return key

    def gpus(
        self,
        limit: int,
        after: tuple[str, int, str] | None = None,
        hostname: str | None = None,
        model: str | None = None,
        metric_id: int | None = None,
        held_by: dict[str, str] | None = None,
        parent_uuid: str | None = None,
    ) -> list[GpuRow]:
        """GPUs ordered by (hostname, gpu index, uuid) after a cursor, at most ``limit``, with their metrics.

        ``held_by`` keeps GPUs whose current holder matches every given field (namespace, pod); ``parent_uuid``
        the MIG devices of one GPU.
        """
        table = self.features().gpu_metrics
        where = ["TRUE"]
        params: dict[str, Any] = {"limit": limit, "window": METRIC_WINDOW}
        if after is not None:
            where.append(f"({q.GPU_ORDER}) > (%(h)s, %(i)s, %(u)s)")
            params.update(h=after[0], i=after[1], u=after[2])
        for column, value in (("hostname", hostname), ("model", model), ("parent_uuid", parent_uuid)):
            if value is not None:
                where.append(f"g.{column} = %({column})s")
                params[column] = value
        if metric_id is not None:
            where.append(q.HAS_METRIC_TABLE if table else q.HAS_METRIC_FALLBACK)
            params["metric"] = metric_id
        if held_by:
            if not table:
                return []  # no attribution tables: nobody is known to hold anything
            where.append(q.HELD_BY.format(conditions=" AND ".join(f"hw.{f} = %(held_{f})s" for f in sorted(held_by))))
            params.update({f"held_{f}": v for f, v in held_by.items()})
        # The page is cut first, so the per-GPU look-ups run for at most `limit` GPUs.
        rows = self._fetch(
            f"WITH page AS (SELECT * FROM gpus g WHERE {' AND '.join(where)} ORDER BY {q.GPU_ORDER} LIMIT %(limit)s) "
            f"SELECT {self._gpu_select()} FROM page g {self._gpu_joins()} ORDER BY {q.GPU_ORDER}",
            params,
        )
        return self._gpu_rows(rows)

    def latest(self, gpu_key: int) -> list[LatestRow]:
        """The newest sample of each metric of a GPU (metrics reported within the recent window)."""
        query = q.LATEST_TABLE if self.features().gpu_metrics else q.LATEST_FALLBACK
        rows = self._fetch(query, {"gpu": gpu_key, "window": METRIC_WINDOW})
        return [LatestRow(*r) for r in rows]

    def hosts(self, limit: int, after: str | None = None) -> list[HostRow]:
        """Hosts ordered by name after a cursor, at most ``limit``, with their GPU counts and models."""
        where, params = "TRUE", {"limit": limit, "after": after}
        if after is not None:
            where = "coalesce(g.hostname, '') > %(after)s"
        rows = self._fetch(
            "SELECT g.hostname, count(*)::int, "
            "coalesce(array_agg(DISTINCT g.model) FILTER (WHERE g.model IS NOT NULL), '{}'), "
            f"min(g.first_seen), max({q.NEWEST_SEEN if self.features().gpu_metrics else 'g.last_seen'}) "
            f"FROM gpus g WHERE {where} "
            "GROUP BY g.hostname ORDER BY coalesce(g.hostname, '') LIMIT %(limit)s",
            params,
        )
        return [HostRow(h, n, tuple(m), f, last) for h, n, m, f, last in rows]

    def metrics(self, limit: int = 10_000, after: str | None = None) -> list[MetricRow]:
        """The metric catalogue ordered by name after a cursor, at most ``limit``."""
        rows = self._fetch(
            "SELECT metric_id, name, unit, help FROM metrics WHERE %(after)s::text IS NULL OR name > %(after)s "
            "ORDER BY name LIMIT %(limit)s",
            {"after": after, "limit": limit},
        )
        return [MetricRow(*r) for r in rows]

    def metric_ids(self, names: Sequence[str]) -> dict[str, int]:
        """Metric ids by name (unknown names are absent)."""
        rows = self._fetch("SELECT name, metric_id FROM metrics WHERE name = ANY(%s)", (list(names),))
        return {n: int(i) for n, i in rows}

    def telemetry(
        self,
        gpu_key: int,
        start: datetime,
        end: datetime,
        limit: int,
        metric_ids: Sequence[int] | None = None,
        order: Order = "asc",
        after: tuple[datetime, int] | None = None,
    ) -> list[SampleRow]:
        """Samples of one GPU with ``start <= ts <= end``, ordered by (ts, metric), after a cursor."""
        rows = self._samples(gpu_key, start, end, limit, metric_ids, order, after)
        names = self._metric_names({r[1] for r in rows})
        return [SampleRow(ts, mid, names[mid], value) for ts, mid, value in rows]

    def _samples(
        self,
        gpu_key: int,
        start: datetime,
        end: datetime,
        limit: int,
        metric_ids: Sequence[int] | None,
        order: Order,
        after: tuple[datetime, int] | None,
    ) -> list[tuple[datetime, int, float]]:
        where, params, direction = q.samples_where(gpu_key, start, end, metric_ids, order, after)
        # Binary rows and names mapped by the caller rather than joined: half the client-side cost per row.
        return self._fetch(
            f"SELECT t.ts, t.metric_id, t.value FROM telemetry t "
            f"WHERE {where} ORDER BY t.ts {direction}, t.metric_id {direction} LIMIT %(limit)s",
            {**params, "limit": limit},
            binary=True,
        )

    def count_telemetry(
        self,
        gpu_key: int,
        start: datetime,
        end: datetime,
        at_most: int,
        metric_ids: Sequence[int] | None = None,
        order: Order = "asc",
        after: tuple[datetime, int] | None = None,
    ) -> int:
        """How many samples ``telemetry`` would walk, counting no further than ``at_most``."""
        where, params, _ = q.samples_where(gpu_key, start, end, metric_ids, order, after)
        rows = self._fetch(
            f"SELECT count(*) FROM (SELECT 1 FROM telemetry t WHERE {where} LIMIT %(limit)s) x",
            {**params, "limit": at_most},
        )
        return int(rows[0][0])

    def telemetry_page(
        self,
        gpu_key: int,
        start: datetime,
        end: datetime,
        limit: int,
        metric_ids: Sequence[int] | None = None,
        order: Order = "asc",
        after: tuple[datetime, int] | None = None,
    ) -> SamplePage:
        """A page of ``telemetry`` as fetched, and whether more follow; the page never splits one (ts, metric).

        Samples may share (ts, metric) (nothing forbids it), and a keyset cursor cannot point between
        them: when the page would end inside such a group, the whole group is in this page (which may
        then hold a few more than ``limit`` samples).
        """
        rows = self._samples(gpu_key, start, end, limit + 1, metric_ids, order, after)
        if len(rows) <= limit:
            return SamplePage(rows, self._metric_names({r[1] for r in rows}), False)
        last = (rows[limit - 1][0], rows[limit - 1][1])
        if (rows[limit][0], rows[limit][1]) != last:
            del rows[limit:]
            return SamplePage(rows, self._metric_names({r[1] for r in rows}), True)
        page = [r for r in rows[:limit] if (r[0], r[1]) != last]
        page += self._fetch(
            "SELECT t.ts, t.metric_id, t.value FROM telemetry t WHERE t.gpu_key = %(gpu)s AND t.ts = %(ts)s "
            "AND t.metric_id = %(metric)s",
            {"gpu": gpu_key, "ts": last[0], "metric": last[1]},
            binary=True,
        )
        more = bool(self._samples(gpu_key, start, end, 1, metric_ids, order, last))
        return SamplePage(page, self._metric_names({r[1] for r in page}), more)

    def stream_telemetry(
        self,
        gpu_key: int,
        start: datetime,
        end: datetime,
        max_rows: int,
        metric_ids: Sequence[int] | None = None,
        order: Order = "asc",
        after: tuple[datetime, int] | None = None,
        chunk_rows: int = 10_000,
    ) -> Iterator[list[tuple[datetime, str, float]]]:
        """The ``telemetry`` query in keyset chunks of (ts, metric, value); fails past ``max_rows`` samples.

        Each chunk is its own short query: between chunks no connection, transaction or lock is held,
        so a client that reads slowly (or not at all) costs the database nothing. Samples that arrive
        while the export runs may join it; if they push it past ``max_rows`` the iterator raises
        ``InvalidParameter`` rather than end early, so a cut-off export never looks complete.
        """
        sent = 0
        more = True
        while more:
            rows, names, more = self.telemetry_page(gpu_key, start, end, chunk_rows, metric_ids, order, after)
            if not rows:
                return
            sent += len(rows)
            if sent > max_rows:
                raise InvalidParameter(f"the export grew past {max_rows} samples while it ran", param="end_time")
            after = (rows[-1][0], rows[-1][1])
            yield [(ts, names[mid], value) for ts, mid, value in rows]

    def aggregate(
        self,
        gpu_key: int | Sequence[int],
        lo: datetime,
        hi: datetime,
        bucket: timedelta,
        fn: AggFn,
        metric_ids: Sequence[int] | None = None,
    ) -> tuple[str, list[AggregateRow]]:
        """``fn`` of each metric per bucket over ``lo <= ts < hi`` (both aligned to ``bucket``), and its source.

        ``gpu_key`` is one GPU, or several (a host's): then each bucket aggregates all their samples.

        The source is a rollup view (telemetry_1h, telemetry_1m) when one exists, ``bucket`` is a
        multiple of it and ``fn`` can be re-aggregated; the raw table otherwise.
        """
        features = self.features()
        source, column, expr = "telemetry", "ts", q.AGG_RAW[fn]
        for view, width in features.rollups:
            if fn in q.AGG_ROLLUP and bucket % width == timedelta(0):
                source, column, expr = view, "bucket", q.AGG_ROLLUP[fn]
                break
        binning = "time_bucket" if features.timescaledb else "date_bin"
        params: dict[str, Any] = {"gpu": gpu_key, "lo": lo, "hi": hi, "bucket": bucket, "origin": AGGREGATE_ORIGIN}
        gpus = "t.gpu_key = %(gpu)s"
        if not isinstance(gpu_key, int):
            gpus, params["gpu"] = "t.gpu_key = ANY(%(gpu)s)", list(gpu_key)
        where = f"{gpus} AND t.{column} >= %(lo)s AND t.{column} < %(hi)s"
        if metric_ids is not None:
            where += " AND t.metric_id = ANY(%(metrics)s)"
            params["metrics"] = list(metric_ids)
        rows = self._fetch(
            f"SELECT b.ts, b.metric_id, m.name, b.value FROM ("
            f"SELECT {binning}(%(bucket)s, t.{column}, %(origin)s) AS ts, t.metric_id, {expr} AS value "
            f"FROM {source} t WHERE {where} GROUP BY 1, 2) b JOIN metrics m USING (metric_id) "
            "ORDER BY b.ts, b.metric_id",
            params,
        )
        return ("raw" if source == "telemetry" else source), [AggregateRow(*r) for r in rows]


def _gpu_row(row: Sequence[Any]) -> GpuRow:
    key, uuid, hostname, index, device, model, first, last, names, *facts = row
    driver, instance, parent, mig, profile, namespace, pod, container, job, since = facts
    holder = None if since is None else Holder(namespace, pod, container, job, since)
    # positional: GpuRow's field order (a thousand rows a page; keywords cost more than the rest)
    return GpuRow(
        key, uuid, hostname, index, device, model, first, last, names, driver, instance, parent, mig, profile, holder
    )


def _translate(exc: Exception) -> Exception:
    """Map psycopg and pool failures onto the pipeline's errors.

    The database's own text goes to the log only: it can name hosts, roles, tables and values, and the
    messages here end up in HTTP responses.
    """
    if isinstance(exc, PoolTimeout):
        return DatabaseUnavailable("database unreachable: connection pool exhausted or down")
    if isinstance(exc, psycopg.OperationalError) and not isinstance(exc, psycopg.errors.QueryCanceled):
        log.warning("database unreachable: %s", str(exc).strip())
        return DatabaseUnavailable("database unreachable")
    if isinstance(exc, psycopg.errors.QueryCanceled):
        return StorageError("query exceeded the statement timeout: narrow the time window")
    if isinstance(exc, psycopg.DataError):
        log.info("query refused a parameter: %s", str(exc).strip())
        return InvalidParameter("a parameter value is out of range for the database")
    if isinstance(exc, psycopg.Error):
        log.error("query failed: %s", str(exc).strip())
        return StorageError("query failed")
    return exc
