"""Deploy the GPU telemetry pipeline on Kubernetes with KubeRay.

The manifests live beside this package (``base/``, ``components/``, ``overlays/``); the client
applies a rendered overlay, scales worker groups and runs RayJobs on the ``kubernetes`` package.
"""

from __future__ import annotations

from kuberay.client import DEFAULT_NAMESPACE, KubeRayClient
from kuberay.errors import (
    Conflict,
    Forbidden,
    Invalid,
    KubeRayError,
    NotFound,
    RenderError,
    ServerError,
    Timeout,
)
from kuberay.render import ENVIRONMENTS, render_overlay
from kuberay.status import ClusterStatus, Condition, JobStatus, ServiceStatus, WorkerGroup

__all__ = [
    "DEFAULT_NAMESPACE",
    "ENVIRONMENTS",
    "ClusterStatus",
    "Condition",
    "Conflict",
    "Forbidden",
    "Invalid",
    "JobStatus",
    "KubeRayClient",
    "KubeRayError",
    "NotFound",
    "RenderError",
    "ServerError",
    "ServiceStatus",
    "Timeout",
    "WorkerGroup",
    "render_overlay",
]
