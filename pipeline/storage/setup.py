"""Getting a database ready for the pipeline: find or start it, check it, migrate, keep partitions ahead.

The one place entrypoints (the CLI, the supervisor, tests) go through before anything writes; the
controller's periodic partition maintenance is ``maintain`` below, run as a storage job.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from pipeline.config import AttributionSettings, DatabaseSettings, StorageSettings
from pipeline.storage.database import Database, SessionSettings, check, connect, resolve
from pipeline.storage.migrate import Migration, migrate
from pipeline.storage.time_partitions import PartitionManager, PartitionReport
from pipeline.storage.usage import CompactReport, compact
from pipeline.storage.writer import TelemetryWriter

__all__ = ["Prepared", "compact_usage", "maintain", "prepare", "writer_for"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Prepared:
    """A reachable, migrated database and what preparing it did."""

    database: Database
    applied: tuple[Migration, ...]
    partitions: PartitionReport


def prepare(database: DatabaseSettings, storage: StorageSettings) -> Prepared:
    """Resolve (DATABASE_URL or the embedded server), check, migrate, and create time partitions."""
    url = database.url.get_secret_value() if database.url else None
    db = resolve(url, database.embedded_dir)
    check(db.conninfo, database.connect_timeout_s)
    applied = migrate(db.conninfo)
    report = maintain(db.conninfo, storage)
    return Prepared(db, tuple(applied), report)


def maintain(conninfo: str, storage: StorageSettings) -> PartitionReport:
    """One round of time-partition maintenance (create ahead, move default rows, drop by retention)."""
    report = PartitionManager.for_settings(conninfo, storage).ensure()
    if report.created or report.dropped or report.moved_rows or report.skipped:
        log.info(
            "partitions: created %s dropped %s moved %d skipped %s",
            list(report.created),
            list(report.dropped),
            report.moved_rows,
            list(report.skipped),
        )
    return report


def compact_usage(conninfo: str, rounds: int = 50, timeout_s: float = 10.0) -> CompactReport:
    """Fold the collectors' usage log into the usage rollups (a storage job), until it is empty or ``rounds`` ran."""
    total = CompactReport()
    with connect(conninfo, timeout_s) as conn:
        row = conn.execute("SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb')").fetchone()
        conn.commit()
        timescaledb = bool(row and row[0])
        for _ in range(rounds):
            report = compact(conn, timescaledb)
            total = CompactReport(
                total.log_rows + report.log_rows,
                total.minutes + report.minutes,
                total.gpus + report.gpus,
                total.expired + report.expired,
                report.skipped,
            )
            if report.skipped or report.log_rows == 0:
                break
    return total


def writer_for(
    conninfo: str, database: DatabaseSettings, attribution: AttributionSettings | None = None
) -> TelemetryWriter:
    """The collectors' writer with the session limits the settings give (keepalives, lock and idle timeouts)."""
    session = SessionSettings(
        idle_in_transaction_s=database.idle_in_transaction_timeout_s,
        lock_timeout_s=database.lock_timeout_s,
        statement_timeout_s=database.statement_timeout_s,
        keepalives_idle_s=database.keepalives_idle_s,
    )
    return TelemetryWriter(conninfo, timeout_s=database.connect_timeout_s, session=session, attribution=attribution)
