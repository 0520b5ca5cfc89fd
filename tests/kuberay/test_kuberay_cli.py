"""`python -m kuberay` end to end against the loopback API server (rendering needs kubectl)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest
import yaml
from kubernetes.client import ApiClient, Configuration

from kuberay.cli import main
from kuberay.client import KubeRayClient
from tests.kuberay.conftest import ROOT, TOKEN, FakeClock
from tests.kuberay.loopback import Key, LoopbackApiServer

NS = "gpu-telemetry-system"
CLUSTER_KEY: Key = ("ray.io", "v1", NS, "rayclusters", "gpu-telemetry")


@pytest.fixture
def make_client(api_server: LoopbackApiServer, clock: FakeClock) -> Callable[[argparse.Namespace], KubeRayClient]:
    """A client factory for the CLI: a fresh client per command, on the loopback server."""

    def factory(_: argparse.Namespace) -> KubeRayClient:
        configuration = Configuration(host=api_server.url)
        configuration.api_key = {"BearerToken": TOKEN}
        configuration.api_key_prefix = {"BearerToken": "Bearer"}
        return KubeRayClient(ApiClient(configuration), clock=clock, sleep=clock.sleep)

    return factory


def _run(
    argv: list[str], make_client: Callable[[argparse.Namespace], KubeRayClient], capsys: pytest.CaptureFixture[str]
) -> tuple[int, str, str]:
    code = main(argv, make_client=make_client)
    out, err = capsys.readouterr()
    return code, out, err


def test_render_prints_the_overlay(kubectl: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["render", "--env", "staging"]) == 0
    docs = [d for d in yaml.safe_load_all(capsys.readouterr().out) if d]
    kinds = {d["kind"] for d in docs}
    assert {"RayCluster", "RayJob", "StatefulSet", "PrometheusRule", "NetworkPolicy"} <= kinds


def test_module_entry_point_renders(kubectl: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "kuberay", "render", "--env", "dev"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "kind: RayCluster" in done.stdout


def test_apply_status_scale_submit_delete(
    kubectl: str,
    api_server: LoopbackApiServer,
    make_client: Callable[[argparse.Namespace], KubeRayClient],
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = _run(["apply", "--env", "dev", "--skip-jobs"], make_client, capsys)
    assert code == 0 and "applied" in out
    assert not [k for k in api_server.objects if k[3] == "rayjobs"]
    assert CLUSTER_KEY in api_server.objects

    code, out, _ = _run(["status", "--env", "dev", "--json"], make_client, capsys)
    report: dict[str, Any] = json.loads(out)
    assert code == 0
    assert [o["name"] for o in report["objects"] if o["kind"] == "ClusterStatus"] == ["gpu-telemetry"]
    assert sorted(report["missing"]) == [f"RayJob {NS}/gpu-telemetry-gateway", f"RayJob {NS}/gpu-telemetry-run"]

    code, out, _ = _run(["scale", "--env", "dev", "--group", "collectors", "--max", "3"], make_client, capsys)
    assert code == 0 and "bounded to [1, 3]" in out
    collectors = api_server.obj(*CLUSTER_KEY)["spec"]["workerGroupSpecs"][1]
    assert (collectors["groupName"], collectors["minReplicas"], collectors["maxReplicas"]) == ("collectors", 1, 3)

    def operator(key: Key, server: LoopbackApiServer) -> None:
        if key[3] == "rayjobs" and key in server.objects:
            server.set_status(key, {"jobStatus": "RUNNING", "jobDeploymentStatus": "Running"})

    api_server.on_get = operator
    code, out, _ = _run(["submit", "--env", "dev", "--job", "gpu-telemetry-run"], make_client, capsys)
    assert code == 0 and f"RayJob {NS}/gpu-telemetry-run: RUNNING / Running" in out
    code, _, err = _run(["submit", "--env", "dev", "--job", "gpu-telemetry-run"], make_client, capsys)
    assert code == 1 and "already exists" in err
    code, out, _ = _run(["submit", "--env", "dev", "--job", "gpu-telemetry-run", "--replace"], make_client, capsys)
    assert code == 0 and "stopped and deleted the previous RayJob" in out

    code, out, _ = _run(["delete", "--env", "dev", "--job", "gpu-telemetry-run"], make_client, capsys)
    assert code == 0 and f"stopped and deleted RayJob {NS}/gpu-telemetry-run" in out
    assert not [k for k in api_server.objects if k[3] == "rayjobs"]


def test_usage_errors_exit_non_zero(
    kubectl: str,
    api_server: LoopbackApiServer,
    make_client: Callable[[argparse.Namespace], KubeRayClient],
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, _, err = _run(
        ["scale", "--env", "dev", "--group", "collectors", "--min", "1", "--delete-pod", "p"], make_client, capsys
    )
    assert code == 1 and "--min and --max, or --delete-pod" in err
    code, _, err = _run(["delete", "--env", "dev", "--all"], make_client, capsys)
    assert code == 1 and "add --yes" in err
    code, _, err = _run(["status", "--env", "dev"], make_client, capsys)
    assert code == 0
    api_server.fail("GET", "rayclusters", 500)
    code, _, err = _run(["status", "--env", "dev"], make_client, capsys)
    assert code == 1 and "HTTP 500" in err
    with pytest.raises(SystemExit) as info:
        main(["apply", "--env", "qa"])
    assert info.value.code == 2
    assert api_server.matching("PATCH") == []
