"""Plain-PostgreSQL storage: in-place conversion to range partitions, the partition manager, pruning, size."""

from __future__ import annotations

import json
import re
import shutil
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pyarrow as pa
import pytest
from psycopg import sql

from pipeline.errors import ConfigError
from pipeline.records import Envelope
from pipeline.storage.migrate import migrate, sql_dir
from pipeline.storage.time_partitions import ORIGIN, PartitionInfo, PartitionManager, _gaps
from pipeline.storage.writer import TelemetryWriter
from tests.integration.test_storage import samples
from tests.support import batches as partition_batches

T0 = datetime(2026, 1, 1, tzinfo=UTC)
DAY, HOUR = timedelta(days=1), timedelta(hours=1)


def batch(uuid: str, metric: str, start: datetime, seconds: range) -> pa.RecordBatch:
    return samples(uuid, metric, list(seconds), start=start)


def write(conninfo: str, *batches: pa.RecordBatch, offset: int = 0) -> int:
    """Store batches through the real COPY writer (one partition, offsets from ``offset``)."""
    w = TelemetryWriter(conninfo)
    w.open()
    try:
        w.claim("g", 1, [0])
        envs = tuple(Envelope(b) for b in batches)
        return w.write("g", 1, *partition_batches((0, offset, offset + len(envs), envs))).rows
    finally:
        w.close()


def one(conninfo: str, query: str, params: Any = None) -> Any:
    with psycopg.connect(conninfo) as c:
        row = c.execute(query, params).fetchone()
        assert row is not None
        return row[0] if len(row) == 1 else row


def rows_in(conninfo: str, table: str) -> int:
    return int(one(conninfo, f"SELECT count(*) FROM {table}"))


def names(parts: list[PartitionInfo]) -> list[str]:
    return [p.name for p in parts]


@pytest.fixture
def legacy_db(empty_db: str, tmp_path: Path) -> str:
    """A database at schema 001 only, as deployed before partitioning, holding 2 days of rows."""
    only_001 = tmp_path / "sql"
    only_001.mkdir()
    shutil.copy(sql_dir() / "001_schema.sql", only_001)
    migrate(empty_db, only_001)
    with psycopg.connect(empty_db) as c:
        c.execute("INSERT INTO gpus (uuid) VALUES ('GPU-a'), ('GPU-b'), ('GPU-c')")
        # 3 GPUs x 10 metrics, one sample a minute from 2026-01-01 00:00 to 2026-01-02 23:59.
        c.execute(
            "INSERT INTO telemetry (ts, value, gpu_key, metric_id) "
            "SELECT %s::timestamptz + make_interval(mins => s), s * 10 + m, g, m "
            "FROM generate_series(0, 2 * 1440 - 1) s, generate_series(1, 3) g, generate_series(1, 10) m",
            (T0,),
        )
    return empty_db


# --- migrations ---------------------------------------------------------------------------------------


def test_migrations_convert_an_existing_table_in_place_and_keep_every_row(legacy_db: str) -> None:
    fingerprint = "SELECT count(*), sum(value), min(ts), max(ts), sum(gpu_key * 100 + metric_id) FROM telemetry"
    before = one(legacy_db, fingerprint)
    assert before[0] == 2 * 1440 * 3 * 10

    applied = [m.name for m in migrate(legacy_db)]

    assert "partitions" in applied
    assert one(legacy_db, fingerprint) == before
    assert one(legacy_db, "SELECT relkind::text FROM pg_class WHERE oid = 'telemetry'::regclass") == "p"
    with psycopg.connect(legacy_db) as c:
        columns = c.execute(
            "SELECT attname, format_type(atttypid, atttypmod), attnotnull FROM pg_attribute "
            "WHERE attrelid = 'telemetry'::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum"
        ).fetchall()
        index = c.execute("SELECT pg_get_indexdef('telemetry_gpu_ts_idx'::regclass)").fetchone()
        bounds = dict(
            c.execute(
                "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i "
                "JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'telemetry'::regclass"
            ).fetchall()
        )
        legacy_index = c.execute(
            "SELECT i.indexrelid::regclass::text FROM pg_index i JOIN pg_inherits h ON h.inhrelid = i.indexrelid "
            "WHERE i.indrelid = 'telemetry_legacy'::regclass AND h.inhparent = 'telemetry_gpu_ts_idx'::regclass"
        ).fetchone()
    assert columns == [
        ("ts", "timestamp with time zone", True),
        ("value", "double precision", True),
        ("gpu_key", "integer", True),
        ("metric_id", "smallint", True),
    ]
    assert index is not None and "USING btree (gpu_key, ts, metric_id)" in index[0]
    # The old table is now a partition up to the first midnight after its newest row; its index was kept.
    assert bounds == {
        "telemetry_default": "DEFAULT",
        "telemetry_legacy": "FOR VALUES FROM (MINVALUE) TO ('2026-01-03 00:00:00+00')",
    }
    assert legacy_index == ("telemetry_legacy_gpu_ts_idx",)
    assert rows_in(legacy_db, "telemetry_legacy") == before[0]
    assert migrate(legacy_db) == []


def test_copy_through_the_writer_still_works_after_conversion(legacy_db: str) -> None:
    migrate(legacy_db)
    before = rows_in(legacy_db, "telemetry")

    # One batch inside the legacy range, one after it (the default partition until the manager runs).
    stored = write(
        legacy_db,
        batch("GPU-a", "DCGM_FI_DEV_GPU_TEMP", T0 + DAY, range(0, 30)),
        batch("GPU-new", "DCGM_FI_DEV_GPU_UTIL", T0 + 5 * DAY, range(0, 20)),
    )

    assert stored == 50
    assert rows_in(legacy_db, "telemetry") == before + 50
    assert rows_in(legacy_db, "telemetry_default") == 20
    report = PartitionManager(legacy_db).ensure(now=T0 + 5 * DAY)
    assert report.moved_rows == 20 and rows_in(legacy_db, "telemetry_default") == 0
    assert rows_in(legacy_db, "telemetry_p20260106") == 20
    assert rows_in(legacy_db, "telemetry") == before + 50


def test_an_empty_table_is_converted_with_only_a_default_partition(fresh_db: str) -> None:
    assert names(PartitionManager(fresh_db).partitions()) == ["telemetry_default"]
    assert one(fresh_db, "SELECT to_regclass('telemetry_legacy') IS NULL")


def test_plain_postgresql_gets_no_rollup_views_and_no_timescaledb(fresh_db: str) -> None:
    # date_bin views cannot bound ts from a bucket predicate (see docs/storage.md): the reader must
    # compute buckets over raw rows here, which it does when these names do not exist.
    assert one(fresh_db, "SELECT to_regclass('telemetry_1m'), to_regclass('telemetry_1h')") == (None, None)
    assert not one(fresh_db, "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb')")
    with psycopg.connect(fresh_db) as c:
        applied = [n for (n,) in c.execute("SELECT name FROM schema_migrations")]
    assert "timescaledb_rollups_backfill" in applied  # recorded, as a no-op


# --- the partition manager ----------------------------------------------------------------------------


def test_ensure_creates_partitions_ahead_and_is_idempotent(fresh_db: str) -> None:
    now = datetime(2026, 11, 26, 13, 0, tzinfo=UTC)
    pm = PartitionManager(fresh_db, interval=DAY, ahead=3, clock=lambda: now)

    first = pm.ensure()
    second = pm.ensure()

    expected = [f"telemetry_p202611{d}" for d in (25, 26, 27, 28, 29)]  # [now - 1 day, now + 3 days)
    assert list(first.created) == expected
    assert second.created == () and second.dropped == () and second.partitions == 6
    parts = [p for p in pm.partitions() if not p.default]
    assert names(parts) == expected
    assert all(p.hi is not None and p.lo is not None and p.hi - p.lo == DAY for p in parts)
    assert parts[0].lo == datetime(2026, 11, 25, tzinfo=UTC)


def test_hourly_partitions_are_named_by_hour(fresh_db: str) -> None:
    pm = PartitionManager(fresh_db, interval=HOUR, ahead=2, retention=DAY)
    report = pm.ensure(now=datetime(2026, 11, 26, 23, 30, tzinfo=UTC))
    assert list(report.created) == [
        "telemetry_p20261126_22",
        "telemetry_p20261126_23",
        "telemetry_p20261127_00",
        "telemetry_p20261127_01",
    ]


def test_ensure_moves_rows_out_of_the_default_partition(fresh_db: str) -> None:
    # Rows written before any partition exists land in the default partition; ingest never fails.
    write(fresh_db, batch("GPU-a", "DCGM_FI_DEV_GPU_TEMP", T0, range(0, 120)))
    write(fresh_db, batch("GPU-a", "DCGM_FI_DEV_GPU_TEMP", T0 + 10 * DAY, range(0, 5)), offset=1)
    with psycopg.connect(fresh_db) as c:  # one row far older than the retention
        c.execute("INSERT INTO telemetry VALUES (%s, 1.0, 1, 1)", (T0 - 30 * DAY,))
    assert rows_in(fresh_db, "telemetry_default") == 126

    report = PartitionManager(fresh_db, ahead=1).ensure(now=T0 + HOUR)

    assert report.moved_rows == 125 and report.expired_rows == 1
    assert rows_in(fresh_db, "telemetry_default") == 0
    assert rows_in(fresh_db, "telemetry_p20260101") == 120
    assert rows_in(fresh_db, "telemetry_p20260111") == 5  # a slot outside the window, made for its rows
    assert "telemetry_p20260111" in report.created
    assert rows_in(fresh_db, "telemetry") == 125


def test_ensure_drops_partitions_wholly_older_than_the_retention(fresh_db: str) -> None:
    clock = [T0]
    pm = PartitionManager(fresh_db, ahead=3, retention=timedelta(days=7), clock=lambda: clock[0])
    pm.ensure()
    write(fresh_db, *(batch("GPU-a", "DCGM_FI_DEV_GPU_TEMP", T0 + d * DAY, range(0, 10)) for d in (-1, 0, 1, 2)))

    clock[0] = T0 + timedelta(days=8, hours=12)  # cutoff 2026-01-02 12:00
    report = pm.ensure()

    assert list(report.dropped) == ["telemetry_p20251231", "telemetry_p20260101"]
    assert rows_in(fresh_db, "telemetry") == 20  # 2026-01-02 (straddles the cutoff) and 01-03 are kept
    assert "telemetry_p20260102" in names(pm.partitions())
    assert one(fresh_db, "SELECT to_regclass('telemetry_p20260101')") is None  # dropped, not just detached
    assert pm.ensure().dropped == ()


def test_concurrent_managers_agree(fresh_db: str) -> None:
    now = datetime(2026, 3, 1, 12, tzinfo=UTC)
    reports: list[Any] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            reports.append(PartitionManager(fresh_db, interval=HOUR, ahead=6, retention=DAY).ensure(now=now))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert errors == []
    created = sorted(n for r in reports for n in r.created)
    assert len(created) == 7 and len(set(created)) == 7  # 11:00 .. 17:00, each created exactly once
    assert sum(1 for r in reports if r.created) == 1


def test_ensure_does_not_wait_for_ingest_but_skips_a_locked_step(fresh_db: str) -> None:
    pm = PartitionManager(fresh_db, ahead=1, lock_timeout_s=0.3)
    pm.ensure(now=T0)
    with psycopg.connect(fresh_db) as writer:
        # An open ingest transaction in an existing partition does not block creating the next one.
        writer.execute("INSERT INTO telemetry VALUES (%s, 1.0, 1, 1)", (T0,))
        assert pm.ensure(now=T0 + DAY).created == ("telemetry_p20260102",)
        writer.rollback()
        # A long query holding the default partition makes that step time out: reported, not raised.
        writer.execute("SELECT count(*) FROM telemetry_default")
        blocked = pm.ensure(now=T0 + 2 * DAY)
        assert blocked.created == () and blocked.skipped == ("telemetry_p20260103",)
    assert pm.ensure(now=T0 + 2 * DAY).created == ("telemetry_p20260103",)


def test_ensure_reports_timescaledb_or_unpartitioned_tables_and_does_nothing(legacy_db: str) -> None:
    report = PartitionManager(legacy_db).ensure(now=T0)
    assert report.created == () and "not partitioned" in report.note


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ConfigError, match="retention 1 day, 0:00:00 must be longer"):
        PartitionManager("", interval=DAY, retention=DAY)
    with pytest.raises(ConfigError, match="partitions ahead = 0"):
        PartitionManager("", ahead=0)
    with pytest.raises(ConfigError, match="at least 1 minute"):
        PartitionManager("", interval=timedelta(seconds=10))


def test_grid_and_gaps() -> None:
    pm = PartitionManager("", interval=timedelta(minutes=15), retention=DAY)
    assert pm.slot(datetime(2026, 1, 1, 13, 14, 59, tzinfo=UTC)) == datetime(2026, 1, 1, 13, 0, tzinfo=UTC)
    assert pm.name(datetime(2026, 1, 1, 13, 15, tzinfo=UTC)) == "telemetry_p20260101_1315"
    assert ORIGIN.weekday() == 0
    legacy = PartitionInfo("telemetry_legacy", None, datetime(2026, 1, 1, 13, 20, tzinfo=UTC))
    lo, hi = datetime(2026, 1, 1, 13, 15, tzinfo=UTC), datetime(2026, 1, 1, 13, 30, tzinfo=UTC)
    assert _gaps(lo, hi, [legacy]) == [(legacy.hi, hi)]  # only the uncovered part is created
    assert _gaps(lo, hi, [PartitionInfo("d", None, None, default=True)]) == [(lo, hi)]


# --- queries ------------------------------------------------------------------------------------------


def scanned(conninfo: str, query: str, params: dict[str, Any]) -> set[str]:
    """The partitions a query's plan would read (EXPLAIN, not run)."""
    with psycopg.connect(conninfo) as c:
        c.execute("ANALYZE telemetry")
        plan = c.execute("EXPLAIN (FORMAT JSON) " + query, params).fetchone()
    assert plan is not None
    found: set[str] = set()

    def walk(node: dict[str, Any]) -> None:
        if str(node.get("Relation Name", "")).startswith("telemetry"):
            found.add(node["Relation Name"])
        for child in node.get("Plans", []):
            walk(child)

    walk((plan[0] if isinstance(plan[0], list) else json.loads(plan[0]))[0]["Plan"])
    return found


def test_time_bounded_queries_read_only_the_matching_partitions(fresh_db: str) -> None:
    PartitionManager(fresh_db, ahead=4).ensure(now=T0 + 2 * DAY)  # 2026-01-02 .. 2026-01-06
    write(fresh_db, *(batch("GPU-a", m, T0 + d * DAY, range(0, 600)) for d in (1, 2, 3, 4) for m in ("A", "B")))
    window = {"gpu": 1, "lo": T0 + 2 * DAY + HOUR, "hi": T0 + 2 * DAY + 2 * HOUR}

    samples = "SELECT ts, metric_id, value FROM telemetry WHERE gpu_key = %(gpu)s AND ts >= %(lo)s AND ts < %(hi)s"
    aggregate = (
        "SELECT date_bin(%(bucket)s, ts, %(origin)s) AS b, metric_id, avg(value) FROM telemetry t "
        "WHERE gpu_key = %(gpu)s AND ts >= %(lo)s AND ts < %(hi)s GROUP BY 1, 2"
    )
    agg_params = {**window, "bucket": timedelta(minutes=5), "origin": ORIGIN}

    assert scanned(fresh_db, samples, window) == {"telemetry_p20260103"}
    assert scanned(fresh_db, aggregate, agg_params) == {"telemetry_p20260103"}
    # A window over two days reads two partitions; the default is pruned wherever partitions cover the range.
    two_days = {**window, "hi": T0 + 3 * DAY + HOUR}
    assert scanned(fresh_db, samples, two_days) == {"telemetry_p20260103", "telemetry_p20260104"}
    # A generic plan (what a prepared statement may switch to) prunes at executor start-up instead.
    with psycopg.connect(fresh_db) as c:
        c.execute("SET plan_cache_mode = force_generic_plan")
        c.execute(
            "PREPARE q(int, timestamptz, timestamptz) AS "
            + samples.replace("%(gpu)s", "$1").replace("%(lo)s", "$2").replace("%(hi)s", "$3")
        )
        run = sql.SQL("EXPLAIN (ANALYZE, COSTS OFF) EXECUTE q(1, {}, {})").format(
            sql.Literal(window["lo"]), sql.Literal(window["hi"])
        )
        lines = [r[0] for r in c.execute(run)]
    assert any("Subplans Removed" in line for line in lines), lines
    assert {n for line in lines for n in re.findall(r"\btelemetry_p\d{8}(?:_\d+)?\b", line)} == {
        "telemetry_p20260103"
    }, lines


def test_bytes_per_sample_on_plain_postgresql(fresh_db: str) -> None:
    """Heap + index bytes per sample for 1 M rows written in time order (the figure in docs/storage.md)."""
    PartitionManager(fresh_db, ahead=1).ensure(now=T0)
    with psycopg.connect(fresh_db) as c:
        # 100 GPUs x 10 metrics x 1,000 s at 1 Hz, in arrival order (time, then GPU, then metric).
        c.execute(
            "INSERT INTO telemetry (ts, value, gpu_key, metric_id) "
            "SELECT %s::timestamptz + make_interval(secs => s), random() * 100, g, m "
            "FROM generate_series(0, 999) s, generate_series(1, 100) g, generate_series(1, 10) m "
            "ORDER BY s, g, m",
            (T0,),
        )
        heap, index, rows = c.execute(
            "SELECT sum(pg_relation_size(c.oid)), sum(pg_indexes_size(c.oid)), "
            "(SELECT count(*) FROM telemetry) "
            "FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'telemetry'::regclass"
        ).fetchone()  # type: ignore[misc]
        version = c.execute("SHOW server_version").fetchone()
    assert rows == 1_000_000
    per_sample = (heap + index) / rows
    print(
        f"\nPostgreSQL {version[0] if version else '?'}: {rows:,} samples, heap {heap / rows:.1f} B + "
        f"index {index / rows:.1f} B = {per_sample:.1f} B/sample"
    )
    # One row per sample cannot meet 40 B: the heap alone (24 B header + 4 B line pointer + 22 B data,
    # aligned) is ~52 B. The bound catches a layout regression (a new index, a wider row).
    assert 50 <= heap / rows <= 56
    assert per_sample <= 140
