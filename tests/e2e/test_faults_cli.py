"""`python -m pipeline run` survives kill -9 of a Collector, a Streamer and a Broker process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import psycopg
import pytest

from tests.e2e.test_cli import ROOT, dataset, user_env  # noqa: F401  (fixtures)

pytestmark = pytest.mark.e2e


def actor_process(root: psutil.Process, title: str) -> psutil.Process | None:
    """A descendant of ``root`` whose process title is ``ray::<title>`` (Ray sets it)."""
    for child in root.children(recursive=True):
        try:
            cmd = child.cmdline()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if cmd and cmd[0].startswith(f"ray::{title}"):
            return child
    return None


def stored(conninfo: str) -> int:
    try:
        with psycopg.connect(conninfo) as c:
            return int(c.execute("SELECT count(*) FROM telemetry").fetchone()[0])  # type: ignore[index]
    except psycopg.errors.UndefinedTable:
        return 0


def test_run_survives_kill_9_of_collector_streamer_and_broker(
    dataset: tuple[Path, int, int],  # noqa: F811
    fresh_db: str,
    user_env: dict[str, str],  # noqa: F811
    tmp_path: Path,
) -> None:
    csv, rows, _ = dataset
    passes = 200
    env = {**user_env, "DATABASE_URL": fresh_db}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pipeline",
            "run",
            "--csv",
            str(csv),
            "--passes",
            str(passes),
            "--interval",
            "0",
            "--collectors",
            "2",
            "--queue-dir",
            str(tmp_path / "queue"),
            "--no-serve",
            "--json",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    root = psutil.Process(proc.pid)
    killed: list[str] = []
    stored_when_killed: list[int] = []
    try:
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline and stored(fresh_db) == 0:
            time.sleep(0.02)  # kill mid-stream: once rows are arriving
        while len(killed) < 3 and time.monotonic() < deadline and proc.poll() is None:
            for title in ("Collector", "Streamer", "Broker"):
                if title in killed:
                    continue
                victim = actor_process(root, title)
                if victim is not None:
                    os.kill(victim.pid, signal.SIGKILL)
                    killed.append(title)
                    stored_when_killed.append(stored(fresh_db))
                    time.sleep(0.3)
            time.sleep(0.05)
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert killed == ["Collector", "Streamer", "Broker"], (killed, err[-2000:])
    assert 0 < stored_when_killed[0] < passes * rows  # the first kill landed mid-stream
    assert proc.returncode == 0, err[-3000:]
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["stored"] == passes * rows
    with psycopg.connect(fresh_db) as c:
        total, distinct = c.execute(
            "SELECT count(*), count(DISTINCT (gpu_key, metric_id, ts)) FROM telemetry"
        ).fetchone()  # type: ignore[misc]
    assert total == distinct == passes * rows
