"""Real Helm (helm-sdkpy: Helm v4's Go library) for the chart tests, run in a child process.

The Go runtime inside helm-sdkpy reads the environment the process started with, so
``HELM_DRIVER=memory`` (the release record kept in memory, not in a Secret that client-go would
send as protobuf) must be set before the interpreter starts: each call runs
``python -m tests.kuberay.helm`` with it, one JSON request on stdin, one JSON answer on stdout.
A run of several steps (install, upgrade, rollback) shares one process and so one release store.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
PIP_INSTALL = "pip install --ignore-requires-python helm-sdkpy==0.1.32"


def unavailable() -> str | None:
    """Why real Helm cannot run here, or None when helm-sdkpy is importable."""
    if importlib.util.find_spec("helm_sdkpy") is None:
        return f"helm-sdkpy is not installed ({PIP_INSTALL}): the Helm chart is not rendered"
    return None


def kubeconfig(server_url: str) -> str:
    """A kubeconfig (YAML: helm-sdkpy takes other text for a path) for a plain-HTTP API server.

    client-go sends no bearer token over plain HTTP, so the server must not require one.
    """
    return yaml.safe_dump(
        {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "loopback", "cluster": {"server": server_url}}],
            "contexts": [{"name": "loopback", "context": {"cluster": "loopback", "user": "loopback"}}],
            "current-context": "loopback",
            "users": [{"name": "loopback", "user": {}}],
        }
    )


def run(steps: list[dict[str, Any]], *, server_url: str = "http://127.0.0.1:9", timeout_s: float = 120) -> list[Any]:
    """Run Helm ``steps`` in one child process; each answer is a result or {"error": message}."""
    env = {**os.environ, "HELM_DRIVER": "memory", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "tests.kuberay.helm"],
        input=json.dumps({"server": server_url, "steps": steps}),
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=timeout_s,
        check=False,
    )
    assert done.returncode == 0, f"helm child failed ({done.returncode}):\n{done.stderr[-4000:]}"
    answers: list[Any] = json.loads(done.stdout)
    return answers


async def _step(config: Any, step: dict[str, Any]) -> Any:
    import helm_sdkpy

    action = step["action"]
    if action == "lint":
        return await helm_sdkpy.Lint(config).run(step["chart"])
    if action in ("install", "upgrade"):
        cls = helm_sdkpy.Install if action == "install" else helm_sdkpy.Upgrade
        values = step.get("values") or {}
        return await cls(config).run(step["release"], step["chart"], values=values, wait=False, server_side_apply=True)
    if action == "rollback":
        return await helm_sdkpy.Rollback(config).run(step["release"], revision=step["revision"])
    if action == "history":
        return await helm_sdkpy.History(config).run(step["release"])
    raise ValueError(f"unknown helm action {action!r}")


def _main() -> None:
    import helm_sdkpy

    request = json.load(sys.stdin)
    config = helm_sdkpy.Configuration(namespace="gpu-telemetry-system", kubeconfig=kubeconfig(request["server"]))
    answers: list[Any] = []
    for step in request["steps"]:
        try:
            answers.append(asyncio.run(_step(config, step)))
        except helm_sdkpy.HelmError as exc:
            answers.append({"error": str(exc), "type": type(exc).__name__})
    json.dump(answers, sys.stdout, default=str)


if __name__ == "__main__":
    _main()
