"""kuberay/base/data/init-roles.sh executed, on a PostgreSQL of its own, with dev's throwaway credentials.

What TimescaleDB's first start does on Kubernetes (the script, as the superuser, from the values of
timescaledb-credentials), then what the pods do with their Secrets' URLs (password authentication,
scram-sha-256 over TCP): the pipeline's owner login migrates and writes; the gateway's login,
gateway_reader (Secret gpu-telemetry-gateway-db), serves every read and changes nothing; Grafana's
login reads the views of schema grafana only. The server is this test's own: the script creates
server-wide roles and the database ``telemetry``, which the shared test server must not get.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
import yaml

from pipeline.storage.migrate import migrate
from tests.integration.test_gateway import load_fleet
from tests.integration.test_gateway_roles import Owned, changes_nothing, serves_every_read

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "kuberay" / "base" / "data" / "init-roles.sh"
DEV = ROOT / "kuberay" / "overlays" / "dev" / "kustomization.yaml"
TIMESCALEDB = ROOT / "kuberay" / "base" / "data" / "timescaledb.yaml"
EXTENSION = "CREATE EXTENSION IF NOT EXISTS timescaledb;"  # TimescaleDB's image has it; this machine does not


def dev_secrets() -> dict[tuple[str, str], dict[str, str]]:
    """The dev overlay's generated Secrets: (namespace, name) -> key -> value."""
    kustomization = yaml.safe_load(DEV.read_text())
    return {
        (g["namespace"], g["name"]): dict(literal.split("=", 1) for literal in g["literals"])
        for g in kustomization["secretGenerator"]
    }


def script_env(secrets: dict[tuple[str, str], dict[str, str]]) -> dict[str, str]:
    """The TimescaleDB container's variables that come from Secrets, as it gets them in dev."""
    statefulset = next(d for d in yaml.safe_load_all(TIMESCALEDB.read_text()) if d and d["kind"] == "StatefulSet")
    env = {}
    for e in statefulset["spec"]["template"]["spec"]["containers"][0]["env"]:
        ref = (e.get("valueFrom") or {}).get("secretKeyRef")
        if ref:
            env[e["name"]] = secrets[("gpu-telemetry-data", ref["name"])][ref["key"]]
    return env


class PasswordServer:
    """A throw-away PostgreSQL: trust on its socket (the superuser's), scram-sha-256 over TCP (the pods')."""

    def __init__(self, root: Path) -> None:
        self.root = root
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self._as: list[str] = []
        if os.geteuid() == 0:  # initdb refuses root: run the server as the postgres user
            shutil.chown(root, "postgres", "postgres")
            self._as = ["runuser", "-u", "postgres", "--"]
        data = str(root / "data")
        auth = ["--auth-local=trust", "--auth-host=scram-sha-256"]
        self._run("initdb", "-D", data, "-U", "postgres", *auth, "-E", "UTF8")
        opts = f"-p {self.port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run("pg_ctl", "-D", data, "-o", opts, "-l", str(root / "log"), "-w", "start")

    def _run(self, *args: str) -> None:
        subprocess.run([*self._as, *args], check=True, capture_output=True, timeout=120)

    def admin(self, dbname: str = "postgres") -> str:
        return f"host={self.root} port={self.port} user=postgres dbname={dbname}"

    def here(self, url: str) -> str:
        """A pod's URL pointed at this server (same login, password and database)."""
        parts = urlsplit(url)
        return urlunsplit(parts._replace(netloc=f"{parts.username}:{parts.password}@127.0.0.1:{self.port}"))

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.root / "data"), "-m", "immediate", "-w", "stop")


@pytest.fixture
def initialised() -> Iterator[tuple[PasswordServer, dict[tuple[str, str], dict[str, str]]]]:
    """A server the init script ran on, with dev's credentials; the owner migrated and loaded FLEET."""
    for tool in ("initdb", "pg_ctl", "psql", "bash"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    root = Path(tempfile.mkdtemp(prefix="pipeline-init-roles-"))
    server = PasswordServer(root)
    try:
        secrets = dev_secrets()
        script = SCRIPT.read_text()
        assert EXTENSION in script
        env = {**os.environ, **script_env(secrets), "PGHOST": str(root), "PGPORT": str(server.port)}
        done = subprocess.run(
            ["bash", "-c", script.replace(EXTENSION, "")], env=env, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        owner = server.here(secrets[("gpu-telemetry-system", "gpu-telemetry-db")]["url"])
        migrate(owner)  # as the pipeline does: the owner, no superuser, no CREATEROLE
        load_fleet(owner)
        yield server, secrets
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


def test_the_gateway_secret_logs_in_as_a_read_only_login_the_init_script_made(
    initialised: tuple[PasswordServer, dict[tuple[str, str], dict[str, str]]],
) -> None:
    server, secrets = initialised
    owner_url = server.here(secrets[("gpu-telemetry-system", "gpu-telemetry-db")]["url"])
    gateway_url = server.here(secrets[("gpu-telemetry-system", "gpu-telemetry-gateway-db")]["url"])
    login = urlsplit(gateway_url).username
    assert login is not None and login != urlsplit(owner_url).username
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(gateway_url.replace(f"{login}:", f"{login}:wrong-"), connect_timeout=5).close()
    with psycopg.connect(server.admin()) as admin:
        row = admin.execute(
            "SELECT r.rolsuper, r.rolcreaterole, r.rolcreatedb, r.rolbypassrls, "
            "array(SELECT g.rolname FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid "
            "WHERE m.member = r.oid) FROM pg_roles r WHERE r.rolname = %s",
            (login,),
        ).fetchone()
    assert row == (False, False, False, False, ["gpu_telemetry_gateway"])
    owned = Owned(owner_url, gateway_url, login)
    serves_every_read(owned)
    changes_nothing(owned)


def test_the_owner_writes_and_grafana_reads_only_its_views(
    initialised: tuple[PasswordServer, dict[tuple[str, str], dict[str, str]]],
) -> None:
    server, secrets = initialised
    owner_url = server.here(secrets[("gpu-telemetry-system", "gpu-telemetry-db")]["url"])
    with psycopg.connect(owner_url) as c:
        assert c.execute("SELECT current_user, rolsuper FROM pg_roles WHERE rolname = current_user").fetchone() == (
            "pipeline",
            False,
        )
        c.execute("UPDATE gpus SET model = model")  # the pipeline keeps write access
    grafana = secrets[("gpu-telemetry-monitoring", "grafana-timescaledb")]["GRAFANA_TIMESCALEDB_PASSWORD"]
    url = f"postgresql://grafana_reader:{grafana}@127.0.0.1:{server.port}/telemetry"
    with psycopg.connect(url, autocommit=True) as c:
        assert c.execute("SHOW statement_timeout").fetchone() == ("10s",)
        assert c.execute("SELECT count(*) FROM gpus").fetchone() == (3,)  # search_path grafana: the view
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            c.execute("SELECT count(*) FROM public.gpus")
