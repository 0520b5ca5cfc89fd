"""The Helm chart (kuberay/chart/gpu-telemetry) under real Helm: lint, the schema, and the same
objects as `kubectl kustomize` for every environment, passing the same validators and applied by
the KubeRay client as an overlay is.

The chart embeds each overlay's rendering (files/<env>.yaml, `make chart`) and sets its values on
it, so the overlays stay the one source of truth. The intended differences, all in metadata:
Helm's labels (HELM_LABELS) on every object, and ``helm.sh/resource-policy: keep`` on the
namespaces and PVCs (KEPT_KINDS) so that `helm uninstall` deletes neither the Secrets made by
hand nor the data. No spec differs.
"""

from __future__ import annotations

import copy
import inspect
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from kuberay.client import KubeRayClient
from tests.kuberay import helm
from tests.kuberay import test_kuberay_manifests as manifests
from tests.kuberay.conftest import ENVS, KUBERAY, load_yaml_docs
from tests.kuberay.loopback import LoopbackApiServer
from tests.kuberay.rendered import of_kind, one, worker_groups

CHART = KUBERAY / "chart" / "gpu-telemetry"
RELEASE = "gpu-telemetry"
HELM_LABELS = {
    "helm.sh/chart",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/managed-by",
    "app.kubernetes.io/version",
}
KEPT_KINDS = ("Namespace", "PersistentVolumeClaim")
SPEC_KINDS = ("RayCluster", "RayJob", "StatefulSet", "NetworkPolicy", "PodMonitor", "PrometheusRule")

# Every check the kustomize output passes, run again on the chart's rendering.
MANIFEST_CHECKS = tuple(
    name
    for name, fn in vars(manifests).items()
    if name.startswith("test_") and "rendered" in inspect.signature(fn).parameters
)

pytestmark = pytest.mark.skipif(helm.unavailable() is not None, reason=str(helm.unavailable()))


Key = tuple[str, str | None, str]


def _key(obj: dict[str, Any]) -> Key:
    return obj["kind"], obj["metadata"].get("namespace"), obj["metadata"]["name"]


def env_values(env: str) -> dict[str, Any]:
    """The values file of one environment."""
    values: dict[str, Any] = yaml.safe_load((CHART / f"values-{env}.yaml").read_text())
    return values


def _merged(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merged(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def install(values: dict[str, Any], server: LoopbackApiServer) -> dict[str, Any]:
    """`helm install` of the chart with ``values`` (server-side apply) against ``server``."""
    step = {"action": "install", "release": RELEASE, "chart": str(CHART), "values": values}
    (answer,) = helm.run([step], server_url=server.url)
    result: dict[str, Any] = answer
    return result


@pytest.fixture
def helm_server() -> Iterator[LoopbackApiServer]:
    """A loopback API server without a token (client-go sends none over plain HTTP)."""
    server = LoopbackApiServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def helm_releases() -> dict[str, dict[str, Any]]:
    """Each environment's release from `helm install -f values-<env>.yaml`, applied by Helm."""
    out: dict[str, dict[str, Any]] = {}
    for env in ENVS:
        server = LoopbackApiServer().start()
        try:
            release = install(env_values(env), server)
            assert "error" not in release, f"helm install -f values-{env}.yaml: {release.get('error')}"
            applied = len(load_yaml_docs(release["manifest"]))
            assert len(server.objects) == applied, f"{env}: Helm applied {len(server.objects)} of {applied} objects"
            out[env] = release
        finally:
            server.stop()
    return out


@pytest.fixture(scope="session")
def helm_rendered(helm_releases: dict[str, dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Each environment's objects as Helm rendered them (the release's manifest)."""
    return {env: load_yaml_docs(release["manifest"]) for env, release in helm_releases.items()}


def test_notes_say_how_to_reach_the_api_and_the_dashboard_and_get_the_token(
    helm_releases: dict[str, dict[str, Any]],
) -> None:
    notes = {env: release["info"]["notes"] for env, release in helm_releases.items()}
    for env, text in notes.items():
        assert f"the {env} objects are applied" in text
        assert "get secret ray-auth-token -o jsonpath='{.data.auth_token}' | base64 -d" in text
        assert "RAY_AUTH_MODE=token" in text
        assert "port-forward svc/gpu-telemetry-gateway 8000:8000" in text
        assert "port-forward svc/gpu-telemetry-head-svc 8265:8265" in text
        assert "svc/monitoring-grafana 3000:80" in text
    assert "https://api.gpu-telemetry.example.com/api/v1/gpus" in notes["prod"]
    assert "https://api.staging.gpu-telemetry.example.com/api/v1/gpus" in notes["staging"]
    assert "https://" not in notes["dev"]


# --- lint -----------------------------------------------------------------------------------------


def _lint(values: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    # helm-sdkpy's lint takes no values files: lint a copy whose values.yaml is the merged values.
    chart = tmp_path / "gpu-telemetry"
    shutil.copytree(CHART, chart)
    (chart / "values.yaml").write_text(yaml.safe_dump(values))
    (answer,) = helm.run([{"action": "lint", "chart": str(chart)}])
    result: dict[str, Any] = answer
    return result


@pytest.mark.parametrize("values_file", ["values.yaml", *(f"values-{env}.yaml" for env in ENVS)])
def test_lint_is_clean_for_every_values_file(values_file: str, tmp_path: Path) -> None:
    base = yaml.safe_load((CHART / "values.yaml").read_text())
    values = _merged(base, yaml.safe_load((CHART / values_file).read_text()))
    result = _lint(values, tmp_path)
    assert result["TotalChartsLinted"] == 1
    assert not result["Messages"] and not result["Errors"], f"helm lint -f {values_file}: {result['Messages']}"


def test_lint_fails_on_a_value_the_schema_refuses(tmp_path: Path) -> None:
    base = yaml.safe_load((CHART / "values.yaml").read_text())
    result = _lint({**base, "environment": "qa"}, tmp_path)
    assert result["Errors"] and {m["Path"] for m in result["Messages"]} >= {"values.yaml"}


# --- the same objects as kustomize ----------------------------------------------------------------


@pytest.mark.parametrize("env", ENVS)
def test_the_chart_embeds_the_current_overlay_rendering(kubectl: str, env: str) -> None:
    import subprocess

    done = subprocess.run([kubectl, "kustomize", str(KUBERAY / "overlays" / env)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (CHART / "files" / f"{env}.yaml").read_text() == done.stdout, (
        f"kuberay/chart/gpu-telemetry/files/{env}.yaml is stale: run `make chart`"
    )


@pytest.mark.parametrize("env", ENVS)
def test_helm_and_kustomize_render_the_same_objects_and_specs(
    helm_rendered: dict[str, list[dict[str, Any]]], rendered: dict[str, list[dict[str, Any]]], env: str
) -> None:
    chart = {_key(o): o for o in helm_rendered[env]}
    overlay = {_key(o): o for o in rendered[env]}
    assert set(chart) == set(overlay), (
        f"{env}: only in the chart {set(chart) - set(overlay)}, only in kustomize {set(overlay) - set(chart)}"
    )
    for key, expected in overlay.items():
        got = copy.deepcopy(chart[key])
        labels = got["metadata"].get("labels") or {}
        assert set(labels) - set(expected["metadata"].get("labels") or {}) == HELM_LABELS, key
        assert labels["app.kubernetes.io/instance"] == RELEASE
        for name in HELM_LABELS:
            labels.pop(name)
        if key[0] in KEPT_KINDS:
            assert got["metadata"]["annotations"].pop("helm.sh/resource-policy") == "keep", key
            if not got["metadata"]["annotations"] and "annotations" not in expected["metadata"]:
                del got["metadata"]["annotations"]
        if key[0] in SPEC_KINDS:
            assert got["spec"] == expected["spec"], f"{env}: {key} spec differs"
        assert got == expected, f"{env}: {key} differs beyond Helm's labels"
    assert {k[0] for k in overlay} >= set(SPEC_KINDS), f"{env}: a compared kind is missing"


def test_values_set_what_they_name(helm_server: LoopbackApiServer) -> None:
    values = _merged(
        env_values("prod"),
        {
            "global": {"storageClass": "nvme"},
            "image": {"repository": "registry.example.org/gpu/pipeline", "tag": "2.60.0-py311-0.2.0"},
            "message-queue": {"persistence": {"size": "80Gi"}},
            "telemetry-collector": {"autoscaling": {"minReplicas": 6, "maxReplicas": 12}},
            "api-gateway": {"ingress": {"enabled": False}},
            "timescaledb": {"persistence": {"size": "1Ti"}},
            "monitoring": {"enabled": False},
        },
    )
    release = install(values, helm_server)
    assert "error" not in release, release
    objs = load_yaml_docs(release["manifest"])
    assert (worker_groups(objs)["collectors"]["minReplicas"], worker_groups(objs)["collectors"]["maxReplicas"]) == (
        6,
        12,
    )
    assert (worker_groups(objs)["streamers"]["minReplicas"], worker_groups(objs)["streamers"]["maxReplicas"]) == (3, 15)
    images = {
        c["image"]
        for o in of_kind(objs, "RayCluster") + of_kind(objs, "RayJob")
        for _, p in manifests.pod_specs(o)
        for c in p["containers"]
        if "image" in c
    }
    assert images == {"registry.example.org/gpu/pipeline:2.60.0-py311-0.2.0"}
    broker = one(objs, "PersistentVolumeClaim", "broker-queue-4")["spec"]
    assert (broker["resources"]["requests"]["storage"], broker["storageClassName"]) == ("80Gi", "nvme")
    db = one(objs, "StatefulSet", "timescaledb")["spec"]["volumeClaimTemplates"][0]["spec"]
    assert (db["resources"]["requests"]["storage"], db["storageClassName"]) == ("1Ti", "nvme")
    assert not [o for o in objs if o["apiVersion"].startswith("monitoring.coreos.com/")]
    assert not of_kind(objs, "Ingress")
    assert one(objs, "PersistentVolumeClaim", "timescaledb-backups")["spec"]["storageClassName"] == "standard"
    notes = release["info"]["notes"]
    assert "https://" not in notes and "monitoring-grafana" not in notes


# --- the same validators as the kustomize output --------------------------------------------------


@pytest.mark.parametrize("check", MANIFEST_CHECKS)
def test_the_chart_rendering_passes_every_manifest_check(
    check: str, helm_rendered: dict[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    fn = getattr(manifests, check)
    params = inspect.signature(fn).parameters
    schemas: dict[tuple[str, str], dict[str, Any]] = {}
    if "custom_schemas" in params:
        if not manifests.RAY_CRDS.is_dir():
            pytest.skip(f"{manifests.RAY_CRDS} is absent: ray.io objects not validated")
        schemas = manifests.crd_schemas(manifests.RAY_CRDS)
        if manifests.MONITORING_CRDS.is_dir():
            schemas.update(manifests.crd_schemas(manifests.MONITORING_CRDS))
    args: dict[str, Any] = {"rendered": helm_rendered, "custom_schemas": schemas, "tmp_path": tmp_path}
    for env in ENVS if "env" in params else (None,):
        fn(**{name: (env if name == "env" else args[name]) for name in params})


# --- the schema refuses bad values ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "words"),
    [
        ({"environment": "qa"}, ("/environment", "must be one of 'dev', 'staging', 'prod'")),
        ({"message-queue": {"persistence": {"size": "50GB"}}}, ("message-queue", "size", "50GB")),
        ({"telemetry-collector": {"autoscaling": {"maxReplicas": -1}}}, ("maxReplicas", "-1")),
        ({"telemetry-streamer": {"autoscaling": {"minReplicas": "3"}}}, ("minReplicas", "string")),
        ({"monitoring": {"enabled": "yes"}}, ("monitoring", "enabled", "boolean")),
        ({"replicaCount": 3}, ("replicaCount",)),
        ({"image": {"tag": "2.49.0-py311"}}, ("tag", "2.49.0-py311")),
    ],
)
def test_the_schema_refuses_a_bad_value_with_a_message_naming_it(
    helm_server: LoopbackApiServer, override: dict[str, Any], words: tuple[str, ...]
) -> None:
    release = install(_merged(env_values("prod"), override), helm_server)
    message = release.get("error", "")
    assert "values don't meet the specifications of the schema" in message, release.get("info", release)
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"
    assert not helm_server.objects, "a refused install applied objects"


def test_bounds_with_min_above_max_are_refused_by_name(helm_server: LoopbackApiServer) -> None:
    values = _merged(env_values("prod"), {"api-gateway": {"autoscaling": {"minReplicas": 9, "maxReplicas": 4}}})
    message = install(values, helm_server).get("error", "")
    assert "api-gateway.autoscaling: minReplicas 9 is above maxReplicas 4 (worker group gateway)" in message
    assert not helm_server.objects


# --- applying: Helm itself, upgrade and rollback; the KubeRay client --------------------------------


def test_helm_install_and_upgrades_reach_the_api_server(helm_server: LoopbackApiServer) -> None:
    # helm-sdkpy 0.1.32's Rollback sets no wait strategy and Helm v4 refuses it ("wait strategy not
    # set"), so the way back is an upgrade with the previous values (what `helm rollback` applies).
    prod = env_values("prod")
    bigger = _merged(prod, {"telemetry-collector": {"autoscaling": {"maxReplicas": 16}}})
    steps: list[dict[str, Any]] = [
        {"action": "install", "release": RELEASE, "chart": str(CHART), "values": prod},
        {"action": "upgrade", "release": RELEASE, "chart": str(CHART), "values": bigger},
        {"action": "upgrade", "release": RELEASE, "chart": str(CHART), "values": prod},
        {"action": "history", "release": RELEASE},
    ]
    seen: list[int] = []

    def collectors_max(method: str, key: Any, server: LoopbackApiServer) -> None:
        stored = server.objects.get(("ray.io", "v1", "gpu-telemetry-system", "rayclusters", "gpu-telemetry"))
        if stored is not None:
            seen.append(worker_groups([stored])["collectors"]["maxReplicas"])

    helm_server.on_request = collectors_max
    installed, upgraded, back, history = helm.run(steps, server_url=helm_server.url)
    for answer in (installed, upgraded, back):
        assert "error" not in answer, answer
    assert [r["version"] for r in history] == [1, 2, 3]
    cluster = helm_server.obj("ray.io", "v1", "gpu-telemetry-system", "rayclusters", "gpu-telemetry")
    assert worker_groups([cluster])["collectors"]["maxReplicas"] == 15
    assert 16 in seen, "the upgrade never reached the server"


def test_the_kuberay_client_applies_the_chart_rendering_as_an_overlay(
    client: KubeRayClient, api_server: LoopbackApiServer, helm_rendered: dict[str, list[dict[str, Any]]]
) -> None:
    objects = helm_rendered["prod"]
    stored = client.apply(objects)
    assert len(stored) == len(objects) == len(api_server.objects)
    assert stored[0]["kind"] == "Namespace" and stored[-1]["kind"] == "RayJob"
    cluster = api_server.obj("ray.io", "v1", "gpu-telemetry-system", "rayclusters", "gpu-telemetry")
    assert cluster["spec"] == one(objects, "RayCluster")["spec"]
    assert cluster["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"
