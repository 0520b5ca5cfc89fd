"""The whole Ray cluster lost (a head restart without GCS fault tolerance): deploy again, nothing lost or doubled.

Every actor goes with the cluster; what the pipeline needs to resume lives in the database (the
stored deployment, the streamers' checkpoints, the producers' sequences, the committed offsets). The
script ``cluster_loss.py`` runs in a subprocess because it starts and ends its own Ray clusters.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.sources.synthetic import write_csv
from tests.support import unique_namespace

pytestmark = pytest.mark.integration

SCRIPT = Path(__file__).with_name("cluster_loss.py")
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(900)
def test_a_lost_cluster_resumes_on_a_new_one_with_every_sample_stored_once(fresh_db: str, tmp_path: Path) -> None:
    """With the brokers' queue dir on volumes that outlive the cluster (the overlays' PVCs)."""
    csv = tmp_path / "fleet.csv"
    rows = write_csv(csv, hosts=4, scrapes=2)
    passes = 40
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "PIPELINE_"))}
    args = ["--database-url", fresh_db, "--csv", str(csv), "--passes", str(passes), "--namespace", unique_namespace()]
    args += ["--queue-dir", str(tmp_path / "queue")]
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=800
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    assert proc.returncode == 0 and lines, f"exit {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-6000:]}"
    report = json.loads(lines[-1])
    assert report["action"] == "created"  # a new supervisor, from the stored deployment
    assert 0 < report["before_loss"] < passes * rows, report  # the loss came mid-stream
    assert report["total"] == report["distinct"] == passes * rows, report  # 0 lost, 0 duplicated
    assert report["problems"] == [], report
