"""Checks on rendered manifests that no schema expresses: pod security, limits, literal secrets,
PromQL metric names, and CRD schemas made strict (unknown fields rejected)."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet"}
SECRETISH = re.compile(r"(PASSWORD|PASSWD|TOKEN|SECRET|API_KEY|PRIVATE_KEY|CREDENTIALS?)$", re.IGNORECASE)
URL_WITH_PASSWORD = re.compile(r"[a-z][a-z0-9+.-]*://[^/\s:@]*:[^/\s@]+@", re.IGNORECASE)


def pod_specs(obj: Mapping[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every pod spec an object will create, with a label saying where it sits."""
    kind, spec = obj.get("kind"), obj.get("spec") or {}
    name = (obj.get("metadata") or {}).get("name")
    if kind == "Pod":
        yield f"Pod {name}", dict(spec)
    elif kind in WORKLOAD_KINDS:
        yield f"{kind} {name}", spec["template"]["spec"]
    elif kind == "CronJob":
        yield f"CronJob {name}", spec["jobTemplate"]["spec"]["template"]["spec"]
    elif kind == "RayCluster":
        yield from _ray_cluster_pods(f"RayCluster {name}", spec)
    elif kind == "RayService":
        yield from _ray_cluster_pods(f"RayService {name}", spec.get("rayClusterConfig") or {})
    elif kind == "RayJob":
        if spec.get("rayClusterSpec"):
            yield from _ray_cluster_pods(f"RayJob {name}", spec["rayClusterSpec"])
        if spec.get("submitterPodTemplate"):
            yield f"RayJob {name} submitter", spec["submitterPodTemplate"]["spec"]


def _ray_cluster_pods(where: str, spec: Mapping[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    head = spec.get("headGroupSpec") or {}
    if head:
        pod = dict(head["template"]["spec"])
        if spec.get("enableInTreeAutoscaling"):
            # KubeRay injects the autoscaler sidecar built from autoscalerOptions.
            opts = spec.get("autoscalerOptions") or {}
            sidecar = {
                "name": "autoscaler (injected)",
                "securityContext": opts.get("securityContext"),
                "resources": opts.get("resources"),
            }
            pod["containers"] = [*pod.get("containers", []), sidecar]
        yield f"{where} head", pod
    for group in spec.get("workerGroupSpecs") or ():
        yield f"{where} group {group.get('groupName')}", group["template"]["spec"]


def container_problems(where: str, pod: Mapping[str, Any]) -> list[str]:
    """Violations of the restricted profile, and missing requests/limits, in one pod spec."""
    problems: list[str] = []
    psc = pod.get("securityContext") or {}
    if pod.get("hostNetwork") or pod.get("hostPID") or pod.get("hostIPC"):
        problems.append(f"{where}: uses host namespaces")
    for vol in pod.get("volumes") or ():
        if "hostPath" in vol:
            problems.append(f"{where}: hostPath volume {vol.get('name')}")
    for c in [*(pod.get("initContainers") or ()), *(pod.get("containers") or ())]:
        cname = f"{where} container {c.get('name')}"
        sc = c.get("securityContext") or {}
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{cname}: allowPrivilegeEscalation is not false")
        if sc.get("privileged"):
            problems.append(f"{cname}: privileged")
        if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or ()):
            problems.append(f"{cname}: capabilities do not drop ALL")
        if (sc.get("capabilities") or {}).get("add"):
            problems.append(f"{cname}: adds capabilities")
        if not (sc.get("runAsNonRoot") or (psc.get("runAsNonRoot") and sc.get("runAsNonRoot") is not False)):
            problems.append(f"{cname}: runAsNonRoot is not true")
        if sc.get("runAsUser") == 0 or (psc.get("runAsUser") == 0 and "runAsUser" not in sc):
            problems.append(f"{cname}: runs as uid 0")
        seccomp = (sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{cname}: seccompProfile is {seccomp!r}, not RuntimeDefault")
        res = c.get("resources") or {}
        for section in ("requests", "limits"):
            for resource in ("cpu", "memory"):
                if resource not in (res.get(section) or {}):
                    problems.append(f"{cname}: no {section}.{resource}")
        image = str(c.get("image", ""))
        if image and (image.endswith(":latest") or ":" not in image.rsplit("/", 1)[-1]):
            problems.append(f"{cname}: image {image!r} is not pinned to a tag")
    return problems


def literal_secret_problems(obj: Mapping[str, Any]) -> list[str]:
    """Secret objects, secret-named env vars with literal values, and URLs carrying passwords."""
    kind = obj.get("kind")
    name = (obj.get("metadata") or {}).get("name")
    problems: list[str] = []
    if kind == "Secret":
        problems.append(f"Secret {name} is committed with data")
    for where, pod in pod_specs(obj):
        for c in [*(pod.get("initContainers") or ()), *(pod.get("containers") or ())]:
            for env in c.get("env") or ():
                if SECRETISH.search(str(env.get("name", ""))) and "value" in env:
                    problems.append(f"{where} container {c.get('name')}: env {env['name']} has a literal value")
    for path, text in _strings(obj):
        if URL_WITH_PASSWORD.search(text):
            problems.append(f"{kind} {name} {path}: URL with an embedded password")
    return problems


def _strings(node: Any, path: str = "") -> Iterator[tuple[str, str]]:
    if isinstance(node, str):
        yield path, node
    elif isinstance(node, Mapping):
        for k, v in node.items():
            yield from _strings(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _strings(v, f"{path}[{i}]")


# --- PromQL --------------------------------------------------------------------------------------

PROMQL_KEYWORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "inf",
    "nan",
}
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENT = re.compile(r"(?<![\w:.$])([a-zA-Z_:][a-zA-Z0-9_:]*)(?![\w:])")


def promql_metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression (function calls, keywords and label names excluded)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', " ", expr)  # strings
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # range selectors
    text = _GROUPING.sub(" ", text)  # by (...), on (...)
    names: set[str] = set()
    for m in _IDENT.finditer(text):
        word = m.group(1)
        following = text[m.end() :].lstrip()
        if following.startswith("(") or word.lower() in PROMQL_KEYWORDS:
            continue
        if re.fullmatch(r"\d+[smhdwy]", word):
            continue
        names.add(word)
    return names


# --- CRD schemas ---------------------------------------------------------------------------------


def strict_schema(schema: Mapping[str, Any]) -> dict[str, Any]:
    """An OpenAPI v3 CRD schema as JSON Schema that rejects unknown fields.

    Objects with ``properties`` and no ``additionalProperties`` (and not marked
    ``x-kubernetes-preserve-unknown-fields``) get ``additionalProperties: false``, as the API server
    prunes them; ``nullable`` becomes a ``null`` type. ``x-kubernetes-int-or-string`` fields already
    carry ``anyOf: [integer, string]`` in controller-gen output.
    """
    out: dict[str, Any] = dict(schema)
    if out.get("nullable") and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    if out.get("x-kubernetes-int-or-string") and "anyOf" not in out:
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if "properties" in out:
        out["properties"] = {k: strict_schema(v) for k, v in out["properties"].items()}
        if "additionalProperties" not in out and not out.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    if isinstance(out.get("additionalProperties"), Mapping):
        out["additionalProperties"] = strict_schema(out["additionalProperties"])
    if isinstance(out.get("items"), Mapping):
        out["items"] = strict_schema(out["items"])
    for key in ("allOf", "anyOf", "oneOf"):
        if key in out:
            out[key] = [strict_schema(s) for s in out[key]]
    return out


def crd_schemas(directory: Path) -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) -> strict JSON schema, for every served version of every CRD file."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for path in sorted(directory.glob("*.yaml")):
        with path.open() as f:
            crd = yaml.load(f, Loader=loader)
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            schema = version["schema"]["openAPIV3Schema"]
            out[(f"{group}/{version['name']}", kind)] = strict_schema(schema)
    return out
