"""Poison input at the database: metric names past the smallint key are refused as rejects, never an endless retry."""

from __future__ import annotations

import psycopg
import pyarrow as pa

from pipeline.records import Envelope
from pipeline.storage.writer import MAX_METRIC_ID, TelemetryWriter
from tests.integration.test_storage import count, samples
from tests.support import batches


def test_metric_names_past_the_smallint_key_become_rejects_with_a_reason(fresh_db: str) -> None:
    with psycopg.connect(fresh_db) as c:
        # the key space nearly used up: one id below the limit is taken, two are left
        c.execute("INSERT INTO metrics (metric_id, name) VALUES (%s, 'FILLER')", (MAX_METRIC_ID - 2,))
        c.execute(f"ALTER TABLE metrics ALTER COLUMN metric_id RESTART WITH {MAX_METRIC_ID - 1}")
    w = TelemetryWriter(fresh_db)
    w.open()
    w.claim("g", 1, [0])
    names = [f"CUSTOM_{i}" for i in range(5)]
    data = pa.Table.from_batches([samples("GPU-a", n, [0, 1]) for n in names]).combine_chunks().to_batches()[0]
    result = w.write("g", 1, *batches((0, 0, 1, (Envelope(data),))))
    assert (result.rows, result.rejects, result.offsets) == (4, 6, {0: 1})  # two names fit; three are refused
    assert count(fresh_db, "telemetry") == 4 and count(fresh_db, "rejects") == 6
    with psycopg.connect(fresh_db) as c:
        reasons = [r for (r,) in c.execute("SELECT DISTINCT reason FROM rejects ORDER BY reason")]
        stored = c.execute("SELECT count(*), max(metric_id) FROM metrics").fetchone()
        totals = c.execute("SELECT rows_committed, rejects_committed FROM consumer_offsets").fetchone()
    assert stored == (14, MAX_METRIC_ID)  # 11 seeded (sql/001, 023), the filler, two new names
    assert totals == (4, 6)
    assert reasons == [
        f"metric `CUSTOM_{i}` refused: the metrics table is full ({MAX_METRIC_ID} names, the limit of its smallint key)"
        for i in (2, 3, 4)
    ]
    assert w.refused_metrics == {"CUSTOM_2", "CUSTOM_3", "CUSTOM_4"}
    # the next batch with a refused name is stored (as a reject) at once: no retry loop
    again = w.write("g", 1, *batches((0, 1, 2, (Envelope(samples("GPU-a", "CUSTOM_4", [5])),))))
    assert (again.rows, again.rejects) == (0, 1)
    w.close()
