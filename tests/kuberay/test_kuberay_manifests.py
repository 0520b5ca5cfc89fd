"""The kustomize tree: every overlay renders and validates offline, obeys KubeRay's own rules, the
seed's sizes, and the security/observability policies of the issue."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.kuberay.conftest import ENVS, KUBERAY, ROOT, SHARED, load_yaml_docs
from tests.kuberay.policy import (
    container_problems,
    crd_schemas,
    literal_secret_problems,
    pod_specs,
    promql_metric_names,
)
from tests.kuberay.rendered import of_kind, one, pipeline_yaml, quantity

# Validate built-in kinds against this Kubernetes version's schemas (kubernetes-validate 1.37 ships
# 1.25..1.37); KubeRay 1.7 and the manifests' fields (CronJob timeZone, PSA labels) need >= 1.27.
KUBERNETES_VERSION = "1.33.0"
RAY_VERSION = "2.60.0"
NAMESPACES = {"gpu-telemetry-system", "gpu-telemetry-monitoring", "gpu-telemetry-data"}
CUSTOM_GROUPS = ("ray.io/", "monitoring.coreos.com/")
RAY_CRDS = SHARED / "kuberay-crds"
MONITORING_CRDS = SHARED / "monitoring-crds"
OPS = KUBERAY / "ops"

# Seed bounds of each role's worker group: (min, max) per environment.
EXPECTED_BOUNDS = {
    "dev": {"streamers": (1, 1), "collectors": (1, 1), "gateway": (1, 2)},
    "staging": {"streamers": (1, 10), "collectors": (2, 10), "gateway": (2, 10)},
    "prod": {"streamers": (3, 15), "collectors": (5, 15), "gateway": (3, 15)},
}
EXPECTED_BROKERS = {"dev": 1, "staging": 3, "prod": 5}


def _ops_objects() -> list[dict[str, Any]]:
    return [d for p in sorted(OPS.glob("*.yaml")) for d in load_yaml_docs(p.read_text())]


def _all_objects(rendered: dict[str, list[dict[str, Any]]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for env, objs in rendered.items():
        for obj in objs:
            yield env, obj
    for obj in _ops_objects():
        yield "ops", obj


# --- rendering and schemas ---------------------------------------------------------------------


def test_every_overlay_renders_the_three_namespaces_and_the_ray_objects(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    for env, objs in rendered.items():
        assert {o["metadata"]["name"] for o in of_kind(objs, "Namespace")} == NAMESPACES, env
        namespaced = [o for o in objs if o["kind"] != "Namespace"]
        assert all(o["metadata"].get("namespace") in NAMESPACES for o in namespaced), env
        assert all(o["apiVersion"] == "ray.io/v1" for o in objs if o["apiVersion"].startswith("ray.io")), env
        assert len(of_kind(objs, "RayCluster")) == 1, env
        jobs = {j["metadata"]["name"] for j in of_kind(objs, "RayJob")}
        assert jobs == {"gpu-telemetry-run", "gpu-telemetry-gateway"}
        keys = [(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]) for o in objs]
        assert len(keys) == len(set(keys)), f"{env}: duplicate objects"


def test_builtin_kinds_validate_strictly_against_kubernetes_schemas(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    checked = 0
    for env, obj in _all_objects(rendered):
        if obj["apiVersion"].startswith(CUSTOM_GROUPS):
            continue
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{env}: {obj['kind']} {obj['metadata']['name']}: {exc.message} at {list(exc.path)}")
        checked += 1
    assert checked > 60


def test_strict_builtin_validation_rejects_an_unknown_field() -> None:
    bad = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "x"},
        "spec": {"ports": [{"port": 80}], "selectr": {"a": "b"}},
    }
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, KUBERNETES_VERSION, strict=True)


@pytest.fixture(scope="session")
def custom_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    """Strict JSON schemas of the KubeRay and Prometheus Operator CRDs from ../shared."""
    if not RAY_CRDS.is_dir():
        pytest.skip(f"{RAY_CRDS} is absent (a fresh clone has no ../shared): ray.io objects not validated")
    schemas = crd_schemas(RAY_CRDS)
    if MONITORING_CRDS.is_dir():
        schemas.update(crd_schemas(MONITORING_CRDS))
    return schemas


def test_custom_resources_validate_against_crd_schemas_with_unknown_fields_rejected(
    rendered: dict[str, list[dict[str, Any]]],
    custom_schemas: dict[tuple[str, str], dict[str, Any]],
) -> None:
    seen: set[str] = set()
    for env, obj in _all_objects(rendered):
        if not obj["apiVersion"].startswith(CUSTOM_GROUPS):
            continue
        key = (obj["apiVersion"], obj["kind"])
        if key not in custom_schemas:
            assert obj["apiVersion"].startswith("monitoring"), f"no CRD schema for {key}"
            pytest.skip(f"{MONITORING_CRDS} is absent: monitoring.coreos.com objects not validated")
        errors = sorted(jsonschema.Draft4Validator(custom_schemas[key]).iter_errors(obj), key=str)
        assert not errors, f"{env}: {obj['kind']} {obj['metadata']['name']}: " + "; ".join(
            f"{e.message} at {'/'.join(map(str, e.absolute_path))}" for e in errors[:5]
        )
        seen.add(obj["kind"])
    assert {"RayCluster", "RayJob", "PodMonitor", "PrometheusRule"} <= seen


def test_crd_validation_rejects_unknown_fields_and_wrong_types(
    rendered: dict[str, list[dict[str, Any]]],
    custom_schemas: dict[tuple[str, str], dict[str, Any]],
) -> None:
    cluster = json.loads(json.dumps(one(rendered["dev"], "RayCluster")))
    cluster["spec"]["workerGroupSpecs"][0]["minReplica"] = 1  # typo of minReplicas
    cluster["spec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] = 0  # must be a string
    validator = jsonschema.Draft4Validator(custom_schemas[("ray.io/v1", "RayCluster")])
    messages = " | ".join(e.message for e in validator.iter_errors(cluster))
    assert "minReplica" in messages
    assert "is not of type 'string'" in messages


# --- KubeRay's own rules (not in the CRD schemas) -------------------------------------------------


@pytest.mark.parametrize("env", ENVS)
def test_raycluster_follows_kuberay_rules_and_autoscales(rendered: dict[str, list[dict[str, Any]]], env: str) -> None:
    objs = rendered[env]
    cluster = one(objs, "RayCluster")
    name, spec = cluster["metadata"]["name"], cluster["spec"]
    assert len(name) <= 53 and re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name)
    assert spec["rayVersion"] == RAY_VERSION
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["autoscalerOptions"]["version"] == "v2"
    assert spec["autoscalerOptions"]["idleTimeoutSeconds"] > 0
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    assert head["template"]["spec"].get("restartPolicy") in (None, "Never")  # autoscaler v2
    ports = {p["name"]: p["containerPort"] for p in head["template"]["spec"]["containers"][0]["ports"]}
    assert ports["metrics"] == 8080 and ports["dashboard"] == 8265 and ports["serve"] == 8000
    # GCS fault tolerance on Redis, password from a Secret, never in rayStartParams/env.
    ft = spec["gcsFaultToleranceOptions"]
    assert ft["redisAddress"].startswith("redis-gcs.gpu-telemetry-data.svc")
    assert ft["redisPassword"]["valueFrom"]["secretKeyRef"]["name"]
    assert "redis-password" not in head["rayStartParams"]
    # Ray token authentication with the token from a Secret.
    assert spec["authOptions"] == {"mode": "token", "secretName": "ray-auth-token"}
    groups = spec["workerGroupSpecs"]
    assert len({g["groupName"] for g in groups}) == len(groups)
    for group in [head, *groups]:
        params = group["rayStartParams"]
        assert all(isinstance(v, str) for v in params.values()), f"{env}: non-string rayStartParams {params}"
    for group in groups:
        gname = group["groupName"]
        assert "minReplicas" in group and "maxReplicas" in group, f"{env}: {gname} bounds not explicit"
        assert 0 <= group["minReplicas"] <= group["maxReplicas"], f"{env}: {gname} min > max"
        assert "replicas" not in group, f"{env}: {gname} sets replicas (the autoscaler owns it)"
        assert group["template"]["spec"].get("restartPolicy") in (None, "Never")
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", gname)
        # Ray may place any actor or Serve replica on any node: every Ray pod gets the settings.
        names = {e["name"] for e in group["template"]["spec"]["containers"][0].get("env", [])}
        assert {"DATABASE_URL", "REDIS_URL"} <= names, f"{env}: {gname} lacks the pipeline's environment"


@pytest.mark.parametrize("env", ENVS)
def test_rayjobs_target_the_cluster_and_run_the_pipeline(rendered: dict[str, list[dict[str, Any]]], env: str) -> None:
    objs = rendered[env]
    cluster = one(objs, "RayCluster")
    head = cluster["spec"]["headGroupSpec"]["template"]["spec"]
    mounts = {m["mountPath"]: m["name"] for m in head["containers"][0]["volumeMounts"]}
    volumes = {v["name"]: v for v in head["volumes"]}
    config_map = volumes[mounts["/etc/pipeline"]]["configMap"]["name"]
    keys = set(one(objs, "ConfigMap", config_map)["data"])
    for job in of_kind(objs, "RayJob"):
        jname, spec = job["metadata"]["name"], job["spec"]
        assert len(jname) <= 47
        assert spec["clusterSelector"] == {"ray.io/cluster": cluster["metadata"]["name"]}
        assert "rayClusterSpec" not in spec and not spec.get("shutdownAfterJobFinishes")
        assert not spec.get("suspend"), "KubeRay refuses suspend in clusterSelector mode"
        assert not (spec.get("backoffLimit") or 0), "KubeRay refuses backoffLimit with clusterSelector"
        files = re.findall(r"/etc/pipeline/(\S+)", spec["entrypoint"])
        assert files and all(f in keys for f in files), f"{env}: {jname} reads {files}, ConfigMap has {keys}"
    run = one(objs, "RayJob", "gpu-telemetry-run")["spec"]["entrypoint"]
    assert run == "python -m pipeline deploy --config /etc/pipeline/pipeline.yaml"


@pytest.mark.parametrize("env", ENVS)
def test_ray_version_equals_every_ray_image_tag_and_the_dockerfile(
    rendered: dict[str, list[dict[str, Any]]],
    env: str,
) -> None:
    dockerfile = (KUBERAY / "Dockerfile").read_text()
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", dockerfile, re.MULTILINE))
    assert args["RAY_VERSION"] == RAY_VERSION and args["PYTHON_TAG"] == "py311"
    assert re.search(r"^FROM rayproject/ray:\$\{RAY_VERSION\}-\$\{PYTHON_TAG\}$", dockerfile, re.MULTILINE)
    user = re.findall(r"^USER (\S+)$", dockerfile, re.MULTILINE)
    assert user and user[-1].split(":")[0] not in ("0", "root")
    for obj in of_kind(rendered[env], "RayCluster") + of_kind(rendered[env], "RayJob"):
        version = one(rendered[env], "RayCluster")["spec"]["rayVersion"]
        for where, pod in pod_specs(obj):
            for c in pod["containers"]:
                if "image" not in c:
                    continue
                tag = c["image"].rsplit(":", 1)[1]
                assert tag.split("-")[0] == version, f"{env} {where}: image {c['image']} vs rayVersion {version}"


# --- the seed's sizes ------------------------------------------------------------------------------


@pytest.mark.parametrize("env", ENVS)
def test_worker_groups_have_the_seed_bounds_and_one_pvc_per_broker(
    rendered: dict[str, list[dict[str, Any]]],
    env: str,
) -> None:
    objs = rendered[env]
    groups = {g["groupName"]: g for g in one(objs, "RayCluster")["spec"]["workerGroupSpecs"]}
    for role, bounds in EXPECTED_BOUNDS[env].items():
        assert (groups[role]["minReplicas"], groups[role]["maxReplicas"]) == bounds, f"{env} {role}"
    brokers = sorted(g for g in groups if g.startswith("broker-"))
    assert brokers == [f"broker-{i}" for i in range(EXPECTED_BROKERS[env])]
    assert pipeline_yaml(objs)["queue"]["brokers"] == len(brokers)
    pvcs = {p["metadata"]["name"] for p in of_kind(objs, "PersistentVolumeClaim")}
    claims = set()
    for i, gname in enumerate(brokers):
        group = groups[gname]
        assert (group["minReplicas"], group["maxReplicas"]) == (1, 1), "a broker group never scales"
        assert f'\\"broker_{i}\\": 1' in group["rayStartParams"]["resources"]
        pod = group["template"]["spec"]
        claim = next(v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v)
        mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["mountPath"] == "/data/queue")
        assert mount["name"] == next(v["name"] for v in pod["volumes"] if "persistentVolumeClaim" in v)
        assert claim in pvcs
        claims.add(claim)
    assert len(claims) == len(brokers), "two brokers share a queue volume"
    assert pipeline_yaml(objs)["queue"]["dir"] == "/data/queue"


def test_dev_is_small_and_prod_is_larger(rendered: dict[str, list[dict[str, Any]]]) -> None:
    def db(env: str) -> dict[str, Any]:
        spec: dict[str, Any] = one(rendered[env], "StatefulSet", "timescaledb")["spec"]
        return spec

    def storage(spec: dict[str, Any]) -> float:
        return quantity(spec["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"])

    def limit(spec: dict[str, Any], res: str) -> float:
        return quantity(spec["template"]["spec"]["containers"][0]["resources"]["limits"][res])

    assert storage(db("dev")) < storage(db("staging")) < storage(db("prod"))
    assert storage(db("dev")) == 20 * 2**30 and storage(db("prod")) == 500 * 2**30
    for res in ("cpu", "memory"):
        assert limit(db("dev"), res) < limit(db("staging"), res) < limit(db("prod"), res)

    def broker_pvc(env: str) -> float:
        pvc = one(rendered[env], "PersistentVolumeClaim", "broker-queue-0")
        return quantity(pvc["spec"]["resources"]["requests"]["storage"])

    assert broker_pvc("dev") == 5 * 2**30 and broker_pvc("staging") == 20 * 2**30 and broker_pvc("prod") == 50 * 2**30
    assert one(rendered["prod"], "PersistentVolumeClaim", "broker-queue-4")["spec"]["storageClassName"] == "fast-ssd"
    for env in ENVS:
        assert db(env)["replicas"] == 1 and one(rendered[env], "StatefulSet", "redis")["spec"]["replicas"] == 1


# --- the rest of the seed: data, policy, RBAC ------------------------------------------------------


@pytest.mark.parametrize("env", ENVS)
def test_timescaledb_redis_and_the_daily_backup(rendered: dict[str, list[dict[str, Any]]], env: str) -> None:
    objs = rendered[env]
    db = one(objs, "StatefulSet", "timescaledb")
    assert db["spec"]["template"]["spec"]["containers"][0]["image"].startswith("timescale/timescaledb-ha:")
    svc = one(objs, "Service", db["spec"]["serviceName"])
    assert svc["spec"]["clusterIP"] == "None"
    assert db["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    redis = one(objs, "StatefulSet", "redis")
    assert one(objs, "Service", redis["spec"]["serviceName"])["spec"]["clusterIP"] == "None"
    cron = one(objs, "CronJob", "timescaledb-backup")
    assert cron["spec"]["schedule"] == "0 2 * * *" and cron["spec"]["concurrencyPolicy"] == "Forbid"
    script = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["args"][0]
    assert "pg_dump --format=custom" in script
    backups = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["volumes"][0]["persistentVolumeClaim"]
    assert one(objs, "PersistentVolumeClaim", backups["claimName"])


@pytest.mark.parametrize("env", ENVS)
def test_every_container_is_restricted_and_has_requests_and_limits(
    rendered: dict[str, list[dict[str, Any]]],
    env: str,
) -> None:
    problems: list[str] = []
    pods = 0
    for obj in rendered[env] + _ops_objects():
        for where, pod in pod_specs(obj):
            pods += 1
            problems += container_problems(where, pod)
    assert not problems, "\n".join(problems)
    assert pods >= 10


def test_the_policy_check_catches_an_unrestricted_container() -> None:
    pod = {
        "containers": [
            {
                "name": "c",
                "image": "x:1",
                "securityContext": {"capabilities": {"drop": ["NET_RAW"]}},
                "resources": {"requests": {"cpu": "1"}},
            }
        ]
    }
    problems = " ".join(container_problems("Pod p", pod))
    for expected in (
        "allowPrivilegeEscalation",
        "drop ALL",
        "runAsNonRoot",
        "seccompProfile",
        "requests.memory",
        "limits.cpu",
    ):
        assert expected in problems


def test_no_literal_secrets_outside_dev(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for env in ("staging", "prod"):
        problems = [p for obj in rendered[env] for p in literal_secret_problems(obj)]
        assert not problems, f"{env}:\n" + "\n".join(problems)
    base = load_yaml_docs("\n---\n".join(p.read_text() for p in (KUBERAY / "base").rglob("*.yaml")))
    assert not [p for obj in base for p in literal_secret_problems(obj)]
    # Dev generates its throwaway Secrets, and every Secret the pods reference exists there.
    dev = rendered["dev"]
    secrets = {(s["metadata"]["namespace"], s["metadata"]["name"]): set(s["data"]) for s in of_kind(dev, "Secret")}
    assert secrets
    for obj in dev:
        namespace = obj["metadata"].get("namespace")
        for where, ref in _secret_refs(obj):
            assert ref["key"] in secrets.get((namespace, ref["name"]), set()), f"dev {where}: {ref} missing"


def test_the_runbook_creates_every_secret_staging_and_prod_reference(rendered: dict[str, list[dict[str, Any]]]) -> None:
    """Staging and prod render no Secret: a reference the runbook's step 4 never creates keeps pods from starting."""
    runbook = (ROOT / "docs" / "kubernetes.md").read_text().replace("\\\n", " ")  # continuation lines
    created: dict[tuple[str, str], set[str]] = {}
    for namespace, name, rest in re.findall(r"kubectl -n (\S+) create secret generic (\S+)(.*)", runbook):
        created.setdefault((namespace, name), set()).update(re.findall(r"--from-literal=([A-Za-z_][\w.-]*)=", rest))
    for env in ("staging", "prod"):
        for obj in rendered[env]:
            namespace = obj["metadata"].get("namespace", "")
            for where, ref in _secret_refs(obj):
                if ref.get("optional"):
                    continue
                secret = f"{namespace}/{ref['name']}"
                keys = created.get((namespace, ref["name"]))
                assert keys is not None, f"{env} {obj['kind']} {where}: the runbook never creates {secret}"
                assert ref["key"] in keys, f"{env} {where}: the runbook's {secret} lacks key {ref['key']}"


def _secret_refs(obj: dict[str, Any]) -> Iterator[tuple[str, dict[str, str]]]:
    for where, pod in pod_specs(obj):
        for c in pod.get("containers", []):
            for env in c.get("env") or ():
                ref = (env.get("valueFrom") or {}).get("secretKeyRef")
                if ref:
                    yield f"{where} {c['name']} {env['name']}", ref
    if obj["kind"] == "RayCluster":
        yield (
            "gcsFaultToleranceOptions",
            obj["spec"]["gcsFaultToleranceOptions"]["redisPassword"]["valueFrom"]["secretKeyRef"],
        )
        yield "authOptions", {"name": obj["spec"]["authOptions"]["secretName"], "key": "auth_token"}
    if obj["kind"] in ("PodMonitor", "ServiceMonitor"):
        for i, ep in enumerate(obj["spec"].get("podMetricsEndpoints") or obj["spec"].get("endpoints") or ()):
            credentials = (ep.get("authorization") or {}).get("credentials")
            if credentials:
                yield f"endpoint {i} authorization", credentials


def test_the_secret_check_catches_literals() -> None:
    leaky = {
        "kind": "StatefulSet",
        "metadata": {"name": "db"},
        "spec": {
            "template": {
                "spec": {
                    "containers": [
                        {
                            "name": "c",
                            "env": [
                                {"name": "POSTGRES_PASSWORD", "value": "hunter2"},
                                {"name": "DSN", "value": "postgresql://u:hunter2@db/x"},
                            ],
                        }
                    ]
                }
            }
        },
    }
    problems = literal_secret_problems(leaky)
    assert len(problems) == 2
    assert literal_secret_problems({"kind": "Secret", "metadata": {"name": "s"}, "data": {}})


@pytest.mark.parametrize("env", ENVS)
def test_network_policies_default_deny_with_dns_and_the_needed_flows(
    rendered: dict[str, list[dict[str, Any]]],
    env: str,
) -> None:
    policies = of_kind(rendered[env], "NetworkPolicy")
    for namespace in ("gpu-telemetry-system", "gpu-telemetry-data"):
        mine = [p for p in policies if p["metadata"]["namespace"] == namespace]
        deny = [
            p
            for p in mine
            if p["spec"]["podSelector"] == {}
            and set(p["spec"]["policyTypes"]) == {"Ingress", "Egress"}
            and not p["spec"].get("ingress")
            and not p["spec"].get("egress")
        ]
        assert deny, f"{namespace}: no default deny"
        dns = [
            rule
            for p in mine
            if p["spec"]["podSelector"] == {}
            for rule in p["spec"].get("egress") or ()
            if {(q["protocol"], q["port"]) for q in rule.get("ports", [])} >= {("UDP", 53), ("TCP", 53)}
        ]
        assert dns, f"{namespace}: DNS egress not allowed"

    def allows(namespace: str, direction: str, port: int) -> bool:
        return any(
            port in {q["port"] for q in rule.get("ports", [])}
            for p in policies
            if p["metadata"]["namespace"] == namespace
            for rule in p["spec"].get(direction) or ()
        )

    assert allows("gpu-telemetry-system", "egress", 5432) and allows("gpu-telemetry-data", "ingress", 5432)
    assert allows("gpu-telemetry-system", "egress", 6379) and allows("gpu-telemetry-data", "ingress", 6379)
    assert allows("gpu-telemetry-system", "ingress", 8080), "Prometheus cannot scrape the Ray pods"
    assert allows("gpu-telemetry-system", "ingress", 8265), "RayJob submitters cannot reach the Jobs API"
    assert allows("gpu-telemetry-system", "ingress", 8000), "nobody can reach the gateway"


@pytest.mark.parametrize("env", ENVS)
def test_rbac_is_namespaced_and_least_privilege(rendered: dict[str, list[dict[str, Any]]], env: str) -> None:
    objs = rendered[env]
    assert not of_kind(objs, "ClusterRole") and not of_kind(objs, "ClusterRoleBinding")
    for role in of_kind(objs, "Role"):
        for rule in role["rules"]:
            for field in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule[field], f"{role['metadata']['name']}: wildcard {field}"
            assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"])
            assert "secrets" not in rule["resources"]
    accounts = {(a["metadata"]["namespace"], a["metadata"]["name"]): a for a in of_kind(objs, "ServiceAccount")}
    for obj in objs:
        for where, pod in pod_specs(obj):
            sa = pod.get("serviceAccountName")
            assert sa and (obj["metadata"]["namespace"], sa) in accounts, f"{where}: service account {sa!r}"
            needs_api = where.endswith(" head")  # the autoscaler sidecar
            mounted = pod.get(
                "automountServiceAccountToken",
                accounts[(obj["metadata"]["namespace"], sa)].get("automountServiceAccountToken", True),
            )
            assert bool(mounted) == needs_api, f"{where}: token mounted={mounted}"


# --- observability ---------------------------------------------------------------------------------


def _dashboard(objs: list[dict[str, Any]]) -> dict[str, Any]:
    cm = next(c for c in of_kind(objs, "ConfigMap") if c["metadata"].get("labels", {}).get("grafana_dashboard") == "1")
    dashboard: dict[str, Any] = json.loads(cm["data"]["gpu-telemetry.json"])
    return dashboard


def _targets(dashboard: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [t for p in dashboard["panels"] for t in p.get("targets", []) if kind in t["datasource"]["type"]]


def test_promql_name_extraction_skips_functions_labels_and_durations() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le, route) (rate(http_request_duration_seconds_bucket{job="x"}[5m])))'
        " > 0.5 and on () (time() - max by (collector) (ray_a_total offset 5m)) > bool 300"
    )
    assert promql_metric_names(expr) == {"http_request_duration_seconds_bucket", "ray_a_total"}


def test_the_seed_alerts_and_the_pipeline_alerts(rendered: dict[str, list[dict[str, Any]]]) -> None:
    rules = {r["alert"]: r for g in one(rendered["staging"], "PrometheusRule")["spec"]["groups"] for r in g["rules"]}
    lag, latency = rules["MessageQueueHighLag"], rules["APIGatewayHighLatency"]
    assert "message_queue_consumer_lag" in lag["expr"] and lag["expr"].rstrip().endswith("> 10000")
    assert lag["for"] == "5m" and latency["for"] == "5m"
    assert "histogram_quantile(0.99" in latency["expr"] and "sum by (le)" in latency["expr"]
    assert latency["expr"].rstrip().endswith("> 0.5")
    assert "ray_pipeline_rejects_total" in rules["PipelineRejectsHigh"]["expr"]
    assert "ray_pipeline_collector_last_commit_timestamp_seconds" in rules["CollectorStalled"]["expr"]
    assert all(r["labels"]["severity"] in ("warning", "critical") for r in rules.values())


def test_monitors_select_the_ray_pods(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objs = rendered["staging"]
    cluster = one(objs, "RayCluster")
    for monitor in of_kind(objs, "PodMonitor"):
        assert monitor["spec"]["namespaceSelector"]["matchNames"] == [cluster["metadata"]["namespace"]]
        assert monitor["spec"]["selector"]["matchLabels"]["ray.io/cluster"] == cluster["metadata"]["name"]
    ray_ports = {e["port"] for m in of_kind(objs, "PodMonitor") for e in m["spec"]["podMetricsEndpoints"]}
    assert {"metrics", "as-metrics", "dash-metrics", "serve"} <= ray_ports
    assert not of_kind(objs, "ServiceMonitor"), "a ServiceMonitor scrapes through a load-balanced Service"


def test_ray_dashboard_embeds_grafana(rendered: dict[str, list[dict[str, Any]]]) -> None:
    head = one(rendered["prod"], "RayCluster")["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value", "") for e in head["env"]}
    assert env["RAY_GRAFANA_HOST"].startswith("http://") and "gpu-telemetry-monitoring" in env["RAY_GRAFANA_HOST"]
    assert env["RAY_PROMETHEUS_HOST"].startswith("http://") and ":9090" in env["RAY_PROMETHEUS_HOST"]
    assert env["RAY_GRAFANA_IFRAME_HOST"]


def _sql_tables(sql_dir: Path) -> dict[str, set[str]]:
    tables: dict[str, set[str]] = {}
    for path in sorted(sql_dir.glob("*.sql")):
        for name, body in re.findall(
            r"CREATE TABLE (?:IF NOT EXISTS )?(\w+)\s*\((.*?)\n\)[^;]*;", path.read_text(), re.S
        ):
            cols = {m.group(1) for m in re.finditer(r"^\s*(\w+)\s+\w", body, re.M)}
            tables[name] = cols - {"PRIMARY", "UNIQUE", "CONSTRAINT", "CHECK", "FOREIGN"}
    return tables


def test_dashboard_gpu_panels_query_the_pipeline_schema(rendered: dict[str, list[dict[str, Any]]]) -> None:
    dashboard = _dashboard(rendered["dev"])
    queries = [t["rawSql"] for t in _targets(dashboard, "postgres")]
    queries += [v["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    titles = " ".join(p["title"] for p in dashboard["panels"]).lower()
    for word in ("utilisation", "temperature", "power", "memory"):
        assert word in titles
    assert all("g.hostname IN ($host)" in q for q in queries[:-1])
    sql_dir = ROOT / "sql"
    if not any(sql_dir.glob("*.sql")):
        pytest.skip("sql/ has no migrations yet: cannot check the dashboard's SQL against the schema")
    tables = _sql_tables(sql_dir)
    metric_names = set(re.findall(r"'(DCGM_FI_\w+)'", "\n".join(p.read_text() for p in sql_dir.glob("*.sql"))))
    for query in queries:
        aliases = {alias: table for table, alias in re.findall(r"(?:FROM|JOIN)\s+(\w+)\s+(\w+)", query)}
        assert aliases and set(aliases.values()) <= set(tables), f"unknown table in {query}"
        for alias, column in re.findall(r"\b(\w+)\.(\w+)\b", query):
            if alias in aliases:
                assert column in tables[aliases[alias]], f"{aliases[alias]}.{column} does not exist"
        for metric in re.findall(r"'(DCGM_FI_\w+)'", query):
            assert metric in metric_names, f"{metric} is not in the metrics table"


# --- configuration shared with the pipeline --------------------------------------------------------


def _serve_config(objs: list[dict[str, Any]]) -> dict[str, Any]:
    return dict(yaml.safe_load(one(objs, "ConfigMap", "pipeline-config")["data"]["serve_config.yaml"]))


def _replica_bounds(config: dict[str, Any]) -> set[tuple[int, int]]:
    """Every (min, max) replica pair a Serve config states (the deployment's and the builder's args)."""
    out = set()
    for app in config["applications"]:
        if "min_replicas" in app.get("args", {}):
            out.add((app["args"]["min_replicas"], app["args"]["max_replicas"]))
        for d in app.get("deployments", []):
            auto = d.get("autoscaling_config", {})
            out.add((auto.get("min_replicas", 1), auto.get("max_replicas", 1)))
    return out


@pytest.mark.parametrize("env", ENVS)
def test_serve_replicas_scale_within_the_gateway_groups_bounds(
    rendered: dict[str, list[dict[str, Any]]], env: str
) -> None:
    """One replica a gateway pod: Serve bounds wider than the group's leave pods idle or replicas pending."""
    config = _serve_config(rendered[env])
    gateway = {g["groupName"]: g for g in one(rendered[env], "RayCluster")["spec"]["workerGroupSpecs"]}["gateway"]
    assert _replica_bounds(config) == {(gateway["minReplicas"], gateway["maxReplicas"])}, env
    base = _serve_config(rendered["staging"])  # staging deploys the base config as it is
    strip = json.dumps(config, sort_keys=True)
    for (lo, hi), (blo, bhi) in zip(_replica_bounds(config), _replica_bounds(base), strict=True):
        strip = strip.replace(f'"max_replicas": {hi}', f'"max_replicas": {bhi}')
        strip = strip.replace(f'"min_replicas": {lo}', f'"min_replicas": {blo}')
    assert json.loads(strip) == base, f"{env}'s Serve config differs from the base in more than its bounds"


def test_serve_config_copy_equals_the_pipeline_serve_config(rendered: dict[str, list[dict[str, Any]]]) -> None:
    copy = _serve_config(rendered["staging"])
    app = copy["applications"][0]
    assert app["import_path"] == "pipeline.gateway.serve:build" and app["route_prefix"] == "/"
    service = one(rendered["prod"], "Service", "gpu-telemetry-gateway")
    assert copy.get("http_options", {}).get("port", 8000) == service["spec"]["ports"][0]["port"] == 8000
    source = ROOT / "pipeline" / "gateway" / "serve_config.yaml"
    if not source.exists():
        pytest.skip(f"{source} does not exist yet: only the copy in kuberay/ was checked")
    assert copy == yaml.safe_load(source.read_text()), (
        "kuberay/base/system/serve_config.yaml differs from pipeline/gateway/serve_config.yaml: "
        "cp pipeline/gateway/serve_config.yaml kuberay/base/system/serve_config.yaml"
    )


@pytest.mark.parametrize("env", ENVS)
def test_pipeline_config_loads_with_the_pipeline_settings(
    rendered: dict[str, list[dict[str, Any]]], env: str, tmp_path: Path
) -> None:
    data = pipeline_yaml(rendered[env])
    groups = {g["groupName"]: g for g in one(rendered[env], "RayCluster")["spec"]["workerGroupSpecs"]}
    assert groups["collectors"]["maxReplicas"] <= data["queue"]["partitions"], "more collectors than partitions"
    assert data["collector"]["count"] <= groups["collectors"]["maxReplicas"]
    assert data["streamer"]["count"] <= groups["streamers"]["maxReplicas"]
    assert data["gateway"]["host"] == "0.0.0.0"
    try:
        from pipeline.config import Settings
    except ImportError as exc:
        pytest.skip(f"pipeline.config is not importable ({exc})")
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(data))
    settings = Settings.load(config_file=path, environ={})
    assert settings.queue.brokers == data["queue"]["brokers"]
    assert str(settings.queue.dir) == "/data/queue"


def test_dev_ships_a_sample_csv_where_the_streamers_read_it(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objs = rendered["dev"]
    csv_path = Path(pipeline_yaml(objs)["streamer"]["csv"])
    streamers = next(g for g in one(objs, "RayCluster")["spec"]["workerGroupSpecs"] if g["groupName"] == "streamers")
    pod = streamers["template"]["spec"]
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["mountPath"] == str(csv_path.parent))
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    sample = one(objs, "ConfigMap", volume["configMap"]["name"])["data"][csv_path.name]
    header, *rows = sample.splitlines()
    assert header.startswith("timestamp,metric_name,gpu_id,device,uuid") and len(rows) >= 10
    assert len(sample.encode()) < 1_000_000, "ConfigMaps hold at most 1 MiB"


@pytest.mark.parametrize("env", ENVS)
def test_the_pipeline_job_deploys_and_returns_and_its_driver_never_reads_the_csv(
    rendered: dict[str, list[dict[str, Any]]], env: str
) -> None:
    """The RayJob's driver runs on the head (no CSV there): it must deploy the detached pipeline, not run it."""
    import shlex

    from pipeline.cli.parser import build_parser

    job = one(rendered[env], "RayJob", "gpu-telemetry-run")
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[:3] == ["python", "-m", "pipeline"], argv
    args = build_parser().parse_args(argv[3:])
    assert args.command == "deploy"
    assert job["spec"].get("entrypointResources") is None  # the driver stays on the head, and that is fine now
