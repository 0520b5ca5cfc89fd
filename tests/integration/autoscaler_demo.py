"""Ray's autoscaler adds nodes for pending collectors and removes idle ones (fake multi-node cluster).

Run by ``tests/integration/test_autoscaler.py`` in a subprocess (a fake cluster cannot share a process
with another Ray session); also runnable by hand::

    .venv/bin/python tests/integration/autoscaler_demo.py [--collectors 3] [--idle-timeout-s 5] [--v1]

It starts a private Ray cluster shaped like the KubeRay one: a head with ``num-cpus 0`` and a worker
node type ``collector`` advertising ``{"CPU": 1, "collector": 1, "memory": 1 GiB}`` (0..N nodes). It
then creates collector stand-ins with the options ``pipeline.runtime.actors.make_collector`` gives the real
ones (``actor_options`` + ``role_resources("collector", i, placement=True)``): one collector, then N,
then back to one, and prints one JSON line with the node counts and timings it observed.

Why not ``ray.cluster_utils.AutoscalingCluster`` as is (Ray 2.60): its ``start()`` and ``shutdown()``
run ``ray stop --force``, which kills *every* Ray process on the machine (other sessions' clusters
included); it starts the head on the default port 6379 (Redis may own it); and its config builder
reads ``fake_multi_node/example.yaml``, which the wheel does not ship. This script does what it does
(same provider, same environment variables, autoscaler v1 or v2) on free ports and a private temp
dir, and stops only the processes of its own cluster.
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from types import FrameType
from typing import Any, BinaryIO
from unittest import mock

import psutil

from pipeline.runtime.ray_token import use_token_auth

use_token_auth()  # before `import ray`: a client of an existing cluster presents the token only in token mode

import ray  # noqa: E402
from ray.autoscaler._private.fake_multi_node.node_provider import (  # noqa: E402
    FAKE_HEAD_NODE_ID,
    FakeMultiNodeProvider,
)

ROOT = Path(__file__).resolve().parents[2]
PROVIDER = "tests.integration.autoscaler_demo.FakeNodeProvider"  # imported by the autoscaler (PYTHONPATH=ROOT)
NODE_MEMORY = 1 << 30
NODE_OBJECT_STORE = 100 << 20


class FakeNodeProvider(FakeMultiNodeProvider):  # type: ignore[misc]  # Ray's class is untyped
    """Ray's fake multi-node provider, plus a ``memory`` resource per node type (runs in the autoscaler).

    The stock provider hands every resource but CPU/GPU/object store to ``RayParams(resources=...)``,
    which rejects ``memory`` ("not a custom resource"); a real node gets it as ``--memory``, and a
    KubeRay worker from its container's memory limit. Without it in the node type, the autoscaler
    would never plan a node for an actor that requests ``memory`` (every pipeline actor does).
    """

    def _create_node_with_resources_and_labels(
        self, node_config: dict[str, Any], tags: dict[str, str], count: int, resources: dict[str, float], labels: Any
    ) -> None:
        resources = dict(resources)
        memory = resources.pop("memory", None)
        params = ray._private.parameter
        with mock.patch.object(params, "RayParams", partial(params.RayParams, memory=memory)):
            super()._create_node_with_resources_and_labels(  # type: ignore[no-untyped-call]
                node_config, tags, count, resources, labels
            )


class Collector:
    """Stands in for ``pipeline.runtime.actors.Collector`` (which needs a database): only its resources matter."""

    def node(self) -> str:
        """The id of the node this actor was placed on."""
        return str(ray.get_runtime_context().get_node_id())


def collector_options(index: int) -> dict[str, Any]:
    """Exactly the options ``make_collector`` gives collector ``index`` with ``ray.placement: true``."""
    from pipeline.runtime import actors, names

    num_cpus = inspect.signature(actors.make_collector).parameters["num_cpus"].default
    return names.actor_options(
        names.collector_name(index),
        "gpu-telemetry",
        num_cpus,
        memory_bytes=names.COLLECTOR_MEMORY,
        max_concurrency=4,
        **names.role_resources("collector", index, placement=True),
    )


def autoscaling_config(gcs_address: str, max_nodes: int, idle_timeout_s: float, v2: bool) -> dict[str, Any]:
    """What ``AutoscalingCluster._generate_config`` builds from Ray's fake-multinode example config."""
    provider: dict[str, Any] = {
        "type": "external",
        "module": PROVIDER,
        "gcs_address": gcs_address,
        "use_node_id_as_ip": True,
        "disable_node_updaters": True,
        "disable_launch_config_check": True,
    }
    if v2:
        provider.update(launch_multiple=True, head_node_id=FAKE_HEAD_NODE_ID)
    return {
        "cluster_name": "autoscaler-demo",
        "max_workers": max_nodes,
        "provider": provider,
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 0}, "node_config": {}, "max_workers": 0},
            # A KubeRay worker group {"collector": 1} with a 1-CPU, 1 GiB container, 0..max_nodes pods.
            "collector": {
                "resources": {
                    "CPU": 1,
                    "collector": 1,
                    "memory": NODE_MEMORY,
                    "object_store_memory": NODE_OBJECT_STORE,
                },
                "node_config": {},
                "min_workers": 0,
                "max_workers": max_nodes,
            },
        },
        "head_node_type": "ray.head.default",
        "auth": {},
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": idle_timeout_s / 60,
        "docker": {},
        "initialization_commands": [],
        "setup_commands": [],
        "head_setup_commands": [],
        "worker_setup_commands": [],
        "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
        "file_mounts": {},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        "rsync_exclude": [],
        "rsync_filter": [],
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


class FakeCluster:
    """A private head (``ray start --head --block``) whose autoscaler launches fake worker nodes."""

    def __init__(self, max_nodes: int, idle_timeout_s: float, v2: bool) -> None:
        self.temp_dir = tempfile.mkdtemp(prefix="rayas-")  # short: Ray's socket paths must stay < 108 chars
        self.port = free_port()
        self.v2 = v2
        ip = ray._private.services.get_node_ip_address()  # type: ignore[no-untyped-call]
        self.config = autoscaling_config(f"{ip}:{self.port}", max_nodes, idle_timeout_s, v2)
        self.proc: subprocess.Popen[bytes] | None = None
        self.address = ""
        self._log: BinaryIO | None = None

    def start(self, timeout_s: float = 60.0) -> str:
        config_path = Path(self.temp_dir, "autoscaling.json")
        config_path.write_text(json.dumps(self.config))
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        env.update(
            RAY_FAKE_CLUSTER="1",
            AUTOSCALER_UPDATE_INTERVAL_S="1",
            RAY_USAGE_STATS_ENABLED="0",
            PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p),
        )
        if self.v2:
            env.update(
                RAY_enable_autoscaler_v2="1",
                RAY_CLOUD_INSTANCE_ID=FAKE_HEAD_NODE_ID,
                RAY_OVERRIDE_NODE_ID_FOR_TESTING=FAKE_HEAD_NODE_ID,
            )
        cmd = [
            str(Path(sys.executable).with_name("ray")),
            "start",
            "--head",
            "--block",
            f"--port={self.port}",
            "--num-cpus=0",
            f"--object-store-memory={NODE_OBJECT_STORE}",
            "--include-dashboard=false",
            f"--dashboard-port={free_port()}",
            "--dashboard-agent-listen-port=0",
            f"--ray-client-server-port={free_port()}",
            "--min-worker-port=0",
            "--max-worker-port=0",
            f"--temp-dir={self.temp_dir}",
            f"--autoscaling-config={config_path}",
            "--disable-usage-stats",
        ]
        log = self._log = Path(self.temp_dir, "ray-start.log").open("wb")  # noqa: SIM115 (closed by stop())
        # A session of its own: every process of this cluster (head, autoscaler, the fake nodes it
        # launches, their workers) is in one process group that stop() can end without touching others.
        self.proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        address_file = Path(self.temp_dir, "ray_current_cluster")
        deadline = time.monotonic() + timeout_s
        while not address_file.exists():
            if self.proc.poll() is not None:
                raise RuntimeError(f"ray start exited with {self.proc.returncode}; see {log.name}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the head did not start in {timeout_s:.0f}s; see {log.name}")
            time.sleep(0.2)
        self.address = address_file.read_text().strip()
        return self.address

    def processes(self) -> set[psutil.Process]:
        """Processes of this cluster still running: its process group, their descendants (Ray gives
        each worker a process group of its own), and any process naming its temp dir."""
        found: set[psutil.Process] = set()
        for p in psutil.process_iter(["cmdline"]):
            if p.pid == os.getpid():
                continue
            try:
                if (self.proc is not None and os.getpgid(p.pid) == self.proc.pid) or self.temp_dir in " ".join(
                    p.info["cmdline"] or ()
                ):
                    found.add(p)
                    found.update(p.children(recursive=True))
            except (ProcessLookupError, psutil.Error):
                continue
        return found

    def stop(self) -> list[str]:
        """Stop the head gracefully, then end what is left of this cluster; returns what that was."""
        # Taken first: once the head is gone, orphaned workers are re-parented and no longer traceable.
        before = self.processes()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        left = [p for p in before | self.processes() if p.is_running()]  # is_running also checks pid reuse
        names = []
        for p in left:
            names.append(_quietly(p.name) or str(p.pid))
            _quietly(p.terminate)
        _, alive = psutil.wait_procs(left, timeout=5)
        for p in alive:
            _quietly(p.kill)
        psutil.wait_procs(alive, timeout=5)
        if self._log is not None:
            self._log.close()
        return sorted(names)


def _quietly(action: Callable[[], Any]) -> Any:
    try:
        return action()
    except psutil.Error:
        return None


def worker_nodes() -> int:
    """Alive nodes advertising the ``collector`` resource (the head advertises none)."""
    nodes: list[dict[str, Any]] = ray.nodes()  # type: ignore[no-untyped-call]
    return len([n for n in nodes if n["Alive"] and n["Resources"].get("collector", 0) > 0])


def collector_demand(gcs_address: str) -> int:
    """Collector actors the autoscaler (v2) reports as pending resource demand."""
    from ray.autoscaler.v2.sdk import get_cluster_status

    status = get_cluster_status(gcs_address)
    return sum(
        b.count
        for d in status.resource_demands.ray_task_actor_demand
        for b in d.bundles_by_count
        if b.bundle.get("collector", 0) > 0
    )


def wait_until(predicate: Callable[[], bool], timeout_s: float, what: str) -> float:
    """Poll until ``predicate()``; returns the seconds it took."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout_s:
            raise TimeoutError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(0.25)
    return round(time.monotonic() - start, 1)


def scenario(cluster: FakeCluster, n: int, idle_timeout_s: float, out: dict[str, Any]) -> None:
    """1 collector -> n collectors -> 1 collector, recording nodes, pending actors and timings."""
    nodes: dict[str, int] = {}
    times: dict[str, float] = {}
    out.update(nodes=nodes, times_s=times)
    nodes["initial"] = worker_nodes()
    cls: Any = ray.remote(Collector)
    out["collector_options"] = {k: v for k, v in collector_options(0).items() if k != "name"}

    first = cls.options(**collector_options(0)).remote()
    start = time.monotonic()
    node_of = {0: ray.get(first.node.remote(), timeout=120)}
    times["first_collector_ready"] = round(time.monotonic() - start, 1)
    nodes["one_collector"] = worker_nodes()

    extra = {i: cls.options(**collector_options(i)).remote() for i in range(1, n)}
    start = time.monotonic()
    refs = {a.node.remote(): i for i, a in extra.items()}
    # The new collectors fit nowhere yet (each needs a whole "collector" resource): they stay pending,
    # the autoscaler sees them as resource demand and launches nodes; then they are scheduled.
    pending = {"actors": len(refs), "nodes": worker_nodes(), "autoscaler_demand": 0}
    out["pending"] = pending
    waiting = list(refs)
    while waiting:
        if time.monotonic() - start > 120:
            raise TimeoutError(f"{len(waiting)} collector(s) still pending after 120s")
        if cluster.v2:
            pending["autoscaler_demand"] = max(pending["autoscaler_demand"], collector_demand(cluster.address))
        done, waiting = ray.wait(waiting, num_returns=len(waiting), timeout=0.25)
        if done and "nodes_at_first_scheduled" not in pending:
            pending["nodes_at_first_scheduled"] = worker_nodes()
        for ref in done:
            node_of[refs[ref]] = ray.get(ref)
    times["scale_up"] = round(time.monotonic() - start, 1)
    nodes["all_collectors"] = worker_nodes()
    out["distinct_nodes"] = len(set(node_of.values()))

    # Retire the newest collectors, as Fleet.resize_collectors does; their nodes go idle.
    for i in sorted(extra, reverse=True):
        ray.kill(extra[i], no_restart=True)
    times["scale_down"] = wait_until(lambda: worker_nodes() <= 1, idle_timeout_s + 90, "idle nodes to be removed")
    nodes["after_retiring"] = worker_nodes()
    out["survivor_on_same_node"] = ray.get(first.node.remote(), timeout=30) == node_of[0]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--collectors", type=int, default=3, help="collectors at the peak (= max worker nodes)")
    ap.add_argument("--idle-timeout-s", type=float, default=5.0, help="autoscaler idle timeout")
    ap.add_argument("--v1", action="store_true", help="use autoscaler v1 (default: v2, as on KubeRay)")
    args = ap.parse_args(argv)

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)  # run the finally below: never leave the cluster behind

    signal.signal(signal.SIGTERM, on_sigterm)
    began = time.monotonic()
    out: dict[str, Any] = {
        "autoscaler": "v1" if args.v1 else "v2",
        "idle_timeout_s": args.idle_timeout_s,
        "max_nodes": args.collectors,
        "ray": ray.__version__,
    }
    cluster = FakeCluster(args.collectors, args.idle_timeout_s, v2=not args.v1)
    ok = False
    try:
        start = time.monotonic()
        cluster.start()
        ray.init(address=cluster.address, log_to_driver=False, logging_level=logging.ERROR)
        out["cluster_start_s"] = round(time.monotonic() - start, 1)
        scenario(cluster, args.collectors, args.idle_timeout_s, out)
        ok = True
    except Exception as exc:
        out["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        ray.shutdown()
        out["stopped_after_head"] = cluster.stop()
        if ok:
            shutil.rmtree(cluster.temp_dir, ignore_errors=True)
        else:
            out["logs"] = cluster.temp_dir
        out["total_s"] = round(time.monotonic() - began, 1)
        print(json.dumps(out), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
