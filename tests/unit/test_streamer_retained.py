"""Retained flushes (kept to re-send to a broker that lost its log) are let go once committed.

Each append's answer says where its partition's log starts (below it every group committed), so a
streamer whose flushes touch every partition learns what to let go at no cost; it asks the brokers
(``released_below``, one call per broker) only when the oldest retained flush waits on a partition
the latest flush did not touch.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pyarrow as pa

from pipeline.collector import Collector
from pipeline.queue.local import LocalQueue
from pipeline.records import SAMPLE_SCHEMA
from pipeline.sources import Shard, SourceBatch
from pipeline.streamer import Streamer
from tests.support import MemorySink


class Counting(LocalQueue):
    """The in-process queue, counting ``released_below`` calls."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.asked = 0

    def released_below(self) -> dict[int, int]:
        self.asked += 1
        return super().released_below()


class Gpus:
    """Pass 0 reads ``first`` GPUs, every later pass the first ``later`` of them."""

    replayable = True
    name = "gpus"

    def __init__(self, first: int, later: int) -> None:
        self._first = first
        self._later = later
        self.passes = 0

    def open(self) -> None:
        pass

    def close(self) -> None:
        pass

    def read_pass(self, shard: Shard, start: int = 0) -> Iterator[SourceBatch]:
        count = self._first if self.passes == 0 else self._later
        self.passes += 1
        rows = [
            {"ts": 0, "uuid": f"GPU-{g}", "hostname": "h", "gpu_index": 0, "metric": "m", "value": 1.0}
            for g in range(count)
        ]
        yield SourceBatch(pa.RecordBatch.from_pylist(rows, schema=SAMPLE_SCHEMA), None, 1)


def drain(collector: Collector) -> None:
    while collector.poll_once() or collector.poll_once():
        pass


def test_flushes_over_every_partition_are_released_by_the_append_answers() -> None:
    q = Counting(partitions=4, budget_bytes=1 << 30)
    s = Streamer("s", Gpus(first=64, later=64), q, partitions=4, interval_s=1.0)  # every partition, every pass
    c = Collector("c", "g", q, MemorySink(), poll_timeout_s=0.0)
    c.start()
    s.open()
    for _ in range(5):
        s.run_pass()  # one flush of every partition
        drain(c)
    s.run_pass()
    assert [r.seq for r in s._retained] == [5]  # all committed before it: let go, on the answers alone
    assert q.asked == 0


def test_a_flush_waiting_on_an_untouched_partition_is_released_by_asking_the_brokers() -> None:
    q = Counting(partitions=4, budget_bytes=1 << 30)
    s = Streamer("s", Gpus(first=64, later=1), q, partitions=4, interval_s=1.0)
    c = Collector("c", "g", q, MemorySink(), poll_timeout_s=0.0)
    c.start()
    s.open()
    s.run_pass()  # flush 0: every partition
    drain(c)
    s.run_pass()  # flush 1: one partition only
    assert [r.seq for r in s._retained] == [1]
    assert q.asked == 1
