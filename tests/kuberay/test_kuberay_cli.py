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


def test_submit_replace_waits_until_the_old_submitter_job_is_gone(
    kubectl: str,
    api_server: LoopbackApiServer,
    make_client: Callable[[argparse.Namespace], KubeRayClient],
    capsys: pytest.CaptureFixture[str],
) -> None:
    # KubeRay finds a RayJob's submitter Job by the RayJob's name: a recreated RayJob must not find
    # the old one, so the old RayJob is deleted with foreground propagation (its Job goes first).
    old = api_server.put(
        {"apiVersion": "ray.io/v1", "kind": "RayJob", "metadata": {"name": "gpu-telemetry-run", "namespace": NS}}
    )
    owner = {"apiVersion": "ray.io/v1", "kind": "RayJob", "name": "gpu-telemetry-run", "uid": old["metadata"]["uid"]}
    submitter = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "gpu-telemetry-run", "namespace": NS, "ownerReferences": [owner]},
    }
    api_server.put(submitter)
    job_key: Key = ("batch", "v1", NS, "jobs", "gpu-telemetry-run")
    at_create: list[bool] = []

    def watch(method: str, key: Key, server: LoopbackApiServer) -> None:
        if method == "POST" and key[3] == "rayjobs":
            at_create.append(job_key in server.objects)
        if method == "GET" and key[3] == "rayjobs" and key in server.objects:
            server.set_status(key, {"jobStatus": "RUNNING", "jobDeploymentStatus": "Running"})

    api_server.on_request = watch
    code, out, err = _run(["submit", "--env", "dev", "--job", "gpu-telemetry-run", "--replace"], make_client, capsys)
    assert code == 0 and "stopped and deleted the previous RayJob" in out, err
    deletes = api_server.matching("DELETE", "rayjobs/gpu-telemetry-run")
    assert [d.query.get("propagationPolicy") for d in deletes] == [["Foreground"]]
    assert at_create == [False], "the new RayJob was created while the old submitter Job still existed"
    assert api_server.obj("ray.io", "v1", NS, "rayjobs", "gpu-telemetry-run")["metadata"]["uid"] != owner["uid"]
