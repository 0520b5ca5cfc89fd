"""A broker that restarts without its log (no queue dir) loses nothing and stores nothing twice.

Before: the new incarnation started at the offsets its creator had read at start-up, the collector
jumped to the log's end, and rows the brokers had acknowledged but no collector had committed were
gone. Now every incarnation starts at the offsets committed in the database and knows each producer's
committed sequence numbers; it refuses the next append of a producer that last saw its predecessor,
and the producer re-sends every flush it retained (acknowledged, not yet committed) first.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import psycopg
import pytest
import ray

from pipeline.config import Settings
from pipeline.runtime.driver import Pipeline
from pipeline.sources.synthetic import write_csv
from pipeline.storage.database import Database
from tests.support import assert_healthy, unique_namespace


@pytest.mark.parametrize(
    ("broker", "then_streamer"),
    [(0, False), (1, False), (0, True)],
    ids=["broker-0", "broker-1", "broker-0-then-the-streamer"],
)
def test_a_broker_restarted_empty_loses_and_duplicates_nothing(
    ray_local: None, fresh_db: str, tmp_path: Path, broker: int, then_streamer: bool
) -> None:
    """``then_streamer``: the streamer restarts after broker 0 lost its state; its checkpoint (in the
    database, no longer on broker 0) says where it was: it neither replays from the start nor skips."""
    csv = tmp_path / "fleet.csv"
    rows = write_csv(csv, hosts=4, scrapes=1)  # 320 rows a pass
    passes = 30
    settings = Settings.load(
        overrides={
            "streamer": {"csv": csv, "count": 1, "interval_s": 0.05, "batch_rows": 200, "passes": passes},
            # slow collectors: the brokers hold acknowledged, uncommitted rows when one dies
            "collector": {"count": 2, "poll_timeout_s": 0.2, "max_rows": 300},
            "queue": {"partitions": 4, "brokers": 2, "group": "loss", "session_timeout_s": 5.0},
            "ray": {"namespace": unique_namespace()},
        },
        environ={},
    )
    p = Pipeline(settings, Database(fresh_db))
    p.deploy(fresh=True)
    try:
        deadline = time.monotonic() + 60
        while p.progress().stored < 2 * rows:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        # Freeze the collectors so the brokers hold acknowledged rows no collector has fetched, then
        # kill a broker: its log (no queue dir) goes with it.
        collectors = [ray.get(c.stats.remote())["pid"] for c in p.collectors]
        for pid in collectors:
            os.kill(pid, signal.SIGSTOP)
        handle = p.brokers[broker]
        deadline = time.monotonic() + 30
        while (held := sum(s["rows_held"] for s in ray.get(handle.stats.remote())["partitions"].values())) < rows:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        os.kill(ray.get(handle.stats.remote())["pid"], signal.SIGKILL)
        for pid in collectors:
            os.kill(pid, signal.SIGCONT)
        if then_streamer:  # once it has re-sent what the broker lost (two faults at once are not this test)
            deadline = time.monotonic() + 60
            while (s := ray.get(p.streamers[0].stats.remote(), timeout=60))["resent"] == 0:
                assert time.monotonic() < deadline, "the streamer never re-sent"
                time.sleep(0.1)
            time.sleep(2.0)  # let the re-send finish: it began, it is not done at its first flush
            os.kill(s["pid"], signal.SIGKILL)
        deadline = time.monotonic() + 240
        while not p.progress().streamers_done:
            assert time.monotonic() < deadline, "streamers did not finish"
            time.sleep(0.2)
        p.drain(timeout_s=120)
        assert_healthy(p)
        resent = sum(int(s.get("resent", 0)) for s in p.progress().streamers)
    finally:
        p.stop()
    with psycopg.connect(fresh_db) as c:
        total, distinct = c.execute(
            "SELECT count(*), count(DISTINCT (gpu_key, metric_id, ts)) FROM telemetry"
        ).fetchone()
    assert total == distinct == passes * rows, (total, distinct, passes * rows, held, resent)
    if not then_streamer:
        assert resent > 0  # the streamer did re-send what the lost log held
