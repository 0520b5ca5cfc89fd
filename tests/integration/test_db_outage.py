"""PostgreSQL stopped (the server itself) while collectors start, restart and rebalance: they wait and resume.

The test runs its own server (initdb + pg_ctl in a temporary directory, on a free port) so that it can
stop and start it; it never touches the machine's PostgreSQL.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pipeline.collector import Collector
from pipeline.queue.local import LocalQueue
from pipeline.sources.dcgm_csv import DcgmCsvSource
from pipeline.storage.migrate import migrate
from pipeline.storage.writer import TelemetryWriter
from pipeline.streamer import Streamer


class OwnServer:
    """A throw-away PostgreSQL this test may stop and start."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "data"
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self._as: list[str] = []
        if os.geteuid() == 0:  # initdb refuses root: run the server as the postgres user
            shutil.chown(root, "postgres", "postgres")
            self._as = ["runuser", "-u", "postgres", "--"]
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8")

    def _run(self, *args: str) -> None:
        subprocess.run([*self._as, *args], check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        opts = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run("pg_ctl", "-D", str(self.data), "-o", opts, "-l", str(self.root / "log"), "-w", "start")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"


@pytest.fixture
def own_server() -> Iterator[OwnServer]:
    if shutil.which("initdb") is None or shutil.which("pg_ctl") is None:
        pytest.skip("initdb/pg_ctl are not installed")
    root = Path(tempfile.mkdtemp(prefix="pipeline-outage-pg-"))
    server = OwnServer(root)
    server.start()
    try:
        yield server
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):  # already stopped
            server.stop()
        shutil.rmtree(root, ignore_errors=True)


class LockedQueue:
    """LocalQueue for collectors in threads (its private event loop serves one caller at a time)."""

    def __init__(self, queue: LocalQueue) -> None:
        self._queue = queue
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self._queue, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                return method(*args, **kwargs)

        return call


class Running:
    """A collector's run() in a thread; remembers anything that escaped it."""

    def __init__(self, name: str, queue: Any, conninfo: str) -> None:
        self.collector = Collector(
            name,
            "g",
            queue,
            TelemetryWriter(conninfo, timeout_s=1),
            poll_timeout_s=0.0,
            backoff_s=(0.05, 0.5),
            heartbeat_s=0.2,
        )
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.collector.run()
        except BaseException as exc:  # the test asserts nothing escaped
            self.error = exc

    def stop(self) -> None:
        self.collector.stop()
        self.thread.join(30)


def stored(conninfo: str) -> tuple[int, int]:
    with psycopg.connect(conninfo) as c:
        row = c.execute("SELECT count(*), count(DISTINCT (gpu_key, metric_id, ts)) FROM telemetry").fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def wait_for(conninfo: str, rows: int, workers: list[Running], bound_s: float = 120.0) -> None:
    deadline = time.monotonic() + bound_s  # a bound, not a measurement
    while time.monotonic() < deadline:
        assert all(w.error is None and w.thread.is_alive() for w in workers), [w.error for w in workers]
        try:
            if stored(conninfo)[0] >= rows:
                return
        except psycopg.OperationalError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"only {stored(conninfo)} of {rows} rows stored")


def test_collectors_wait_out_a_stopped_server_while_starting_restarting_and_rebalancing(
    own_server: OwnServer, real_csv: Path
) -> None:
    with psycopg.connect(own_server.url(), autocommit=True) as c:
        c.execute("CREATE DATABASE telemetry")
    db = own_server.url("telemetry")
    migrate(db)
    local = LocalQueue(partitions=4, brokers=2, budget_bytes=1 << 30, session_timeout_s=3.0)
    queue = LockedQueue(local)

    def produce(name: str) -> None:
        Streamer(name, DcgmCsvSource(real_csv), queue, partitions=4, interval_s=0, batch_rows=500, passes=1).run()  # type: ignore[arg-type]

    produce("s1")
    own_server.stop()
    workers = [Running("a", queue, db), Running("b", queue, db)]  # both start (and rebalance) with the server down
    time.sleep(2.0)
    assert all(w.thread.is_alive() and w.error is None for w in workers)
    own_server.start()
    wait_for(db, 2470, workers)

    own_server.stop()
    workers[0].stop()  # a restarts while the server is away...
    workers[0] = Running("a", queue, db)
    workers.append(Running("c", queue, db))  # ...and a controller adds a collector: a rebalance
    produce("s2")
    time.sleep(2.0)
    assert all(w.thread.is_alive() and w.error is None for w in workers)
    own_server.start()
    wait_for(db, 2 * 2470, workers)
    time.sleep(1.0)  # anything stored twice would land now
    assert stored(db) == (2 * 2470, 2 * 2470)
    assert all(w.error is None and w.thread.is_alive() for w in workers)
    assert sum(w.collector.stats.retries for w in workers) > 0  # the outage was seen, and waited out
    for w in workers:
        w.stop()
    local.close()
