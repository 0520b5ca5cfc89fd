"""Migrations, the COPY writer with its compare-and-set offsets, and the reader, on real PostgreSQL."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pyarrow as pa
import pytest

from pipeline.errors import ConfigError, DatabaseUnavailable, FencedError, OffsetMismatch
from pipeline.records import SAMPLE_SCHEMA, TS_TYPE, Envelope, make_rejects
from pipeline.storage.database import check, connect
from pipeline.storage.migrate import discover, migrate
from pipeline.storage.reader import Reader
from pipeline.storage.writer import TelemetryWriter
from tests.support import batches, split

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def samples(uuid: str, metric: str, seconds: list[int], host: str = "h1", start: datetime = T0) -> pa.RecordBatch:
    n = len(seconds)
    base = int(start.timestamp() * 1_000_000)
    return pa.RecordBatch.from_arrays(
        [
            pa.array([base + s * 1_000_000 for s in seconds], pa.int64()).cast(TS_TYPE),
            pa.nulls(n, TS_TYPE),
            pa.array([uuid] * n),
            pa.array([host] * n),
            pa.array([0] * n, pa.int16()),
            pa.array(["nvidia0"] * n),
            pa.array(["H100"] * n),
            pa.array([metric] * n),
            pa.array([float(s) for s in seconds]),
            pa.nulls(n, SAMPLE_SCHEMA.field("labels").type),
            pa.nulls(n, pa.string()),
            pa.nulls(n, pa.string()),
        ],
        schema=SAMPLE_SCHEMA,
    )


def count(conninfo: str, table: str) -> int:
    with psycopg.connect(conninfo) as c:
        return int(c.execute(f"SELECT count(*) FROM {table}").fetchone()[0])  # type: ignore[index]


def test_migrations_apply_once_and_concurrently(empty_db: str) -> None:
    results: list[int] = []
    threads = [threading.Thread(target=lambda: results.append(len(migrate(empty_db)))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [0, 0, len(discover())]
    assert migrate(empty_db) == []
    with psycopg.connect(empty_db) as c:
        versions = [v for (v,) in c.execute("SELECT version FROM schema_migrations ORDER BY version")]
        metrics = c.execute("SELECT count(*) FROM metrics").fetchone()
    assert versions == [m.version for m in discover()]
    assert metrics == (11,)  # the ten DCGM fields of the seed, and DCGM_FI_DEV_XID_ERRORS (023)


def test_bad_migration_directory(tmp_path: Path) -> None:
    (tmp_path / "1_bad.sql").write_text("select 1")
    with pytest.raises(ConfigError, match="does not match NNN_name.sql"):
        discover(tmp_path)


def test_unreachable_database_is_one_clear_error() -> None:
    with pytest.raises(DatabaseUnavailable, match="cannot connect to PostgreSQL"):
        check("postgresql://postgres@127.0.0.1:1/nothing", timeout_s=1)


def test_writer_stores_rows_and_moves_offsets_atomically(fresh_db: str) -> None:
    w = TelemetryWriter(fresh_db)
    w.open()
    assert w.claim("g", 5, [0, 1]) == {0: 0, 1: 0}
    rejects = make_rejects(0, "x.csv", [7], ["raw"], ["value `abc` is not a number"])
    b0 = (
        0,
        0,
        2,
        (
            Envelope(samples("GPU-a", "DCGM_FI_DEV_GPU_TEMP", [0, 1])),
            Envelope(samples("GPU-a", "DCGM_FI_DEV_GPU_TEMP", [2]), rejects),
        ),
    )
    b1 = (1, 0, 1, (Envelope(samples("GPU-b", "NEW_METRIC", [0, 1, 2])),))
    result = w.write("g", 5, *batches(b0, b1))
    assert (result.rows, result.rejects, result.offsets) == (6, 1, {0: 2, 1: 1})
    assert count(fresh_db, "telemetry") == 6 and count(fresh_db, "rejects") == 1
    # Replaying the same batch (an ambiguous commit retried) is refused and stores nothing.
    with pytest.raises(OffsetMismatch, match="stored offset is 2, batch starts at 0"):
        w.write("g", 5, *batches(b0))
    assert count(fresh_db, "telemetry") == 6
    assert w.offsets("g")[0] == {"next_offset": 2, "generation": 5, "rows": 3, "rejects": 1}
    with psycopg.connect(fresh_db) as c:
        row = c.execute("SELECT uuid, hostname, gpu_index, model FROM gpus WHERE uuid = 'GPU-a'").fetchone()
        assert row == ("GPU-a", "h1", 0, "H100")
        assert c.execute("SELECT count(*) FROM metrics WHERE name = 'NEW_METRIC'").fetchone() == (1,)
    w.close()


def test_a_zombie_generation_cannot_write(fresh_db: str) -> None:
    zombie, owner = TelemetryWriter(fresh_db), TelemetryWriter(fresh_db)
    zombie.open()
    owner.open()
    zombie.claim("g", 1, [0])
    owner.claim("g", 2, [0])  # rebalanced to a newer generation
    batch = batches((0, 0, 1, (Envelope(samples("GPU-a", "DCGM_FI_DEV_GPU_TEMP", [0])),)))
    with pytest.raises(FencedError, match="held by generation 2, not 1"):
        zombie.write("g", 1, *batch)
    with pytest.raises(FencedError, match="already claimed by generation 2"):
        zombie.claim("g", 1, [0])
    assert owner.write("g", 2, *batch).rows == 1
    assert count(fresh_db, "telemetry") == 1


def test_writer_reconnects_after_its_connection_is_terminated(fresh_db: str) -> None:
    w = TelemetryWriter(fresh_db)
    w.open()
    w.claim("g", 1, [0])
    with psycopg.connect(fresh_db, autocommit=True) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid()"
        )
    batch = batches((0, 0, 1, (Envelope(samples("GPU-a", "DCGM_FI_DEV_GPU_TEMP", [0])),)))
    with pytest.raises(DatabaseUnavailable):
        w.write("g", 1, *batch)
    assert w.write("g", 1, *batch).rows == 1  # reconnected
    assert count(fresh_db, "telemetry") == 1


@pytest.fixture
def loaded(fresh_db: str) -> str:
    w = TelemetryWriter(fresh_db)
    w.open()
    w.claim("g", 1, [0])
    envs = tuple(
        Envelope(samples(u, m, list(range(0, 60)), host=h))
        for u, h in (("GPU-a", "h1"), ("GPU-b", "h2"))
        for m in ("DCGM_FI_DEV_GPU_TEMP", "DCGM_FI_DEV_GPU_UTIL")
    )
    w.write("g", 1, *batches((0, 0, len(envs), envs)))
    w.close()
    return fresh_db


def test_reader_bounds_are_inclusive_and_ordered(loaded: str) -> None:
    r = Reader(loaded)
    r.open(wait=True)
    gpu = r.gpu("GPU-a")
    assert gpu is not None and gpu.hostname == "h1"
    rows = r.telemetry(gpu.gpu_key, T0 + timedelta(seconds=10), T0 + timedelta(seconds=20), limit=1000)
    assert len(rows) == 2 * 11  # both ends included
    assert [(x.ts, x.metric_id) for x in rows] == sorted((x.ts, x.metric_id) for x in rows)
    assert rows[0].ts == T0 + timedelta(seconds=10) and rows[-1].ts == T0 + timedelta(seconds=20)
    desc = r.telemetry(gpu.gpu_key, T0, T0 + timedelta(seconds=59), limit=3, order="desc")
    assert desc[0].ts == T0 + timedelta(seconds=59)
    temp = r.metric_ids(["DCGM_FI_DEV_GPU_TEMP"])["DCGM_FI_DEV_GPU_TEMP"]
    only = r.telemetry(gpu.gpu_key, T0, T0 + timedelta(minutes=1), limit=1000, metric_ids=[temp])
    assert {x.metric for x in only} == {"DCGM_FI_DEV_GPU_TEMP"} and len(only) == 60
    page1 = r.telemetry(gpu.gpu_key, T0, T0 + timedelta(minutes=1), limit=50)
    page2 = r.telemetry(
        gpu.gpu_key, T0, T0 + timedelta(minutes=1), limit=500, after=(page1[-1].ts, page1[-1].metric_id)
    )
    assert len(page1) + len(page2) == 120 and not {(x.ts, x.metric_id) for x in page1} & {
        (x.ts, x.metric_id) for x in page2
    }
    assert [g.uuid for g in r.gpus(10)] == ["GPU-a", "GPU-b"]
    assert [g.uuid for g in r.gpus(10, hostname="h2")] == ["GPU-b"]
    assert [g.uuid for g in r.gpus(10, after=("h1", 0, "GPU-a"))] == ["GPU-b"]
    r.close()


def test_connect_reports_the_target_without_password() -> None:
    with pytest.raises(DatabaseUnavailable) as info:
        connect("postgresql://u:secret@127.0.0.1:1/db", timeout_s=1)
    assert "secret" not in str(info.value) and "127.0.0.1:1" in str(info.value)


def test_writer_handles_slices_of_a_shared_dictionary(fresh_db: str) -> None:
    from pipeline.queue.keys import KeyHasher
    from pipeline.records import to_wire

    both = (
        pa.Table.from_batches(
            [samples("GPU-a", "DCGM_FI_DEV_GPU_TEMP", [0, 1]), samples("GPU-b", "DCGM_FI_DEV_GPU_UTIL", [0])]
        )
        .combine_chunks()
        .to_batches()[0]
    )
    wire = to_wire(both)
    parts = split(wire, KeyHasher().partitions(wire.column("uuid"), 64), 64)
    assert len(parts) == 2
    w = TelemetryWriter(fresh_db)
    w.open()
    w.claim("g", 1, [0])
    result = w.write("g", 1, *batches((0, 0, 1, (Envelope(parts[0][1]),))))
    assert result.rows == parts[0][1].num_rows
    with psycopg.connect(fresh_db) as c:
        assert c.execute("SELECT count(*) FROM gpus").fetchone() == (1,)  # only the GPU in use registered
