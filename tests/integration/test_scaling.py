"""Elastic scaling on a real local Ray cluster: lag-driven collectors, re-split streamers, exact rows."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from pipeline.config import Settings
from pipeline.runtime.driver import Pipeline
from pipeline.sources.synthetic import write_csv
from pipeline.storage.database import Database
from tests.integration.test_faults import expected_multiset, stored_multiset
from tests.support import assert_healthy, unique_namespace


def wait_for(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def collectors(p: Pipeline) -> int:
    return int(p.progress().status["roles"]["collector"]["actual"])


def test_a_burst_adds_collectors_and_they_go_when_it_is_over(ray_local: None, fresh_db: str, tmp_path: Path) -> None:
    csv = tmp_path / "fleet.csv"
    rows = write_csv(csv, hosts=16)  # 1,280 rows
    passes = 250
    settings = Settings.load(
        overrides={
            "streamer": {"csv": csv, "count": 1, "interval_s": 0, "batch_rows": 5000, "passes": passes},
            "collector": {"count": 1, "max_rows": 1500, "poll_timeout_s": 0.05},
            "ray": {"namespace": unique_namespace()},
            "queue": {"partitions": 6, "group": "burst"},
            "scaling": {
                "collectors_min": 1,
                "collectors_max": 3,
                "target_lag": 1000,
                "period_s": 0.3,
                "up_window_s": 0.6,
                "down_window_s": 1.5,
                "rate_period_s": 0.6,
            },
        },
        environ={},
    )
    p = Pipeline(settings, Database(fresh_db))
    p.deploy(fresh=True)
    most = 1
    try:
        deadline = time.monotonic() + 240
        while True:
            progress = p.progress()
            # What the supervisor decided, not only what a poll happened to see: under load a poll can
            # take longer than a scale-up and the scale-down after it.
            ups = [int(d["desired"]) for d in progress.status["decisions"] if d["direction"] == "up"]
            most = max(most, int(progress.status["roles"]["collector"]["actual"]), *ups)
            if progress.streamers_done:
                break
            assert time.monotonic() < deadline
            time.sleep(0.1)
        p.drain(timeout_s=120)
        wait_for(lambda: collectors(p) == 1, 60, "scale-down to the minimum after the burst")
        decisions = p.progress().status["decisions"]
        stored, _ = p.stored_totals()
    finally:
        p.stop()
    assert most > 1, "the burst never added a collector"
    assert most <= 3
    assert {d["direction"] for d in decisions} >= {"up", "down"}
    assert all(d["reason"] for d in decisions)
    assert stored == passes * rows
    assert stored_multiset(fresh_db) == expected_multiset(csv, passes)


def test_streamers_rescaled_during_a_run_produce_each_row_once(ray_local: None, fresh_db: str, tmp_path: Path) -> None:
    csv = tmp_path / "fleet.csv"
    rows = write_csv(csv, hosts=4, scrapes=2)
    passes = 60
    settings = Settings.load(
        overrides={
            "streamer": {"csv": csv, "count": 1, "interval_s": 0.05, "batch_rows": 300, "passes": passes},
            "collector": {"count": 2, "poll_timeout_s": 0.05},
            "ray": {"namespace": unique_namespace()},
            "queue": {"partitions": 4, "group": "resplit"},
        },
        environ={},
    )
    p = Pipeline(settings, Database(fresh_db))
    p.deploy(fresh=True)
    try:
        wait_for(lambda: p.progress().produced > 0, 60, "first rows")
        status = p.scale("streamer", 3)
        assert status["roles"]["streamer"]["actual"] == 3 and status["roles"]["streamer"]["pinned"] == 3
        before = p.progress().produced
        wait_for(lambda: p.progress().produced > before, 60, "the three streamers to produce")
        status = p.scale("streamer", 1)
        assert status["roles"]["streamer"]["actual"] == 1
        wait_for(lambda: p.progress().streamers_done, 180, "streamers to finish")
        final = p.drain(timeout_s=120)
        assert_healthy(p)
        stored, _ = p.stored_totals()
    finally:
        p.stop()
    got, want = stored_multiset(fresh_db), expected_multiset(csv, passes)
    assert got == want, (
        final.produced,
        stored,
        sum(got.values()),
        {k: (got[k], want[k]) for k in want if got[k] != want[k]},
    )
    assert final.produced == stored == passes * rows


def test_bounds_are_checked_when_settings_load() -> None:
    from pipeline.errors import ConfigError

    with pytest.raises(ConfigError, match="collectors_min \\(4\\) exceeds scaling.collectors_max \\(2\\)"):
        Settings.load(overrides={"scaling": {"collectors_min": 4, "collectors_max": 2}}, environ={})
