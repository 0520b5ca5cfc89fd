"""Apply the numbered SQL migrations in ``sql/`` once each, under an advisory lock."""

from __future__ import annotations

import hashlib
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import psycopg

from pipeline.errors import ConfigError, StorageError
from pipeline.storage.database import connect

__all__ = ["Migration", "applied", "discover", "migrate", "sql_dir"]

log = logging.getLogger(__name__)
# An arbitrary constant: every migrator takes the same session-level advisory lock.
LOCK_KEY = 0x6770_7574_656C  # "gputel"
_NAME = re.compile(r"^(\d{3})_([a-z0-9_]+)\.sql$")
# A file whose first line is this runs outside a transaction block (for statements PostgreSQL or
# TimescaleDB refuse inside one, e.g. refresh_continuous_aggregate); keep it one statement, safe to re-run.
NO_TRANSACTION = "-- migrate: no-transaction"
_RECORD = "INSERT INTO schema_migrations (version, name, checksum) VALUES (%s, %s, %s)"


@dataclass(frozen=True, slots=True)
class Migration:
    """One numbered SQL file."""

    version: int
    name: str
    path: Path

    @property
    def sql(self) -> str:
        """The file's text."""
        return self.path.read_text()

    @property
    def checksum(self) -> str:
        """SHA-256 of the file, recorded when applied."""
        return hashlib.sha256(self.path.read_bytes()).hexdigest()

    @property
    def transactional(self) -> bool:
        """False when the file's first line is ``-- migrate: no-transaction``."""
        return self.sql.split("\n", 1)[0].strip() != NO_TRANSACTION


def sql_dir() -> Path:
    """Where migrations live: ``PIPELINE_SQL_DIR``, the repository's ``sql/``, or ``./sql``."""
    env = os.environ.get("PIPELINE_SQL_DIR")
    candidates = [Path(env)] if env else []
    candidates += [Path(__file__).resolve().parents[2] / "sql", Path.cwd() / "sql"]
    for path in candidates:
        if path.is_dir():
            return path
    raise ConfigError(
        f"no migrations directory found (looked in {', '.join(map(str, candidates))}); set PIPELINE_SQL_DIR"
    )


def discover(directory: Path | None = None) -> list[Migration]:
    """The migrations in a directory, in version order; refuses duplicates and stray names."""
    directory = directory or sql_dir()
    found: dict[int, Migration] = {}
    for path in sorted(directory.glob("*.sql")):
        match = _NAME.match(path.name)
        if not match:
            raise ConfigError(f"migration file {path.name} does not match NNN_name.sql")
        version = int(match.group(1))
        if version in found:
            raise ConfigError(f"two migrations share version {version}: {found[version].path.name}, {path.name}")
        found[version] = Migration(version, match.group(2), path)
    return [found[v] for v in sorted(found)]


_LEDGER = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer PRIMARY KEY,
    name       text        NOT NULL,
    checksum   text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)"""


def applied(conn: psycopg.Connection[tuple[object, ...]]) -> dict[int, str]:
    """Versions already applied, with their checksums."""
    conn.execute(_LEDGER)
    rows = conn.execute("SELECT version, checksum FROM schema_migrations").fetchall()
    return {int(str(v)): str(c) for v, c in rows}


def migrate(conninfo: str, directory: Path | None = None, timeout_s: float = 5.0) -> list[Migration]:
    """Apply pending migrations; returns those applied now. Safe to run concurrently."""
    migrations = discover(directory)
    done: list[Migration] = []
    with connect(conninfo, timeout_s, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
        try:
            have = applied(conn)
            for m in migrations:
                if m.version in have:
                    if have[m.version] != m.checksum:
                        log.warning("migration %03d_%s changed since it was applied; not re-applied", m.version, m.name)
                    continue
                log.info("applying migration %03d_%s", m.version, m.name)
                try:
                    if m.transactional:
                        with conn.transaction():
                            conn.execute(m.sql.encode())
                            conn.execute(_RECORD, (m.version, m.name, m.checksum))
                    else:
                        # The connection is in autocommit: the file runs as its own implicit transaction,
                        # and is recorded only once it has succeeded.
                        conn.execute(m.sql.encode())
                        conn.execute(_RECORD, (m.version, m.name, m.checksum))
                except psycopg.Error as exc:
                    raise StorageError(f"migration {m.path.name} failed: {exc}".strip()) from None
                done.append(m)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))
    return done
