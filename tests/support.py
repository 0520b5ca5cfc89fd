"""Test helpers shared by unit tests: an in-memory Sink with the database's compare-and-set rules."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from pipeline.errors import FencedError, OffsetMismatch
from pipeline.records import Envelope, pack_envelopes
from pipeline.storage.sink import PartitionBatch, WriteResult


def split(batch: pa.RecordBatch, partitions: Any, count: int) -> list[tuple[int, pa.RecordBatch]]:
    """Per-partition slices of a batch, as a broker keeps them after ``append_batch``."""
    from pipeline.queue.keys import order_by_partition

    ordered, ranges = order_by_partition(batch, partitions, count)
    return [(p, ordered.slice(first, rows)) for p, first, rows in ranges]


def envelope_of(rows: int, tag: str = "h") -> Envelope:
    """A queue message of ``rows`` samples of one GPU whose hostname is ``tag`` (to tell messages apart)."""
    from pipeline.records import SAMPLE_SCHEMA, to_wire

    samples = pa.RecordBatch.from_pylist(
        [
            {"ts": i, "uuid": "GPU-t", "hostname": tag, "gpu_index": 0, "metric": "DCGM_FI_DEV_GPU_TEMP", "value": 1.0}
            for i in range(rows)
        ],
        schema=SAMPLE_SCHEMA,
    )
    return Envelope(to_wire(samples))


def batches(
    *specs: tuple[int, int, int, tuple[Envelope, ...]],
) -> tuple[list[PartitionBatch], Envelope | None]:
    """(partition, first, next, envelopes) specs -> the (batches, data) a sink's write() takes."""
    out = [
        PartitionBatch(p, first, nxt, sum(e.num_rows for e in envs), sum(e.num_rejects for e in envs))
        for p, first, nxt, envs in specs
    ]
    return out, pack_envelopes([e for *_, envs in specs for e in envs])


class MemorySink:
    """Implements the collector's Sink protocol in memory, enforcing the same rules as TelemetryWriter.

    Used only to test collector logic without a database; the integration tests run the real writer.
    """

    def __init__(self) -> None:
        self.offsets: dict[tuple[str, int], int] = {}
        self.generations: dict[tuple[str, int], int] = {}
        self.rows: list[pa.RecordBatch] = []
        self.rejects: list[pa.RecordBatch] = []
        self.fail_next: list[Exception] = []
        self.opened = 0

    def open(self) -> None:
        self.opened += 1

    def close(self) -> None:
        pass

    def claim(self, group: str, generation: int, partitions: Sequence[int]) -> dict[int, int]:
        for p in partitions:
            if self.generations.get((group, p), 0) > generation:
                current = self.generations[(group, p)]
                raise FencedError("newer generation", group=group, generation=generation, current=current)
        for p in partitions:
            self.generations[(group, p)] = generation
            self.offsets.setdefault((group, p), 0)
        return {p: self.offsets[(group, p)] for p in partitions}

    def write(
        self, group: str, generation: int, batches: Sequence[PartitionBatch], data: Envelope | None
    ) -> WriteResult:
        if self.fail_next:
            raise self.fail_next.pop(0)
        for b in batches:
            if self.generations.get((group, b.partition)) != generation:
                raise FencedError("stale generation", group=group)
            if self.offsets.get((group, b.partition)) != b.first_offset:
                raise OffsetMismatch("offset moved", partition=b.partition)
        for b in batches:
            self.offsets[(group, b.partition)] = b.next_offset
        rows = rejects = 0
        if data is not None:
            if data.num_rows:
                self.rows.append(data.samples)
                rows = data.num_rows
            if data.rejects is not None and data.num_rejects:
                self.rejects.append(data.rejects)
                rejects = data.num_rejects
        assert rows == sum(b.rows for b in batches), "data does not match the batches' row counts"
        return WriteResult(rows, rejects, {b.partition: b.next_offset for b in batches})

    def reset(self, group: str, generation: int, partition: int, offset: int) -> None:
        if self.generations.get((group, partition)) != generation:
            raise FencedError(f"group {group}: partition {partition} no longer held by generation {generation}")
        self.offsets[(group, partition)] = offset

    def table(self) -> pa.Table:
        from pipeline.records import WIRE_SCHEMA

        if not self.rows:
            return WIRE_SCHEMA.empty_table()
        return pa.Table.from_batches(self.rows, schema=WIRE_SCHEMA).unify_dictionaries().combine_chunks()

    def sample_keys(self) -> list[tuple[Any, ...]]:
        t = self.table()
        return list(
            zip(
                t.column("uuid").to_pylist(),
                t.column("metric").to_pylist(),
                t.column("ts").cast(pa.int64()).to_pylist(),
                t.column("value").to_pylist(),
                strict=True,
            )
        )


def unique_namespace(prefix: str = "t") -> str:
    """A Ray namespace of its own for one test's pipeline (detached actors never leak into the next test)."""
    import uuid

    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def assert_healthy(pipeline: Any) -> None:
    """Every streamer and collector of a deployed pipeline answers, with its loop alive and no error."""
    p = pipeline.progress()
    for s in [*p.streamers, *p.collectors]:
        assert not s.get("restarting"), f"{s['id']} did not answer: {s.get('detail')}"
        assert s.get("error") is None, f"{s['id']} failed: {s['error']}"
        assert s.get("running") or s.get("done"), f"{s['id']}: its worker loop is not running"
    for c in p.collectors:
        assert c.get("running"), f"{c['id']}: collector loop ended"
