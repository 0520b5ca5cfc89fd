"""Scraping dcgm-exporter endpoints end to end: streamers -> queue -> collector -> PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from pipeline.collector import Collector
from pipeline.queue.local import LocalQueue
from pipeline.sources import Shard
from pipeline.sources.prometheus import PrometheusSource
from pipeline.storage.writer import TelemetryWriter
from pipeline.streamer import Streamer
from tests.unit.sources.test_prometheus import MALFORMED, SENTINEL, FakeExporter, closed_port_url, serve_fleet

PASSES = 3


@pytest.fixture
def exporter() -> Iterator[FakeExporter]:
    server = FakeExporter()
    yield server
    server.close()


def drain(collector: Collector, rounds: int = 200) -> None:
    idle = 0
    for _ in range(rounds):
        idle = idle + 1 if collector.poll_once() == 0 and collector.positions else 0
        if idle >= 2:
            return


def test_two_streamers_scrape_a_fleet_into_postgres_while_a_dead_target_is_reported(
    fresh_db: str, exporter: FakeExporter
) -> None:
    fleet = serve_fleet(exporter)
    dead = closed_port_url()
    targets = [*fleet.targets, dead]
    q = LocalQueue(partitions=4, budget_bytes=1 << 28)
    sources = [PrometheusSource(targets, interval_s=0.5, timeout_s=0.5, retries=1, backoff_s=0.01) for _ in range(2)]
    for i, source in enumerate(sources):
        streamer = Streamer(
            f"scrape/shard-{i}-of-2", source, q, partitions=4, shard=Shard(i, 2), interval_s=0, passes=PASSES
        )
        assert streamer.run().passes == PASSES
    collector = Collector("c", "g", q, TelemetryWriter(fresh_db), poll_timeout_s=0.0)
    collector.start()
    drain(collector)

    with psycopg.connect(fresh_db) as c:
        stored = c.execute(
            "SELECT g.uuid, m.name, count(*), count(DISTINCT t.ts) FROM telemetry t "
            "JOIN gpus g USING (gpu_key) JOIN metrics m USING (metric_id) GROUP BY 1, 2"
        ).fetchall()
        hosts: dict[str, str] = dict(c.execute("SELECT uuid, hostname FROM gpus").fetchall())
        rejects = c.execute("SELECT source, line, raw, reason FROM rejects ORDER BY reason, reject_id").fetchall()
    assert {(u, m) for u, m, _, _ in stored} == fleet.series  # every GPU x metric, the sentinel aside
    assert {(n, d) for _, _, n, d in stored} == {(PASSES, PASSES)}  # once per scrape, distinct times
    assert set(hosts) == fleet.uuids and set(hosts.values()) == {"gpu-node-001", "gpu-node-002"}

    malformed = [r for r in rejects if r[2] == MALFORMED]
    assert len(malformed) == PASSES
    assert {(r[0], r[3]) for r in malformed} == {
        (
            fleet.targets[0],
            f"line {malformed[0][1]} is not a valid Prometheus text sample line: "
            'could not convert string to float: \'{gpu="0",UUID="GPU-broken"\'',
        )
    }
    blanks = [r for r in rejects if SENTINEL in r[2]]
    assert len(blanks) == PASSES and len(rejects) == 2 * PASSES
    assert blanks[0][3] == f"value `{SENTINEL}` for DCGM_FI_DEV_ENC_UTIL is a DCGM int64 not supported code (no value)"

    # Each target was scraped by exactly one of the two streamers, once per pass.
    assert exporter.hits["/a/metrics"] == exporter.hits["/b/metrics"] == PASSES
    health = [s.health() for s in sources]
    assert sorted(url for h in health for url in h) == sorted(targets)
    owner = next(h for h in health if dead in h)
    assert owner[dead]["up"] is False and owner[dead]["consecutive_failures"] == PASSES
    assert all(h[url]["up"] for h in health for url in h if url != dead)


def test_a_local_exporter_whose_pods_come_and_go_gives_intervals_events_and_a_silent_gpu(
    fresh_db: str, exporter: FakeExporter
) -> None:
    """Rounds of one dcgm-exporter: pods change (old label spelling on one GPU), a GPU is idle between jobs,
    another raises XID 48, one goes silent, and one is split into MIG instances."""
    from pipeline.sources.synthetic import SyntheticFleet
    from pipeline.storage.setup import compact_usage
    from tests.unit.sources.test_prometheus import render_dcgm_scrape

    fleet = SyntheticFleet(hosts=1, gpus_per_host=4, seed=5)
    rounds = [
        {0: ("train-a", "ml", "main"), 1: ("infer-0", "serving", "server")},
        {0: ("train-a", "ml", "main"), 1: ("infer-0", "serving", "server")},
        {1: ("infer-0", "serving", "server")},  # GPU 0 idle between jobs
        {0: ("train-b", "ml", "main"), 1: ("infer-0", "serving", "server")},
    ]
    seen = {"round": 0}

    def scrape() -> str:
        r = seen["round"]
        seen["round"] += 1
        return render_dcgm_scrape(
            fleet,
            0,
            pods=rounds[min(r, 3)],
            old_pod_labels=r % 2 == 1,
            mig_gpu=3,
            xid={2: 48} if r >= 2 else {},
            silent=frozenset({2}) if r >= 3 else frozenset(),
        )

    target = exporter.serve_text("/pods/metrics", scrape)
    q = LocalQueue(partitions=2, budget_bytes=1 << 28)
    source = PrometheusSource([target], interval_s=0, timeout_s=1.0, retries=0)
    Streamer("scrape/pods", source, q, partitions=2, interval_s=0.3, passes=4).run()
    collector = Collector("c", "g", q, TelemetryWriter(fresh_db), poll_timeout_s=0.0)
    collector.start()
    drain(collector)
    collector.close()
    compact_usage(fresh_db)

    with psycopg.connect(fresh_db) as c:
        intervals = c.execute(
            "SELECT g.gpu_index, w.pod, a.ended IS NULL FROM allocations a JOIN gpus g USING (gpu_key) "
            "JOIN workloads w USING (workload_id) ORDER BY g.gpu_index, a.started"
        ).fetchall()
        events = c.execute("SELECT g.gpu_index, e.code FROM gpu_events e JOIN gpus g USING (gpu_key)").fetchall()
        mig = c.execute("SELECT uuid, parent_uuid, mig_instance, mig_profile FROM gpus WHERE parent_uuid IS NOT NULL")
        mig_rows = sorted(mig.fetchall())
        newest = dict(
            c.execute("SELECT g.gpu_index, max(l.ts) FROM gpu_latest l JOIN gpus g USING (gpu_key) GROUP BY 1")
        )
        usage = c.execute("SELECT count(*) FROM usage_1m").fetchone()
    # GPU 0: train-a for two rounds, idle, then train-b (still held); GPU 1: infer-0 throughout, in both spellings
    assert intervals == [(0, "train-a", False), (0, "train-b", True), (1, "infer-0", True)]
    assert events == [(2, 48)]
    parent = fleet.uuids[3]
    assert mig_rows == [(f"{parent}/mig-1", parent, 1, "3g.40gb"), (f"{parent}/mig-2", parent, 2, "3g.40gb")]
    assert newest[2] < newest[0]  # GPU 2 stopped reporting after the third round
    assert usage is not None and usage[0] > 0
