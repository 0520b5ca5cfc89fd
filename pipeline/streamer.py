"""Streamer: source -> validate -> re-stamp -> partition -> publish.

A streamer owns one shard of a source (the GPUs whose shard hash matches), so every series is
stamped by exactly one streamer and its timestamps are strictly increasing: each flushed batch is
stamped at ``max(now, last + 1 us)``, and repeats of a series inside one batch get consecutive
microseconds.

Resuming is exact. Messages carry (producer id, sequence); the broker drops a sequence it already
stored. Before each flush is published the streamer checkpoints where that flush's rows begin and
*end*, its sequence and its newest stamp. A restarted streamer first re-sends that flush: from a
replayable source (a file) it reads exactly the same rows again — whatever cut the first send short
(a stop, a duration bound, a pause at a pass boundary) — and sends them under the same sequence, so
each partition keeps one copy. From a live source a second read is new data, which must not hide
behind the old number: the streamer resumes after the flush's end with the next sequence. A
sequence number therefore never names two different sets of rows. Because the checkpoint holds the
in-flight flush's newest stamp, a restart onto a clock that is behind still stamps above everything
that may already be stored.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.errors import BrokerRestarted, DatabaseUnavailable, QueueError
from pipeline.queue.api import AppendResult, Producer, ProducerCheckpoint
from pipeline.queue.keys import KeyHasher, order_by_partition
from pipeline.records import TS_TYPE, Envelope, empty_wire, to_wire
from pipeline.sources import Shard, Source, SourceBatch

__all__ = ["Streamer", "StreamerStats", "stamp"]

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(slots=True)
class StreamerStats:
    """Counters a streamer reports."""

    produced: int = 0
    rejected: int = 0
    messages: int = 0
    duplicates: int = 0
    passes: int = 0
    flushes: int = 0
    blocked_s: float = 0.0
    busy_s: float = 0.0
    done: bool = False
    publish_retries: int = 0
    resent: int = 0
    resumed_from: dict[str, Any] | None = None
    started_at: float = field(default_factory=time.time)


@dataclass(slots=True)
class _Retained:
    """A flush the brokers acknowledged and no group has committed yet, kept to re-send."""

    seq: int
    envelope: Envelope
    ranges: list[tuple[int, int, int]]
    results: list[AppendResult]


def stamp(samples: pa.RecordBatch, at_us: int, unique: bool = False) -> tuple[pa.RecordBatch, int]:
    """Set ``ts`` to ``at_us``; repeats of a (uuid, metric) get +1 us each. Returns the batch and last stamp.

    ``unique``: the caller guarantees no (uuid, metric) repeats in the batch (skips the check).
    """
    n = samples.num_rows
    if n == 0:
        return samples, at_us - 1
    if unique:
        column = pa.array(np.full(n, at_us, dtype=np.int64), pa.int64()).cast(TS_TYPE)
        return samples.set_column(0, samples.schema.field(0), column), at_us
    uuid_idx = pc.dictionary_encode(samples.column("uuid")).indices.to_numpy(zero_copy_only=False)
    metric_enc = pc.dictionary_encode(samples.column("metric"))
    key = uuid_idx.astype(np.int64) * len(metric_enc.dictionary) + metric_enc.indices.to_numpy(zero_copy_only=False)
    if len(np.unique(key)) == n:
        ts = np.full(n, at_us, dtype=np.int64)
    else:
        order = np.argsort(key, kind="stable")
        sorted_key = key[order]
        starts = np.r_[True, sorted_key[1:] != sorted_key[:-1]]
        group_start = np.maximum.accumulate(np.where(starts, np.arange(n), 0))
        rank = np.empty(n, dtype=np.int64)
        rank[order] = np.arange(n) - group_start
        ts = at_us + rank
    column = pa.array(ts, pa.int64()).cast(TS_TYPE)
    return samples.set_column(0, samples.schema.field(0), column), int(ts.max())


class Streamer:
    """Replays a source in passes, publishing partitioned Arrow batches."""

    def __init__(
        self,
        producer_id: str,
        source: Source,
        producer: Producer,
        partitions: int,
        shard: Shard = Shard(),
        interval_s: float = 1.0,
        batch_rows: int = 20_000,
        passes: int | None = None,
        duration_s: float | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Any] = time.sleep,
    ) -> None:
        self._producer_id = producer_id
        self._source = source
        self._producer = producer
        self._partitions = partitions
        self._shard = shard
        self._interval = interval_s
        self._batch_rows = batch_rows
        self._passes = passes
        self._duration = duration_s
        self._clock = clock
        self._sleep = sleep
        self._hasher = KeyHasher()
        self.stats = StreamerStats()
        self._pending: list[pa.RecordBatch] = []
        self._pending_rejects: list[pa.RecordBatch] = []
        self._pending_rows = 0
        self._pass = 0
        self._position: int | None = None  # resume position within self._pass; None = pass start
        self._seq = 0
        self._last_stamp = 0
        self._flushed: tuple[int, int | None] = (0, None)  # (pass, position) after the last acknowledged flush
        self._replay_to: tuple[int, int | None] | None = None  # the end of the flush to re-send first
        self._stop = threading.Event()
        self._stop_at: int | None = None
        self._opened = False
        self.stop_grace_s = 30.0  # after stop(): how long a flush may still wait for away brokers
        self._retained: deque[_Retained] = deque()  # acknowledged, not yet committed by every group
        self._released: dict[int, int] = {}  # per partition, the newest log start the brokers reported
        # Replayed sources hand back the same batch objects every pass: convert each once.
        self._wire_cache: dict[int, tuple[pa.RecordBatch, pa.RecordBatch]] = {}

    @property
    def producer_id(self) -> str:
        """The id the broker deduplicates on (given by the runtime: stable across restarts of this shard)."""
        return self._producer_id

    def stop(self) -> None:
        """Ask ``run`` to flush and return."""
        self._stop.set()

    def open(self) -> None:
        """Open the source and load the checkpoint, if any (once; ``run`` calls it if nobody did)."""
        if self._opened:
            return
        self._opened = True
        self._source.open()
        state = self._until_acked("resume", lambda: self._producer.producer_state(self.producer_id))
        if state:
            self._pass = int(state["pass"])
            self._position = state.get("position")
            self._seq = int(state["seq"])
            self._last_stamp = int(state["stamp_us"])
            self.stats.passes = self._pass
            self.stats.done = bool(state.get("done", False))
            self.stats.produced = int(state.get("produced", 0))
            self.stats.rejected = int(state.get("rejected", 0))
            self.stats.resumed_from = dict(state)
            end = state.get("end")
            if end is not None and self._source.replayable:
                self._replay_to = (int(end[0]), None if end[1] is None else int(end[1]))
            elif end is not None:
                # A live read cannot give that flush's rows again: what it reads now is new, and goes
                # under a new number (the old one may be stored; re-using it would drop the new rows).
                self._pass, self._position, self._seq = int(end[0]), end[1], self._seq + 1
                self.stats.passes = self._pass
            self._flushed = (self._pass, self._position)
            log.info(
                "%s resumes at pass %d position %s seq %d%s",
                self.producer_id,
                self._pass,
                self._position,
                self._seq,
                "" if self._replay_to is None else f", re-reading its flush in flight up to {self._replay_to}",
            )

    def run(self) -> StreamerStats:
        """Stream until the pass or time bound is reached, or ``stop()``; flushes before returning."""
        self.open()
        started = self._clock()
        paused = False
        try:
            self._replay()
            first_pass = self._pass  # passes are paced from where this run began
            while not self.stats.done and not self._stop.is_set():
                if self._passes is not None and self._pass >= self._passes:
                    break
                if self._stop_at is not None and self._pass >= self._stop_at:
                    paused = True
                    break  # a re-split: every streamer stops at the same pass boundary
                if self._duration is not None and self._clock() - started >= self._duration:
                    break
                due = started + (self._pass - first_pass) * self._interval
                wait = due - self._clock()
                if wait > 0:
                    self.flush()
                    if self._stop.wait(wait) if self._sleep is time.sleep else self._sleep(wait):
                        break
                began = time.monotonic()
                self.run_pass()
                self.stats.busy_s += time.monotonic() - began
            self.flush()
            finished = not paused and (
                (self._passes is not None and self._pass >= self._passes)
                or (self._duration is not None and not self._stop.is_set())
            )
            if finished:
                self.stats.done = True
            self._checkpoint()  # everything is acknowledged: resume after it
        finally:
            self._source.close()
        return self.stats

    def stop_at_pass(self, completed: int | None) -> None:
        """Finish passes until ``completed`` passes are done, then flush, checkpoint and return (None: no bound)."""
        self._stop_at = completed

    @property
    def stopped(self) -> bool:
        """``stop()`` was called."""
        return self._stop.is_set()

    @property
    def passes_done(self) -> int:
        """Passes completed so far (resumed ones included)."""
        return self._pass

    @property
    def last_stamp_us(self) -> int:
        """The newest timestamp this streamer gave a sample."""
        return self._last_stamp

    def run_pass(self) -> None:
        """Read one pass of the shard (from the resume position), flushing full batches."""
        for item in self._read_on():
            if self._stop.is_set():
                return
            self._take(item)
            if self._pending_rows >= self._batch_rows:
                self.flush()
        self._end_pass()
        if self._interval > 0:
            self.flush()

    def _read_on(self) -> Iterator[SourceBatch]:
        """The current pass from the resume position (its start when there is none)."""
        start = self._position
        return self._source.read_pass(self._shard) if start is None else self._source.read_pass(self._shard, start)

    def _take(self, item: SourceBatch) -> None:
        """Stamp one batch read from the source and add it to the pending flush."""
        at = max(int(self._clock() * 1_000_000), self._last_stamp + 1)
        wire = item.wire if item.wire is not None else self._wire(item.samples)
        samples, self._last_stamp = stamp(wire, at, unique=item.unique_series)
        self._pending.append(samples)
        self._pending_rows += samples.num_rows
        if item.rejects is not None:
            self._pending_rejects.append(item.rejects)
        self._position = item.position

    def _end_pass(self) -> None:
        self._pass += 1
        self._position = None
        self.stats.passes = self._pass

    def _replay(self) -> None:
        """Re-send the flush that was in flight when the last run ended: the same rows, the same sequence.

        It is read to its recorded end whatever this run's bounds (batch size, stop, duration, pause):
        the first send was cut by the previous run's. Reading past the end (the source's batch
        boundaries moved: other settings) cannot be undone; it is logged and the flush sent as read.
        """
        end, self._replay_to = self._replay_to, None
        if end is None:
            return
        target = _order(end)
        while _order((self._pass, self._position)) < target:
            for item in self._read_on():
                self._take(item)
                if _order((self._pass, self._position)) >= target:
                    break
            else:
                self._end_pass()
        if (self._pass, self._position) != end:
            log.error(
                "%s: re-reading its flush in flight went past its end (%s, now at %s): the source's batches "
                "moved; some of that flush's rows may be lost or stored twice",
                self.producer_id,
                end,
                (self._pass, self._position),
            )
        self.flush()

    def _wire(self, samples: pa.RecordBatch) -> pa.RecordBatch:
        hit = self._wire_cache.get(id(samples))
        if hit is not None and hit[0] is samples:
            return hit[1]
        wire = to_wire(samples)
        if len(self._wire_cache) >= 4096:
            self._wire_cache.clear()
        self._wire_cache[id(samples)] = (samples, wire)
        return wire

    def flush(self) -> int:
        """Partition and publish everything pending, then checkpoint. Returns rows published."""
        if not self._pending and not self._pending_rejects:
            return 0
        samples = (
            pa.Table.from_batches(self._pending).combine_chunks().to_batches(max_chunksize=1 << 62)
            if self._pending
            else []
        )
        batch = samples[0] if samples else None
        rejects = (
            pa.Table.from_batches(self._pending_rejects).combine_chunks().to_batches()[0]
            if self._pending_rejects
            else None
        )
        if batch is not None and batch.num_rows:
            partitions = self._hasher.partitions(batch.column("uuid"), self._partitions)
            ordered, ranges = order_by_partition(batch, partitions, self._partitions)
        else:
            ordered, ranges = empty_wire(), [(0, 0, 0)]  # rejects alone still travel, on partition 0
        # Before publishing, where this flush begins and ends: a crash from here on re-sends exactly it.
        self._checkpoint(self._flushed, end=(self._pass, self._position))
        t0 = time.monotonic()
        results = self._publish(Envelope(ordered, rejects), ranges)
        self.stats.blocked_s += time.monotonic() - t0
        self.stats.duplicates += sum(1 for r in results if r.duplicate)
        self._seq += 1
        self.stats.messages += len(ranges)
        self.stats.produced += self._pending_rows
        self.stats.rejected += 0 if rejects is None else rejects.num_rows
        self.stats.flushes += 1
        published = self._pending_rows
        self._pending, self._pending_rejects, self._pending_rows = [], [], 0
        self._flushed = (self._pass, self._position)
        return published

    def _publish(self, envelope: Envelope, ranges: list[tuple[int, int, int]]) -> list[AppendResult]:
        """Publish this flush, waiting out brokers that are away (same sequence: a re-send is a duplicate).

        The flush is then *retained* until every group has committed it (the brokers released it): a
        broker that restarts without its log refuses the next append (``BrokerRestarted``), and every
        retained flush is re-sent, in order, before anything new. Retained bytes are bounded by what
        the brokers hold uncommitted (their byte budgets), since both are released by the same commit.
        """
        seq = self._seq

        def send() -> list[AppendResult]:
            try:
                return self._producer.publish(self.producer_id, seq, envelope, ranges)
            except BrokerRestarted as exc:
                log.warning("%s: %s; re-sending %d retained flush(es)", self.producer_id, exc, len(self._retained))
                self._resend_retained()
                raise

        results = self._until_acked(f"flush {seq}", send)
        self._retained.append(_Retained(seq, envelope, ranges, results))
        self._release(results)
        return results

    def _resend_retained(self) -> None:
        """Re-send every retained flush in sequence order (the brokers drop what they, or the database, have)."""
        while True:
            try:
                for r in list(self._retained):
                    again = self._producer.publish(self.producer_id, r.seq, r.envelope, r.ranges)
                    # A duplicate answer keeps the offset it had: the broker (or the database) holds it there.
                    before = {a.partition: a for a in r.results}
                    r.results = [before.get(a.partition, a) if a.duplicate else a for a in again]
                    self.stats.resent += 1
                return
            except BrokerRestarted:
                continue  # restarted again while we re-sent: from the first retained flush again
            except (QueueError, DatabaseUnavailable) as exc:
                log.warning("%s: re-send failed (%s); retrying", self.producer_id, exc)
                time.sleep(0.5)

    def _release(self, results: list[AppendResult]) -> None:
        """Forget retained flushes that every group has committed.

        Each append's answer says where its partition's log then started (``released``): that costs
        no call. Only when the oldest retained flush waits on a partition this flush did not touch
        are the brokers asked (``released_below``), so what is retained never outlives its commit by
        more than one flush.
        """
        fresh = {a.partition for a in results}
        self._note_released({a.partition: a.released for a in results})
        self._pop_released()
        if self._retained and any(
            not self._is_released(a) and a.partition not in fresh for a in self._retained[0].results
        ):
            try:
                self._note_released(self._producer.released_below())
            except (QueueError, DatabaseUnavailable):
                return  # asked again after the next flush
            self._pop_released()

    def _note_released(self, below: dict[int, int]) -> None:
        # Only grows: below it every group committed, in the database, which never goes back.
        for partition, start in below.items():
            if start > self._released.get(partition, 0):
                self._released[partition] = start

    def _is_released(self, result: AppendResult) -> bool:
        return result.duplicate or result.offset < self._released.get(result.partition, 0)

    def _pop_released(self) -> None:
        while self._retained and all(self._is_released(a) for a in self._retained[0].results):
            self._retained.popleft()

    def _until_acked(self, what: str, call: Callable[[], T]) -> T:
        """Retry ``call`` with backoff while the queue is away.

        After ``stop()`` the wait is bounded by ``stop_grace_s``; past it the ``QueueError`` is raised
        and the flush stays unacknowledged (not checkpointed: it is read again on the next start).
        """
        delay = 0.1
        stopped_at: float | None = None
        while True:
            try:
                return call()
            except (QueueError, DatabaseUnavailable) as exc:
                self.stats.publish_retries += 1
                if self._stop.is_set():
                    stopped_at = stopped_at if stopped_at is not None else time.monotonic()
                    if time.monotonic() - stopped_at > self.stop_grace_s:
                        raise
                log.warning("%s: %s not acknowledged (%s); retrying in %.1fs", self.producer_id, what, exc, delay)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _checkpoint(
        self, resume: tuple[int, int | None] | None = None, end: tuple[int, int | None] | None = None
    ) -> None:
        """Store the resume state: from ``resume`` (pass, position), else after everything read so far.

        ``end``: where the flush about to be published ends (None: nothing is in flight).
        """
        pass_, position = (self._pass, self._position) if resume is None else resume
        state: ProducerCheckpoint = {
            "pass": pass_,
            "position": position,
            "end": None if end is None else [end[0], end[1]],
            "seq": self._seq,
            "stamp_us": self._last_stamp,
            "done": self.stats.done,
            "produced": self.stats.produced,
            "rejected": self.stats.rejected,
        }
        self._until_acked("checkpoint", lambda: self._producer.checkpoint(self.producer_id, state))


def _order(at: tuple[int, int | None]) -> tuple[int, int]:
    """(pass, position) as a sortable key: a pass's start (position None) comes before its first row."""
    return at[0], -1 if at[1] is None else at[1]
