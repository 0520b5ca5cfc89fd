"""The whole pipeline on a real local Ray cluster and a real PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from pipeline.config import Settings
from pipeline.runtime.driver import Pipeline
from pipeline.sources.synthetic import write_csv
from pipeline.storage.database import Database
from tests.support import assert_healthy, unique_namespace


def settings_for(csv: Path, **streamer: object) -> Settings:
    return Settings.load(
        overrides={
            "streamer": {"csv": csv, "count": 2, "interval_s": 0, "batch_rows": 500, **streamer},
            "collector": {"count": 2, "poll_timeout_s": 0.05},
            "ray": {"namespace": unique_namespace()},
            "queue": {"partitions": 4, "group": "it"},
        },
        environ={},
    )


def test_k_passes_with_two_streamers_and_collectors_store_exactly_k_times(
    ray_local: None, fresh_db: str, tmp_path: Path
) -> None:
    csv = tmp_path / "fleet.csv"
    rows = write_csv(csv, hosts=6, scrapes=2)  # 960 rows
    p = Pipeline(settings_for(csv, passes=3), Database(fresh_db))
    p.deploy(fresh=True)
    try:
        import time

        deadline = time.monotonic() + 120
        while not p.progress().streamers_done:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        final = p.drain(timeout_s=60)
        assert_healthy(p)
        stored, rejects = p.stored_totals()
    finally:
        p.stop()
    assert final.produced == 3 * rows and stored == 3 * rows and rejects == 0
    with psycopg.connect(fresh_db) as c:
        total, distinct = c.execute(
            "SELECT count(*), count(DISTINCT (gpu_key, metric_id, ts)) FROM telemetry"
        ).fetchone()  # type: ignore[misc]
        assert total == distinct == 3 * rows
        # each series appears once per scrape per pass, with strictly increasing timestamps
        per_series = c.execute("SELECT count(*) FROM telemetry GROUP BY gpu_key, metric_id").fetchall()
        assert {n for (n,) in per_series} == {6}
        assert c.execute("SELECT count(*) FROM gpus").fetchone() == (48,)


def test_partitions_must_cover_the_collectors(fresh_db: str, tmp_path: Path) -> None:
    from pipeline.errors import ConfigError

    with pytest.raises(ConfigError, match=r"queue.partitions \(4\) must be at least the largest number of collectors"):
        Settings.load(overrides={"collector": {"count": 5}, "queue": {"partitions": 4}}, environ={})
    with pytest.raises(ConfigError, match="largest number of collectors \\(6\\)"):
        Settings.load(overrides={"scaling": {"collectors_max": 6}, "queue": {"partitions": 4}}, environ={})
