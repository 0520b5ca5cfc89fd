"""Attaching to a running pipeline: what its named actors report (``status``), and pinning counts (``scale``).

Everything is looked up in the pipeline's namespace (``settings.ray.namespace``) through
``pipeline.runtime.names``, the same names the pipeline was created with.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, cast

import ray

from pipeline.errors import PipelineError
from pipeline.queue.api import BrokerStats, lag_of
from pipeline.runtime.names import CONTROLLER_NAME, ActorHandle, find, find_role
from pipeline.runtime.replicas import answering_stats

__all__ = ["attached", "collect", "mode", "pin", "render"]


@contextmanager
def attached(address: str | None, namespace: str) -> Iterator[str]:
    """Connect to a running cluster (``address``, RAY_ADDRESS or the local one) for the block's length."""
    target = address or os.environ.get("RAY_ADDRESS") or "auto"
    try:
        ray.init(address=target, namespace=namespace, log_to_driver=False, configure_logging=False)
    except (ConnectionError, RuntimeError) as exc:
        raise PipelineError(f"no running Ray cluster at {target}: {exc}") from None
    try:
        yield target
    finally:
        ray.shutdown()


def pin(address: str, namespace: str, changes: list[tuple[str, int | None]]) -> dict[str, Any]:
    """Pin roles at counts (None: back to the policy) on the running controller; returns its status."""
    controller = find(CONTROLLER_NAME, namespace)
    if controller is None:
        raise PipelineError(f"no pipeline controller in namespace {namespace!r} on the Ray cluster at {address}")
    status: dict[str, Any] = {}
    for role, count in changes:
        status = cast(dict[str, Any], ray.get(controller.scale.remote(role, count), timeout=900))
    return status


def mode(role: dict[str, Any]) -> str:
    """How a role's count is decided: pinned, by the policy, or fixed."""
    if role["pinned"] is not None:
        return f"pinned at {role['pinned']}"
    return "auto" if role["auto"] else "fixed"


def _stats(handles: list[ActorHandle], role: str) -> list[dict[str, Any]]:
    """Each actor's stats; one that is starting or restarting is reported as unavailable, not fatal."""
    refs: list[Any] = [h.stats.remote() for h in handles]
    out: list[dict[str, Any]] = []
    for i, ref in enumerate(refs):
        try:
            out.append(ray.get(ref, timeout=60))
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError) as exc:
            out.append(
                {
                    "id": f"{role}-{i}",
                    "unavailable": type(exc).__name__,
                    "produced": 0,
                    "rejected": 0,
                    "passes": 0,
                    "done": False,
                    "rows": 0,
                    "partitions": [],
                    "generation": 0,
                    "retries": 0,
                    "error": None,
                }
            )
    return out


def collect(namespace: str, group: str, sample_s: float = 1.0) -> dict[str, Any]:
    """Stats of every broker, streamer and collector in ``namespace``; rates over ``sample_s``."""
    brokers = find_role("broker", namespace, tolerate_gaps=0)
    controller = find(CONTROLLER_NAME, namespace)
    scaling: dict[str, Any] | None = None
    if controller is not None:
        scaling = cast(dict[str, Any], ray.get(controller.status.remote(), timeout=10))
    replicated = scaling is not None and scaling.get("replication") is not None

    def broker_stats() -> list[BrokerStats]:
        if replicated:  # a lost broker's partitions are led elsewhere: those that answer
            return answering_stats(brokers, timeout_s=10)
        stats: list[BrokerStats] = ray.get([b.stats.remote() for b in brokers], timeout=60)
        return stats

    before = {b["broker"]: b for b in broker_stats()}
    started = time.monotonic()
    time.sleep(sample_s)
    streamers = find_role("streamer", namespace)
    collectors = find_role("collector", namespace)
    report: dict[str, Any] = {
        "namespace": namespace,
        "group": group,
        "brokers": broker_stats(),
        "streamers": _stats(streamers, "streamer"),
        "collectors": _stats(collectors, "collector"),
    }
    elapsed = max(time.monotonic() - started, 1e-6)
    partitions = []
    for b in report["brokers"]:
        prior = before.get(b["broker"], {}).get("partitions", {})
        for p, s in sorted(b["partitions"].items(), key=lambda kv: int(kv[0])):
            g = s["groups"].get(group)
            was = prior.get(p, s)
            lag_rows, lag_batches = lag_of(s, group)
            rates = {
                "append_rows_per_s": round((s["rows_appended"] - was["rows_appended"]) / elapsed, 1),
                "fetch_rows_per_s": round((s["rows_fetched"] - was["rows_fetched"]) / elapsed, 1),
            }
            partitions.append(
                {
                    "partition": int(p),
                    "broker": b["broker"],
                    "end_offset": s["end_offset"],
                    "committed": g["committed"] if g else None,
                    "lag_rows": lag_rows,
                    "lag_batches": lag_batches,
                    "bytes_held": s["bytes_held"],
                    "rows_appended": s["rows_appended"],
                    "rows_fetched": s["rows_fetched"],
                    "blocked_s": round(s["blocked_s"], 3),
                    "disk_bytes": s.get("disk_bytes", 0),
                    **rates,
                }
            )
    report["partitions"] = sorted(partitions, key=lambda r: r["partition"])
    report["scaling"] = scaling
    report["replication"] = None if scaling is None else scaling.get("replication")
    return report


def _render_replication(replication: dict[str, Any]) -> list[str]:
    """Per partition its leader, epoch, replicas and in-sync set; the last elections."""
    lines = [f"replication factor {replication['factor']}, min in-sync {replication['min_insync']}"]
    for p, r in sorted(replication["partitions"].items(), key=lambda kv: int(kv[0])):
        leader = "none (electing)" if r["leader"] is None else str(r["leader"])
        flag = "  UNDER-REPLICATED" if r["under_replicated"] else ""
        lags = ", ".join(f"{b}: {n}" for b, n in sorted(r.get("lag", {}).items())) or "-"
        lines.append(
            f"partition {p}: leader {leader}, epoch {r['epoch']}, replicas {r['replicas']}, "
            f"in-sync {r['in_sync']}, follower lag {lags}{flag}"
        )
    for e in replication["elections"][-5:]:
        kind = "unclean election" if e["unclean"] else "election"
        lines.append(f"{kind}: partition {e['partition']} -> broker {e['leader']} (epoch {e['epoch']})")
    return lines


def render(report: dict[str, Any]) -> str:
    """A plain-text table of the report."""
    lines = [f"consumer group {report['group']}"]
    lines.append(
        f"{'part':>4} {'broker':>6} {'end':>8} {'committed':>9} {'lag rows':>9} {'lag batches':>11} "
        f"{'bytes held':>11} {'blocked s':>9} {'append/s':>9} {'fetch/s':>9}"
    )
    for r in report["partitions"]:
        lines.append(
            f"{r['partition']:>4} {r['broker']:>6} {r['end_offset']:>8} {r['committed'] or 0:>9} "
            f"{r['lag_rows'] or 0:>9} {r['lag_batches'] or 0:>11} {r['bytes_held']:>11} "
            f"{r['blocked_s']:>9} {r['append_rows_per_s']:>9.0f} {r['fetch_rows_per_s']:>9.0f}"
        )
    for s in report["streamers"]:
        lines.append(
            f"streamer {s['id']}: produced {s['produced']} rejected {s['rejected']} passes {s['passes']} "
            f"{'done' if s['done'] else 'running'}" + (f" error {s['error']}" if s.get("error") else "")
        )
    for c in report["collectors"]:
        lines.append(
            f"collector {c['id']}: rows {c['rows']} partitions {c['partitions']} generation "
            f"{c['generation']} retries {c['retries']}" + (f" error {c['error']}" if c.get("error") else "")
        )
    if report.get("replication"):
        lines.extend(_render_replication(report["replication"]))
    scaling = report.get("scaling")
    if scaling:
        for role, r in scaling["roles"].items():
            lines.append(
                f"{role}s: {r['actual']} running, target {r['desired']}, {mode(r)}, bounds {r['min']}..{r['max']}"
            )
        for d in scaling["decisions"][-5:]:
            lines.append(f"decision: {d['role']} {d['current']} -> {d['desired']} ({d['direction']}): {d['reason']}")
    if not report["brokers"]:
        lines.append(
            f"no pipeline actors found in namespace {report.get('namespace')!r} "
            "(is `python -m pipeline run` running on this cluster, with the same PIPELINE_RAY__NAMESPACE?)"
        )
    return "\n".join(lines)
