"""Native range partitions of ``telemetry`` on plain PostgreSQL: created ahead, dropped by retention.

``PartitionManager.ensure`` is called at pipeline start and then periodically (every few minutes is
plenty: partitions exist ``ahead`` intervals in advance). It guarantees, for the instant ``now``:

* partitions cover ``[now - 1 interval, now + ahead intervals)`` on a grid of ``interval`` since
  ``ORIGIN`` (a missing slot is filled only where no partition already covers it, so a changed
  interval or the migrated ``telemetry_legacy`` partition never causes an overlap);
* rows that landed in the DEFAULT partition are moved into partitions created for them (rows in slots
  wholly older than the retention are deleted instead);
* partitions wholly older than ``now - retention`` are detached and dropped.

Each step is its own short transaction under ``lock_timeout``: a step that cannot get its lock (a long
query on the table) is skipped, reported, and retried by the next call, rather than queueing writers
behind it. Concurrent managers serialize on an advisory lock, so ``ensure`` is idempotent and safe to
run from every process. On TimescaleDB it does nothing: chunks and retention are TimescaleDB's.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg import errors, sql

from pipeline.config import StorageSettings
from pipeline.errors import ConfigError, DatabaseUnavailable, StorageError
from pipeline.records import TIME_GRID_ORIGIN
from pipeline.storage.database import connect

__all__ = ["ORIGIN", "PartitionInfo", "PartitionManager", "PartitionReport"]

log = logging.getLogger(__name__)

ORIGIN = TIME_GRID_ORIGIN  # partitions start on the same grid as aggregate buckets
# Distinct from the migration lock (pipeline.storage.migrate.LOCK_KEY).
LOCK_KEY = 0x6770_7574_7061  # "gputpa"
TABLE = "telemetry"
TIMESCALEDB_NOTE = "timescaledb manages chunks"

_PARTITIONS = """
SELECT c.relname,
       (regexp_match(pg_get_expr(c.relpartbound, c.oid), 'FROM \\(''([^'']+)''\\)'))[1]::timestamptz,
       (regexp_match(pg_get_expr(c.relpartbound, c.oid), 'TO \\(''([^'']+)''\\)'))[1]::timestamptz,
       pg_get_expr(c.relpartbound, c.oid) = 'DEFAULT'
  FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
 WHERE i.inhparent = to_regclass(%s)
 ORDER BY 2 NULLS FIRST
"""


@dataclass(frozen=True, slots=True)
class PartitionInfo:
    """One partition of ``telemetry``; ``lo``/``hi`` are ``None`` for MINVALUE/MAXVALUE or the default."""

    name: str
    lo: datetime | None
    hi: datetime | None
    default: bool = False


@dataclass(frozen=True, slots=True)
class PartitionReport:
    """What one ``ensure`` call did."""

    created: tuple[str, ...] = ()
    dropped: tuple[str, ...] = ()
    moved_rows: int = 0
    expired_rows: int = 0
    skipped: tuple[str, ...] = ()
    partitions: int = 0
    note: str = ""


@dataclass(slots=True)
class _Work:
    created: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    moved: int = 0
    expired: int = 0


def _utc_now() -> datetime:
    return datetime.now(UTC)


class PartitionManager:
    """Keeps ``telemetry``'s range partitions ahead of time and within the retention."""

    def __init__(
        self,
        conninfo: str,
        interval: timedelta = timedelta(days=1),
        ahead: int = 3,
        retention: timedelta = timedelta(days=7),
        clock: Callable[[], datetime] = _utc_now,
        timeout_s: float = 5.0,
        lock_timeout_s: float = 2.0,
    ) -> None:
        if interval < timedelta(minutes=1) or interval % timedelta(seconds=1):
            raise ConfigError(f"partition interval {interval} must be a whole number of seconds, at least 1 minute")
        if ahead < 1:
            raise ConfigError(f"partitions ahead = {ahead} must be at least 1")
        if retention <= interval:
            raise ConfigError(f"retention {retention} must be longer than the partition interval {interval}")
        self._conninfo = conninfo
        self.interval = interval
        self.ahead = ahead
        self.retention = retention
        self._clock = clock
        self._timeout = timeout_s
        self._lock_timeout_ms = max(1, int(lock_timeout_s * 1000))

    # --- the grid ---------------------------------------------------------------------------------

    @classmethod
    def for_settings(cls, conninfo: str, storage: StorageSettings) -> PartitionManager:
        """A manager configured from ``StorageSettings``."""
        return cls(
            conninfo,
            interval=timedelta(seconds=storage.partition_interval_s),
            ahead=storage.partitions_ahead,
            retention=timedelta(seconds=storage.retention_s),
        )

    def slot(self, ts: datetime) -> datetime:
        """Start of the grid slot holding ``ts``."""
        return ORIGIN + ((ts - ORIGIN) // self.interval) * self.interval

    def wanted(self, now: datetime) -> list[tuple[datetime, datetime]]:
        """Slots that must exist at ``now``: those meeting ``[now - 1 interval, now + ahead intervals)``."""
        start, end = self.slot(now - self.interval), now + self.ahead * self.interval
        slots = []
        while start < end:
            slots.append((start, start + self.interval))
            start += self.interval
        return slots

    def name(self, lo: datetime) -> str:
        """Partition name for a lower bound: ``telemetry_p20261126``, ``_p20261126_13``, ``_p20261126_1315``."""
        lo = lo.astimezone(UTC)
        if self.interval % timedelta(days=1) == timedelta(0) and lo.time() == datetime.min.time():
            return f"{TABLE}_p{lo:%Y%m%d}"
        if self.interval % timedelta(hours=1) == timedelta(0) and lo.minute == lo.second == 0:
            return f"{TABLE}_p{lo:%Y%m%d_%H}"
        return f"{TABLE}_p{lo:%Y%m%d_%H%M%S}" if lo.second else f"{TABLE}_p{lo:%Y%m%d_%H%M}"

    # --- the work ---------------------------------------------------------------------------------

    def partitions(self) -> list[PartitionInfo]:
        """The current partitions of ``telemetry``, oldest first (empty when it is not partitioned)."""
        with connect(self._conninfo, self._timeout, autocommit=True) as conn:
            return _partitions(conn)

    def ensure(self, now: datetime | None = None) -> PartitionReport:
        """Create missing partitions, empty the default partition, drop expired ones; idempotent.

        ``now`` defaults to the clock; a naive datetime is taken as UTC. Raises ``DatabaseUnavailable``
        when the connection fails and ``StorageError`` when PostgreSQL refuses a step for another reason
        than a lock timeout (those steps are skipped and listed in the report).
        """
        now = now or self._clock()
        now = now.replace(tzinfo=UTC) if now.tzinfo is None else now.astimezone(UTC)
        try:
            with connect(self._conninfo, self._timeout, autocommit=True) as conn:
                mode = _mode(conn)
                if mode != "partitioned":
                    log.info("partition manager: %s", mode)
                    return PartitionReport(note=mode)
                conn.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
                try:
                    conn.execute(sql.SQL("SET lock_timeout = {}").format(sql.Literal(self._lock_timeout_ms)))
                    work = _Work()
                    self._run(conn, now, work)
                    total = len(_partitions(conn))
                finally:
                    conn.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))
        except psycopg.OperationalError as exc:
            raise DatabaseUnavailable(f"partition manager lost its connection: {str(exc).strip()}") from None
        report = PartitionReport(
            tuple(work.created), tuple(work.dropped), work.moved, work.expired, tuple(work.skipped), total
        )
        if work.created or work.dropped or work.moved or work.expired or work.skipped:
            log.info(
                "partitions: created %s, dropped %s, moved %d row(s), expired %d row(s), skipped %s",
                work.created,
                work.dropped,
                work.moved,
                work.expired,
                work.skipped,
            )
        return report

    def _run(self, conn: psycopg.Connection[Any], now: datetime, work: _Work) -> None:
        cutoff = now - self.retention
        parts = _partitions(conn)
        default = next((p for p in parts if p.default), None)
        if default is None:
            default = PartitionInfo(f"{TABLE}_default", None, None, default=True)
            self._step(conn, work, default.name, self._create_default, default.name)
            if default.name in work.skipped:
                return
        for part in parts:
            if not part.default and part.hi is not None and part.hi <= cutoff:
                self._step(conn, work, part.name, self._drop, part)
        slots = set(self.wanted(now))
        for slot_lo in _default_slots(conn, default.name, self.interval):
            if slot_lo + self.interval <= cutoff:
                self._step(conn, work, default.name, self._expire, default.name, slot_lo)
            else:
                slots.add((slot_lo, slot_lo + self.interval))
        for lo, hi in sorted(slots):
            for gap_lo, gap_hi in _gaps(lo, hi, _partitions(conn)):
                name = self.name(gap_lo)
                self._step(conn, work, name, self._create, name, gap_lo, gap_hi, default.name)

    def _step(self, conn: psycopg.Connection[Any], work: _Work, what: str, fn: Callable[..., None], *args: Any) -> None:
        try:
            fn(conn, work, *args)
        except errors.LockNotAvailable:
            log.warning("partition step on %s skipped: lock not granted within lock_timeout; retried next time", what)
            work.skipped.append(what)
        except psycopg.Error as exc:
            if conn.broken or conn.closed:
                raise
            raise StorageError(f"partition {what}: {str(exc).strip()}") from None

    def _create_default(self, conn: psycopg.Connection[Any], work: _Work, name: str) -> None:
        conn.execute(
            sql.SQL("CREATE TABLE IF NOT EXISTS {} PARTITION OF {} DEFAULT").format(
                sql.Identifier(name), sql.Identifier(TABLE)
            )
        )
        work.created.append(name)

    def _create(
        self,
        conn: psycopg.Connection[Any],
        work: _Work,
        name: str,
        lo: datetime,
        hi: datetime,
        default: str,
    ) -> None:
        # CREATE + ATTACH rather than CREATE ... PARTITION OF: ATTACH takes only SHARE UPDATE EXCLUSIVE
        # on the parent, so COPYs into other partitions go on; the default partition is locked and
        # checked (it is normally empty, so that is instant).
        table, part, dflt = sql.Identifier(TABLE), sql.Identifier(name), sql.Identifier(default)
        bounds = (sql.Literal(lo), sql.Literal(hi))
        with conn.transaction():
            conn.execute(
                sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING STORAGE)").format(
                    part, table
                )
            )
            conn.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(dflt))
            moved = conn.execute(
                sql.SQL(
                    "WITH m AS (DELETE FROM {} WHERE ts >= {} AND ts < {} RETURNING ts, value, gpu_key, metric_id) "
                    "INSERT INTO {} (ts, value, gpu_key, metric_id) SELECT ts, value, gpu_key, metric_id FROM m"
                ).format(dflt, *bounds, part)
            ).rowcount
            conn.execute(
                sql.SQL("ALTER TABLE {} ATTACH PARTITION {} FOR VALUES FROM ({}) TO ({})").format(table, part, *bounds)
            )
        work.created.append(name)
        work.moved += max(moved, 0)

    def _drop(self, conn: psycopg.Connection[Any], work: _Work, part: PartitionInfo) -> None:
        # Plain DETACH (ACCESS EXCLUSIVE on the parent, for an instant): DETACH ... CONCURRENTLY is
        # refused while a default partition exists, and cannot run in a transaction with the DROP.
        with conn.transaction():
            conn.execute(
                sql.SQL("ALTER TABLE {} DETACH PARTITION {}").format(sql.Identifier(TABLE), sql.Identifier(part.name))
            )
            conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(part.name)))
        work.dropped.append(part.name)

    def _expire(self, conn: psycopg.Connection[Any], work: _Work, default: str, lo: datetime) -> None:
        with conn.transaction():
            cur = conn.execute(
                sql.SQL("DELETE FROM {} WHERE ts >= {} AND ts < {}").format(
                    sql.Identifier(default), sql.Literal(lo), sql.Literal(lo + self.interval)
                )
            )
        log.info("deleted %d row(s) older than the retention from %s (slot %s)", cur.rowcount, default, lo)
        work.expired += max(cur.rowcount, 0)


def _mode(conn: psycopg.Connection[Any]) -> str:
    row = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'), "
        "(SELECT relkind::text FROM pg_class WHERE oid = to_regclass(%s))",
        (TABLE,),
    ).fetchone()
    assert row is not None
    timescaledb, relkind = row
    if timescaledb:
        return TIMESCALEDB_NOTE
    if relkind is None:
        return f"table {TABLE} does not exist (migrations not applied?)"
    if relkind != "p":
        return f"table {TABLE} is not partitioned (migration 004 not applied?)"
    return "partitioned"


def _partitions(conn: psycopg.Connection[Any]) -> list[PartitionInfo]:
    rows = conn.execute(_PARTITIONS, (TABLE,)).fetchall()
    return [PartitionInfo(name, _utc(lo), _utc(hi), bool(default)) for name, lo, hi, default in rows]


def _utc(ts: datetime | None) -> datetime | None:
    return None if ts is None else ts.astimezone(UTC)


def _default_slots(conn: psycopg.Connection[Any], default: str, interval: timedelta) -> list[datetime]:
    """Grid slots that rows in the default partition fall into (normally none)."""
    rows = conn.execute(
        sql.SQL("SELECT DISTINCT date_bin({}, ts, {}) FROM {} ORDER BY 1").format(
            sql.Literal(interval), sql.Literal(ORIGIN), sql.Identifier(default)
        )
    ).fetchall()
    return [ts.astimezone(UTC) for (ts,) in rows]


def _gaps(lo: datetime, hi: datetime, parts: Iterable[PartitionInfo]) -> list[tuple[datetime, datetime]]:
    """The parts of ``[lo, hi)`` that no (non-default) partition covers."""
    gaps = [(lo, hi)]
    for p in parts:
        if p.default:
            continue
        p_lo = p.lo or datetime.min.replace(tzinfo=UTC)
        p_hi = p.hi or datetime.max.replace(tzinfo=UTC)
        rest = []
        for g_lo, g_hi in gaps:
            if p_hi <= g_lo or p_lo >= g_hi:
                rest.append((g_lo, g_hi))
                continue
            if g_lo < p_lo:
                rest.append((g_lo, p_lo))
            if p_hi < g_hi:
                rest.append((p_hi, g_hi))
        gaps = rest
    return gaps
