"""The rendered overlays as the operator, the API server, Prometheus and the CNI act on them.

Each test reads what `kubectl kustomize` renders and fails on the defect it names (issue 12, "the
manifests made true"): elastic bounds lost in prod, latency scraped through a load-balanced
Service, DNS and API-server egress that NodeLocal DNSCache or Cilium would block, an init script
that hides the image's own, Ray pods whose CPUs differ from their requests, a drain cut short by
Ray's stop grace, no disruption budget for the head, GCS state in an evicting cache, no TLS Ingress.
"""

from __future__ import annotations

import base64
import ipaddress
import os
import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import SecretStr
from starlette.testclient import TestClient

from pipeline.config import GatewaySettings
from pipeline.gateway.auth import BearerAuth
from tests.kuberay.conftest import ENVS, ROOT
from tests.kuberay.rendered import env_of, of_kind, one, pipeline_yaml, quantity, ray_pods, worker_groups

SYSTEM = "gpu-telemetry-system"
DATA = "gpu-telemetry-data"
NODELOCAL_DNS = ipaddress.ip_network("169.254.20.10/32")
APISERVER_PORTS = {443, 6443}

Objects = dict[str, list[dict[str, Any]]]


def _pod_labels(objs: list[dict[str, Any]], group: str) -> dict[str, str]:
    """The labels a Ray pod of ``group`` carries: its template's plus those KubeRay adds."""
    cluster = one(objs, "RayCluster")
    spec = cluster["spec"]
    if group == "head":
        template, node_type, group_label = spec["headGroupSpec"]["template"], "head", "headgroup"
    else:
        template, node_type, group_label = worker_groups(objs)[group]["template"], "worker", group
    labels = dict(template.get("metadata", {}).get("labels") or {})
    labels.update({"ray.io/cluster": cluster["metadata"]["name"], "ray.io/node-type": node_type})
    labels["ray.io/group"] = group_label
    return labels


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A label selector (matchLabels and matchExpressions) against a pod's labels; empty selects nothing here."""
    match = selector.get("matchLabels") or {}
    expressions = selector.get("matchExpressions") or []
    if not match and not expressions:
        return False
    if not all(labels.get(k) == v for k, v in match.items()):
        return False
    for e in expressions:
        present, value = e["key"] in labels, labels.get(e["key"])
        ok = {
            "In": present and value in e.get("values", []),
            "NotIn": not present or value not in e.get("values", []),
            "Exists": present,
            "DoesNotExist": not present,
        }[e["operator"]]
        if not ok:
            return False
    return True


# --- prod keeps elastic bounds -------------------------------------------------------------------


@pytest.mark.parametrize("env", ENVS)
def test_the_pipeline_scales_between_the_worker_groups_bounds(rendered: Objects, env: str, tmp_path: Path) -> None:
    from pipeline.config import Settings

    objs = rendered[env]
    path = tmp_path / "pipeline.yaml"
    path.write_text(one(objs, "ConfigMap", "pipeline-config")["data"]["pipeline.yaml"])
    settings = Settings.load(config_file=path, environ={})
    groups = worker_groups(objs)
    for role in ("streamer", "collector"):
        group = groups[f"{role}s"]
        assert settings.policy_bounds(role) == (group["minReplicas"], group["maxReplicas"]), (
            f"{env}: the pipeline scales {role}s within {settings.policy_bounds(role)}, the {role}s group "
            f"within {group['minReplicas']}..{group['maxReplicas']} (one actor per pod)"
        )


def test_prod_scales_streamers_3_to_15_and_collectors_5_to_15(rendered: Objects) -> None:
    scaling = pipeline_yaml(rendered["prod"]).get("scaling") or {}
    assert (scaling.get("streamers_min"), scaling.get("streamers_max")) == (3, 15)
    assert (scaling.get("collectors_min"), scaling.get("collectors_max")) == (5, 15)


# --- API latency from each replica ---------------------------------------------------------------


@pytest.mark.parametrize("env", ENVS)
def test_api_metrics_are_scraped_from_each_gateway_pod_not_through_the_service(rendered: Objects, env: str) -> None:
    objs = rendered[env]
    gateway_labels = _pod_labels(objs, "gateway")
    gateway_pod = worker_groups(objs)["gateway"]["template"]["spec"]
    serve_ports = {p["name"]: p["containerPort"] for p in gateway_pod["containers"][0]["ports"]}
    monitors = [
        m
        for m in of_kind(objs, "PodMonitor")
        if _selects(m["spec"]["selector"], gateway_labels)
        and any(e.get("path") == "/metrics" and e["port"] == "serve" for e in m["spec"]["podMetricsEndpoints"])
    ]
    assert len(monitors) == 1, f"{env}: no PodMonitor scrapes the gateway pods' Serve port /metrics"
    assert not _selects(monitors[0]["spec"]["selector"], _pod_labels(objs, "head")), (
        "the head's Serve proxy forwards to any replica: scraping it samples a random replica"
    )
    assert serve_ports["serve"] == 8000
    for sm in of_kind(objs, "ServiceMonitor"):
        paths = {e.get("path", "/metrics") for e in sm["spec"]["endpoints"]}
        assert "/metrics" not in paths or sm["metadata"]["name"] != "gpu-telemetry-gateway", (
            f"{env}: ServiceMonitor {sm['metadata']['name']} scrapes the API through its load-balanced Service"
        )
    allowed = [
        rule
        for p in of_kind(objs, "NetworkPolicy")
        if p["metadata"]["namespace"] == SYSTEM and _selects(p["spec"]["podSelector"], gateway_labels)
        for rule in p["spec"].get("ingress") or ()
        if 8000 in {q["port"] for q in rule.get("ports", [])}
        and any(
            (peer.get("namespaceSelector") or {}).get("matchLabels", {}).get("kubernetes.io/metadata.name")
            == "gpu-telemetry-monitoring"
            for peer in rule.get("from", [])
        )
    ]
    assert allowed, f"{env}: Prometheus may not reach the gateway pods' port 8000"
    # /metrics needs a `metrics` token: a scrape without one gets a 401 and the API alerts never fire.
    endpoint = next(e for e in monitors[0]["spec"]["podMetricsEndpoints"] if e.get("path") == "/metrics")
    credentials = (endpoint.get("authorization") or {}).get("credentials") or {}
    assert credentials.get("name") and credentials.get("key"), f"{env}: the gateway scrape sends no bearer token"


def test_prometheus_scrapes_the_gateway_with_a_token_the_gateway_accepts(rendered: Objects) -> None:
    """Dev's throwaway Secrets end to end: the PodMonitor's token passes the gateway's own auth on /metrics."""
    objs = rendered["dev"]
    monitor = one(objs, "PodMonitor", "gpu-telemetry-gateway")
    ref = next(e for e in monitor["spec"]["podMetricsEndpoints"] if e.get("path") == "/metrics")["authorization"]
    credentials = ref["credentials"]
    scrape_token = _secret(objs, monitor["metadata"]["namespace"], credentials["name"], credentials["key"])
    env = env_of(worker_groups(objs)["gateway"]["template"]["spec"]["containers"][0])
    api_ref = env["PIPELINE_GATEWAY__API_TOKENS"]["valueFrom"]["secretKeyRef"]
    api_tokens = _secret(objs, SYSTEM, api_ref["name"], api_ref["key"])

    async def ok(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"metrics"})

    app = BearerAuth(ok, GatewaySettings(api_tokens=SecretStr(api_tokens)).tokens())
    client = TestClient(app)  # no lifespan: the stand-in app answers HTTP only
    assert client.get("/metrics", headers={"Authorization": f"Bearer {scrape_token}"}).status_code == 200
    assert client.get("/metrics").status_code == 401  # the check is live: no token, no metrics


def _secret(objs: list[dict[str, Any]], namespace: str, name: str, key: str) -> str:
    found = [
        s for s in of_kind(objs, "Secret") if s["metadata"]["name"] == name and s["metadata"]["namespace"] == namespace
    ]
    assert len(found) == 1, f"no Secret {namespace}/{name}"
    return base64.b64decode(found[0]["data"][key]).decode()


# --- NetworkPolicies that hold with NodeLocal DNSCache and on Cilium --------------------------------


def _egress_rules(objs: list[dict[str, Any]], namespace: str) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    return [
        (p, rule)
        for p in of_kind(objs, "NetworkPolicy")
        if p["metadata"]["namespace"] == namespace
        for rule in p["spec"].get("egress") or ()
    ]


def _ports(rule: dict[str, Any]) -> set[tuple[str, int]]:
    return {(q.get("protocol", "TCP"), q["port"]) for q in rule.get("ports", [])}


@pytest.mark.parametrize("env", ENVS)
def test_dns_egress_also_reaches_nodelocal_dnscache(rendered: Objects, env: str) -> None:
    for namespace in (SYSTEM, DATA):
        cache_rules = [
            rule
            for policy, rule in _egress_rules(rendered[env], namespace)
            if policy["spec"]["podSelector"] == {}
            and _ports(rule) >= {("UDP", 53), ("TCP", 53)}
            and any(
                "ipBlock" in peer and NODELOCAL_DNS.subnet_of(ipaddress.ip_network(peer["ipBlock"]["cidr"]))
                for peer in rule.get("to", [])
            )
        ]
        assert cache_rules, f"{env} {namespace}: DNS to NodeLocal DNSCache (169.254.20.10:53) is denied"


@pytest.mark.parametrize("env", ENVS)
def test_api_server_egress_names_the_api_server_not_the_whole_internet(rendered: Objects, env: str) -> None:
    objs = rendered[env]
    head = _pod_labels(objs, "head")
    for namespace in (SYSTEM, DATA):
        for policy, rule in _egress_rules(objs, namespace):
            for peer in rule.get("to", []):
                if "ipBlock" in peer:
                    net = ipaddress.ip_network(peer["ipBlock"]["cidr"])
                    assert net.prefixlen >= 8, (
                        f"{env}: {policy['metadata']['name']} allows {net}: Cilium's ipBlock 0.0.0.0/0 does not "
                        "match the API server, and elsewhere it opens egress to the internet"
                    )
    apiserver = [
        ipaddress.ip_network(peer["ipBlock"]["cidr"])
        for policy, rule in _egress_rules(objs, SYSTEM)
        if _selects(policy["spec"]["podSelector"], head) and {port for _, port in _ports(rule)} >= APISERVER_PORTS
        for peer in rule.get("to", [])
        if "ipBlock" in peer
    ]
    assert apiserver, f"{env}: the head's autoscaler cannot reach the API server (443 and 6443)"
    assert all(net.is_private for net in apiserver), f"{env}: API server CIDRs {apiserver} are not private"


def test_staging_and_prod_set_their_api_server_cidrs_in_the_overlay(rendered: Objects) -> None:
    for env in ("staging", "prod"):
        text = (ROOT / "kuberay" / "overlays" / env / "kustomization.yaml").read_text()
        assert "ray-head-egress-apiserver" in text, f"{env}: the API server CIDR is not set per overlay"


@pytest.mark.parametrize("env", ENVS)
def test_the_cilium_component_lets_only_the_head_reach_the_kube_apiserver_entity(
    kubectl: str, rendered: Objects, env: str, tmp_path: Path
) -> None:
    """On Cilium an ipBlock never matches an in-cluster API server: the component adds the entity rule."""
    overlay = os.path.relpath(ROOT / "kuberay" / "overlays" / env, tmp_path)
    component = os.path.relpath(ROOT / "kuberay" / "components" / "cilium", tmp_path)
    (tmp_path / "kustomization.yaml").write_text(f"resources:\n  - {overlay}\ncomponents:\n  - {component}\n")
    done = subprocess.run(
        [kubectl, "kustomize", "--load-restrictor", "LoadRestrictionsNone", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    objs = [d for d in yaml.safe_load_all(done.stdout) if d]
    assert len(objs) == len(rendered[env]) + 1  # the overlay as it is, plus the one policy
    policy = one(objs, "CiliumNetworkPolicy")
    assert policy["metadata"]["namespace"] == SYSTEM
    selector = policy["spec"]["endpointSelector"]
    assert _selects(selector, _pod_labels(objs, "head"))
    assert not any(_selects(selector, _pod_labels(objs, g)) for g in worker_groups(objs))
    (rule,) = policy["spec"]["egress"]
    assert rule["toEntities"] == ["kube-apiserver"]
    ports = {(int(p["port"]), p["protocol"]) for tp in rule["toPorts"] for p in tp["ports"]}
    assert ports == {(443, "TCP"), (6443, "TCP")}


# --- TimescaleDB init script beside the image's own ---------------------------------------------------


@pytest.mark.parametrize("env", ENVS)
def test_the_init_script_is_mounted_with_subpath_beside_the_images_scripts(rendered: Objects, env: str) -> None:
    objs = rendered[env]
    pod = one(objs, "StatefulSet", "timescaledb")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = [
        m
        for m in pod["containers"][0]["volumeMounts"]
        if m["mountPath"].startswith("/docker-entrypoint-initdb.d") and "configMap" in volumes[m["name"]]
    ]
    assert mounts, f"{env}: no init script mounted"
    for mount in mounts:
        assert mount["mountPath"] != "/docker-entrypoint-initdb.d", (
            f"{env}: the ConfigMap hides the image's own /docker-entrypoint-initdb.d scripts (tuning, extension)"
        )
        assert mount.get("subPath") and mount["mountPath"] == f"/docker-entrypoint-initdb.d/{mount['subPath']}"
        config_map = one(objs, "ConfigMap", volumes[mount["name"]]["configMap"]["name"])
        assert mount["subPath"] in config_map["data"]


# --- Ray pods: requests equal limits, the drain fits Ray's stop grace, the head has a PDB ------------


@pytest.mark.parametrize("env", ENVS)
def test_ray_pods_request_what_they_are_limited_to(rendered: Objects, env: str) -> None:
    objs = rendered[env]
    problems = []
    sidecar = one(objs, "RayCluster")["spec"]["autoscalerOptions"]["resources"]
    containers = [("head autoscaler", sidecar)]
    containers += [(f"{group} {c['name']}", c["resources"]) for group, pod in ray_pods(objs) for c in pod["containers"]]
    for where, res in containers:
        for resource in ("cpu", "memory"):
            request, limit = res["requests"][resource], res["limits"][resource]
            if quantity(request) != quantity(limit):
                problems.append(f"{where}: {resource} request {request} != limit {limit}")
    assert not problems, f"{env}: KubeRay gives Ray the limit's CPUs; the scheduler reserves the request:\n" + (
        "\n".join(problems)
    )


def _drain_timeout_s() -> float:
    """The pipeline's drain deadline: the default ``timeout_s`` of its ``drain`` method."""
    pattern = re.compile(r"def drain\(\s*self,\s*timeout_s:\s*float\s*=\s*([0-9.]+)")
    found = {float(m.group(1)) for p in (ROOT / "pipeline").rglob("*.py") for m in pattern.finditer(p.read_text())}
    if not found:
        pytest.skip("no `def drain(self, timeout_s: float = ...)` in pipeline/: cannot read the drain timeout")
    return max(found)


@pytest.mark.parametrize("env", ENVS)
def test_the_drain_fits_the_ray_job_stop_grace(rendered: Objects, env: str) -> None:
    drain = _drain_timeout_s()
    for group, pod in ray_pods(rendered[env]):
        for container in pod["containers"]:
            wait = env_of(container).get("RAY_JOB_STOP_WAIT_TIME_S", {}).get("value")
            assert wait is not None, (
                f"{env} {group}: Ray's job supervisor SIGKILLs a stopped job's driver 3 s after SIGTERM "
                f"(RAY_JOB_STOP_WAIT_TIME_S), the drain takes up to {drain:g} s"
            )
            assert int(wait) >= drain + 10, f"{env} {group}: RAY_JOB_STOP_WAIT_TIME_S={wait} < drain {drain:g} s + 10"


@pytest.mark.parametrize("env", ENVS)
def test_a_disruption_budget_keeps_voluntary_evictions_off_the_head(rendered: Objects, env: str) -> None:
    objs = rendered[env]
    head = _pod_labels(objs, "head")
    budgets = [
        b
        for b in of_kind(objs, "PodDisruptionBudget")
        if b["metadata"]["namespace"] == SYSTEM and _selects(b["spec"]["selector"], head)
    ]
    assert len(budgets) == 1, f"{env}: no PodDisruptionBudget selects the head pod"
    spec = budgets[0]["spec"]
    assert spec.get("maxUnavailable") == 0 or spec.get("minAvailable") == 1
    for group in worker_groups(objs):
        assert not _selects(spec["selector"], _pod_labels(objs, group)), f"{env}: the head's PDB selects {group}"


# --- GCS fault tolerance on its own Redis --------------------------------------------------------------


def _redis_args(statefulset: dict[str, Any]) -> dict[str, str]:
    container = statefulset["spec"]["template"]["spec"]["containers"][0]
    words = shlex.split(" ".join(map(str, container.get("command", []) + container.get("args", []))))
    env = {k: v.get("value", "") for k, v in env_of(container).items()}
    words = [re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), w) for w in words]
    return {w[2:]: words[i + 1] for i, w in enumerate(words[:-1]) if w.startswith("--")}


def _statefulset_behind(objs: list[dict[str, Any]], host: str) -> dict[str, Any]:
    service_name, namespace = host.split(".")[:2]
    service = one([o for o in objs if o["metadata"].get("namespace") == namespace], "Service", service_name)
    return next(
        s
        for s in of_kind(objs, "StatefulSet")
        if s["metadata"]["namespace"] == namespace
        and all(s["spec"]["template"]["metadata"]["labels"].get(k) == v for k, v in service["spec"]["selector"].items())
    )


@pytest.mark.parametrize("env", ENVS)
def test_gcs_state_has_its_own_redis_that_never_evicts(rendered: Objects, env: str) -> None:
    objs = rendered[env]
    ft = one(objs, "RayCluster")["spec"]["gcsFaultToleranceOptions"]
    assert ft["backend"] == "redis", "the GCS store is chosen explicitly (the field is immutable)"
    address = ft["redisAddress"]
    gcs = _statefulset_behind(objs, address.rsplit(":", 1)[0])
    args = _redis_args(gcs)
    assert args.get("maxmemory-policy") == "noeviction", f"{env}: an evicting Redis drops GCS tables"
    assert "maxmemory" in args, f"{env}: GCS Redis without maxmemory grows until the OOM killer ends it"
    limit = quantity(gcs["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"])
    maxmemory = quantity(args["maxmemory"].replace("gb", "Gi").replace("mb", "Mi"))
    assert maxmemory <= 0.75 * limit, f"{env}: maxmemory {args['maxmemory']} leaves no headroom under {limit:g}"
    assert args.get("appendonly") == "yes", f"{env}: GCS Redis must persist (a restart would lose the cluster)"
    caches = [
        s
        for s in of_kind(objs, "StatefulSet")
        if s is not gcs and s["metadata"]["namespace"] == DATA and "redis" in s["metadata"]["name"]
    ]
    assert caches, f"{env}: the gateway's cache Redis is missing"
    if env == "dev":  # the only overlay whose REDIS_URL is visible
        secret = one(
            [s for s in of_kind(objs, "Secret") if s["metadata"]["namespace"] == SYSTEM],
            "Secret",
            "gpu-telemetry-redis",
        )
        import base64

        url = base64.b64decode(secret["data"]["url"]).decode()
        assert address.rsplit(":", 1)[0] not in url, "the gateway's cache shares the GCS Redis"
    gcs_labels = gcs["spec"]["template"]["metadata"]["labels"]
    peers = [
        peer
        for p in of_kind(objs, "NetworkPolicy")
        if p["metadata"]["namespace"] == DATA and _selects(p["spec"]["podSelector"], gcs_labels)
        for rule in p["spec"].get("ingress") or ()
        for peer in rule.get("from", [])
    ]
    assert peers and all(_selects(peer.get("podSelector") or {}, _pod_labels(objs, "head")) for peer in peers)
    assert not any(_selects(peer.get("podSelector") or {}, _pod_labels(objs, "gateway")) for peer in peers), (
        f"{env}: only the head's GCS talks to the GCS Redis"
    )


# --- an Ingress with TLS for the API -----------------------------------------------------------------


def test_staging_and_prod_serve_the_api_through_a_tls_ingress(rendered: Objects) -> None:
    hosts = {}
    for env in ("staging", "prod"):
        objs = rendered[env]
        ingress = one(objs, "Ingress")
        spec, annotations = ingress["spec"], ingress["metadata"].get("annotations") or {}
        assert ingress["metadata"]["namespace"] == SYSTEM
        assert spec.get("ingressClassName"), f"{env}: no ingress class"
        assert annotations.get("cert-manager.io/cluster-issuer") or annotations.get("cert-manager.io/issuer")
        rule_hosts = {r["host"] for r in spec["rules"]}
        tls_hosts = {h for t in spec["tls"] for h in t["hosts"]}
        assert rule_hosts and rule_hosts == tls_hosts, f"{env}: hosts {rule_hosts} vs TLS hosts {tls_hosts}"
        secret_names = {t["secretName"] for t in spec["tls"]}
        assert all(secret_names), f"{env}: TLS without a secret name"
        assert not [s for s in of_kind(objs, "Secret") if s["metadata"]["name"] in secret_names], (
            f"{env}: the TLS secret is committed (cert-manager creates it)"
        )
        backends = [p["backend"]["service"] for r in spec["rules"] for p in r["http"]["paths"]]
        service = one(objs, "Service", "gpu-telemetry-gateway")
        for backend in backends:
            assert backend["name"] == "gpu-telemetry-gateway"
            assert backend["port"].get("name") in {p["name"] for p in service["spec"]["ports"]}
        hosts[env] = rule_hosts
    assert not hosts["staging"] & hosts["prod"], "staging and prod share a host name"
    assert not of_kind(rendered["dev"], "Ingress"), "dev has no Ingress (the seed's values-dev.yaml)"
