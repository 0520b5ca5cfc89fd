"""The dev overlay executed, not only validated: its RayJob, Serve config and worker groups on real Ray.

The harness (``kuberay_harness.py``, in a subprocess: it runs its own multi-node cluster, which cannot
share a process with this session's ``ray_local``) renders the overlay, starts a head and one node per
worker group with their rayStartParams, submits the pipeline RayJob's own entrypoint through the Jobs
API with the cluster's token, deploys the Serve config through the dashboard (its replicas on the gateway
node, whose DATABASE_URL is a read-only login as the gateway group's Secret says), then drives three faults:
the job's driver SIGKILLed (a resubmitted job attaches), the streamer and collector nodes removed, the
GCS killed and restarted. Each ends with ``stop --json`` and an exact produced/stored comparison.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

HARNESS = Path(__file__).with_name("kuberay_harness.py")
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(1800)  # its own cluster and three faults; the default 600 s would orphan that cluster
def test_the_dev_overlay_runs_on_a_multi_node_cluster_and_survives_three_faults(fresh_db: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "PIPELINE_"))}
    proc = subprocess.Popen(
        [sys.executable, str(HARNESS), "--database-url", fresh_db],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = proc.communicate(timeout=1500)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
        pytest.fail(f"the harness ran too long:\n{out[-3000:]}\n{err[-6000:]}")
    lines = [ln for ln in out.splitlines() if ln.startswith("{")]
    assert lines, f"no report (exit {proc.returncode}):\n{out[-3000:]}\n{err[-8000:]}"
    report = json.loads(lines[-1])
    assert proc.returncode == 0 and "error" not in report, f"{report}\n{err[-8000:]}"
    assert report["entrypoint"].split()[:4] == ["python", "-m", "pipeline", "deploy"]
    assert report["a"]["driver_killed"] and "nothing changed" in report["a"]["resubmitted"]
    # The gateway group's pods connect as the read-only login (gpu-telemetry-gateway-db), not the owner.
    logins = report["a"]["logins"]
    assert logins["gateway_login"].startswith("harness_gateway_reader_"), logins
    assert logins["gateway_login"] in logins["sessions"] and logins["owner_login"] in logins["sessions"], logins
    assert report["b"]["moved"] == {"streamer-0": 1, "collector-0": 1}, report["b"]  # they lost their nodes
    for phase in ("a", "b", "c"):
        r = report[phase]
        assert r["stored"] == r["produced"] > 0, (phase, r)  # 0 lost
        assert r["rows_in_db"] == r["distinct_in_db"], (phase, r)  # 0 duplicated
