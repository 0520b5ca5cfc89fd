"""Replicated partitions on a real multi-node Ray cluster (head + 3 broker nodes, replication_factor 3,
min_insync 2, the real CSV streamed flat out): a leader's node lost, a follower's node lost and
back, an old leader back from its disk with entries the new leader lacks.

Each scenario runs in a subprocess (``replication_scenarios.py``): it needs a Ray session of its own,
and this test session's is ``ray_local``. After every fault the database holds exactly what was
produced: count(*) = count(DISTINCT (gpu_key, metric_id, ts)) = produced, and every actor is healthy.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration

SCRIPT = Path(__file__).with_name("replication_scenarios.py")
ROOT = Path(__file__).resolve().parents[2]


def run_scenario(name: str, db: str, csv: Path, *extra: str, timeout_s: float = 420) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), name, "--db", db, "--csv", str(csv), *extra],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
        pytest.fail(f"scenario {name} ran over {timeout_s:.0f}s: {out[-2000:]}\n{err[-4000:]}")
    lines = [line for line in out.splitlines() if line.startswith("{")]
    assert lines, f"no JSON line from scenario {name} (exit {proc.returncode}):\n{out[-2000:]}\n{err[-6000:]}"
    report: dict[str, Any] = json.loads(lines[-1])
    assert proc.returncode == 0 and "error" not in report, f"{report}\n{err[-6000:]}"
    return report


def assert_exact(report: dict[str, Any]) -> None:
    assert report["produced"] > 0
    assert report["rows"] == report["distinct"] == report["produced"], report


def test_a_leaders_node_lost_mid_stream_fails_over_within_seconds_and_loses_nothing(
    fresh_db: str, real_csv: Path
) -> None:
    report = run_scenario("leader", fresh_db, real_csv)
    assert report["new_leaders"] and report["victim"] not in report["new_leaders"].values()
    assert report["resumed_s"] <= 10, report  # the bound: producing and consuming on a new leader
    assert_exact(report)


def test_a_followers_node_lost_stalls_nothing_is_reported_and_repaired_when_a_node_returns(
    fresh_db: str, real_csv: Path
) -> None:
    report = run_scenario("follower", fresh_db, real_csv)
    during = report["stored_during"]
    assert during[-1] > report["stored_before"] and during[-1] > during[0], report  # commits went on
    assert report["under_replicated"]
    status = report["status_text"]  # `python -m pipeline status` names the leader, replicas and in-sync set
    assert "partition 0: leader 0, epoch" in status and "UNDER-REPLICATED" in status, status
    rebuilt = report["rebuilt"]
    assert {s["role"] for s in rebuilt.values()} == {"follower"} and not any(s["fresh"] for s in rebuilt.values())
    assert_exact(report)


def test_an_old_leader_back_from_its_disk_is_fenced_and_cuts_what_was_never_acknowledged(
    fresh_db: str, real_csv: Path, tmp_path: Path
) -> None:
    report = run_scenario("old-leader", fresh_db, real_csv, "--queue-dir", str(tmp_path / "queue"))
    assert report["tail"]["end_offset"] > report["tail"]["high_water"]  # it held entries beyond the HW
    back = report["old_leader_back"]
    # Its entry beyond the HW is gone from its log: cut at the divergence, or below where its log now
    # starts (see the scenario: a path seen in some runs, not yet explained).
    assert back["truncated"] >= 1 or back["start_offset"] > report["tail"]["end_offset"] - 1
    assert back["role"] == "follower"
    assert back["epoch"] > report["tail"]["epoch"]
    assert report["probe_rows"] == 0  # the entry only the old leader held never reached the database
    assert_exact(report)
