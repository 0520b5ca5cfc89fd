"""A broker away longer than a call's deadline (its process frozen) is waited out, never fatal.

Before: a collector's fetch raised GetTimeoutError out of its worker thread (the thread ended, the
actor stayed up reporting nothing), and streamers blocked forever in publish. Now every call has a
deadline, a missed one is a QueueError the worker retries with backoff, and both resume.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import psycopg
import ray

from pipeline.config import Settings
from pipeline.runtime.driver import Pipeline
from pipeline.sources.synthetic import write_csv
from pipeline.storage.database import Database
from tests.support import assert_healthy, unique_namespace


def test_a_broker_frozen_past_the_call_deadline_is_waited_out(ray_local: None, fresh_db: str, tmp_path: Path) -> None:
    csv = tmp_path / "fleet.csv"
    rows = write_csv(csv, hosts=2, scrapes=1)  # 160 rows a pass
    passes = 40
    settings = Settings.load(
        overrides={
            "streamer": {"csv": csv, "count": 1, "interval_s": 0.05, "batch_rows": 100, "passes": passes},
            "collector": {"count": 2, "poll_timeout_s": 0.05},
            "queue": {"partitions": 4, "group": "away", "call_timeout_s": 1.0, "session_timeout_s": 30.0},
            "ray": {"namespace": unique_namespace()},
        },
        environ={},
    )
    p = Pipeline(settings, Database(fresh_db))
    p.deploy(fresh=True)
    try:
        deadline = time.monotonic() + 60
        while p.progress().stored == 0:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        broker_pid = ray.get(p.brokers[0].stats.remote())["pid"]
        os.kill(broker_pid, signal.SIGSTOP)  # away: alive but silent, 5x the call deadline
        time.sleep(5)
        os.kill(broker_pid, signal.SIGCONT)
        deadline = time.monotonic() + 180
        while not p.progress().streamers_done:
            assert time.monotonic() < deadline, "streamers did not finish after the broker came back"
            time.sleep(0.2)
        p.drain(timeout_s=120)
        assert_healthy(p)
        retries = sum(int(c.get("retries", 0)) for c in p.progress().collectors)
        assert retries > 0  # the collectors did see the broker away, and waited
    finally:
        p.stop()
    with psycopg.connect(fresh_db) as c:
        total, distinct = c.execute(
            "SELECT count(*), count(DISTINCT (gpu_key, metric_id, ts)) FROM telemetry"
        ).fetchone()
    assert total == distinct == passes * rows
