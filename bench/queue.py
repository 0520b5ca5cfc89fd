"""Rows per second through the queue alone (no database).

    python bench/queue.py                 # 1, 2 and 4 partitions/consumers, memory and --queue-dir;
                                          # then replication_factor 1 and 3 side by side
    python bench/queue.py --rows 2000000  # more rows per configuration
    python bench/queue.py --replication-only

The replication lines run on a ``ray.cluster_utils.Cluster`` of a head (producers, consumers) and
three broker nodes, one broker pinned to each: replication_factor 1 (each partition on one broker)
against 3 with min_insync 2 (each on all three; a flush acknowledged once two hold it), the same
partitions, producers and consumers.

Producers are Ray actors appending pre-built Arrow wire batches through ``RayQueue``; consumers are
Ray actors that join the group, fetch and commit (no database), so the figure is the queue's own
ceiling. (The pass-by-reference data path once measured with ``--design`` is gone: messages are
typed envelopes travelling by value; its figures stay in docs/PERFORMANCE.md.)
"""

from __future__ import annotations

import os
import sys

# This file is named like the standard library's ``queue``: keep its folder off the import path.
if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    sys.path.pop(0)

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import ray

from pipeline.config import QueueSettings
from pipeline.errors import FencedError
from pipeline.queue.api import lag_of
from pipeline.queue.broker import (
    Broker,  # the broker logic itself: no database behind this bench
    Persistence,
)
from pipeline.queue.replicated import ReplicatedBroker
from pipeline.queue.replication import replicas_of
from pipeline.queue.routing import broker_of
from pipeline.records import Envelope, to_wire
from pipeline.runtime.elector import Elector
from pipeline.runtime.leaders import ReplicatedQueue
from pipeline.runtime.names import broker_name
from pipeline.runtime.replicas import RayPeers
from pipeline.runtime.transport import RayQueue
from pipeline.sources import Shard
from pipeline.sources.synthetic import SyntheticFleet


def wire_batch(rows: int) -> pa.RecordBatch:
    fleet = SyntheticFleet(hosts=max(1, rows // 80), batch_rows=rows)
    return to_wire(next(iter(fleet.read_pass(Shard()))).samples).slice(0, rows)


class Producer:
    """Appends ``count`` copies of a batch to its partitions, in flushes of one message per partition."""

    def __init__(self, brokers: list[Any], partitions: list[int], batch_rows: int, namespace: str = "") -> None:
        self._queue: Any = ReplicatedQueue(brokers, namespace=namespace) if namespace else RayQueue(brokers)
        self._brokers = brokers
        self._partitions = partitions
        self._batch = wire_batch(batch_rows)

    def run(self, count: int) -> int:
        rows = 0
        name = f"bench-{self._partitions[0]}"
        n = self._batch.num_rows
        for seq in range(count):
            self._queue.publish(name, seq, Envelope(self._batch), [(p, 0, n) for p in self._partitions])
            rows += n * len(self._partitions)
        return rows


class Consumer:
    """Joins the group, fetches and commits until ``target`` rows were consumed, or the group has all.

    A consumer that joins late may find its share already consumed by one that held every partition
    before the rebalance: it ends when an empty fetch finds the whole group's ``total`` committed.
    """

    def __init__(self, brokers: list[Any], member: str, namespace: str = "") -> None:
        self._queue: Any = ReplicatedQueue(brokers, namespace=namespace) if namespace else RayQueue(brokers)
        self._member = member

    def _all_committed(self, total: int) -> bool:
        parts = [part for b in self._queue.stats() for part in b["partitions"].values()]
        appended = sum(part["rows_appended"] for part in parts)
        return appended >= total and all(lag_of(part, "bench")[0] == 0 for part in parts)

    def run(self, target: int, total: int) -> int:
        a = self._queue.join("bench", self._member)
        positions = dict.fromkeys(a.partitions, 0)
        rows = 0
        while rows < target:
            a = self._queue.heartbeat("bench", self._member, a.generation)
            positions = {p: positions.get(p, 0) for p in a.partitions}
            try:
                got = self._queue.fetch("bench", self._member, a.generation, positions, 200_000, 0.2)
            except FencedError:
                continue  # a rebalance happened between heartbeat and fetch
            for p, (start, _) in got.out_of_range.items():
                positions[p] = start  # taken over after a rebalance: its owner committed up to there
            if not got.messages:
                if self._all_committed(total):
                    break
                continue
            for m in got.messages:
                rows += m.rows
                positions[m.partition] = m.offset + 1
            try:
                self._queue.commit("bench", self._member, a.generation, positions)
            except FencedError:
                continue
        return rows


def measure(partitions: int, rows: int, batch_rows: int, queue_dir: Path | None) -> float:
    brokers_n = 1
    persistence = Persistence(queue_dir, fsync=True) if queue_dir else None
    broker_cls = ray.remote(num_cpus=0, max_concurrency=1000)(Broker)
    brokers = [
        broker_cls.remote(
            b,
            partitions,
            [p for p in range(partitions) if broker_of(p, brokers_n) == b],
            256 << 20,
            30.0,
            {},
            persistence=persistence,
        )
        for b in range(brokers_n)
    ]
    producers = [ray.remote(num_cpus=0)(Producer).remote(brokers, [p], batch_rows) for p in range(partitions)]
    consumers = [ray.remote(num_cpus=0)(Consumer).remote(brokers, f"c{i}") for i in range(partitions)]
    per_partition = max(1, rows // (partitions * batch_rows))
    total = per_partition * partitions * batch_rows
    ray.get([p.__ray_ready__.remote() for p in producers] + [c.__ray_ready__.remote() for c in consumers])
    started = time.perf_counter()
    consumed = [c.run.remote(total // partitions, total) for c in consumers]
    produced = ray.get([p.run.remote(per_partition) for p in producers])
    got = sum(ray.get(consumed))
    elapsed = time.perf_counter() - started
    assert sum(produced) == total and got >= total, (produced, got, total)
    for a in producers + consumers + brokers:
        ray.kill(a)
    return total / elapsed


def run_clients(brokers: list[Any], partitions: int, rows: int, batch_rows: int, namespace: str = "") -> float:
    """P producers (one partition each) and P consumers through ``brokers``; rows per second."""
    opts: dict[str, Any] = {"num_cpus": 0, "resources": {"bench_clients": 1}}
    producers = [ray.remote(**opts)(Producer).remote(brokers, [p], batch_rows, namespace) for p in range(partitions)]
    consumers = [ray.remote(**opts)(Consumer).remote(brokers, f"c{i}", namespace) for i in range(partitions)]
    per_partition = max(1, rows // (partitions * batch_rows))
    total = per_partition * partitions * batch_rows
    ray.get([p.__ray_ready__.remote() for p in producers] + [c.__ray_ready__.remote() for c in consumers])
    started = time.perf_counter()
    consumed = [c.run.remote(total // partitions, total) for c in consumers]
    produced = ray.get([p.run.remote(per_partition) for p in producers])
    got = sum(ray.get(consumed))
    elapsed = time.perf_counter() - started
    assert sum(produced) == total and got >= total, (produced, got, total)
    for a in producers + consumers:
        ray.kill(a)
    return total / elapsed


def measure_replicated(factor: int, partitions: int, rows: int, batch_rows: int) -> float:
    """One broker per broker node; ``factor`` 1: plain brokers, else replicated with min_insync 2."""
    namespace = f"bench-rf{factor}-{time.monotonic_ns()}"
    brokers = []
    for b in range(3):
        opts: dict[str, Any] = {
            "num_cpus": 0,
            "max_concurrency": 1000,
            "resources": {f"bench_broker_{b}": 1},
            "name": broker_name(b),
            "namespace": namespace,
        }
        if factor == 1:
            hosted = [p for p in range(partitions) if broker_of(p, 3) == b]
            brokers.append(ray.remote(**opts)(Broker).remote(b, partitions, hosted, 256 << 20, 30.0, {}))
        else:
            members = {p: replicas_of(p, 3, factor) for p in range(partitions)}
            hosted_replicas = {p: m for p, m in members.items() if b in m}
            brokers.append(
                ray.remote(**opts)(ReplicatedBroker).remote(
                    b, partitions, hosted_replicas, 256 << 20, 2, RayPeers(namespace), session_timeout_s=30.0
                )
            )
    ray.get([h.__ray_ready__.remote() for h in brokers])
    if factor > 1:
        settings = QueueSettings(partitions=partitions, brokers=3, replication_factor=factor, min_insync=2)
        Elector(settings, lambda: brokers).settle()
    try:
        return run_clients(brokers, partitions, rows, batch_rows, namespace if factor > 1 else "")
    finally:
        for h in brokers:
            ray.kill(h)


def replication(rows: int, batch_rows: int, partitions: int, repeats: int) -> None:
    """replication_factor 1 and 3 side by side on a head and three broker nodes."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 4, "resources": {"bench_clients": 100}, "include_dashboard": False},
    )
    for b in range(3):
        cluster.add_node(num_cpus=1, resources={f"bench_broker_{b}": 1})
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
    try:
        print(
            f"# replication: {rows:,} rows per run, {batch_rows:,}-row messages, {partitions} partitions, "
            f"{partitions} producers and consumers, 3 broker nodes (one broker each), memory"
        )
        figures: dict[int, list[float]] = {1: [], 3: []}
        for _ in range(repeats):
            for factor in (1, 3):
                figures[factor].append(measure_replicated(factor, partitions, rows, batch_rows))
        one, three = max(figures[1]), max(figures[3])
        runs = lambda f: " ".join(f"{r:,.0f}" for r in figures[f])  # noqa: E731
        print(f"replication_factor=1 rows_per_s={one:,.0f} (runs: {runs(1)})")
        print(f"replication_factor=3 min_insync=2 rows_per_s={three:,.0f} (runs: {runs(3)})")
        print(f"RESULT replication_rf3_over_rf1={three / one:.3f}")
        # Runs this short spread widely on a shared machine: the medians say how typical the best ones are.
        median = statistics.median(figures[3]) / statistics.median(figures[1])
        print(f"RESULT replication_rf3_over_rf1_median={median:.3f}")
    finally:
        ray.shutdown()
        cluster.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows per configuration")
    parser.add_argument("--batch-rows", type=int, default=10_000)
    parser.add_argument("--partitions", default="1,2,4")
    parser.add_argument("--replication-only", action="store_true", help="only rf 1 against rf 3")
    parser.add_argument("--replication-partitions", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2, help="runs of each replication factor (best, median)")
    args = parser.parse_args()
    if args.replication_only:
        replication(args.rows, args.batch_rows, args.replication_partitions, args.repeats)
        return
    ray.init(address="local", num_cpus=8, include_dashboard=False, log_to_driver=False, configure_logging=False)
    print(f"# queue only, {args.rows:,} rows per line, {args.batch_rows:,}-row messages, 1 broker")
    results = {}
    for n in [int(x) for x in args.partitions.split(",")]:
        for persisted in (False, True):
            tmp = Path(tempfile.mkdtemp(prefix="bench-queue-")) if persisted else None
            try:
                rate = measure(n, args.rows, args.batch_rows, tmp)
            finally:
                if tmp:
                    shutil.rmtree(tmp, ignore_errors=True)
            results[(n, persisted)] = rate
            print(
                f"partitions={n} consumers={n} producers={n} persistence={'on ' if persisted else 'off'} "
                f"rows_per_s={rate:,.0f}"
            )
    best = max(results.values())
    print(f"RESULT queue_rows_per_s_max={best:.0f}")
    ray.shutdown()
    replication(args.rows, args.batch_rows, args.replication_partitions, args.repeats)


if __name__ == "__main__":
    main()
