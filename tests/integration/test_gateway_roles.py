"""Migration 007: the gateway's read-only role and Grafana's views-only role, on a real PostgreSQL.

The gateway itself through a login that is a member of its role (what the gateway pods connect as on
Kubernetes): every read it serves works, every change is refused.
"""

from __future__ import annotations

import contextlib
import uuid as uuidlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from pipeline.storage.migrate import migrate
from tests.conftest import _with_dbname
from tests.integration.test_gateway import POWER, TEMP, UTIL, iso, load_fleet, make_client

SQL = Path(__file__).resolve().parents[2] / "sql" / "007_gateway_roles.sql"


def as_role(conninfo: str, role: str) -> psycopg.Connection[tuple[object, ...]]:
    conn = psycopg.connect(conninfo, autocommit=True)
    conn.execute(f"SET ROLE {role}")
    return conn


def test_the_gateway_role_reads_everything_now_and_later_and_writes_nothing(fresh_db: str) -> None:
    with psycopg.connect(fresh_db, autocommit=True) as owner:
        owner.execute("CREATE TABLE later_table (x int)")  # what a later migration adds
        owner.execute("CREATE VIEW later_view AS SELECT 1 AS one")
    with as_role(fresh_db, "gpu_telemetry_gateway") as c:
        for relation in ("gpus", "metrics", "telemetry", "later_table", "later_view"):
            c.execute(f"SELECT * FROM {relation} LIMIT 1")
        for statement in (
            "INSERT INTO gpus (uuid) VALUES ('GPU-x')",
            "DELETE FROM telemetry",
            "CREATE TABLE mine (x int)",
            "TRUNCATE metrics",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                c.execute(statement)


def test_the_grafana_role_sees_views_only_under_a_timeout(fresh_db: str) -> None:
    with as_role(fresh_db, "gpu_telemetry_grafana") as c:
        for relation in ("grafana.gpus", "grafana.metrics", "grafana.telemetry"):
            c.execute(f"SELECT * FROM {relation} LIMIT 1")
        for relation in ("public.gpus", "public.telemetry", "public.consumer_offsets", "public.rejects"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                c.execute(f"SELECT 1 FROM {relation} LIMIT 1")
        kinds = c.execute(
            "SELECT DISTINCT c.relkind::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = 'grafana'"
        ).fetchall()
        assert kinds == [("v",)]
    with psycopg.connect(fresh_db) as c:
        settings = c.execute(
            "SELECT s.setconfig FROM pg_db_role_setting s JOIN pg_roles r ON r.oid = s.setrole "
            "WHERE r.rolname = 'gpu_telemetry_grafana' AND s.setdatabase = 0"
        ).fetchone()
    assert settings is not None and "statement_timeout=10s" in settings[0]


def test_the_migration_is_idempotent(fresh_db: str) -> None:
    with psycopg.connect(fresh_db, autocommit=True) as owner:
        owner.execute(SQL.read_text())  # once more, over an applied 007
        owner.execute(SQL.read_text())
    migrate(fresh_db)
    with as_role(fresh_db, "gpu_telemetry_gateway") as c:
        assert c.execute("SELECT count(*) FROM telemetry").fetchone() == (0,)  # still readable by the role


# --- the gateway through a login of its role, on a database a non-superuser owns (as on Kubernetes) ---


@dataclass(frozen=True)
class Owned:
    owner: str  # the owner's conninfo: it migrated the database and loaded FLEET
    gateway: str  # a login that is a member of gpu_telemetry_gateway, as init-roles.sh makes gateway_reader
    login: str


@pytest.fixture
def owned(pg_server: str) -> Iterator[Owned]:
    """What kuberay/base/data/init-roles.sh sets up, on the test server under unique names, FLEET loaded."""
    tag = uuidlib.uuid4().hex[:10]
    owner, login, dbname = f"t_owner_{tag}", f"t_gateway_{tag}", f"t_{tag}"
    with psycopg.connect(pg_server, autocommit=True) as admin:
        # The group roles exist before the owner migrates: it may not create roles.
        admin.execute(
            "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'gpu_telemetry_gateway') THEN "
            "CREATE ROLE gpu_telemetry_gateway NOLOGIN; END IF; "
            "IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'gpu_telemetry_grafana') THEN "
            "CREATE ROLE gpu_telemetry_grafana NOLOGIN; END IF; END $$"
        )
        admin.execute(f"CREATE ROLE {owner} LOGIN NOSUPERUSER NOCREATEROLE NOCREATEDB")
        admin.execute(f"CREATE ROLE {login} LOGIN PASSWORD 'not-used-trust' IN ROLE gpu_telemetry_gateway")
        admin.execute(f"ALTER ROLE {login} SET statement_timeout = '10s'")
        admin.execute(f"CREATE DATABASE {dbname} OWNER {owner}")
    params = conninfo_to_dict(_with_dbname(pg_server, dbname))
    as_owner = make_conninfo(**{**params, "user": owner})  # type: ignore[arg-type]
    try:
        migrate(as_owner)
        load_fleet(as_owner)
        yield Owned(as_owner, make_conninfo(**{**params, "user": login}), login)  # type: ignore[arg-type]
    finally:
        with psycopg.connect(pg_server, autocommit=True) as admin, contextlib.suppress(psycopg.Error):
            admin.execute(f"DROP DATABASE IF EXISTS {dbname} WITH (FORCE)")
            admin.execute(f"DROP ROLE IF EXISTS {login}")
            admin.execute(f"DROP ROLE IF EXISTS {owner}")


def test_a_login_of_the_gateway_role_serves_every_read_of_the_gateway(owned: Owned) -> None:
    serves_every_read(owned)


def test_a_login_of_the_gateway_role_cannot_change_anything(owned: Owned) -> None:
    changes_nothing(owned)


def serves_every_read(owned: Owned) -> None:
    """Every route of the gateway answers 200 through ``owned.gateway``, a later rollup view included."""
    with psycopg.connect(owned.gateway) as c:
        assert c.execute("SELECT session_user, rolsuper FROM pg_roles WHERE rolname = session_user").fetchone() == (
            owned.login,
            False,
        )
    with psycopg.connect(owned.owner, autocommit=True) as c:
        # A rollup view a later migration adds (TimescaleDB's continuous aggregate, as a plain view):
        # the owner's default privileges give the role SELECT on it without another GRANT.
        c.execute(
            "CREATE VIEW telemetry_1m AS SELECT date_bin('1 minute', ts, '2000-01-03') AS bucket, gpu_key, metric_id, "
            'avg(value) AS "avg", min(value) AS "min", max(value) AS "max", count(*) AS "count", '
            '(array_agg(value ORDER BY ts DESC))[1] AS "last" FROM telemetry GROUP BY 1, 2, 3'
        )
    window = {"start_time": iso(0), "end_time": iso(59)}
    with make_client(owned.gateway) as client:
        gpus = client.get("/api/v1/gpus")
        assert gpus.status_code == 200, gpus.text
        assert sorted(g["uuid"] for g in gpus.json()["items"]) == ["GPU-a", "GPU-b", "GPU-c"]
        assert client.get("/api/v1/gpus", params={"hostname": "h2", "metric": POWER}).status_code == 200
        one = client.get("/api/v1/gpus/GPU-a")
        assert one.status_code == 200 and one.json()["latest"], one.text
        hosts = client.get("/api/v1/hosts")
        assert hosts.status_code == 200 and {h["hostname"] for h in hosts.json()["items"]} == {"h1", "h2"}
        catalog = client.get("/api/v1/metrics/catalog")
        assert catalog.status_code == 200 and {UTIL, TEMP, POWER} <= {m["name"] for m in catalog.json()["items"]}
        page = client.get("/api/v1/gpus/GPU-a/telemetry", params={**window, "limit": 50})
        assert page.status_code == 200 and len(page.json()["items"]) == 50 and page.json()["next_cursor"], page.text
        rest = client.get("/api/v1/gpus/GPU-a/telemetry", params={**window, "cursor": page.json()["next_cursor"]})
        assert rest.status_code == 200 and len(rest.json()["items"]) == 50, rest.text  # 120 samples, pages of 50
        csv = client.get("/api/v1/gpus/GPU-a/telemetry", params=window, headers={"Accept": "text/csv"})
        assert csv.status_code == 200 and len(csv.text.splitlines()) == 1 + 120
        raw = client.get("/api/v1/gpus/GPU-a/telemetry/aggregate", params={**window, "bucket": "10s", "fn": "avg"})
        assert raw.status_code == 200 and raw.json()["source"] == "raw" and raw.json()["items"], raw.text
        rollup = client.get("/api/v1/gpus/GPU-a/telemetry/aggregate", params={**window, "bucket": "2m"})
        assert rollup.status_code == 200 and rollup.json()["source"] == "telemetry_1m", rollup.text
        # The attribution routes and the pages read allocations, workloads, the latest values and rollups.
        for path, params in (
            ("/api/v1/fleet/latest", {"metric": TEMP, "limit": 5}),
            ("/api/v1/fleet/health", {}),
            ("/api/v1/usage", {**window, "group_by": "namespace"}),
            ("/api/v1/gpus/GPU-a/allocations", window),
            ("/api/v1/gpus/GPU-a/events", window),
            ("/api/v1/hosts/h1/telemetry/aggregate", {**window, "bucket": "10s"}),
            ("/api/v1/gpus", {"namespace": "team-a"}),
            ("/", {}),
            ("/usage", {}),
            ("/gpus/GPU-a", {}),
        ):
            answer = client.get(path, params=params)
            assert answer.status_code == 200, (path, answer.status_code, answer.text[:300])
        assert client.get("/ready").json()["status"] == "ok"


def changes_nothing(owned: Owned) -> None:
    """Every kind of change through ``owned.gateway`` is refused; the owner sees FLEET as loaded."""
    with psycopg.connect(owned.gateway, autocommit=True) as c:
        assert c.execute("SHOW statement_timeout").fetchone() == ("10s",)
        for statement in (
            "INSERT INTO gpus (uuid, hostname, gpu_index) VALUES ('GPU-x', 'h9', 0)",
            "INSERT INTO telemetry (ts, value, gpu_key, metric_id) SELECT now(), 1, gpu_key, 1 FROM gpus LIMIT 1",
            "UPDATE gpus SET model = 'x'",
            "UPDATE metrics SET unit = 'x'",
            "DELETE FROM telemetry",
            "DELETE FROM gpus",
            "TRUNCATE metrics",
            "CREATE TABLE public.mine (x int)",
            "CREATE VIEW public.mine AS SELECT 1 AS one",
            "CREATE INDEX ON telemetry (value)",
            "ALTER TABLE gpus ADD COLUMN x int",
            "DROP TABLE metrics",
            "CREATE SCHEMA mine",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                c.execute(statement)
    with psycopg.connect(owned.owner) as c:  # nothing changed
        assert c.execute("SELECT count(*) FROM gpus").fetchone() == (3,)
        assert c.execute("SELECT count(*) FROM telemetry").fetchone() == (60 * 5,)
