"""Least privilege on the database: the gateway pods connect as a read-only login, never as the owner.

The pipeline (driver, supervisor, collectors, migrations) keeps the owner's URL (Secret
gpu-telemetry-db); the gateway worker group, where every Serve replica runs, gets its DATABASE_URL
from gpu-telemetry-gateway-db, a login the TimescaleDB init script makes a member of
gpu_telemetry_gateway (SELECT only; sql/007_gateway_roles.sql grants it).
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from tests.kuberay.conftest import ENVS
from tests.kuberay.rendered import env_of, of_kind, one, ray_pods, worker_groups

Objects = dict[str, list[dict[str, Any]]]
SYSTEM = "gpu-telemetry-system"
DATA = "gpu-telemetry-data"
OWNER_SECRET = "gpu-telemetry-db"
GATEWAY_SECRET = "gpu-telemetry-gateway-db"
GATEWAY_ROLE = "gpu_telemetry_gateway"


def _secret_names(pod: dict[str, Any]) -> Iterator[str]:
    """Every Secret a pod's containers read: env entries, envFrom and Secret volumes."""
    for c in [*pod.get("initContainers", []), *pod.get("containers", [])]:
        for e in c.get("env") or ():
            ref = (e.get("valueFrom") or {}).get("secretKeyRef")
            if ref:
                yield ref["name"]
        for source in c.get("envFrom") or ():
            if "secretRef" in source:
                yield source["secretRef"]["name"]
    for v in pod.get("volumes") or ():
        if "secret" in v:
            yield v["secret"]["secretName"]
        for projected in (v.get("projected") or {}).get("sources") or ():
            if "secret" in projected:
                yield projected["secret"]["name"]


def _database_ref(pod: dict[str, Any]) -> dict[str, Any]:
    return dict(env_of(pod["containers"][0])["DATABASE_URL"]["valueFrom"]["secretKeyRef"])


@pytest.mark.parametrize("env", ENVS)
def test_the_gateway_pods_read_the_read_only_url_and_never_the_owners(rendered: Objects, env: str) -> None:
    objs = rendered[env]
    gateway = worker_groups(objs)["gateway"]["template"]["spec"]
    assert _database_ref(gateway) == {"name": GATEWAY_SECRET, "key": "url"}, f"{env}: gateway DATABASE_URL"
    assert OWNER_SECRET not in set(_secret_names(gateway)), f"{env}: the gateway pods can read the owner's URL"
    # The pipeline keeps the owner: migrations, the supervisor and the collectors write.
    for group, pod in ray_pods(objs):
        if group != "gateway":
            assert _database_ref(pod) == {"name": OWNER_SECRET, "key": "url"}, f"{env}: {group} DATABASE_URL"
    # Serve replicas ask for the gateway group's resource, so they only ever run on those pods, and
    # the Serve config carries no URL of its own (no bind argument, no runtime_env variable).
    serve = yaml.safe_load(one(objs, "ConfigMap", "pipeline-config")["data"]["serve_config.yaml"])
    for app in serve["applications"]:
        assert "database_url" not in (app.get("args") or {})
        assert not (app.get("runtime_env") or {}).get("env_vars"), f"{env}: {app['name']} sets env in runtime_env"
        for deployment in app["deployments"]:
            assert deployment["ray_actor_options"]["resources"] == {"gateway": 1}
            assert not (deployment["ray_actor_options"].get("runtime_env") or {}).get("env_vars")


def _secret(objs: list[dict[str, Any]], namespace: str, name: str, key: str) -> str:
    found = [
        s for s in of_kind(objs, "Secret") if (s["metadata"]["namespace"], s["metadata"]["name"]) == (namespace, name)
    ]
    assert len(found) == 1, f"no Secret {namespace}/{name}"
    return base64.b64decode(found[0]["data"][key]).decode()


def test_dev_gateway_url_names_a_login_of_the_read_only_role_that_the_init_script_creates(rendered: Objects) -> None:
    """Dev's throwaway credentials end to end: user and password of the URL are those of the gateway login."""
    objs = rendered["dev"]
    gateway_url = urlsplit(_secret(objs, SYSTEM, GATEWAY_SECRET, "url"))
    owner_url = urlsplit(_secret(objs, SYSTEM, OWNER_SECRET, "url"))
    assert gateway_url.username != owner_url.username
    assert (gateway_url.hostname, gateway_url.port, gateway_url.path) == (
        owner_url.hostname,
        owner_url.port,
        owner_url.path,
    )
    script = one(objs, "ConfigMap", "timescaledb-init")["data"]["10-roles.sh"]
    logins = dict(re.findall(rf"CREATE ROLE (\w+) LOGIN PASSWORD :'(\w+)' IN ROLE {GATEWAY_ROLE};", script))
    assert gateway_url.username in logins, f"the init script makes no login {gateway_url.username} in {GATEWAY_ROLE}"
    psql_vars = dict(re.findall(r'-v (\w+)="\$\{(\w+)\}"', script))
    variable = psql_vars[logins[gateway_url.username]]
    pod = one(objs, "StatefulSet", "timescaledb")["spec"]["template"]["spec"]
    ref = env_of(pod["containers"][0])[variable]["valueFrom"]["secretKeyRef"]
    assert _secret(objs, DATA, ref["name"], ref["key"]) == gateway_url.password
    # The login gets the role's statement timeout itself (role settings apply to the role that logs in).
    assert f"ALTER ROLE {gateway_url.username} SET statement_timeout" in script
