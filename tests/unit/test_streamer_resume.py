"""A streamer that dies right after a flush was acknowledged resumes without losing or repeating a row.

The checkpoint taken before a flush names where that flush begins and its sequence number; a restart
re-sends that flush and the broker drops what it already stored under that number. Before: the
re-sent flush was whatever the restarted streamer read next, so when the first send had been cut
short (a stop, a duration bound, a pause at a pass boundary with ``interval_s=0``) or came from a live
source (a new read), it held other rows under the same number: the partitions that had the number
dropped the new rows (lost), the others stored rows that then came again in the next flush.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from pipeline.collector import Collector
from pipeline.queue.api import AppendResult
from pipeline.queue.local import LocalQueue
from pipeline.records import SAMPLE_SCHEMA, Envelope
from pipeline.sources import Shard, SourceBatch
from pipeline.sources.dcgm_csv import DcgmCsvSource
from pipeline.sources.synthetic import write_csv
from pipeline.streamer import Streamer
from tests.support import MemorySink

BATCH = 50  # rows per full flush; the CSV source reads 10-row batches, a pass is 320 rows


class Crash(Exception):
    """The streamer's process dies."""


class CrashAfterCut:
    """The queue, except that the checkpoint following a short (cut) flush's acknowledgement crashes."""

    def __init__(self, queue: LocalQueue, batch_rows: int = BATCH, after_publish: int | None = None) -> None:
        self._queue = queue
        self._batch_rows = batch_rows
        self._after = after_publish  # crash after this publish instead (1-based), whatever its size
        self._armed = False
        self.publishes = 0

    def publish(
        self, producer: str, seq: int, envelope: Envelope, ranges: Sequence[tuple[int, int, int]]
    ) -> list[AppendResult]:
        results = self._queue.publish(producer, seq, envelope, ranges)
        self.publishes += 1
        if self._after is None:
            self._armed = envelope.num_rows < self._batch_rows
        else:
            self._armed = self.publishes == self._after
        return results

    def checkpoint(self, producer: str, state: Mapping[str, Any]) -> None:
        if self._armed:
            raise Crash
        self._queue.checkpoint(producer, state)

    def producer_state(self, producer: str) -> dict[str, Any] | None:
        return self._queue.producer_state(producer)

    def released_below(self) -> dict[int, int]:
        return self._queue.released_below()


class StopAfter:
    """A CSV source that asks its streamer to stop after ``items`` batches (mid-pass, mid-flush)."""

    def __init__(self, source: DcgmCsvSource, items: int) -> None:
        self._source = source
        self._items = items
        self.streamer: Streamer | None = None
        self.replayable = getattr(source, "replayable", True)

    @property
    def name(self) -> str:
        return self._source.name

    def open(self) -> None:
        self._source.open()

    def close(self) -> None:
        self._source.close()

    def read_pass(self, shard: Shard, start: int = 2) -> Iterator[SourceBatch]:
        for item in self._source.read_pass(shard, start):
            yield item
            self._items -= 1
            if self._items == 0 and self.streamer is not None:
                self.streamer.stop()


class LiveSource:
    """A live source: every read is new (values = the read's number); ``start`` is ignored."""

    replayable = False
    name = "live"

    def __init__(self, first_read: int, items: int = 4, rows: int = 10) -> None:
        self.reads = first_read
        self.served: Counter[float] = Counter()
        self._items = items
        self._rows = rows

    def open(self) -> None:
        pass

    def close(self) -> None:
        pass

    def read_pass(self, shard: Shard, start: int = 0) -> Iterator[SourceBatch]:
        value = float(self.reads)
        self.reads += 1
        for i in range(self._items):
            rows = [
                {"ts": 0, "uuid": f"GPU-{i}-{r}", "hostname": "h", "gpu_index": 0, "metric": "m", "value": value}
                for r in range(self._rows)
            ]
            self.served[value] += self._rows
            yield SourceBatch(pa.RecordBatch.from_pylist(rows, schema=SAMPLE_SCHEMA), None, i + 1)


def stored(queue: LocalQueue) -> MemorySink:
    sink = MemorySink()
    c = Collector("c", "g", queue, sink, poll_timeout_s=0.0)
    c.start()
    while c.poll_once() or c.poll_once():
        pass
    return sink


def csv_rows(path: Path) -> Counter[tuple[Any, ...]]:
    q = LocalQueue(partitions=4, budget_bytes=1 << 30)
    Streamer("ref", DcgmCsvSource(path, batch_rows=10), q, partitions=4, interval_s=0, passes=1).run()
    return Counter((u, m, v) for u, m, _, v in stored(q).sample_keys())


@pytest.mark.parametrize("cut", ["stop", "duration", "pause"])
def test_a_cut_flush_resent_after_a_crash_is_the_same_flush(tmp_path: Path, cut: str) -> None:
    path = tmp_path / "fleet.csv"
    write_csv(path, hosts=4, scrapes=1)  # 320 rows, 32 GPUs
    passes = 3
    q = LocalQueue(partitions=4, budget_bytes=1 << 30)
    crashing = CrashAfterCut(q)
    source: Any = DcgmCsvSource(path, batch_rows=10)
    kwargs: dict[str, Any] = {}
    if cut == "stop":
        source = StopAfter(source, items=13)  # 130 rows read: flushes of 50, 50, then a stop flush of 30
    if cut == "duration":
        ticks = iter(range(10**6))
        kwargs = {"duration_s": 40.0, "clock": lambda: 1_700_000_000.0 + next(ticks)}  # one second a call
    first = Streamer("s", source, crashing, partitions=4, interval_s=0, batch_rows=BATCH, passes=passes, **kwargs)
    if cut == "stop":
        source.streamer = first
    if cut == "pause":
        first.stop_at_pass(1)  # a re-split's pause: 300 rows in six flushes, then the pass's last 20
    with pytest.raises(Crash):
        first.run()
    assert crashing.publishes > 0
    second = Streamer(
        "s", DcgmCsvSource(path, batch_rows=10), q, partitions=4, interval_s=0, batch_rows=BATCH, passes=passes
    )
    stats = second.run()
    assert stats.resumed_from is not None and stats.done
    got = Counter((u, m, v) for u, m, _, v in stored(q).sample_keys())
    want = Counter({k: n * passes for k, n in csv_rows(path).items()})
    assert got == want, {k: (got[k], want[k]) for k in set(got) | set(want) if got[k] != want[k]}
    assert stats.produced == sum(want.values())


def test_a_live_source_resumed_after_a_crash_stores_every_new_read(tmp_path: Path) -> None:
    q = LocalQueue(partitions=4, budget_bytes=1 << 30)
    crashing = CrashAfterCut(q, after_publish=1)  # dies after its first flush (20 rows) was acknowledged
    first_source = LiveSource(first_read=1)
    first = Streamer("s", first_source, crashing, partitions=4, interval_s=0, batch_rows=20, passes=3)
    with pytest.raises(Crash):
        first.run()
    second_source = LiveSource(first_read=100)
    Streamer("s", second_source, q, partitions=4, interval_s=0, batch_rows=20, passes=3).run()
    keys = stored(q).sample_keys()
    got = Counter(v for _, _, _, v in keys)
    # What the first process had acknowledged, and every row the restarted one read: nothing dropped.
    assert got == Counter({1.0: 20}) + second_source.served, (got, second_source.served)
    per_series = Counter((u, m, ts) for u, m, ts, _ in keys)
    assert set(per_series.values()) == {1}
