"""Collector: fetch -> write (rows + offsets in one transaction) -> tell the brokers.

A collector is a member of a consumer group. On every new assignment it *claims* its partitions in
the database (stamping them with its generation) and resumes from the offsets stored there, not
from anything the broker remembers. A write moves each partition's stored offset with a
compare-and-set in the same transaction as the rows; if the set fails (the batch was already
stored, or a newer generation owns the partition) nothing is written and the collector re-syncs.
A batch leaves the collector only after its transaction commits; failures are retried with
backoff, and the data stays in the broker until then.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from pipeline.errors import DatabaseUnavailable, FencedError, OffsetMismatch, QueueError, StorageError
from pipeline.queue.api import Consumer, Fetched
from pipeline.queue.group import Assignment
from pipeline.storage.sink import PartitionBatch, Sink, WriteResult

__all__ = ["Collector", "CollectorStats", "group_messages"]

log = logging.getLogger(__name__)


@dataclass(slots=True)
class CollectorStats:
    """Counters a collector reports."""

    rows: int = 0
    rejects: int = 0
    transactions: int = 0
    retries: int = 0
    fenced: int = 0
    rebalances: int = 0
    generation: int = 0
    partitions: tuple[int, ...] = ()
    last_commit_at: float = 0.0
    last_error: str | None = None
    commit_seconds: float = 0.0
    started_at: float = field(default_factory=time.time)


def group_messages(messages: Sequence[Fetched], positions: Mapping[int, int]) -> list[PartitionBatch]:
    """Turn fetched messages into one contiguous batch per partition, starting at ``positions``.

    Raises ``QueueError`` if the messages do not continue each partition without a gap: the rows
    travel packed in message order, so a dropped message would misalign rows and offsets.
    """
    by_partition: dict[int, list[Fetched]] = {}
    for m in messages:
        by_partition.setdefault(m.partition, []).append(m)
    batches = []
    for partition, items in sorted(by_partition.items()):
        items.sort(key=lambda m: m.offset)
        expected = positions[partition]
        for m in items:
            if m.offset != expected:
                raise QueueError(
                    f"partition {partition}: fetched offset {m.offset}, expected {expected}",
                    partition=partition,
                )
            expected += 1
        newest: dict[str, int] = {}
        for m in items:
            if m.producer is not None and m.seq is not None:
                newest[m.producer] = max(m.seq, newest.get(m.producer, -1))
        batches.append(
            PartitionBatch(
                partition,
                items[0].offset,
                expected,
                sum(m.rows for m in items),
                sum(m.rejects for m in items),
                tuple(sorted(newest.items())),
            )
        )
    return batches


class Collector:
    """Consumes assigned partitions into a ``Sink`` with exactly-once offsets."""

    def __init__(
        self,
        member: str,
        group: str,
        consumer: Consumer,
        sink: Sink,
        max_rows: int = 100_000,
        poll_timeout_s: float = 0.2,
        heartbeat_s: float = 1.0,
        backoff_s: tuple[float, float] = (0.05, 5.0),
        on_commit: Callable[[WriteResult, float], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.member = member
        self.group = group
        self._consumer = consumer
        self._sink = sink
        self._max_rows = max_rows
        self._poll_timeout = poll_timeout_s
        self._heartbeat_every = heartbeat_s
        self._backoff = backoff_s
        self._on_commit = on_commit
        self._clock = clock
        self._assignment = Assignment(0, ())
        self._pending = self._assignment  # the newest assignment heard, claimed or not
        self._positions: dict[int, int] = {}
        self._reported: dict[int, int] = {}  # offsets the brokers have acknowledged, per partition
        self._last_heartbeat = 0.0
        self._failures = 0
        self._stop = threading.Event()
        self._draining = False
        self.stats = CollectorStats()

    @property
    def positions(self) -> dict[int, int]:
        """Next offset to write per owned partition."""
        return dict(self._positions)

    def start(self) -> None:
        """Connect the sink and join the group (``run`` retries this while the database is away).

        A claim refused because a newer generation already holds a partition (another collector
        joined at the same moment) is not an error: the next heartbeat brings the new assignment.
        """
        self._sink.open()
        self._pending = self._consumer.join(self.group, self.member)
        self._last_heartbeat = self._clock()
        self._apply(self._pending)

    def stop(self) -> None:
        """Ask ``run`` to finish the batch in hand, leave the group and return."""
        self._stop.set()

    def run(self) -> CollectorStats:
        """Start (retrying while the database or the brokers are away), then poll until stopped."""
        try:
            while not self._stop.is_set():
                try:
                    self.start()
                    break
                except (DatabaseUnavailable, StorageError, QueueError) as exc:
                    self._failed(exc)
            self._failures = 0
            while not self._stop.is_set():
                self.poll_once()
        finally:
            self.close()
        return self.stats

    def close(self) -> None:
        """Leave the group and disconnect."""
        try:
            self._consumer.leave(self.group, self.member)
        except QueueError as exc:
            log.warning("%s: leave failed: %s", self.member, exc)
        finally:
            self._sink.close()

    def _apply(self, assignment: Assignment) -> None:
        """Adopt an assignment: claim its partitions in the database and resume from stored offsets."""
        if assignment.generation == self._assignment.generation and self._positions.keys() == set(
            assignment.partitions
        ):
            return
        try:
            positions = self._sink.claim(self.group, assignment.generation, assignment.partitions)
        except FencedError as exc:
            # A newer generation exists already (a member joined meanwhile): own nothing until the
            # next heartbeat brings it.
            self.stats.fenced += 1
            log.info("%s: claim of generation %d refused (%s); re-syncing", self.member, assignment.generation, exc)
            self._drop_assignment()
            if isinstance(exc.current, int) and exc.current > assignment.generation:
                # Report the newer generation on the next heartbeat: a coordinator restarted on a
                # clock behind moves above it instead of handing out unclaimable generations.
                self._assignment = Assignment(exc.current, ())
            return
        self._positions = positions
        self._reported = {}  # the brokers learn this generation's offsets on the next idle poll
        self._assignment = assignment
        self.stats.rebalances += 1
        self.stats.generation = assignment.generation
        self.stats.partitions = assignment.partitions
        log.info(
            "%s: generation %d, partitions %s, from offsets %s",
            self.member,
            assignment.generation,
            list(assignment.partitions),
            self._positions,
        )

    def _drop_assignment(self) -> None:
        """Own nothing and heartbeat at the next chance (after a fence)."""
        self._assignment = Assignment(0, ())
        self._positions = {}
        self._last_heartbeat = float("-inf")

    def _beat(self) -> Assignment:
        """Heartbeat (rejoining if the group dropped this member); touches only the brokers."""
        try:
            assignment = self._consumer.heartbeat(self.group, self.member, self._assignment.generation)
        except FencedError:
            self.stats.fenced += 1
            log.warning("%s: dropped from group %s; rejoining", self.member, self.group)
            assignment = self._consumer.join(self.group, self.member)
        self._last_heartbeat = self._clock()
        self._pending = assignment
        return assignment

    def _sync(self, force: bool = False) -> None:
        if force or self._clock() - self._last_heartbeat >= self._heartbeat_every:
            self._beat()
        self._apply(self._pending)

    def poll_once(self) -> int:
        """Fetch, write and commit one batch; returns rows committed (0 when idle or on a retried failure)."""
        try:
            self._sync()
            if not self._positions:
                self._stop.wait(self._poll_timeout)
                return 0
            generation = self._assignment.generation
            fetched = self._consumer.fetch(
                self.group, self.member, generation, self._positions, self._max_rows, self._poll_timeout
            )
            for partition, (start, end) in fetched.out_of_range.items():
                self._out_of_range(generation, partition, start, end)
            batches = group_messages(fetched.messages, self._positions)
            if not batches:
                behind = {p: o for p, o in self._positions.items() if self._reported.get(p) != o}
                if behind:
                    self._tell_broker(generation, behind)
                return 0
            data = fetched.data
            t0 = time.perf_counter()
            result = self._sink.write(self.group, generation, batches, data)
            elapsed = time.perf_counter() - t0
        except (FencedError, OffsetMismatch) as exc:
            # Someone else owns or already stored this: nothing was written; re-sync from the database.
            self.stats.fenced += 1
            log.info("%s: %s; re-syncing", self.member, exc)
            self._drop_assignment()  # the next poll heartbeats and claims again, inside this try
            return 0
        except (DatabaseUnavailable, StorageError, QueueError) as exc:
            self._failed(exc)
            return 0
        self._failures = 0
        self._positions.update(result.offsets)
        self.stats.rows += result.rows
        self.stats.rejects += result.rejects
        self.stats.transactions += 1
        self.stats.commit_seconds += elapsed
        self.stats.last_commit_at = time.time()
        if self._on_commit is not None:
            self._on_commit(result, elapsed)
        self._tell_broker(generation, result.offsets)
        return result.rows

    def _tell_broker(self, generation: int, offsets: Mapping[int, int]) -> None:
        """Report committed offsets to the brokers (advisory: retention and lag; the database decides).

        A report that fails (a broker restarting, a rebalance) is repeated when the collector is
        next idle, so the brokers' view catches up with the database even when no data follows.
        """
        try:
            self._consumer.commit(self.group, self.member, generation, offsets)
        except (FencedError, QueueError) as exc:
            log.info("%s: brokers did not take the commit (%s); will report again", self.member, exc)
            return
        self._reported.update(offsets)

    def _out_of_range(self, generation: int, partition: int, start: int, end: int) -> None:
        stored = self._positions[partition]
        target = start if stored < start else end
        log.warning(
            "%s: partition %d stored offset %d is outside the broker's log [%d, %d) (broker restarted "
            "without --queue-dir?); resuming at %d",
            self.member,
            partition,
            stored,
            start,
            end,
            target,
        )
        self._sink.reset(self.group, generation, partition, target)
        self._positions[partition] = target

    def _failed(self, exc: Exception) -> None:
        self._failures += 1
        self.stats.retries += 1
        self.stats.last_error = str(exc)
        low, high = self._backoff
        delay = min(high, low * (2 ** min(self._failures - 1, 16)))
        log.warning("%s: %s; retrying in %.2fs", self.member, exc, delay)
        self._wait_beating(delay)

    def _wait_beating(self, delay: float) -> None:
        """Wait ``delay`` seconds, heartbeating meanwhile so a database outage never costs the session."""
        deadline = time.monotonic() + delay  # a real wait, whatever clock paces the heartbeats
        while not self._stop.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._stop.wait(min(remaining, self._heartbeat_every))
            if self._clock() - self._last_heartbeat >= self._heartbeat_every:
                try:
                    self._beat()
                except (FencedError, QueueError) as exc:
                    log.info("%s: heartbeat during backoff failed: %s", self.member, exc)
