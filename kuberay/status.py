"""Typed views of the ``status`` that the KubeRay operator writes on its objects."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "JOB_TERMINAL_DEPLOYMENT",
    "JOB_TERMINAL_STATUS",
    "ClusterStatus",
    "Condition",
    "JobStatus",
    "ServiceStatus",
    "WorkerGroup",
    "conditions_of",
]

# RayJob: the Ray job's own state (jobStatus) and the operator's view (jobDeploymentStatus).
JOB_TERMINAL_STATUS = frozenset({"SUCCEEDED", "FAILED", "STOPPED"})
JOB_TERMINAL_DEPLOYMENT = frozenset({"Complete", "Failed", "ValidationFailed"})


@dataclass(frozen=True)
class Condition:
    """One entry of ``status.conditions`` (metav1.Condition)."""

    type: str
    status: str
    reason: str = ""
    message: str = ""

    def __str__(self) -> str:
        why = f" ({self.reason})" if self.reason else ""
        return f"{self.type}={self.status}{why}"


def conditions_of(obj: Mapping[str, Any]) -> tuple[Condition, ...]:
    """The conditions in ``obj['status']``, in the operator's order."""
    status = obj.get("status") or {}
    return tuple(
        Condition(
            str(c.get("type", "")),
            str(c.get("status", "")),
            str(c.get("reason", "") or ""),
            str(c.get("message", "") or ""),
        )
        for c in status.get("conditions") or ()
        if isinstance(c, Mapping)
    )


def _meta(obj: Mapping[str, Any]) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return str(meta.get("name", "")), str(meta.get("namespace", ""))


@dataclass(frozen=True)
class WorkerGroup:
    """A worker group's bounds (ours) and replica count (the autoscaler's)."""

    name: str
    min_replicas: int
    max_replicas: int
    replicas: int | None
    workers_to_delete: tuple[str, ...]


@dataclass(frozen=True)
class ClusterStatus:
    """A RayCluster: state, worker counts, conditions and worker groups."""

    name: str
    namespace: str
    state: str
    ready_workers: int
    desired_workers: int
    conditions: tuple[Condition, ...]
    groups: tuple[WorkerGroup, ...]

    @classmethod
    def from_object(cls, obj: Mapping[str, Any]) -> ClusterStatus:
        """Parse a RayCluster as returned by the API server."""
        name, namespace = _meta(obj)
        status = obj.get("status") or {}
        groups = tuple(
            WorkerGroup(
                name=str(g.get("groupName", "")),
                min_replicas=int(g.get("minReplicas", 0)),
                max_replicas=int(g.get("maxReplicas", 0)),
                replicas=int(g["replicas"]) if g.get("replicas") is not None else None,
                workers_to_delete=tuple((g.get("scaleStrategy") or {}).get("workersToDelete") or ()),
            )
            for g in (obj.get("spec") or {}).get("workerGroupSpecs") or ()
        )
        return cls(
            name,
            namespace,
            str(status.get("state", "") or "unknown"),
            int(status.get("readyWorkerReplicas", 0) or 0),
            int(status.get("desiredWorkerReplicas", 0) or 0),
            conditions_of(obj),
            groups,
        )

    @property
    def ready(self) -> bool:
        """Head pod ready and every pod provisioned at least once."""
        have = {c.type: c.status for c in self.conditions}
        return have.get("HeadPodReady") == "True" and have.get("RayClusterProvisioned") == "True"

    def lines(self) -> list[str]:
        """Human-readable summary, one fact per line."""
        out = [
            f"RayCluster {self.namespace}/{self.name}: {self.state}, "
            f"{self.ready_workers}/{self.desired_workers} workers ready",
            "  conditions: " + (", ".join(map(str, self.conditions)) or "none yet"),
        ]
        for g in self.groups:
            replicas = "?" if g.replicas is None else str(g.replicas)
            pending = f", deleting {', '.join(g.workers_to_delete)}" if g.workers_to_delete else ""
            out.append(f"  group {g.name}: replicas {replicas} in [{g.min_replicas}, {g.max_replicas}]{pending}")
        return out


@dataclass(frozen=True)
class ServiceStatus:
    """A RayService: overall status, serve endpoints and conditions."""

    name: str
    namespace: str
    service_status: str
    serve_endpoints: int
    conditions: tuple[Condition, ...]

    @classmethod
    def from_object(cls, obj: Mapping[str, Any]) -> ServiceStatus:
        """Parse a RayService as returned by the API server."""
        name, namespace = _meta(obj)
        status = obj.get("status") or {}
        return cls(
            name,
            namespace,
            str(status.get("serviceStatus", "") or "unknown"),
            int(status.get("numServeEndpoints", 0) or 0),
            conditions_of(obj),
        )

    @property
    def ready(self) -> bool:
        """The ``Ready`` condition is True."""
        return any(c.type == "Ready" and c.status == "True" for c in self.conditions)

    def lines(self) -> list[str]:
        """Human-readable summary."""
        return [
            f"RayService {self.namespace}/{self.name}: {self.service_status}, {self.serve_endpoints} serve endpoints",
            "  conditions: " + (", ".join(map(str, self.conditions)) or "none yet"),
        ]


@dataclass(frozen=True)
class JobStatus:
    """A RayJob: the Ray job's status, the operator's deployment status, and where it runs."""

    name: str
    namespace: str
    job_status: str
    deployment_status: str
    job_id: str
    cluster: str
    message: str

    @classmethod
    def from_object(cls, obj: Mapping[str, Any]) -> JobStatus:
        """Parse a RayJob as returned by the API server."""
        name, namespace = _meta(obj)
        status = obj.get("status") or {}
        return cls(
            name,
            namespace,
            str(status.get("jobStatus", "") or "PENDING"),
            str(status.get("jobDeploymentStatus", "") or "New"),
            str(status.get("jobId", "") or ""),
            str(status.get("rayClusterName", "") or ""),
            str(status.get("message", "") or ""),
        )

    @property
    def finished(self) -> bool:
        """The job reached an end state (it will not change again)."""
        return self.job_status in JOB_TERMINAL_STATUS or self.deployment_status in JOB_TERMINAL_DEPLOYMENT

    @property
    def succeeded(self) -> bool:
        """The Ray job finished successfully."""
        return self.job_status == "SUCCEEDED"

    @property
    def running(self) -> bool:
        """The Ray job is running (or already finished)."""
        return self.job_status == "RUNNING" or self.finished

    def lines(self) -> list[str]:
        """Human-readable summary."""
        where = f" on {self.cluster}" if self.cluster else ""
        ident = f" (job id {self.job_id})" if self.job_id else ""
        msg = f"\n  {self.message}" if self.message else ""
        return [f"RayJob {self.namespace}/{self.name}: {self.job_status} / {self.deployment_status}{where}{ident}{msg}"]
