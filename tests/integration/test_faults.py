"""Fault injection on a real local Ray cluster and PostgreSQL; each ends with an exact comparison.

Produced vs stored is compared as multisets: every (GPU, metric, value) of the source appears
exactly once per pass, and no two stored samples of a series share a timestamp.
"""

from __future__ import annotations

import csv
import itertools
import os
import re
import signal
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from pipeline.collector import Collector, group_messages
from pipeline.config import Settings
from pipeline.errors import FencedError
from pipeline.queue.local import LocalQueue
from pipeline.runtime.driver import Pipeline
from pipeline.sources.dcgm_csv import DcgmCsvSource
from pipeline.sources.synthetic import write_csv
from pipeline.storage.database import Database
from pipeline.storage.setup import compact_usage
from pipeline.storage.writer import TelemetryWriter
from pipeline.streamer import Streamer
from tests.support import assert_healthy, unique_namespace

PASSES = 40


def expected_multiset(csv_path: Path, passes: int) -> Counter[tuple[str, str, float]]:
    with csv_path.open() as f:
        rows = [(r["uuid"], r["metric_name"], float(r["value"])) for r in csv.DictReader(f)]
    return Counter({k: v * passes for k, v in Counter(rows).items()})


def stored_multiset(conninfo: str) -> Counter[tuple[str, str, float]]:
    with psycopg.connect(conninfo) as c:
        dup = c.execute(
            "SELECT count(*) FROM (SELECT 1 FROM telemetry GROUP BY gpu_key, metric_id, ts HAVING count(*) > 1) d"
        ).fetchone()
        assert dup == (0,), "two samples of one series share a timestamp"
        rows = c.execute(
            "SELECT g.uuid, m.name, t.value, count(*) FROM telemetry t JOIN gpus g USING (gpu_key) "
            "JOIN metrics m USING (metric_id) GROUP BY 1, 2, 3"
        ).fetchall()
    return Counter({(u, m, float(v)): int(n) for u, m, v, n in rows})


def stored_count(conninfo: str) -> int:
    with psycopg.connect(conninfo) as c:
        return int(c.execute("SELECT count(*) FROM telemetry").fetchone()[0])  # type: ignore[index]


@pytest.fixture
def fleet_csv(tmp_path: Path) -> Path:
    path = tmp_path / "fleet.csv"
    write_csv(path, hosts=4, scrapes=2)  # 640 rows, 32 GPUs
    with_pods(path)
    return path


def pod_of(index: int, scrape: int) -> tuple[str, str, str]:
    """Who holds GPU ``index`` (its place in the file) in each scrape: a pod that comes and goes (index % 4 == 0),
    two pods taking turns (1), or one pod throughout (2, 3). Every replayed pass repeats it."""
    if scrape == 0 or index % 4 >= 2:
        return "faults", f"pod-{index}", "main"
    return ("", "", "") if index % 4 == 0 else ("faults", f"other-{index}", "main")


def with_pods(path: Path) -> None:
    """Rewrite the CSV's pod columns after ``pod_of`` (scrape = the row's timestamp, in file order)."""
    with path.open() as f:
        rows = list(csv.reader(f))
    header, body = rows[0], rows[1:]
    stamps = sorted({r[0] for r in body})
    index = {u: i for i, u in enumerate(dict.fromkeys(r[4] for r in body))}
    for r in body:
        r[7:10] = list(reversed(pod_of(index[r[4]], stamps.index(r[0]))))  # container, pod, namespace
        r[11] = re.sub(r',hpc_job="[^"]*"', "", r[11])  # no HPC jobs: the pods above are all there is
    with path.open("w", newline="") as f:
        csv.writer(f, quoting=csv.QUOTE_ALL).writerows([header, *body])


def assert_attribution_exact(conninfo: str, csv_path: Path, passes: int) -> None:
    """Allocation intervals and usage as a fault-free run gives them, whatever the fault did.

    Per GPU: the intervals follow the pods of every replayed pass in order (none twice, none lost), never
    overlap, and at most the last is open; the usage rollups hold exactly the time from the GPU's first to
    its last GPU_UTIL sample (each sample's hold counted once), and the usage log is folded.
    """
    with csv_path.open() as f:
        uuids = list(dict.fromkeys(r["uuid"] for r in csv.DictReader(f)))
    with psycopg.connect(conninfo) as c:
        rows = c.execute(
            "SELECT g.uuid, w.pod, a.started, a.ended FROM allocations a JOIN gpus g USING (gpu_key) "
            "JOIN workloads w USING (workload_id) ORDER BY g.uuid, a.started, a.allocation_id"
        ).fetchall()
        spans = dict(
            c.execute(
                "SELECT g.uuid, extract(epoch FROM max(t.ts) - min(t.ts)) FROM telemetry t JOIN gpus g USING (gpu_key) "
                "JOIN metrics m USING (metric_id) WHERE m.name = 'DCGM_FI_DEV_GPU_UTIL' GROUP BY 1"
            ).fetchall()
        )
        counted = dict(
            c.execute("SELECT g.uuid, sum(u.seconds) FROM usage_1m u JOIN gpus g USING (gpu_key) GROUP BY 1").fetchall()
        )
        assert c.execute("SELECT count(*) FROM usage_log").fetchone() == (0,), "the usage log was not folded"
    by_gpu: dict[str, list[tuple[str, object, object]]] = {}
    for uuid, pod, started, ended in rows:
        by_gpu.setdefault(uuid, []).append((pod, started, ended))
    for i, uuid in enumerate(uuids):
        held = [pod_of(i, s)[1] or None for _ in range(passes) for s in (0, 1)]
        expected = [p for j, p in enumerate(held) if p is not None and (j == 0 or held[j - 1] != p)]
        got = by_gpu.get(uuid, [])
        assert [p for p, _, _ in got] == expected, f"{uuid}: intervals {[p for p, _, _ in got][:6]}..."
        for (_, s1, e1), (_, s2, _) in itertools.pairwise(got):
            assert e1 is not None and s1 < e1 <= s2, f"{uuid}: intervals overlap or one is open before the last"
        assert float(counted[uuid]) == pytest.approx(float(spans[uuid]), abs=1e-3), f"{uuid}: usage seconds"


def run_with_fault(
    conninfo: str, csv_path: Path, fault: Callable[[Pipeline], None], queue_dir: Path | None = None
) -> Pipeline:
    settings = Settings.load(
        overrides={
            "streamer": {"csv": csv_path, "count": 1, "interval_s": 0.05, "batch_rows": 200, "passes": PASSES},
            "collector": {"count": 2, "poll_timeout_s": 0.05, "max_rows": 500},
            "ray": {"namespace": unique_namespace()},
            "queue": {"partitions": 4, "group": "faults", "session_timeout_s": 3.0, "dir": queue_dir},
        },
        environ={},
    )
    p = Pipeline(settings, Database(conninfo))
    p.deploy(fresh=True)
    try:
        deadline = time.monotonic() + 60
        while stored_count(conninfo) == 0:
            assert time.monotonic() < deadline, "nothing stored"
            time.sleep(0.05)
        fault(p)
        deadline = time.monotonic() + 180
        while not p.progress().streamers_done:
            assert time.monotonic() < deadline, "streamers did not finish"
            time.sleep(0.2)
        p.drain(timeout_s=120)
        assert_healthy(p)  # after the fault: every actor answers with its loop alive and no error
    finally:
        p.stop()
    return p


def kill(handle: object) -> None:
    """SIGKILL the actor's process, then wait until Ray has restarted it (a new pid answers)."""
    import ray

    pid = ray.get(handle.stats.remote())["pid"]  # type: ignore[attr-defined]
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while True:
        try:
            if ray.get(handle.stats.remote(), timeout=10)["pid"] != pid:  # type: ignore[attr-defined]
                return
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            pass
        assert time.monotonic() < deadline, "actor was not restarted"
        time.sleep(0.1)


def test_kill_9_of_a_collector_mid_batch(ray_local: None, fresh_db: str, fleet_csv: Path) -> None:
    run_with_fault(fresh_db, fleet_csv, lambda p: kill(p.collectors[0]))
    assert stored_multiset(fresh_db) == expected_multiset(fleet_csv, PASSES)
    assert_attribution_exact(fresh_db, fleet_csv, PASSES)


def test_kill_9_of_a_streamer(ray_local: None, fresh_db: str, fleet_csv: Path) -> None:
    run_with_fault(fresh_db, fleet_csv, lambda p: kill(p.streamers[0]))
    assert stored_multiset(fresh_db) == expected_multiset(fleet_csv, PASSES)
    assert_attribution_exact(fresh_db, fleet_csv, PASSES)


def test_kill_9_of_the_broker_with_a_queue_dir(ray_local: None, fresh_db: str, fleet_csv: Path, tmp_path: Path) -> None:
    run_with_fault(fresh_db, fleet_csv, lambda p: kill(p.brokers[0]), queue_dir=tmp_path / "queue")
    assert stored_multiset(fresh_db) == expected_multiset(fleet_csv, PASSES)
    assert_attribution_exact(fresh_db, fleet_csv, PASSES)


def test_database_connections_terminated_mid_stream(ray_local: None, fresh_db: str, fleet_csv: Path) -> None:
    def terminate(_: Pipeline) -> None:
        for _ in range(3):
            with psycopg.connect(fresh_db, autocommit=True) as admin:
                admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            time.sleep(0.3)

    run_with_fault(fresh_db, fleet_csv, terminate)
    assert stored_multiset(fresh_db) == expected_multiset(fleet_csv, PASSES)
    assert_attribution_exact(fresh_db, fleet_csv, PASSES)


def test_a_collector_that_stalls_past_its_session_is_fenced(fresh_db: str, fleet_csv: Path) -> None:
    """Collector A fetches, stalls past the session timeout, B takes over; A's late write is refused."""
    now = [1000.0]
    q = LocalQueue(partitions=1, session_timeout_s=5.0, clock=lambda: now[0])
    Streamer("s", DcgmCsvSource(fleet_csv), q, partitions=1, interval_s=0, passes=2).run()
    a = Collector("a", "g", q, TelemetryWriter(fresh_db), poll_timeout_s=0.0, clock=lambda: now[0])
    a.start()
    generation = a.stats.generation
    fetched = q.fetch("g", "a", generation, a.positions, 10**6, 0)
    batches = group_messages(fetched.messages, a.positions)
    data = fetched.data
    now[0] += 10  # A stalls for longer than the session timeout
    b = Collector("b", "g", q, TelemetryWriter(fresh_db), poll_timeout_s=0.0, clock=lambda: now[0])
    b.start()
    while b.poll_once():
        pass
    assert stored_count(fresh_db) == 2 * 640
    writer = TelemetryWriter(fresh_db)
    with pytest.raises(FencedError):
        writer.write("g", generation, batches, data)  # the zombie's transaction is refused by the database
    with pytest.raises(FencedError):
        q.commit("g", "a", generation, {0: batches[0].next_offset})  # and by the broker
    assert a.poll_once() == 0  # A notices, rejoins, and writes nothing twice
    assert stored_multiset(fresh_db) == expected_multiset(fleet_csv, 2)
    for w in (a, b):
        w.close()
    compact_usage(fresh_db)
    assert_attribution_exact(fresh_db, fleet_csv, 2)
