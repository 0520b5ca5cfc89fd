"""Pipeline actors' resource requests drive Ray's autoscaler: nodes come for pending collectors, idle ones go.

The demo runs a fake multi-node autoscaling cluster (autoscaler v2, as on KubeRay) in a subprocess: it
cannot share a process with another Ray session, such as this test session's ``ray_local``.
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

DEMO = Path(__file__).with_name("autoscaler_demo.py")
ROOT = Path(__file__).resolve().parents[2]
IDLE_TIMEOUT_S = 5


def run_demo(*args: str, timeout_s: float = 170) -> tuple[dict[str, Any], int, str]:
    """Run the demo; returns its JSON line, exit status and stderr."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.Popen(
        [sys.executable, str(DEMO), *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)  # the demo stops its own cluster on SIGTERM
        try:
            out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        pytest.fail(f"the autoscaler demo ran over {timeout_s:.0f}s: {out[-2000:]}\n{err[-2000:]}")
    lines = [line for line in out.splitlines() if line.startswith("{")]
    assert lines, f"no JSON line from the demo (exit {proc.returncode}):\n{out[-2000:]}\n{err[-4000:]}"
    return json.loads(lines[-1]), proc.returncode, err


def test_pending_collectors_add_nodes_and_idle_nodes_are_removed() -> None:
    result, rc, err = run_demo("--collectors", "3", "--idle-timeout-s", str(IDLE_TIMEOUT_S))
    assert rc == 0 and "error" not in result, f"{result}\n{err[-4000:]}"
    assert result["autoscaler"] == "v2"

    # The stand-ins asked for exactly what pipeline collectors ask for with `ray.placement: true`.
    opts = result["collector_options"]
    assert opts["resources"] == {"collector": 1}
    assert opts["num_cpus"] > 0 and opts["memory"] > 0

    nodes = result["nodes"]
    assert nodes["initial"] == 0, "min 0 collector nodes: none before an actor asks for one"
    assert nodes["one_collector"] == 1
    # Two more collectors fit nowhere: they stayed pending on one node until the autoscaler added two.
    assert result["pending"]["nodes"] == 1
    assert result["pending"]["actors"] == 2
    assert result["pending"]["autoscaler_demand"] >= 1
    assert result["pending"]["nodes_at_first_scheduled"] >= 2, "a pending collector was scheduled before a node came"
    assert nodes["all_collectors"] == 3
    assert result["distinct_nodes"] == 3, "one collector per node: each needs a whole `collector` resource"
    # Two collectors retired: their nodes went idle and were removed after the idle timeout.
    assert nodes["after_retiring"] == 1
    assert result["times_s"]["scale_down"] >= IDLE_TIMEOUT_S - 1
    assert result["survivor_on_same_node"], "the remaining collector's node was kept"
