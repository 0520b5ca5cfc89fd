"""The KubeRay client against the loopback API server: apply, scaling, waits, jobs, error mapping."""

from __future__ import annotations

import ast
import copy
import pickle
from typing import Any

import pytest
from kubernetes.client import ApiClient, Configuration

from kuberay.client import APPLY_PATCH, FIELD_MANAGER, JSON_PATCH, KubeRayClient
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
from tests.kuberay.conftest import KUBERAY, FakeClock
from tests.kuberay.loopback import Key, LoopbackApiServer, apply_json_patch

NS = "gpu-telemetry-system"
CLUSTER_KEY: Key = ("ray.io", "v1", NS, "rayclusters", "gpu-telemetry")


def _cluster(**overrides: Any) -> dict[str, Any]:
    group = {
        "groupName": "collectors",
        "minReplicas": 2,
        "maxReplicas": 10,
        "rayStartParams": {},
        "template": {"spec": {"containers": [{"name": "ray-worker", "image": "i:1"}]}},
    }
    cluster: dict[str, Any] = {
        "apiVersion": "ray.io/v1",
        "kind": "RayCluster",
        "metadata": {"name": "gpu-telemetry", "namespace": NS},
        "spec": {
            "rayVersion": "2.60.0",
            "headGroupSpec": {"rayStartParams": {"num-cpus": "0"}, "template": {"spec": {"containers": []}}},
            "workerGroupSpecs": [
                {**copy.deepcopy(group), "groupName": "streamers", "minReplicas": 1},
                copy.deepcopy(group),
            ],
        },
    }
    cluster["spec"].update(overrides)
    return cluster


def _job(name: str = "gpu-telemetry-run") -> dict[str, Any]:
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayJob",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "clusterSelector": {"ray.io/cluster": "gpu-telemetry"},
            "entrypoint": "python -m pipeline run --config /etc/pipeline/pipeline.yaml",
        },
    }


def _ready(generation: int = 1) -> dict[str, Any]:
    return {
        "state": "ready",
        "observedGeneration": generation,
        "readyWorkerReplicas": 3,
        "desiredWorkerReplicas": 3,
        "conditions": [
            {"type": "HeadPodReady", "status": "True", "reason": "HeadPodRunningAndReady"},
            {"type": "RayClusterProvisioned", "status": "True", "reason": "AllPodRunningAndReady"},
        ],
    }


# --- server-side apply ---------------------------------------------------------------------------


def test_apply_is_server_side_apply_in_dependency_order(client: KubeRayClient, api_server: LoopbackApiServer) -> None:
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}
    config = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "pipeline-config", "namespace": NS},
        "data": {"pipeline.yaml": "queue: {}\n"},
    }
    stored = client.apply([_job(), _cluster(), config, namespace])
    assert [s["kind"] for s in stored] == ["Namespace", "ConfigMap", "RayCluster", "RayJob"]
    patches = api_server.matching("PATCH")
    assert [p.path for p in patches] == [
        f"/api/v1/namespaces/{NS}",
        f"/api/v1/namespaces/{NS}/configmaps/pipeline-config",
        f"/apis/ray.io/v1/namespaces/{NS}/rayclusters/gpu-telemetry",
        f"/apis/ray.io/v1/namespaces/{NS}/rayjobs/gpu-telemetry-run",
    ]
    for p in patches:
        assert p.content_type == APPLY_PATCH
        assert p.query["fieldManager"] == [FIELD_MANAGER] and p.query["force"] == ["true"]
        assert p.authorization == "Bearer loopback-token"
    assert api_server.obj(*CLUSTER_KEY)["spec"]["rayVersion"] == "2.60.0"
    # Re-applying the same manifests changes nothing the operator would act on.
    generation = api_server.obj(*CLUSTER_KEY)["metadata"]["generation"]
    client.apply([_cluster()])
    assert api_server.obj(*CLUSTER_KEY)["metadata"]["generation"] == generation


def test_apply_keeps_the_replicas_and_deletions_the_autoscaler_chose(
    client: KubeRayClient,
    api_server: LoopbackApiServer,
) -> None:
    live = _cluster()
    live["spec"]["workerGroupSpecs"][1]["replicas"] = 7
    live["spec"]["workerGroupSpecs"][1]["scaleStrategy"] = {"workersToDelete": ["gpu-telemetry-collectors-x1"]}
    api_server.put(live)
    manifest = _cluster()
    manifest["spec"]["workerGroupSpecs"][1]["maxReplicas"] = 12
    client.apply([manifest])
    sent = api_server.matching("PATCH", "rayclusters")[-1].body["spec"]["workerGroupSpecs"][1]
    assert sent["replicas"] == 7 and sent["scaleStrategy"]["workersToDelete"] == ["gpu-telemetry-collectors-x1"]
    stored = api_server.obj(*CLUSTER_KEY)["spec"]["workerGroupSpecs"][1]
    assert (stored["replicas"], stored["maxReplicas"]) == (7, 12)


def test_apply_refuses_an_unknown_kind_before_sending_anything(
    client: KubeRayClient,
    api_server: LoopbackApiServer,
) -> None:
    weird = {"apiVersion": "example.com/v1", "kind": "Gadget", "metadata": {"name": "g", "namespace": NS}}
    with pytest.raises(Invalid, match="Gadget"):
        client.apply([_cluster(), weird])
    assert api_server.requests == []


def test_dry_run_apply_persists_nothing(client: KubeRayClient, api_server: LoopbackApiServer) -> None:
    client.apply([_cluster()], dry_run=True)
    assert api_server.matching("PATCH")[0].query["dryRun"] == ["All"]
    assert CLUSTER_KEY not in api_server.objects


def test_apply_of_a_rendered_overlay_stores_every_object(
    client: KubeRayClient,
    api_server: LoopbackApiServer,
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    objects = rendered["prod"]
    stored = client.apply(objects)
    assert len(stored) == len(objects) == len(api_server.objects)
    assert stored[0]["kind"] == "Namespace" and stored[-1]["kind"] == "RayJob"


# --- scaling -------------------------------------------------------------------------------------


def test_scale_patches_only_the_bounds_with_a_guarded_json_patch(
    client: KubeRayClient,
    api_server: LoopbackApiServer,
) -> None:
    live = _cluster()
    live["spec"]["workerGroupSpecs"][1]["replicas"] = 4
    api_server.put(live)
    client.scale_worker_group("gpu-telemetry", "collectors", min_replicas=3, max_replicas=12)
    patch = api_server.matching("PATCH")[-1]
    assert patch.content_type == JSON_PATCH
    assert patch.body == [
        {"op": "test", "path": "/spec/workerGroupSpecs/1/groupName", "value": "collectors"},
        {"op": "add", "path": "/spec/workerGroupSpecs/1/minReplicas", "value": 3},
        {"op": "add", "path": "/spec/workerGroupSpecs/1/maxReplicas", "value": 12},
    ]
    group = api_server.obj(*CLUSTER_KEY)["spec"]["workerGroupSpecs"][1]
    assert (group["minReplicas"], group["maxReplicas"], group["replicas"]) == (3, 12, 4)


def test_scale_refuses_min_above_max_without_a_request(client: KubeRayClient, api_server: LoopbackApiServer) -> None:
    with pytest.raises(Invalid, match="0 <= minReplicas <= maxReplicas, got 5..2"):
        client.scale_worker_group("gpu-telemetry", "collectors", min_replicas=5, max_replicas=2)
    assert api_server.requests == []


def test_scale_names_the_groups_when_one_is_missing(client: KubeRayClient, api_server: LoopbackApiServer) -> None:
    api_server.put(_cluster())
    with pytest.raises(NotFound, match=r"no worker group 'brokers' \(groups: streamers, collectors\)"):
        client.scale_worker_group("gpu-telemetry", "brokers", min_replicas=1, max_replicas=1)


def test_scale_fails_typed_when_the_groups_moved_underneath(
    client: KubeRayClient,
    api_server: LoopbackApiServer,
) -> None:
    api_server.put(_cluster())

    def reorder(method: str, key: Key, server: LoopbackApiServer) -> None:
        if method == "PATCH":
            server.objects[key]["spec"]["workerGroupSpecs"].reverse()

    api_server.on_request = reorder
    with pytest.raises(Invalid) as info:
        client.scale_worker_group("gpu-telemetry", "collectors", min_replicas=1, max_replicas=3)
    assert info.value.status == 422 and "RayCluster gpu-telemetry-system/gpu-telemetry" in str(info.value)
    assert "test of /spec/workerGroupSpecs/1/groupName failed" in str(info.value)


def test_delete_workers_uses_workers_to_delete_and_can_shrink(
    client: KubeRayClient,
    api_server: LoopbackApiServer,
) -> None:
    live = _cluster()
    live["spec"]["workerGroupSpecs"][1].update(replicas=3, scaleStrategy={"workersToDelete": ["w-a"]})
    api_server.put(live)
    client.delete_workers("gpu-telemetry", "collectors", ["w-b", "w-a", "w-b"])
    group = api_server.obj(*CLUSTER_KEY)["spec"]["workerGroupSpecs"][1]
    assert group["scaleStrategy"]["workersToDelete"] == ["w-a", "w-b"] and group["replicas"] == 3
    client.delete_workers("gpu-telemetry", "collectors", ["w-c", "w-d"], decrement_replicas=True)
    group = api_server.obj(*CLUSTER_KEY)["spec"]["workerGroupSpecs"][1]
    assert group["scaleStrategy"]["workersToDelete"] == ["w-a", "w-b", "w-c", "w-d"]
    assert group["replicas"] == 2, "never below minReplicas"
    with pytest.raises(Invalid, match="not pod names: Bad_Pod"):
        client.delete_workers("gpu-telemetry", "collectors", ["Bad_Pod"])


# --- waits ---------------------------------------------------------------------------------------


def test_wait_returns_once_the_conditions_hold(
    client: KubeRayClient,
    api_server: LoopbackApiServer,
    clock: FakeClock,
) -> None:
    api_server.put(_cluster())
    gets = 0

    def operator(key: Key, server: LoopbackApiServer) -> None:
        nonlocal gets
        gets += 1
        if gets == 3:
            server.set_status(key, _ready())

    api_server.on_get = operator
    obj = client.wait_for_conditions("RayCluster", "gpu-telemetry", {"HeadPodReady": "True"}, timeout_s=60)
    assert obj["status"]["state"] == "ready" and gets == 3
    assert clock.sleeps == [2.0, 2.0]


def test_wait_ignores_conditions_of_an_older_generation(
    client: KubeRayClient,
    api_server: LoopbackApiServer,
    clock: FakeClock,
) -> None:
    api_server.put(_cluster())
    api_server.objects[CLUSTER_KEY]["metadata"]["generation"] = 2
    api_server.set_status(CLUSTER_KEY, _ready(generation=1))
    with pytest.raises(Timeout, match="observed generation 1 of 2"):
        client.wait_for_conditions("RayCluster", "gpu-telemetry", {"HeadPodReady": "True"}, timeout_s=10)
    api_server.set_status(CLUSTER_KEY, _ready(generation=2))
    client.wait_for_conditions("RayCluster", "gpu-telemetry", {"HeadPodReady": "True"}, timeout_s=10)


def test_waits_share_one_overall_deadline(
    client: KubeRayClient,
    api_server: LoopbackApiServer,
    clock: FakeClock,
) -> None:
    api_server.put(_cluster())
    second = _cluster()
    second["metadata"]["name"] = "other"
    api_server.put(second)

    def slow_operator(key: Key, server: LoopbackApiServer) -> None:
        if key[4] == "gpu-telemetry" and clock.now >= 1020:
            server.set_status(key, _ready())

    api_server.on_get = slow_operator
    start = clock.now
    with pytest.raises(Timeout) as info:
        client.wait_ready([_cluster(), second], timeout_s=30)
    assert clock.now - start == pytest.approx(30), "the second wait got only what the first left"
    assert "RayCluster gpu-telemetry-system/other did not reach HeadPodReady=True" in str(info.value)
    assert "no conditions" in str(info.value)


# --- errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "error"),
    [
        (404, NotFound),
        (409, Conflict),
        (422, Invalid),
        (400, Invalid),
        (403, Forbidden),
        (500, ServerError),
        (503, ServerError),
    ],
)
def test_http_errors_map_to_typed_errors_naming_the_object(
    client: KubeRayClient,
    api_server: LoopbackApiServer,
    code: int,
    error: type[KubeRayError],
) -> None:
    api_server.put(_cluster())
    api_server.fail("GET", "rayclusters/gpu-telemetry", code, reason="Injected")
    with pytest.raises(error) as info:
        client.cluster_status("gpu-telemetry")
    exc = info.value
    assert type(exc) is error and exc.status == code
    assert (exc.kind, exc.name, exc.namespace) == ("RayCluster", "gpu-telemetry", NS)
    assert f"get RayCluster {NS}/gpu-telemetry failed: HTTP {code} Injected: injected failure {code}" in str(exc)
    # The next call is not affected: the failure was injected once, and nothing was retried silently.
    assert client.cluster_status("gpu-telemetry").name == "gpu-telemetry"
    assert len(api_server.matching("GET")) == 2


def test_missing_object_and_conflicting_create_are_typed(client: KubeRayClient, api_server: LoopbackApiServer) -> None:
    with pytest.raises(NotFound, match='rayjobs "nope" not found'):
        client.job_status("nope")
    client.submit_job(_job())
    with pytest.raises(Conflict, match="already exists"):
        client.submit_job(_job())


def test_a_wrong_token_is_forbidden(api_server: LoopbackApiServer) -> None:
    configuration = Configuration(host=api_server.url)
    configuration.api_key = {"BearerToken": "wrong"}
    configuration.api_key_prefix = {"BearerToken": "Bearer"}
    with KubeRayClient(ApiClient(configuration)) as bad, pytest.raises(Forbidden, match="HTTP 401"):
        bad.cluster_status("gpu-telemetry")


def test_an_unreachable_server_is_a_server_error() -> None:
    configuration = Configuration(host="http://127.0.0.1:9")
    configuration.retries = 0
    with (
        KubeRayClient(ApiClient(configuration), request_timeout_s=2) as c,
        pytest.raises(
            ServerError, match="RayCluster gpu-telemetry-system/gpu-telemetry failed: API server unreachable"
        ),
    ):
        c.cluster_status("gpu-telemetry")


@pytest.mark.parametrize(
    "cls", [KubeRayError, NotFound, Conflict, Invalid, Forbidden, ServerError, Timeout, RenderError]
)
def test_every_error_survives_pickle(cls: type[KubeRayError]) -> None:
    exc = cls("get RayJob ns/x failed", kind="RayJob", name="x", namespace="ns", status=409, reason="AlreadyExists")
    back = pickle.loads(pickle.dumps(exc))
    assert type(back) is cls and str(back) == str(exc)
    assert (back.kind, back.name, back.namespace, back.status, back.reason) == (
        "RayJob",
        "x",
        "ns",
        409,
        "AlreadyExists",
    )
    assert isinstance(back, KubeRayError)


# --- RayJobs and status --------------------------------------------------------------------------


def test_submit_follow_and_stop_a_job(client: KubeRayClient, api_server: LoopbackApiServer, clock: FakeClock) -> None:
    status = client.submit_job(_job(), name="gpu-telemetry-run-2")
    assert status.name == "gpu-telemetry-run-2" and status.job_status == "PENDING"
    created = api_server.matching("POST", "/rayjobs")[0]
    assert created.body["metadata"]["name"] == "gpu-telemetry-run-2"
    script = iter(
        [
            {"jobStatus": "PENDING", "jobDeploymentStatus": "Initializing"},
            {"jobStatus": "PENDING", "jobDeploymentStatus": "Initializing"},
            {
                "jobStatus": "RUNNING",
                "jobDeploymentStatus": "Running",
                "jobId": "raysubmit_1",
                "rayClusterName": "gpu-telemetry",
            },
            {
                "jobStatus": "SUCCEEDED",
                "jobDeploymentStatus": "Complete",
                "jobId": "raysubmit_1",
                "rayClusterName": "gpu-telemetry",
            },
        ]
    )

    def operator(key: Key, server: LoopbackApiServer) -> None:
        if key in server.objects:
            server.set_status(key, next(script, server.objects[key].get("status", {})))

    api_server.on_get = operator
    seen: list[str] = []
    final = client.follow_job(
        "gpu-telemetry-run-2", timeout_s=60, on_change=lambda s: seen.append(f"{s.job_status}/{s.deployment_status}")
    )
    assert final.succeeded and final.finished and final.job_id == "raysubmit_1"
    assert seen == ["PENDING/Initializing", "RUNNING/Running", "SUCCEEDED/Complete"]
    client.stop_job("gpu-telemetry-run-2", timeout_s=10)
    assert len(api_server.matching("DELETE", "rayjobs/gpu-telemetry-run-2")) == 1
    assert not [k for k in api_server.objects if k[3] == "rayjobs"]
    with pytest.raises(NotFound):
        client.delete_job("gpu-telemetry-run-2")


def test_follow_until_running_and_its_deadline(
    client: KubeRayClient, api_server: LoopbackApiServer, clock: FakeClock
) -> None:
    client.submit_job(_job())
    with pytest.raises(Timeout, match="did not start running in time: last seen PENDING/New"):
        client.follow_job("gpu-telemetry-run", timeout_s=9, until_finished=False)
    assert sum(clock.sleeps) == pytest.approx(9)


def test_stop_times_out_while_the_finalizer_holds_the_job(
    client: KubeRayClient,
    api_server: LoopbackApiServer,
) -> None:
    client.submit_job(_job())
    held = api_server.obj("ray.io", "v1", NS, "rayjobs", "gpu-telemetry-run")

    def finalizer_never_done(key: Key, server: LoopbackApiServer) -> None:
        server.objects.setdefault(key, held)

    api_server.on_get = finalizer_never_done
    with pytest.raises(Timeout, match="still present after delete"):
        client.stop_job("gpu-telemetry-run", timeout_s=6)


def test_submit_checks_kuberay_name_rules_before_sending(client: KubeRayClient, api_server: LoopbackApiServer) -> None:
    with pytest.raises(Invalid, match="at most 47 characters"):
        client.submit_job(_job(), name="x" * 48)
    with pytest.raises(Invalid, match="DNS-1035"):
        client.submit_job(_job(), name="9-starts-with-a-digit")
    with pytest.raises(Invalid, match="expected a ray.io/v1 RayJob"):
        client.submit_job(_cluster())
    assert api_server.requests == []


def test_cluster_and_service_status(client: KubeRayClient, api_server: LoopbackApiServer) -> None:
    live = _cluster()
    live["spec"]["workerGroupSpecs"][1]["replicas"] = 4
    api_server.put(live)
    api_server.set_status(CLUSTER_KEY, _ready())
    status = client.cluster_status("gpu-telemetry")
    assert status.ready and status.state == "ready" and status.ready_workers == 3
    assert [(g.name, g.min_replicas, g.max_replicas, g.replicas) for g in status.groups] == [
        ("streamers", 1, 10, None),
        ("collectors", 2, 10, 4),
    ]
    assert "  group collectors: replicas 4 in [2, 10]" in status.lines()
    service = {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": {"name": "gw", "namespace": NS},
        "status": {
            "serviceStatus": "Running",
            "numServeEndpoints": 2,
            "conditions": [{"type": "Ready", "status": "True", "reason": "NonZeroServeEndpoints"}],
        },
    }
    api_server.put(service)
    svc = client.service_status("gw")
    assert svc.ready and svc.serve_endpoints == 2 and "Ready=True (NonZeroServeEndpoints)" in svc.lines()[1]


def test_the_loopback_json_patch_follows_rfc_6902() -> None:
    doc = {"a": [1, 2], "b": {"c": 1}}
    out = apply_json_patch(
        doc,
        [
            {"op": "add", "path": "/a/-", "value": 3},
            {"op": "copy", "from": "/b", "path": "/d"},
            {"op": "remove", "path": "/b/c"},
            {"op": "test", "path": "/a/2", "value": 3},
        ],
    )
    assert out == {"a": [1, 2, 3], "b": {}, "d": {"c": 1}} and doc == {"a": [1, 2], "b": {"c": 1}}


# --- one request path --------------------------------------------------------------------------


def test_core_namespaced_and_cluster_scoped_kinds_share_one_request_path(
    client: KubeRayClient, api_server: LoopbackApiServer
) -> None:
    objects = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "r"}},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": NS}},
        _cluster(),
    ]
    paths = [
        f"/api/v1/namespaces/{NS}",
        "/apis/rbac.authorization.k8s.io/v1/clusterroles/r",
        f"/api/v1/namespaces/{NS}/configmaps/c",
        f"/apis/ray.io/v1/namespaces/{NS}/rayclusters/gpu-telemetry",
    ]
    client.apply(objects)
    for obj in reversed(objects):
        client.delete_object(obj, propagation="Foreground")
    assert [r.path for r in api_server.matching("PATCH")] == paths
    deletes = api_server.matching("DELETE")
    assert [r.path for r in deletes] == paths[::-1]
    assert all(r.query["propagationPolicy"] == ["Foreground"] for r in deletes)
    assert all(r.authorization == "Bearer loopback-token" for r in api_server.requests)
    assert api_server.objects == {}
    with pytest.raises(Invalid, match="propagation must be one of"):
        client.delete_object(objects[0], propagation="Sideways")


def test_no_kuberay_module_over_500_lines_or_function_over_80() -> None:
    too_long: list[str] = []
    for path in sorted(KUBERAY.glob("*.py")):
        text = path.read_text()
        if text.count("\n") > 500:
            too_long.append(f"{path.name}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno is not None:
                length = node.end_lineno - node.lineno + 1
                if length > 80:
                    too_long.append(f"{path.name}:{node.lineno} {node.name}: {length} lines")
    assert too_long == []
