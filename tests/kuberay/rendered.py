"""Small lookups on rendered overlays shared by the manifest tests."""

from __future__ import annotations

from typing import Any

import yaml

RAY_CONTAINERS = ("ray-head", "ray-worker")


def of_kind(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    """The objects of one kind, in render order."""
    return [o for o in objs if o["kind"] == kind]


def one(objs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    """The single object of ``kind`` (named ``name``); fails the test if there is not exactly one."""
    found = [o for o in of_kind(objs, kind) if name is None or o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def quantity(value: str | int | float) -> float:
    """A Kubernetes quantity in base units (bytes or cores)."""
    text = str(value)
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9}
    for suffix, factor in units.items():
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * factor
    return float(text)


def pipeline_yaml(objs: list[dict[str, Any]]) -> dict[str, Any]:
    """The pipeline settings file the overlay mounts at /etc/pipeline/pipeline.yaml."""
    data: dict[str, Any] = yaml.safe_load(one(objs, "ConfigMap", "pipeline-config")["data"]["pipeline.yaml"])
    return data


def ray_pods(objs: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """(group name, pod spec) of the RayCluster's head ("head") and every worker group."""
    spec = one(objs, "RayCluster")["spec"]
    pods = [("head", spec["headGroupSpec"]["template"]["spec"])]
    return pods + [(g["groupName"], g["template"]["spec"]) for g in spec["workerGroupSpecs"]]


def worker_groups(objs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The RayCluster's worker groups by name."""
    return {g["groupName"]: g for g in one(objs, "RayCluster")["spec"]["workerGroupSpecs"]}


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    """A container's env entries by name (the entry itself: ``value`` or ``valueFrom``)."""
    return {e["name"]: e for e in container.get("env") or ()}
