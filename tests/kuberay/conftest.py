"""Fixtures for the KubeRay tests: rendered overlays, and a client wired to the loopback server."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes.client import ApiClient, Configuration

from kuberay.client import KubeRayClient
from tests.kuberay.loopback import LoopbackApiServer

ROOT = Path(__file__).resolve().parents[2]
KUBERAY = ROOT / "kuberay"
SHARED = ROOT.parent / "shared"
ENVS = ("dev", "staging", "prod")
TOKEN = "loopback-token"


def load_yaml_docs(text: str) -> list[dict[str, Any]]:
    """Non-empty documents of a multi-document YAML string."""
    return [d for d in yaml.load_all(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)) if d]


@pytest.fixture(scope="session")
def kubectl() -> str:
    """Path of kubectl (it renders the overlays offline), or skip."""
    exe = shutil.which("kubectl")
    if exe is None:
        pytest.skip("kubectl is not installed: the overlays cannot be rendered (kubectl kustomize)")
    return exe


@pytest.fixture(scope="session")
def rendered(kubectl: str) -> dict[str, list[dict[str, Any]]]:
    """Every overlay rendered once per session with `kubectl kustomize`."""
    out: dict[str, list[dict[str, Any]]] = {}
    for env in ENVS:
        done = subprocess.run(
            [kubectl, "kustomize", str(KUBERAY / "overlays" / env)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, f"kubectl kustomize overlays/{env} failed:\n{done.stderr}"
        out[env] = load_yaml_docs(done.stdout)
    return out


class FakeClock:
    """A monotonic clock that only moves when the client sleeps (waits run instantly)."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def api_server() -> Iterator[LoopbackApiServer]:
    """A running loopback API server that requires the test bearer token."""
    server = LoopbackApiServer().start()
    server.required_token = TOKEN
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def clock() -> FakeClock:
    """The fake clock injected into the client."""
    return FakeClock()


@pytest.fixture
def client(api_server: LoopbackApiServer, clock: FakeClock) -> Iterator[KubeRayClient]:
    """A KubeRayClient on an injected ApiClient pointed at the loopback server."""
    configuration = Configuration(host=api_server.url)
    configuration.api_key = {"BearerToken": TOKEN}
    configuration.api_key_prefix = {"BearerToken": "Bearer"}
    with KubeRayClient(
        ApiClient(configuration), poll_interval_s=2.0, request_timeout_s=10.0, clock=clock, sleep=clock.sleep
    ) as c:
        yield c
