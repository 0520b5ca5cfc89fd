"""Migration 007: the gateway's read-only role and Grafana's views-only role, on a real PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from pipeline.storage.migrate import migrate

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
