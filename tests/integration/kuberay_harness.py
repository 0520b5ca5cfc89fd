"""Run the dev overlay the way the KubeRay operator would, on a real multi-node Ray cluster here.

What the operator does and what this script does instead:

* one pod per worker group (at its minimum; the gateway group at what the Serve config's minimum
  replicas needs, the autoscaler's job) -> one ``ray.cluster_utils.Cluster`` node per pod, started
  with the group's ``rayStartParams`` (``num-cpus``, ``resources``) or, as KubeRay does without
  ``num-cpus``, the container's CPU limit; memory from the memory limit;
* ``authOptions: token`` -> RAY_AUTH_MODE=token and the dev Secret's token in every process;
  ``gcsFaultToleranceOptions`` (Redis) -> RAY_REDIS_ADDRESS (the machine's Redis) and a namespace;
* ConfigMap and Secret volumes -> their files, written under a scratch root at their mount paths
  (paths in the mounted files and the entrypoint are rewritten to that root); the database a
  Secret names -> the test's PostgreSQL (DATABASE_URL): the owner's Secret (the head's) -> the test's
  URL, another login's (the gateway group's read-only gateway_reader) -> a login made here with the
  group roles the TimescaleDB init script gives it, in that group's nodes' environment only;
* the pipeline RayJob -> its own ``entrypoint``, submitted through the Ray Jobs REST API with the
  cluster's token; the gateway's serveConfigV2 -> ``PUT /api/serve/applications/`` on the
  dashboard, as RayService does (HTTP on a free port, one proxy: every node here shares one IP).

Then three faults, each on its own deployment, each ended by ``python -m pipeline stop --json`` and
an exact comparison of produced and stored samples:

a. the job's driver killed with SIGKILL while it deploys; ingest goes on; a resubmitted job attaches;
b. the worker nodes of the streamer and the collector removed at once (every process on them gone),
   then replaced as the operator would; ingest resumes;
c. the GCS killed and restarted (Redis-backed fault tolerance); ingest goes on.

Prints one JSON line (a report per phase); exits non-zero on failure. Used by test_kuberay_harness.py.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import psycopg
import yaml
from psycopg.conninfo import conninfo_to_dict, make_conninfo

ROOT = Path(__file__).resolve().parents[2]
OVERLAY = ROOT / "kuberay" / "overlays" / "dev"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def render() -> list[dict[str, Any]]:
    out = subprocess.run(["kubectl", "kustomize", str(OVERLAY)], check=True, capture_output=True, text=True).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def by_kind(objs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"{kind} {name}: {len(found)} found"
    return found[0]


def secret_value(objs: list[dict[str, Any]], name: str, key: str) -> str:
    s = next(o for o in objs if o["kind"] == "Secret" and o["metadata"]["name"] == name)
    if key in s.get("stringData", {}):
        return str(s["stringData"][key])
    return base64.b64decode(s["data"][key]).decode()


def quantity_bytes(q: str) -> int:
    units = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30}
    for suffix, factor in units.items():
        if q.endswith(suffix):
            return int(float(q[: -len(suffix)]) * factor)
    return int(q)


def cpus(limit: str) -> int:
    """Ray's CPUs from a container CPU limit, rounded up as KubeRay does."""
    value = float(limit[:-1]) / 1000 if limit.endswith("m") else float(limit)
    return max(1, int(-(-value // 1)))


class Materialised:
    """ConfigMap/Secret volumes as files under ``root``, and the rewrite of mount paths to it."""

    def __init__(self, objs: list[dict[str, Any]], root: Path, database_url: str) -> None:
        self.root = root
        self.mounts: set[str] = set()
        for spec in _pod_specs(by_kind(objs, "RayCluster")):
            volumes = {v["name"]: v for v in spec.get("volumes", [])}
            for m in spec["containers"][0].get("volumeMounts", []):
                self._mount(objs, volumes.get(m["name"], {}), m["mountPath"])
        self.database_url = database_url

    def _mount(self, objs: list[dict[str, Any]], volume: dict[str, Any], path: str) -> None:
        target = self.path(path)
        target.mkdir(parents=True, exist_ok=True)
        self.mounts.add(path)
        if "configMap" in volume:
            data = by_kind(objs, "ConfigMap", volume["configMap"]["name"]).get("data", {})
            for key, text in data.items():
                (target / key).write_text(self.rewrite(text))
        elif "secret" in volume:
            for key in by_kind(objs, "Secret", volume["secret"]["secretName"]).get("data") or {}:
                (target / key).write_text(secret_value(objs, volume["secret"]["secretName"], key))

    def path(self, mount: str) -> Path:
        return self.root / mount.lstrip("/")

    def rewrite(self, text: str) -> str:
        for prefix in ("/etc/pipeline", "/data/csv", "/data/queue", "/tmp/ray"):
            text = text.replace(f"{prefix}/", f"{self.path(prefix)}/").replace(f"{prefix}\n", f"{self.path(prefix)}\n")
        return text


def _pod_specs(cluster: dict[str, Any]) -> list[dict[str, Any]]:
    specs = [cluster["spec"]["headGroupSpec"]["template"]["spec"]]
    specs += [g["template"]["spec"] for g in cluster["spec"]["workerGroupSpecs"]]
    return specs


def node_args(group: dict[str, Any], databases: dict[str, str] | None = None) -> dict[str, Any]:
    """``Cluster.add_node`` arguments for one pod of a group, from its rayStartParams and limits.

    With ``databases`` (``database_urls``), a group whose pods get another DATABASE_URL than the head's
    gets it in its node's environment (the raylet's, which its workers inherit).
    """
    params = group["rayStartParams"]
    limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
    args: dict[str, Any] = {
        "num_cpus": int(params["num-cpus"]) if "num-cpus" in params else cpus(str(limits["cpu"])),
        "memory": quantity_bytes(str(limits["memory"])),
    }
    if "resources" in params:
        args["resources"] = json.loads(json.loads(params["resources"]))
    url = (databases or {}).get(group["groupName"])
    if url is not None and url != (databases or {}).get("head"):
        args["env_vars"] = {"DATABASE_URL": url}
    return args


def database_urls(objs: list[dict[str, Any]], admin: str) -> dict[str, str]:
    """The DATABASE_URL of each Ray pod group ("head" and the worker groups) on the test's PostgreSQL.

    The head's Secret (the owner's) -> ``admin``; a Secret that names another login -> a login made here
    (``harness_<login>_<hex>``), a member of the roles the TimescaleDB init script makes that login one of.
    """
    cluster = by_kind(objs, "RayCluster")
    script = by_kind(objs, "ConfigMap", "timescaledb-init")["data"]["10-roles.sh"]
    member_of = dict(re.findall(r"CREATE ROLE (\w+) LOGIN PASSWORD :'\w+' IN ROLE (\w+);", script))
    groups = [("head", cluster["spec"]["headGroupSpec"])]
    groups += [(g["groupName"], g) for g in cluster["spec"]["workerGroupSpecs"]]

    def secret_of(group: dict[str, Any]) -> tuple[str, str]:
        env = {e["name"]: e for e in group["template"]["spec"]["containers"][0].get("env", [])}
        ref = env["DATABASE_URL"]["valueFrom"]["secretKeyRef"]
        return ref["name"], ref["key"]

    owner = secret_of(groups[0][1])
    made: dict[tuple[str, str], str] = {owner: admin}
    for _, group in groups:
        secret = secret_of(group)
        if secret not in made:
            user = urlsplit(secret_value(objs, *secret)).username or ""
            login = f"harness_{user}_{uuid.uuid4().hex[:6]}"
            with psycopg.connect(admin, autocommit=True) as c:
                c.execute(f"CREATE ROLE {login} LOGIN IN ROLE {member_of[user]}")
            made[secret] = make_conninfo(admin, user=login)
    return {name: made[secret_of(group)] for name, group in groups}


class Jobs:
    """The Ray Jobs REST API with the cluster's token (what the RayJob submitter talks to)."""

    def __init__(self, url: str, token: str) -> None:
        self.http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30)

    def submit(self, entrypoint: str) -> str:
        sid = f"gpu-telemetry-run-{uuid.uuid4().hex[:6]}"
        # The head's job agent registers some time after the dashboard answers ("No available agent to
        # submit job, please try again later"), later still on a loaded machine: retry, as the submitter does.
        deadline = time.monotonic() + 300
        while True:
            r = self.http.post("/api/jobs/", json={"entrypoint": entrypoint, "submission_id": sid})
            if r.status_code < 500 or time.monotonic() > deadline:
                break
            print(f"job submission answered {r.status_code}: {r.text[:200]}", file=sys.stderr)
            time.sleep(3)
        r.raise_for_status()
        return sid

    def info(self, sid: str) -> dict[str, Any]:
        r = self.http.get(f"/api/jobs/{sid}")
        r.raise_for_status()
        return dict(r.json())

    def wait(
        self, sid: str, states: tuple[str, ...], timeout_s: float = 300, allow_failure: bool = False
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while True:
            info = self.info(sid)
            if info["status"] in states:
                return info
            if info["status"] in ("FAILED", "STOPPED") and not allow_failure:
                raise AssertionError(f"job {sid} {info['status']}: {self.logs(sid)[-3000:]}")
            assert time.monotonic() < deadline, f"job {sid} still {info['status']}"
            time.sleep(0.5)

    def logs(self, sid: str) -> str:
        return str(self.http.get(f"/api/jobs/{sid}/logs").json().get("logs", ""))

    def deploy_serve(self, config: dict[str, Any], timeout_s: float = 300) -> None:
        r = self.http.put("/api/serve/applications/", json=config)
        r.raise_for_status()
        deadline = time.monotonic() + timeout_s
        while True:
            apps = self.http.get("/api/serve/applications/").json().get("applications", {})
            status = {name: a.get("status") for name, a in apps.items()}
            if status and all(s == "RUNNING" for s in status.values()):
                return
            assert time.monotonic() < deadline, f"serve applications not running: {status}"
            time.sleep(1)


def stored(db: str) -> tuple[int, int]:
    with psycopg.connect(db) as c:
        try:
            row = c.execute("SELECT count(*), count(DISTINCT (gpu_key, metric_id, ts)) FROM telemetry").fetchone()
        except psycopg.errors.UndefinedTable:
            return 0, 0  # the deploy job has not migrated the database yet
    assert row is not None
    return int(row[0]), int(row[1])


def deployed(db: str) -> bool:
    """True once a supervisor has stored its deployment (it does so first thing in its constructor)."""
    with psycopg.connect(db) as c:
        try:
            return c.execute("SELECT count(*) FROM pipeline_deployments").fetchone() != (0,)
        except psycopg.errors.UndefinedTable:
            return False


def wait_for_growth(db: str, more_than: int, timeout_s: float = 180) -> int:
    deadline = time.monotonic() + timeout_s
    while True:
        n = stored(db)[0]
        if n > more_than:
            return n
        assert time.monotonic() < deadline, f"ingest did not go on: {n} rows stored, expected more than {more_than}"
        time.sleep(0.5)


def cli(*args: str, env: dict[str, str], timeout_s: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout_s
    )


def healthy(env: dict[str, str], timeout_s: float = 120) -> dict[str, Any]:
    """Every actor of the deployed pipeline answers, runs, and reports no error (from ``status --json``).

    The supervisor's view is refreshed once a period: wait (bounded) until it has seen every actor back.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        r = cli("status", "--json", env=env, timeout_s=300)
        assert r.returncode == 0, r.stderr[-3000:]
        report = json.loads(r.stdout.strip().splitlines()[-1])
        workers = [*report["streamers"], *report["collectors"]]
        actors = report["scaling"]["actors"]
        ok = all(
            not a.get("unavailable") and a.get("error") is None and (a.get("running") or a.get("done")) for a in workers
        )
        if ok and actors and all(a["state"] == "running" for a in actors.values()):
            return dict(report)
        assert time.monotonic() < deadline, (workers, actors)
        time.sleep(2)


def _worker_pids(report: dict[str, Any]) -> dict[str, int]:
    """streamer-0 and collector-0's processes, from a status report."""
    return {
        "streamer-0": int(report["streamers"][0]["pid"]),
        "collector-0": int(report["collectors"][0]["pid"]),
    }


def stop_and_compare(db: str, env: dict[str, str], before: int) -> dict[str, Any]:
    r = cli("stop", "--json", env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    # The summary `run --json` prints, key for key.
    assert set(summary) == {"produced", "stored", "rejected", "rejects_stored", "seconds", "rows_per_s", "database"}
    assert summary["seconds"] > 0 and summary["database"].startswith("PostgreSQL"), summary
    total, distinct = stored(db)
    assert summary["stored"] == summary["produced"] > 0, summary
    assert total == distinct == before + summary["produced"], (total, distinct, before, summary)
    return {**summary, "rows_in_db": total, "distinct_in_db": distinct}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--database-url", required=True)
    args = ap.parse_args()
    objs = render()
    root = Path(tempfile.mkdtemp(prefix="kuberay-harness-"))
    mat = Materialised(objs, root, args.database_url)
    cluster_obj = by_kind(objs, "RayCluster")
    token = secret_value(objs, cluster_obj["spec"]["authOptions"]["secretName"], "auth_token")
    # The Ray containers' env from Secrets (the gateway's API tokens, ...), as the pods get it.
    container = cluster_obj["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    for e in container.get("env", []):
        ref = (e.get("valueFrom") or {}).get("secretKeyRef")
        if ref and e["name"] not in ("DATABASE_URL", "REDIS_URL"):
            os.environ[e["name"]] = secret_value(objs, ref["name"], ref["key"])
    os.environ.update(
        {
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": token,
            "RAY_REDIS_ADDRESS": "127.0.0.1:6379",
            "RAY_external_storage_namespace": f"harness-{uuid.uuid4().hex[:8]}",
            "DATABASE_URL": args.database_url,  # the head's and workers' env, from the gpu-telemetry-db Secret
            # The image's `python` is the one with the pipeline installed: here, this interpreter's.
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        }
    )
    from ray.cluster_utils import Cluster

    head = cluster_obj["spec"]["headGroupSpec"]
    head_limits = head["template"]["spec"]["containers"][0]["resources"]["limits"]
    dashboard_port = free_port()
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": int(head["rayStartParams"].get("num-cpus", cpus(str(head_limits["cpu"])))),
            "memory": quantity_bytes(str(head_limits["memory"])),
            "include_dashboard": True,
            "dashboard_host": "127.0.0.1",
            "dashboard_port": dashboard_port,
            # The head's agent serves the Jobs API. Its default port (52365) is the one this machine's
            # other Ray cluster (the test session's) already holds: an agent that cannot bind never
            # registers, and every submission answers "No available agent to submit job".
            "dashboard_agent_listen_port": free_port(),
        },
    )
    report: dict[str, Any] = {}
    databases: dict[str, str] = {}
    try:
        databases = database_urls(objs, args.database_url)
        report = run_phases(objs, mat, cluster, dashboard_port, token, databases)
        print(json.dumps(report))
        return 0
    except BaseException as exc:
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}", **report}))
        raise
    finally:
        cluster.shutdown()
        with psycopg.connect(args.database_url, autocommit=True) as c:
            for url in set(databases.values()) - {args.database_url}:
                with contextlib.suppress(psycopg.Error):
                    c.execute(f"DROP ROLE {_user(url)}")


def run_phases(
    objs: list[dict[str, Any]],
    mat: Materialised,
    cluster: Any,
    dashboard_port: int,
    token: str,
    databases: dict[str, str],
) -> dict[str, Any]:
    db = databases["head"]
    cluster_obj = by_kind(objs, "RayCluster")
    serve_config = yaml.safe_load(mat.path("/etc/pipeline").joinpath("serve_config.yaml").read_text())
    serve_min = max(
        int(d.get("autoscaling_config", {}).get("min_replicas", 1))
        for a in serve_config["applications"]
        for d in a.get("deployments", [])
    )
    nodes: dict[str, list[Any]] = {}
    for group in cluster_obj["spec"]["workerGroupSpecs"]:
        count = max(int(group.get("minReplicas", 1)), int(group.get("replicas") or 0), 1)
        if group["groupName"] == "gateway":
            count = max(count, min(serve_min, int(group.get("maxReplicas", count))))
        nodes[group["groupName"]] = [cluster.add_node(**node_args(group, databases)) for _ in range(count)]
    cluster.wait_for_nodes()
    address = cluster.address
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PIPELINE_")},
        "RAY_ADDRESS": address,
        "PIPELINE_RAY__NAMESPACE": "gpu-telemetry",
    }
    jobs = Jobs(f"http://127.0.0.1:{dashboard_port}", token)
    entrypoint = mat.rewrite(by_kind(objs, "RayJob", "gpu-telemetry-run")["spec"]["entrypoint"] + "\n").strip()
    assert shlex.split(entrypoint)[3] == "deploy", entrypoint

    # The gateway: the overlay's serveConfigV2, as RayService deploys it.
    http_port = free_port()
    serve_config["http_options"] = {**serve_config.get("http_options", {}), "host": "127.0.0.1", "port": http_port}
    serve_config["proxy_location"] = "HeadOnly"
    jobs.deploy_serve(serve_config)
    out: dict[str, Any] = {"nodes": {g: len(n) for g, n in nodes.items()}, "entrypoint": entrypoint}

    # a. the job's driver killed with SIGKILL once the supervisor exists; a resubmitted job attaches.
    time.monotonic()
    sid = jobs.submit(entrypoint)
    deadline = time.monotonic() + 300
    while not deployed(db):
        info = jobs.info(sid)
        assert info["status"] in ("PENDING", "RUNNING", "SUCCEEDED"), f"{info}: {jobs.logs(sid)[-3000:]}"
        assert time.monotonic() < deadline, f"no supervisor after the first job: {jobs.logs(sid)[-3000:]}"
        time.sleep(0.2)
    info = jobs.info(sid)
    pid = (info.get("driver_info") or {}).get("pid")
    killed = False
    if info["status"] == "RUNNING" and pid:
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), 9)
            killed = True
    # The fault happened only if the driver died mid-deploy: its job ends FAILED, not SUCCEEDED.
    ended = jobs.wait(sid, ("FAILED", "STOPPED", "SUCCEEDED"), allow_failure=True)["status"]
    killed = killed and ended != "SUCCEEDED"
    before = 0
    grown = wait_for_growth(db, before)
    api = httpx.get(f"http://127.0.0.1:{http_port}/api/v1/gpus", timeout=30, headers=_api_headers(objs))
    assert api.status_code == 200 and api.json()["items"], api.text[:500]
    # Who is connected to the database: the gateway replicas' pools log in as the gateway group's login.
    with psycopg.connect(db) as c:
        sessions = c.execute(
            "SELECT DISTINCT usename::text FROM pg_stat_activity WHERE datname = current_database() ORDER BY 1"
        ).fetchall()
    logins = {
        "gateway_login": _user(databases["gateway"]),
        "owner_login": _user(db),
        "sessions": [u for (u,) in sessions],
    }
    again = jobs.submit(entrypoint)
    jobs.wait(again, ("SUCCEEDED",))
    attach_log = jobs.logs(again)
    assert "nothing changed" in attach_log or "reconciled" in attach_log, attach_log[-2000:]
    wait_for_growth(db, grown)
    healthy(env)
    out["a"] = {
        "logins": logins,
        "driver_killed": killed,
        "resubmitted": attach_log.strip().splitlines()[-1],
        **stop_and_compare(db, env, before=0),
    }

    # b. the streamer's and the collector's nodes removed at once, then replaced (the operator).
    before = stored(db)[0]
    jobs.wait(jobs.submit(entrypoint), ("SUCCEEDED",))
    grown = wait_for_growth(db, before)
    pids = _worker_pids(healthy(env))
    for group in ("streamers", "collectors"):
        for node in nodes[group]:
            cluster.remove_node(node, allow_graceful=False)
    spec = {g["groupName"]: g for g in cluster_obj["spec"]["workerGroupSpecs"]}
    for group in ("streamers", "collectors"):
        nodes[group] = [cluster.add_node(**node_args(spec[group], databases)) for _ in nodes[group]]
    wait_for_growth(db, grown + 200, timeout_s=300)
    after = _worker_pids(healthy(env))
    moved = {n: int(after[n] != pids[n]) for n in pids}  # a new process: it lost its node and came back
    out["b"] = {"moved": moved, **stop_and_compare(db, env, before)}

    # c. the GCS killed and restarted, state in Redis. Deployed with the CLI this time: `deploy`
    # against the running cluster returns, and a second identical one changes nothing.
    before = stored(db)[0]
    config = shlex.split(entrypoint)[shlex.split(entrypoint).index("--config") + 1]
    first = cli("deploy", "--config", config, "--json", env=env)
    assert first.returncode == 0 and json.loads(first.stdout.splitlines()[-1])["action"] == "created", first.stderr
    grown = wait_for_growth(db, before)
    second = cli("deploy", "--config", config, "--json", env=env)
    assert json.loads(second.stdout.splitlines()[-1])["action"] == "unchanged", second.stdout + second.stderr
    cluster.head_node.kill_gcs_server()
    time.sleep(2)
    cluster.head_node.start_gcs_server()
    wait_for_growth(db, grown + 200, timeout_s=300)
    healthy(env)
    out["c"] = stop_and_compare(db, env, before)
    return out


def _user(conninfo: str) -> str:
    return str(conninfo_to_dict(conninfo).get("user") or "")


def _api_headers(objs: list[dict[str, Any]]) -> dict[str, str]:
    """A bearer token for the gateway when the overlay configures API tokens (a ``read`` one)."""
    for o in objs:
        if o["kind"] == "Secret" and "api_tokens" in (o.get("stringData") or o.get("data") or {}):
            tokens = secret_value(objs, o["metadata"]["name"], "api_tokens")
            for pair in tokens.split(","):
                scope, _, value = pair.partition(":")
                if scope.strip() == "read":
                    return {"Authorization": f"Bearer {value.strip()}"}
    return {}


if __name__ == "__main__":
    sys.exit(main())
