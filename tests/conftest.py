"""Shared fixtures: a real PostgreSQL (DATABASE_URL or the embedded server), one local Ray per session."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
REAL_CSV = SHARED / "data" / "dcgm_metrics_20250718_134233.csv"


@pytest.fixture(scope="session")
def real_csv() -> Path:
    """The real dcgm-exporter export from ../shared, or skip where it is absent."""
    if not REAL_CSV.exists():
        pytest.skip(f"{REAL_CSV} is absent (a fresh clone has no ../shared)")
    return REAL_CSV


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    """Admin conninfo of a PostgreSQL server: DATABASE_URL if set, else an embedded one."""
    url = os.environ.get("DATABASE_URL")
    if url:
        yield url
        return
    import shutil
    import tempfile

    from pipeline.storage.database import start_embedded

    # Not under pytest's tmp_path: pytest prunes old base temp dirs, which would pull the data directory
    # (and the server's socket) from under a session that is still running.
    root = Path(tempfile.mkdtemp(prefix="pipeline-test-pg-"))
    db = start_embedded(root / "data")
    yield db.conninfo
    shutil.rmtree(root, ignore_errors=True)


def _with_dbname(conninfo: str, dbname: str) -> str:
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    params = conninfo_to_dict(conninfo)
    params["dbname"] = dbname
    return make_conninfo(**params)  # type: ignore[arg-type]


@pytest.fixture
def fresh_db(pg_server: str) -> Iterator[str]:
    """A new, migrated database on the test server; dropped afterwards."""
    import psycopg

    from pipeline.storage.migrate import migrate

    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    conninfo = _with_dbname(pg_server, name)
    migrate(conninfo)
    try:
        yield conninfo
    finally:
        with psycopg.connect(pg_server, autocommit=True) as admin, contextlib.suppress(psycopg.Error):
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def empty_db(pg_server: str) -> Iterator[str]:
    """A new database with no schema; dropped afterwards."""
    import psycopg

    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    try:
        yield _with_dbname(pg_server, name)
    finally:
        with psycopg.connect(pg_server, autocommit=True) as admin, contextlib.suppress(psycopg.Error):
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(scope="session")
def ray_local() -> Iterator[None]:
    """One local Ray cluster for the whole session (start-up costs seconds)."""
    import ray

    from pipeline.gateway.proxy_guard import PROXY_CALLBACK

    if not ray.is_initialized():
        # Serve's proxies bound half-sent requests as on the Ray pods (kuberay/): read at their start.
        os.environ.setdefault("RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH", PROXY_CALLBACK)
        ray.init(
            address="local",  # always this session's own cluster, never another one found on the machine
            num_cpus=4,
            include_dashboard=False,
            namespace="gpu-telemetry-test",
            log_to_driver=False,
            configure_logging=False,
        )
    yield
    ray.shutdown()
