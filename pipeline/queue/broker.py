"""The broker: hosts partition logs, coordinates consumer groups, applies backpressure.

A plain class with ``async`` methods: ``pipeline.runtime.actors`` runs it as an async Ray actor (all calls
on one event loop, so no locks), and unit tests drive it with ``asyncio`` directly.

Guarantees:

* appends to a partition get consecutive offsets, in arrival order;
* an append whose (producer, sequence) is not newer than the last one stored for that partition is
  acknowledged and dropped (idempotent producers);
* a partition holds at most ``budget_bytes`` of uncommitted data: an append that would exceed it
  waits until consumers commit (never dropped); waiting time is counted;
* data is released only once every known consumer group has committed past it;
* a full volume (ENOSPC) is a state, not an error: the append waits and retries, ``stats()`` says
  why (``disk_full``), and nothing torn is left in the segment.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pipeline.errors import BrokerRestarted, FencedError, OffsetOutOfRange, QueueError
from pipeline.queue.api import AppendResult, BrokerStats, Fetched, FetchResult, GroupLag, PartitionStats
from pipeline.queue.disk import PartitionDisk, Persistence
from pipeline.queue.group import Assignment, GroupCoordinator
from pipeline.queue.log import PartitionLog
from pipeline.queue.segments import StateFile
from pipeline.records import Envelope, pack_envelopes

__all__ = ["Broker", "Persistence"]

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _PartitionStats:
    blocked_s: float = 0.0
    fetched_rows: int = 0
    appends: int = 0
    duplicates: int = 0


class Broker:
    """Hosts some partitions of one topic; may also coordinate consumer groups."""

    def __init__(
        self,
        broker_id: int,
        partitions: int,
        hosted: Iterable[int],
        budget_bytes: int,
        session_timeout_s: float = 10.0,
        start_offsets: Mapping[int, int] | None = None,
        clock: Callable[[], float] = time.monotonic,
        persistence: Persistence | None = None,
        start_sequences: Mapping[tuple[str, int], int] | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.broker_id = broker_id
        self.partitions = partitions
        self._clock = clock
        self._wall_clock = wall_clock
        self._budget = budget_bytes
        self._session_timeout = session_timeout_s
        starts = start_offsets or {}
        self._logs = {p: PartitionLog(p, starts.get(p, 0)) for p in sorted(hosted)}
        self._stats = {p: _PartitionStats() for p in self._logs}
        self._groups: dict[str, GroupCoordinator] = {}
        # Committed offsets per group and partition, as told by consumers after their DB commit.
        self._committed: dict[str, dict[int, int]] = {}
        # Highest generation seen per (group, partition): fences members of groups coordinated elsewhere.
        self._fence: dict[tuple[str, int], int] = {}
        # Newest sequence per (producer, partition): what the database says was committed (a fresh
        # incarnation must drop a re-sent flush its predecessor already handed to a collector),
        # raised by what persistence recovers and by every append.
        self._last_seq: dict[tuple[str, int], int] = dict(start_sequences or {})
        self.incarnation = uuid.uuid4().hex[:12]
        self._checkpoints: dict[str, dict[str, Any]] = {}
        self._data = asyncio.Condition()
        self._space = asyncio.Condition()
        self.started_at = time.time()
        self._persistence = persistence
        self._disks: dict[int, PartitionDisk] = {}
        self._checkpoint_file: StateFile | None = None
        self.recovered: dict[int, int] = {}
        if persistence is not None:
            self._recover(persistence, starts)

    # --- persistence ------------------------------------------------------------------------------

    def _recover(self, persistence: Persistence, starts: Mapping[int, int]) -> None:
        """Reload what was on disk: uncommitted messages, committed offsets, producer checkpoints."""
        root = persistence.directory
        root.mkdir(parents=True, exist_ok=True)
        if self.broker_id == 0:
            self._checkpoint_file = StateFile(root / "producers.json")
            self._checkpoints = self._checkpoint_file.load()
        for p in list(self._logs):
            disk = PartitionDisk(persistence, p)
            plog, committed, last_seq = disk.recover(starts.get(p, 0), self._clock)
            for producer, seq in last_seq.items():
                self._last_seq[(producer, p)] = max(seq, self._last_seq.get((producer, p), -1))
            self._logs[p] = plog
            for group, offset in committed.items():
                self._committed.setdefault(group, {})[p] = offset
            self._disks[p] = disk
            self.recovered[p] = len(plog)

    def _persist_committed(self, partition: int) -> None:
        disk = self._disks.get(partition)
        if disk is not None:
            committed = {g: c[partition] for g, c in self._committed.items() if partition in c}
            disk.save(committed, {producer: seq for (producer, p), seq in self._last_seq.items() if p == partition})

    def _retain(self, partition: int, floor: int) -> None:
        disk = self._disks.get(partition)
        if disk is not None:
            disk.retain(floor, self._logs[partition].end_offset)

    def _committed_floor(self, partition: int) -> int:
        committed = [c[partition] for c in self._committed.values() if partition in c]
        return min(committed) if committed else self._logs[partition].start_offset

    def _disk_full(self, partition: int, nbytes: int) -> bool:
        disk = self._disks.get(partition)
        return disk is not None and disk.over_budget(nbytes)

    def _over_budget(self, plog: PartitionLog, nbytes: int) -> bool:
        memory = plog.bytes_held > 0 and plog.bytes_held + nbytes > self._budget
        return memory or self._disk_full(plog.partition, nbytes)

    # --- producers ------------------------------------------------------------------------------

    def _log(self, partition: int) -> PartitionLog:
        try:
            return self._logs[partition]
        except KeyError:
            raise QueueError(
                f"broker {self.broker_id} does not host partition {partition}", partition=partition
            ) from None

    async def append(
        self,
        partition: int,
        payload: Envelope,
        rows: int,
        nbytes: int,
        producer: str | None = None,
        seq: int | None = None,
    ) -> AppendResult:
        """Append one message, waiting while the partition is over its byte budget."""
        plog = self._log(partition)
        stats = self._stats[partition]
        key = (producer, partition) if producer is not None else None
        if key is not None and seq is not None and seq <= self._last_seq.get(key, -1):  # type: ignore[arg-type]
            stats.duplicates += 1
            return self._duplicate(plog)
        while True:
            if self._over_budget(plog, nbytes):
                await self._wait_for_budget(plog, nbytes)
                # Another append of the same producer may have landed while this one waited.
                if key is not None and seq is not None and seq <= self._last_seq.get(key, -1):  # type: ignore[arg-type]
                    stats.duplicates += 1
                    return self._duplicate(plog)
            if self._write(partition, plog.end_offset, producer, seq, rows, nbytes, payload):
                break
            await self._wait_for_disk(partition)
            if key is not None and seq is not None and seq <= self._last_seq.get(key, -1):  # type: ignore[arg-type]
                stats.duplicates += 1
                return self._duplicate(plog)
        offset = plog.append(payload, rows, nbytes, self._clock(), producer, seq)
        if key is not None and seq is not None:
            self._last_seq[key] = seq  # type: ignore[index]
        stats.appends += 1
        async with self._data:
            self._data.notify_all()
        return AppendResult(partition, offset, incarnation=self.incarnation, released=plog.start_offset)

    def _duplicate(self, plog: PartitionLog) -> AppendResult:
        """The answer to an append this producer had already stored."""
        return AppendResult(
            plog.partition, -1, duplicate=True, incarnation=self.incarnation, released=plog.start_offset
        )

    async def _wait_for_budget(self, plog: PartitionLog, nbytes: int) -> None:
        partition = plog.partition
        started = self._clock()
        disk = self._disks.get(partition)
        if disk is not None:
            disk.reserve = max(disk.reserve, nbytes)  # retention makes room for this append
            self._retain(partition, self._committed_floor(partition))
            if disk.over_budget(nbytes):
                disk.full = "budget"
        async with self._space:
            while self._over_budget(plog, nbytes):
                await self._space.wait()
        if disk is not None:
            disk.reserve, disk.full = 0, None
        self._stats[partition].blocked_s += self._clock() - started

    def _write(
        self,
        partition: int,
        offset: int,
        producer: str | None,
        seq: int | None,
        rows: int,
        nbytes: int,
        payload: Any,
        encoded: tuple[bytes, bytes] | None = None,
    ) -> bool:
        """Put a message on disk (fsynced) before it is acknowledged; False while the volume is full."""
        disk = self._disks.get(partition)
        header = {"producer": producer, "seq": seq, "rows": rows, "nbytes": nbytes}
        return disk is None or disk.write(offset, header, payload, encoded)

    async def _wait_for_disk(self, partition: int) -> None:
        """After ENOSPC: free what retention may, then wait for a commit or the retry interval."""
        started = self._clock()
        self._retain(partition, self._committed_floor(partition))
        retry = 1.0 if self._persistence is None else self._persistence.enospc_retry_s
        async with self._space:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._space.wait(), retry)
        self._stats[partition].blocked_s += self._clock() - started

    async def append_batch(
        self,
        producer: str | None,
        seq: int | None,
        envelope: Envelope,
        ranges: list[tuple[int, int, int]],
        expect: str | None = None,
    ) -> list[AppendResult]:
        """Append one batch already ordered by partition: ``ranges`` are (partition, first row, rows).

        One call (and one Arrow batch through Ray) per flush instead of one per partition; each
        partition's log gets a zero-copy slice. Deduplication stays per (producer, partition), so a
        flush interrupted half way is completed, not dropped, when it is re-sent.
        """
        if expect is not None and expect != self.incarnation:
            # Checked before anything is appended: the producer re-sends what it retains first.
            raise BrokerRestarted(
                f"broker {self.broker_id} restarted (now {self.incarnation}, producer expected {expect})",
                broker=self.broker_id,
                incarnation=self.incarnation,
            )
        total = max(1, envelope.num_rows)
        results = []
        for i, (partition, first, rows) in enumerate(ranges):
            piece = Envelope(envelope.samples.slice(first, rows), envelope.rejects if i == 0 else None)
            nbytes = max(1, envelope.nbytes * rows // total)
            results.append(await self.append(partition, piece, rows, nbytes, producer, seq))
        return results

    def checkpoint(self, producer: str, state: Mapping[str, Any]) -> None:
        """Store a producer's resume state (its replay position), after its appends were acknowledged."""
        self._checkpoints[producer] = dict(state)
        if self._checkpoint_file is not None:
            self._checkpoint_file.save(self._checkpoints)

    def producer_state(self, producer: str) -> dict[str, Any] | None:
        """The last checkpoint a producer stored, if any."""
        state = self._checkpoints.get(producer)
        return None if state is None else dict(state)

    # --- consumer groups --------------------------------------------------------------------------

    def _coordinator(self, group: str) -> GroupCoordinator:
        coordinator = self._groups.get(group)
        if coordinator is None:
            # Generations start from wall-clock milliseconds, so a restarted coordinator rarely
            # hands out one an earlier incarnation used; where its clock is behind, members report
            # their generations and the coordinator moves above them (see GroupCoordinator).
            coordinator = GroupCoordinator(
                group,
                range(self.partitions),
                self._session_timeout,
                self._clock,
                first_generation=int(self._wall_clock() * 1000),
            )
            self._groups[group] = coordinator
            self._committed.setdefault(group, {})
        return coordinator

    def join(self, group: str, member: str) -> Assignment:
        """Join a group (this broker coordinates it)."""
        return self._coordinator(group).join(member)

    def heartbeat(self, group: str, member: str, generation: int) -> Assignment:
        """Heartbeat; returns the current assignment, or raises ``FencedError`` if the member must rejoin."""
        return self._coordinator(group).heartbeat(member, generation)

    def leave(self, group: str, member: str) -> None:
        """Leave a group gracefully."""
        if group in self._groups:
            self._groups[group].leave(member)

    def group_state(self, group: str) -> dict[str, Any]:
        """Members, generation and assignment of a group coordinated here."""
        c = self._coordinator(group)
        c.expire()
        return {
            "group": group,
            "generation": c.generation,
            "rebalances": c.rebalances,
            "members": {m: list(c.assignment_of(m).partitions) for m in c.members},
        }

    def _check(self, group: str, member: str, generation: int, partition: int) -> None:
        coordinator = self._groups.get(group)
        if coordinator is not None:
            coordinator.check(member, generation, partition)
            return
        seen = self._fence.get((group, partition), 0)
        if generation < seen:
            raise FencedError(
                f"group {group}: partition {partition} is held by generation {seen}; {member} used {generation}",
                group=group,
                member=member,
                generation=generation,
                current=seen,
            )
        self._fence[(group, partition)] = generation
        self._committed.setdefault(group, {})

    async def fetch(
        self,
        group: str,
        member: str,
        generation: int,
        positions: Mapping[int, int],
        max_rows: int,
        timeout_s: float = 0.0,
    ) -> FetchResult:
        """Messages from each requested partition's position, up to ``max_rows`` rows in all.

        Waits up to ``timeout_s`` for data when none is ready.
        """
        for partition in positions:
            self._check(group, member, generation, partition)
        result = self._collect(positions, max_rows)
        if not result.messages and not result.out_of_range and timeout_s > 0:
            deadline = self._clock() + timeout_s
            async with self._data:
                while not result.messages and not result.out_of_range:
                    remaining = deadline - self._clock()
                    if remaining <= 0:
                        break
                    try:
                        await asyncio.wait_for(self._data.wait(), remaining)
                    except TimeoutError:
                        break
                    result = self._collect(positions, max_rows)
            # The group may have rebalanced while we waited.
            for partition in positions:
                self._check(group, member, generation, partition)
        return result

    def _collect(self, positions: Mapping[int, int], max_rows: int) -> FetchResult:
        """Read up to ``max_rows`` rows; ship the envelopes packed as one (see ``FetchResult.data``)."""
        result = FetchResult()
        payloads: list[Envelope] = []
        budget = max_rows
        for partition, offset in positions.items():
            plog = self._log(partition)
            if budget <= 0 and result.messages:
                break
            try:
                entries = plog.read(offset, max(budget, 1))
            except OffsetOutOfRange:
                result.out_of_range[partition] = (plog.start_offset, plog.end_offset)
                continue
            visible = self._visible_end(partition)
            if entries and entries[-1].offset >= visible:
                entries = [e for e in entries if e.offset < visible]
            for e in entries:
                result.messages.append(Fetched(partition, e.offset, e.rows, e.payload.num_rejects, e.producer, e.seq))
                payloads.append(e.payload)
                budget -= e.rows
            self._stats[partition].fetched_rows += sum(e.rows for e in entries)
        result.data = pack_envelopes(payloads)
        return result

    def _visible_end(self, partition: int) -> int:
        """Where consumers stop reading: the log's end (a replicated broker: its high-water mark)."""
        return self._logs[partition].end_offset

    async def commit(self, group: str, member: str, generation: int, offsets: Mapping[int, int]) -> None:
        """Record offsets a consumer committed to the database; releases data every group has passed."""
        for partition in offsets:
            self._check(group, member, generation, partition)
        committed = self._committed.setdefault(group, {})
        for partition, offset in offsets.items():
            plog = self._log(partition)
            if offset > plog.end_offset:
                raise QueueError(
                    f"partition {partition}: commit offset {offset} beyond end {plog.end_offset}", partition=partition
                )
            committed[partition] = max(committed.get(partition, 0), offset)
            floor = min(c.get(partition, 0) for c in self._committed.values())
            plog.trim(floor)
            self._persist_committed(partition)
            self._retain(partition, floor)
        async with self._space:
            self._space.notify_all()

    # --- observability ------------------------------------------------------------------------------

    def positions(self) -> tuple[str, dict[int, tuple[int, int]]]:
        """This incarnation and each hosted partition's ``(start, end)`` offsets (below start: released)."""
        return self.incarnation, {p: (plog.start_offset, plog.end_offset) for p, plog in self._logs.items()}

    def stats(self) -> BrokerStats:
        """Per-partition offsets, lag per group, bytes held and counters."""
        parts: dict[int, PartitionStats] = {}
        for p, plog in self._logs.items():
            s = self._stats[p]
            lag: dict[str, GroupLag] = {}
            for group, committed in self._committed.items():
                c = committed.get(p, plog.start_offset)
                lag[group] = {
                    "committed": c,
                    "lag_batches": max(0, plog.end_offset - c),
                    "lag_rows": plog.rows_between(c, plog.end_offset),
                }
            parts[p] = {
                "disk_bytes": self._disks[p].used if p in self._disks else 0,
                "disk_full": self._disks[p].full if p in self._disks else None,
                "start_offset": plog.start_offset,
                "end_offset": plog.end_offset,
                "bytes_held": plog.bytes_held,
                "rows_held": plog.rows_held,
                "rows_appended": plog.rows_appended,
                "rows_fetched": s.fetched_rows,
                "appends": s.appends,
                "duplicates": s.duplicates,
                "blocked_s": s.blocked_s,
                "groups": lag,
            }
        return {
            "broker": self.broker_id,
            "partitions": parts,
            "budget_bytes": self._budget,
            "groups": {g: self.group_state(g) for g in self._groups},
            "uptime_s": time.time() - self.started_at,
        }
