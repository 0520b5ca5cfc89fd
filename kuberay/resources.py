"""REST coordinates of the kinds an overlay renders, and the order they are applied in."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kuberay.errors import Invalid

__all__ = [
    "DEFAULT_NAMESPACE",
    "RAY_GROUP",
    "RAY_VERSION",
    "RESOURCE_TYPES",
    "ObjectRef",
    "ResourceType",
    "apply_order",
    "ray_type",
    "ref_of",
    "resource_type",
]

DEFAULT_NAMESPACE = "gpu-telemetry-system"
RAY_GROUP = "ray.io"
RAY_VERSION = "v1"


@dataclass(frozen=True)
class ResourceType:
    """Where a kind lives in the API: group ("" for core), version, plural, scope, apply rank."""

    group: str
    version: str
    kind: str
    plural: str
    namespaced: bool
    rank: int

    @property
    def api_version(self) -> str:
        """The ``apiVersion`` string of the kind."""
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(self, name: str | None, namespace: str | None) -> str:
        """The REST path of one object (or of the collection when ``name`` is None)."""
        root = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        scope = f"/namespaces/{namespace}" if self.namespaced else ""
        tail = f"/{name}" if name else ""
        return f"{root}{scope}/{self.plural}{tail}"


# Rank: namespaces first, then identities and policy, configuration, storage, services,
# workloads, monitoring, and the Ray objects last (they reference everything above).
_TYPES: tuple[ResourceType, ...] = (
    ResourceType("", "v1", "Namespace", "namespaces", False, 0),
    ResourceType("", "v1", "ServiceAccount", "serviceaccounts", True, 10),
    ResourceType("rbac.authorization.k8s.io", "v1", "ClusterRole", "clusterroles", False, 11),
    ResourceType("rbac.authorization.k8s.io", "v1", "ClusterRoleBinding", "clusterrolebindings", False, 12),
    ResourceType("rbac.authorization.k8s.io", "v1", "Role", "roles", True, 11),
    ResourceType("rbac.authorization.k8s.io", "v1", "RoleBinding", "rolebindings", True, 12),
    ResourceType("networking.k8s.io", "v1", "NetworkPolicy", "networkpolicies", True, 15),
    ResourceType("", "v1", "Secret", "secrets", True, 20),
    ResourceType("", "v1", "ConfigMap", "configmaps", True, 20),
    ResourceType("", "v1", "PersistentVolumeClaim", "persistentvolumeclaims", True, 30),
    ResourceType("", "v1", "Service", "services", True, 40),
    ResourceType("networking.k8s.io", "v1", "Ingress", "ingresses", True, 45),
    ResourceType("apps", "v1", "StatefulSet", "statefulsets", True, 50),
    ResourceType("apps", "v1", "Deployment", "deployments", True, 50),
    ResourceType("batch", "v1", "CronJob", "cronjobs", True, 55),
    ResourceType("batch", "v1", "Job", "jobs", True, 55),
    ResourceType("policy", "v1", "PodDisruptionBudget", "poddisruptionbudgets", True, 56),
    ResourceType("monitoring.coreos.com", "v1", "PodMonitor", "podmonitors", True, 60),
    ResourceType("monitoring.coreos.com", "v1", "ServiceMonitor", "servicemonitors", True, 60),
    ResourceType("monitoring.coreos.com", "v1", "PrometheusRule", "prometheusrules", True, 60),
    ResourceType(RAY_GROUP, RAY_VERSION, "RayCluster", "rayclusters", True, 70),
    ResourceType(RAY_GROUP, RAY_VERSION, "RayService", "rayservices", True, 71),
    ResourceType(RAY_GROUP, RAY_VERSION, "RayJob", "rayjobs", True, 72),
)
_BY_KEY = {(t.api_version, t.kind): t for t in _TYPES}
RESOURCE_TYPES = _TYPES  # every kind the client applies (a test API server serves their discovery)


def resource_type(api_version: str, kind: str) -> ResourceType:
    """The REST coordinates of ``kind`` in ``api_version``; :class:`Invalid` if unknown."""
    try:
        return _BY_KEY[(api_version, kind)]
    except KeyError:
        raise Invalid(f"kind {kind} ({api_version}) is not one this client knows how to apply", kind=kind) from None


def ray_type(kind: str) -> ResourceType:
    """The ray.io/v1 kind ``RayCluster``, ``RayService`` or ``RayJob``."""
    return resource_type(f"{RAY_GROUP}/{RAY_VERSION}", kind)


@dataclass(frozen=True)
class ObjectRef:
    """Kind, namespace and name of one object; its ``str`` is how messages name it."""

    kind: str
    name: str
    namespace: str = ""

    def __str__(self) -> str:
        where = f"{self.namespace}/{self.name}" if self.namespace else self.name
        return f"{self.kind} {where}"


def ref_of(obj: Mapping[str, Any]) -> ObjectRef:
    """The :class:`ObjectRef` of a manifest; :class:`Invalid` if it lacks kind or name."""
    meta = obj.get("metadata") or {}
    kind, name = obj.get("kind"), meta.get("name")
    if not isinstance(kind, str) or not isinstance(name, str) or not kind or not name:
        raise Invalid(f"manifest without kind or metadata.name: {dict(obj)!r:.200}")
    return ObjectRef(kind, name, str(meta.get("namespace") or ""))


def apply_order(objects: list[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """``objects`` sorted so that each is applied after what it references (stable)."""
    return sorted(objects, key=lambda o: resource_type(str(o.get("apiVersion")), str(o.get("kind"))).rank)
