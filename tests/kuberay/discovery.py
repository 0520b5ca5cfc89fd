"""Discovery documents for the loopback API server: what Helm (client-go) asks before it creates.

Helm maps every rendered kind to its REST resource through discovery (``/api``, ``/apis`` and each
group version's resource list) and reads ``/version`` for the chart's ``kubeVersion``. The kinds
are those the KubeRay client applies (:data:`kuberay.resources.RESOURCE_TYPES`), ray.io/v1 and
monitoring.coreos.com/v1 included.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from kuberay.resources import RESOURCE_TYPES, ResourceType

SERVER_VERSION = {
    "major": "1",
    "minor": "33",
    "gitVersion": "v1.33.0",
    "gitCommit": "loopback",
    "gitTreeState": "clean",
    "buildDate": "2026-01-01T00:00:00Z",
    "goVersion": "go1.24.0",
    "compiler": "gc",
    "platform": "linux/amd64",
}
_VERBS = ["create", "delete", "get", "list", "patch", "update", "watch"]


def _by_group_version() -> dict[tuple[str, str], list[ResourceType]]:
    out: dict[tuple[str, str], list[ResourceType]] = defaultdict(list)
    for t in RESOURCE_TYPES:
        out[(t.group, t.version)].append(t)
    return out


def _resource_list(group_version: str, types: list[ResourceType]) -> dict[str, Any]:
    resources = [
        {
            "name": t.plural,
            "singularName": t.kind.lower(),
            "namespaced": t.namespaced,
            "kind": t.kind,
            "verbs": _VERBS,
        }
        for t in types
    ]
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources}


def _group(group: str, versions: list[str]) -> dict[str, Any]:
    entries = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
    return {"name": group, "versions": entries, "preferredVersion": entries[0]}


def discovery_document(path: str) -> dict[str, Any] | None:
    """The body the API server answers a discovery GET of ``path`` with; None if not discovery."""
    groups = _by_group_version()
    if path == "/version":
        return dict(SERVER_VERSION)
    if path == "/api":
        return {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}
    if path == "/apis":
        names = sorted({g for g, _ in groups if g})
        listed = [_group(g, sorted(v for gg, v in groups if gg == g)) for g in names]
        return {"kind": "APIGroupList", "apiVersion": "v1", "groups": listed}
    if path == "/api/v1":
        return _resource_list("v1", groups[("", "v1")])
    parts = path.strip("/").split("/")
    if len(parts) == 2 and parts[0] == "apis":
        versions = sorted(v for g, v in groups if g == parts[1])
        return {"kind": "APIGroup", "apiVersion": "v1", **_group(parts[1], versions)} if versions else None
    if len(parts) == 3 and parts[0] == "apis" and (parts[1], parts[2]) in groups:
        return _resource_list(f"{parts[1]}/{parts[2]}", groups[(parts[1], parts[2])])
    return None


__all__ = ["SERVER_VERSION", "discovery_document"]
