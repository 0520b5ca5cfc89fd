"""Queries the gateway answers: GPUs, hosts, metrics, and samples of one GPU over a time range.

Every list is bounded: callers pass a limit and a keyset cursor (the last row's sort key), never an
offset, so paging stays cheap and complete while new samples arrive.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool, PoolTimeout

from pipeline.errors import DatabaseUnavailable, StorageError

__all__ = ["GpuRow", "Reader", "SampleRow"]

log = logging.getLogger(__name__)

Order = Literal["asc", "desc"]


@dataclass(frozen=True, slots=True)
class GpuRow:
    """One GPU, as the gateway lists it."""

    gpu_key: int
    uuid: str
    hostname: str | None
    gpu_index: int | None
    device: str | None
    model: str | None
    first_seen: datetime
    last_seen: datetime


@dataclass(frozen=True, slots=True)
class SampleRow:
    """One sample of one GPU."""

    ts: datetime
    metric_id: int
    metric: str
    value: float


_GPU_COLUMNS = "gpu_key, uuid, hostname, gpu_index, device, model, first_seen, last_seen"


class Reader:
    """Read-only queries over a connection pool."""

    def __init__(
        self,
        conninfo: str,
        min_size: int = 1,
        max_size: int = 8,
        timeout_s: float = 5.0,
        statement_timeout_ms: int = 10_000,
    ) -> None:
        self._conninfo = conninfo
        self._timeout = timeout_s
        self._pool = ConnectionPool(
            conninfo,
            min_size=min_size,
            max_size=max_size,
            open=False,
            timeout=timeout_s,
            kwargs={"autocommit": True, "options": f"-c statement_timeout={statement_timeout_ms}"},
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

    def _fetch(self, query: str, params: Sequence[Any] | dict[str, Any], row_factory: Any = None) -> list[Any]:
        try:
            with self._pool.connection() as conn:
                cur = conn.cursor(row_factory=row_factory) if row_factory else conn.cursor()
                return cur.execute(query, params).fetchall()  # type: ignore[arg-type]
        except PoolTimeout:
            raise DatabaseUnavailable("database unreachable: connection pool exhausted or down") from None
        except psycopg.OperationalError as exc:
            raise DatabaseUnavailable(f"database unreachable: {str(exc).strip()}") from None
        except psycopg.errors.QueryCanceled:
            raise StorageError("query exceeded the statement timeout") from None

    def ping(self) -> None:
        """Raise ``DatabaseUnavailable`` unless the database answers."""
        self._fetch("SELECT 1", ())

    def gpu(self, uuid: str) -> GpuRow | None:
        """One GPU by UUID."""
        rows = self._fetch(f"SELECT {_GPU_COLUMNS} FROM gpus WHERE uuid = %s", (uuid,))
        return GpuRow(*rows[0]) if rows else None

    def gpus(
        self,
        limit: int,
        after: tuple[str, int, str] | None = None,
        hostname: str | None = None,
        model: str | None = None,
    ) -> list[GpuRow]:
        """GPUs ordered by (hostname, gpu index, uuid), after a cursor, at most ``limit``."""
        where = ["TRUE"]
        params: dict[str, Any] = {"limit": limit}
        if after is not None:
            where.append("(coalesce(hostname, ''), coalesce(gpu_index, -1), uuid) > (%(h)s, %(i)s, %(u)s)")
            params.update(h=after[0], i=after[1], u=after[2])
        if hostname is not None:
            where.append("hostname = %(hostname)s")
            params["hostname"] = hostname
        if model is not None:
            where.append("model = %(model)s")
            params["model"] = model
        rows = self._fetch(
            f"SELECT {_GPU_COLUMNS} FROM gpus WHERE {' AND '.join(where)} "
            "ORDER BY coalesce(hostname, ''), coalesce(gpu_index, -1), uuid LIMIT %(limit)s",
            params,
        )
        return [GpuRow(*r) for r in rows]

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
        op, direction = (">", "ASC") if order == "asc" else ("<", "DESC")
        where = ["t.gpu_key = %(gpu)s", "t.ts >= %(start)s", "t.ts <= %(end)s"]
        params: dict[str, Any] = {"gpu": gpu_key, "start": start, "end": end, "limit": limit}
        if metric_ids is not None:
            where.append("t.metric_id = ANY(%(metrics)s)")
            params["metrics"] = list(metric_ids)
        if after is not None:
            where.append(f"(t.ts, t.metric_id) {op} (%(after_ts)s, %(after_metric)s)")
            params.update(after_ts=after[0], after_metric=after[1])
        rows = self._fetch(
            f"SELECT t.ts, t.metric_id, m.name, t.value FROM telemetry t JOIN metrics m USING (metric_id) "
            f"WHERE {' AND '.join(where)} ORDER BY t.ts {direction}, t.metric_id {direction} LIMIT %(limit)s",
            params,
        )
        return [SampleRow(*r) for r in rows]

    def metrics(self) -> list[dict[str, Any]]:
        """The metric catalogue."""
        return self._fetch("SELECT metric_id, name, unit, help FROM metrics ORDER BY name", (), dict_row)
