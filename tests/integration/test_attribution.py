"""Attribution written by the real writer on a real PostgreSQL: intervals, GPU facts, events, latest values, usage.

Known answers come from ``attribution_data`` (computed by hand there). Exactly-once: a replayed or
fenced write adds nothing, and a partition handed to another writer mid-stream gives the same
intervals and usage as one writer alone.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pipeline.config import AttributionSettings
from pipeline.errors import FencedError, OffsetMismatch
from pipeline.records import Envelope
from pipeline.storage.sink import PartitionBatch
from pipeline.storage.usage import GROUP_RETENTION, LOCK_KEY, RETENTION, compact
from pipeline.storage.writer import TelemetryWriter
from tests.integration.attribution_data import (
    EXPECTED_X,
    EXPECTED_Y,
    GPU_X,
    GPU_Y,
    SECONDS,
    at,
    scenario,
)

EVERY_TXN = AttributionSettings(latest_every_s=0)  # type: ignore[call-arg]


def writer(conninfo: str, settings: AttributionSettings = EVERY_TXN) -> TelemetryWriter:
    w = TelemetryWriter(conninfo, attribution=settings)
    w.open()
    return w


def feed(w: TelemetryWriter, envelopes: Iterable[Envelope], generation: int = 1, first: int = 0) -> int:
    """Write each envelope as the next message of partition 0; returns the next offset."""
    offset = first
    for e in envelopes:
        w.write("g", generation, [PartitionBatch(0, offset, offset + 1, e.num_rows)], e)
        offset += 1
    return offset


def fetch(conninfo: str, query: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(conninfo) as c:
        return c.execute(query, params).fetchall()


def intervals(conninfo: str) -> list[tuple[Any, ...]]:
    return fetch(
        conninfo,
        "SELECT g.uuid, concat_ws('/', w.namespace, w.pod, w.container, w.job), a.started, a.ended "
        "FROM allocations a JOIN gpus g USING (gpu_key) JOIN workloads w USING (workload_id) "
        "ORDER BY g.uuid, a.started",
    )


def usage(conninfo: str, table: str = "usage_1m") -> dict[tuple[str, str | None], tuple[float, ...]]:
    rows = fetch(
        conninfo,
        f"SELECT g.uuid, w.namespace, w.pod, w.container, w.job, sum(u.seconds), sum(u.active_s), sum(u.mem_idle_s), "
        f"sum(u.util_s), sum(u.energy_j) FROM {table} u JOIN gpus g USING (gpu_key) "
        "LEFT JOIN workloads w USING (workload_id) GROUP BY 1, 2, 3, 4, 5",
    )
    return {(r[0], "/".join(x for x in r[1:5] if x) or None): tuple(float(v) for v in r[5:]) for r in rows}


def expected() -> dict[tuple[str, str | None], tuple[float, ...]]:
    def name(w: str | None) -> str | None:
        return "/".join(f for f in w.split("\x1f") if f) if w else None

    out = {(GPU_X, name(w)): v for w, v in EXPECTED_X.items()}
    out.update({(GPU_Y, name(w)): v for w, v in EXPECTED_Y.items()})
    return out


def assert_groups_agree(conninfo: str) -> None:
    """Every tier of the group rollups (025) is its per-GPU tier summed per namespace, job, host and model
    (while no GPU changes host: a fold files a cell under its GPU's host of that moment)."""
    for tier in ("1m", "1h", "1d"):
        grouped = fetch(
            conninfo,
            "SELECT bucket, dim, grp, seconds, alloc_s, active_s, mem_idle_s, util_s, energy_j "
            f"FROM usage_groups_{tier} ORDER BY 1, 2, 3",
        )
        summed = fetch(
            conninfo,
            "SELECT u.bucket, d.dim, d.grp, sum(u.seconds), "
            "coalesce(sum(u.seconds) FILTER (WHERE u.workload_id <> 0), 0), sum(u.active_s), sum(u.mem_idle_s), "
            "sum(u.util_s), sum(u.energy_j) "
            f"FROM usage_{tier} u LEFT JOIN workloads w USING (workload_id) JOIN gpus g USING (gpu_key) "
            "CROSS JOIN LATERAL (VALUES ('namespace', w.namespace), ('job', w.job), ('hostname', g.hostname), "
            "('model', g.model)) d(dim, grp) GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
        )
        assert grouped and [r[:3] for r in grouped] == [r[:3] for r in summed], tier
        for got, want in zip(grouped, summed, strict=True):
            assert [float(x) for x in got[3:]] == pytest.approx([float(x) for x in want[3:]]), (tier, got[:3])


def fold(conninfo: str) -> None:
    with psycopg.connect(conninfo) as c:
        while compact(c, timescaledb=False, limit=3).log_rows:
            pass


EXPECTED_INTERVALS = [
    (GPU_Y, "slurm-7", at(0), None),
    (GPU_X, "ml/train-a/main", at(0), at(30)),
    (GPU_X, "research/notebook-b/main", at(30), at(120)),
]


def sorted_intervals(conninfo: str) -> list[tuple[Any, ...]]:
    return sorted(intervals(conninfo), key=lambda r: (r[0] != GPU_Y, r[2]))


def test_pod_a_for_30_s_then_pod_b_for_90_s_is_exactly_that(fresh_db: str) -> None:
    w = writer(fresh_db)
    w.claim("g", 1, [0])
    feed(w, scenario(step=7))
    w.close()
    assert sorted_intervals(fresh_db) == EXPECTED_INTERVALS
    fold(fresh_db)
    assert usage(fresh_db) == expected()
    assert usage(fresh_db, "usage_1h") == expected()  # the hour and day rollups agree with the minutes
    assert usage(fresh_db, "usage_1d") == expected()
    assert_groups_agree(fresh_db)
    assert fetch(fresh_db, "SELECT count(*) FROM usage_log") == [(0,)]
    # every minute cell is in the minute of its samples: 0:00-0:59, 1:00-1:59, 2:00-2:28 (X's last hold unknown)
    minutes = fetch(
        fresh_db,
        "SELECT bucket, sum(seconds) FROM usage_1m u JOIN gpus g USING (gpu_key) WHERE g.uuid = %s "
        "GROUP BY 1 ORDER BY 1",
        GPU_X,
    )
    assert [(b, float(s)) for b, s in minutes] == [(at(0), 60.0), (at(60), 60.0), (at(120), 29.0)]


def test_batches_of_any_size_give_the_same_answers(fresh_db: str) -> None:
    w = writer(fresh_db)
    w.claim("g", 1, [0])
    feed(w, scenario(step=61))
    w.close()
    fold(fresh_db)
    assert sorted_intervals(fresh_db) == EXPECTED_INTERVALS
    assert usage(fresh_db) == expected()


def test_a_partition_handed_over_mid_stream_counts_every_hold_once(fresh_db: str) -> None:
    envelopes = list(scenario(step=10))
    first = writer(fresh_db)
    first.claim("g", 1, [0])
    offset = feed(first, envelopes[:8])  # up to second 80, inside pod B
    fold(fresh_db)  # some of the log is compacted, some not: the next owner needs both
    feed(first, envelopes[8:10], first=offset)
    second = writer(fresh_db)
    second.claim("g", 2, [0])
    with pytest.raises(FencedError):  # the old owner is fenced: its write adds nothing
        feed(first, envelopes[10:11], generation=1, first=offset + 2)
    feed(second, envelopes[10:], generation=2, first=offset + 2)
    first.close()
    second.close()
    fold(fresh_db)
    assert sorted_intervals(fresh_db) == EXPECTED_INTERVALS
    assert usage(fresh_db) == expected()
    assert_groups_agree(fresh_db)


def test_a_replayed_batch_adds_no_interval_event_or_usage(fresh_db: str) -> None:
    w = writer(fresh_db)
    w.claim("g", 1, [0])
    envelopes = list(scenario(step=25, xids={40: 79.0}))
    feed(w, envelopes[:3])
    with pytest.raises(OffsetMismatch):
        feed(w, envelopes[1:2], first=1)  # already stored: refused, nothing written
    feed(w, envelopes[3:], first=3)
    w.close()
    fold(fresh_db)
    assert sorted_intervals(fresh_db) == EXPECTED_INTERVALS
    assert usage(fresh_db) == expected()
    assert_groups_agree(fresh_db)
    assert fetch(fresh_db, "SELECT count(*) FROM gpu_events") == [(1,)]
    totals = fetch(fresh_db, "SELECT count(*), count(DISTINCT (gpu_key, metric_id, ts)) FROM telemetry")
    assert totals == [(SECONDS * 7, SECONDS * 7)]  # X: util, power, fb, xid; Y: util, power, fb


def test_xid_codes_become_events_when_they_change_to_a_code(fresh_db: str) -> None:
    w = writer(fresh_db)
    w.claim("g", 1, [0])
    # 79 from second 10 to 14, back to 0, then 13 at 50 and 79 again at 51 (a change between codes)
    xids = {s: 79.0 for s in range(10, 15)} | {50: 13.0, 51: 79.0}
    feed(w, scenario(step=4, xids=xids))
    w.close()
    rows = fetch(
        fresh_db,
        "SELECT g.uuid, e.ts, e.kind, e.code, x.meaning FROM gpu_events e JOIN gpus g USING (gpu_key) "
        "LEFT JOIN xid_codes x USING (code) ORDER BY e.ts",
    )
    assert rows == [
        (GPU_X, at(10), "xid", 79, "GPU has fallen off the bus"),
        (GPU_X, at(50), "xid", 13, "Graphics Engine Exception"),
        (GPU_X, at(51), "xid", 79, "GPU has fallen off the bus"),
    ]


def test_gpu_facts_and_the_mig_device_land_on_the_gpu_rows(fresh_db: str) -> None:
    w = writer(fresh_db)
    w.claim("g", 1, [0])
    feed(w, scenario(step=50))
    w.close()
    rows = fetch(
        fresh_db,
        "SELECT uuid, driver_version, instance, parent_uuid, mig_instance, mig_profile FROM gpus ORDER BY uuid",
    )
    assert rows == [
        (GPU_Y, "535.129.03", "node-1:9400", "GPU-parent", 2, "3g.40gb"),
        (GPU_X, "535.129.03", "node-1:9400", None, None, None),
    ]


def test_latest_values_are_the_newest_committed_samples(fresh_db: str) -> None:
    w = writer(fresh_db)
    w.claim("g", 1, [0])
    feed(w, scenario(step=30))
    rows = fetch(
        fresh_db,
        "SELECT g.uuid, m.name, l.last_ts, l.last_value FROM gpu_metrics l JOIN gpus g USING (gpu_key) "
        "JOIN metrics m USING (metric_id) ORDER BY 1, 2",
    )
    assert rows == [
        (GPU_Y, "DCGM_FI_DEV_FB_USED", at(149), 8192.0),
        (GPU_Y, "DCGM_FI_DEV_GPU_UTIL", at(149), 50.0),
        (GPU_Y, "DCGM_FI_DEV_POWER_USAGE", at(149), 200.0),
        (GPU_X, "DCGM_FI_DEV_FB_USED", at(149), 500.0),
        (GPU_X, "DCGM_FI_DEV_GPU_UTIL", at(149), 0.0),
        (GPU_X, "DCGM_FI_DEV_POWER_USAGE", at(149), 50.0),
    ]
    assert fetch(fresh_db, "SELECT count(*), min(ts) FROM gpu_latest") == [(2, at(149))]
    w.close()


def test_latest_values_wait_for_their_period_and_are_flushed_on_close(fresh_db: str) -> None:
    w = writer(fresh_db, AttributionSettings(latest_every_s=3600))  # type: ignore[call-arg]
    w.claim("g", 1, [0])
    feed(w, scenario(step=30))
    assert fetch(fresh_db, "SELECT count(*) FROM gpu_latest") == [(0,)]  # not yet: the period has not passed
    w.close()
    assert fetch(fresh_db, "SELECT count(*), min(ts) FROM gpu_latest") == [(2, at(149))]


def test_an_older_writer_never_sets_latest_values_back(fresh_db: str) -> None:
    envelopes = list(scenario(step=30))
    old = writer(fresh_db, AttributionSettings(latest_every_s=3600))  # type: ignore[call-arg]
    old.claim("g", 1, [0])
    offset = feed(old, envelopes[:2])  # holds seconds 0..59, unflushed
    new = writer(fresh_db)
    new.claim("g", 2, [0])
    feed(new, envelopes[2:], generation=2, first=offset)
    old.close()  # flushes its older values: refused row by row
    assert fetch(fresh_db, "SELECT count(*), min(ts) FROM gpu_latest") == [(2, at(149))]
    new.close()


def test_attribution_off_writes_samples_only(fresh_db: str) -> None:
    w = writer(fresh_db, AttributionSettings(enabled=False))  # type: ignore[call-arg]
    w.claim("g", 1, [0])
    feed(w, scenario(step=30))
    w.close()
    assert fetch(fresh_db, "SELECT count(*) FROM telemetry") == [(SECONDS * 6,)]
    for table in ("allocations", "gpu_latest", "usage_log", "gpu_events"):
        assert fetch(fresh_db, f"SELECT count(*) FROM {table}") == [(0,)], table


def test_a_compaction_waits_for_another_and_folds_exactly_once(fresh_db: str) -> None:
    w = writer(fresh_db)
    w.claim("g", 1, [0])
    feed(w, scenario(step=15))
    w.close()
    with psycopg.connect(fresh_db) as holder, psycopg.connect(fresh_db) as other:
        with holder.transaction():
            holder.execute("SELECT pg_advisory_xact_lock(%s)", (0x6770_7575_7361,))
            assert compact(other, timescaledb=False).skipped
        report = compact(other, timescaledb=False)
        assert report.log_rows == 10 and compact(other, timescaledb=False).log_rows == 0
    assert usage(fresh_db) == expected()
    state = fetch(fresh_db, "SELECT g.uuid, s.ts FROM usage_state s JOIN gpus g USING (gpu_key) ORDER BY 1")
    assert state == [(GPU_Y, at(149)), (GPU_X, at(149))]  # each GPU's last sample, its hold still open


def test_workloads_are_registered_once_whoever_sees_them(fresh_db: str) -> None:
    a, b = writer(fresh_db), writer(fresh_db)
    a.claim("g", 1, [0])
    b.claim("g", 1, [1])
    envelopes = list(scenario(step=75))
    a.write("g", 1, [PartitionBatch(0, 0, 1, envelopes[0].num_rows)], envelopes[0])
    b.write("g", 1, [PartitionBatch(1, 0, 1, envelopes[0].num_rows)], envelopes[0])
    a.close()
    b.close()
    names = fetch(fresh_db, "SELECT namespace, pod, job FROM workloads ORDER BY workload_id")
    assert sorted(names, key=str) == sorted(
        [("ml", "train-a", None), ("research", "notebook-b", None), (None, None, "slurm-7")], key=str
    )


def test_compaction_expires_the_rollups_past_their_retention(fresh_db: str) -> None:
    """Plain PostgreSQL: every rollup; TimescaleDB: only the group rollups (its policies drop the rest, 024)."""
    old = {"1m": "8 days", "1h": "366 days", "1d": "1826 days"}  # each just past its tier's retention
    young = {"1m": "6 days", "1h": "364 days", "1d": "1824 days"}

    def load() -> None:
        with psycopg.connect(fresh_db) as c:
            for tier in old:
                for age in (old[tier], young[tier]):
                    c.execute(f"INSERT INTO usage_{tier} VALUES (now() - %s::interval, 1, 0, 60, 0, 0, 0, 0)", (age,))
                    c.execute(
                        f"INSERT INTO usage_groups_{tier} VALUES (now() - %s::interval, 'model', 'H100', "
                        "60, 0, 0, 0, 0, 0)",
                        (age,),
                    )

    def counts() -> list[int]:
        return [
            fetch(fresh_db, f"SELECT count(*) FROM usage_{kind}{tier}")[0][0]
            for kind in ("", "groups_")
            for tier in old
        ]

    load()
    with psycopg.connect(fresh_db) as c:
        assert compact(c, timescaledb=True).expired == 3
    assert counts() == [2, 2, 2, 1, 1, 1]
    with psycopg.connect(fresh_db) as c:
        assert compact(c, timescaledb=False).expired == 3
    assert counts() == [1, 1, 1, 1, 1, 1]
    assert fetch(fresh_db, "SELECT count(*) FROM usage_groups_1m WHERE bucket > now() - interval '7 days'") == [(1,)]


def test_every_rollup_expires_through_an_index_on_its_bucket(fresh_db: str) -> None:
    """The compaction's expiry deletes by bucket alone, every round: each rollup needs an index led by it."""
    leading = {
        table: first
        for table, first in fetch(
            fresh_db,
            "SELECT c.relname, a.attname FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid "
            "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0] "
            "WHERE c.relname LIKE 'usage%%' AND a.attname = 'bucket'",
        )
    }
    tables = [t for t, _ in RETENTION + GROUP_RETENTION]
    assert sorted(leading) == sorted(tables)


def test_the_backfill_takes_the_compactions_lock() -> None:
    """025 folds what was compacted before it under the same advisory lock as the compaction."""
    text = (Path(__file__).resolve().parents[2] / "sql" / "025_usage_groups.sql").read_text()
    assert f"pg_advisory_xact_lock({LOCK_KEY})" in text
