"""A broker whose partitions are replicated: it leads some, follows others (``replication`` has the protocol).

As a leader, an append is written locally (fsynced with a queue dir), shipped to the followers by
one sender task per follower broker, and acknowledged once the partition's high-water mark passes
it; fetches read below the high-water mark only. As a follower it takes shipments (fencing, cutting
a diverging tail, rebuilding from the leader's start) and mirrors trims and committed offsets. The
supervisor drives elections through ``vote``, ``lead`` and ``follow``; ``replication_state`` is
what it watches. Calls for a partition this broker does not lead raise ``NotLeader``.

Consumer groups are coordinated by the leader of partition 0, wherever it is: a broker that stops
leading it forgets its coordinators (members rejoin the new one, whose generations start above).

Peers are reached through ``Peers`` (Ray actors in ``pipeline.runtime.replicas``, plain objects
in the unit tests); the epoch history and promise of each replica are stored beside its segments.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from pipeline.errors import BrokerRestarted, NotLeader, QueueError
from pipeline.queue.api import AppendResult, BrokerStats, FetchResult, ReplicaStatus
from pipeline.queue.broker import Broker
from pipeline.queue.disk import Persistence
from pipeline.queue.group import Assignment
from pipeline.queue.log import PartitionLog
from pipeline.queue.replication import PartitionReplica, Reply, Vote
from pipeline.queue.segments import StateFile
from pipeline.queue.senders import Peers, Senders
from pipeline.queue.shipment import Mirrored, Shipment, unpack
from pipeline.records import Envelope, empty_wire

__all__ = ["Peers", "ReplicatedBroker"]

log = logging.getLogger(__name__)
COORDINATOR = 0  # the partition whose leader coordinates consumer groups


class _DiskFull(QueueError):
    """A follower's volume is full: it takes no more entries until space is back."""


class _Log:
    """``ReplicaLog`` over one partition of the broker (its memory log and its segments)."""

    def __init__(self, broker: ReplicatedBroker, partition: int) -> None:
        self._broker = broker
        self._partition = partition

    @property
    def start_offset(self) -> int:
        return self._broker.log_of(self._partition).start_offset

    @property
    def end_offset(self) -> int:
        return self._broker.log_of(self._partition).end_offset

    def append_entry(self, entry: Any) -> None:
        self._broker.mirror(self._partition, entry)

    def truncate(self, end: int) -> None:
        self._broker.cut(self._partition, end)

    def reset(self, start: int) -> None:
        self._broker.restart_log(self._partition, start)


class ReplicatedBroker(Broker):
    """Hosts replicas of some partitions (``replicas``: partition -> its replica brokers, leader first)."""

    def __init__(
        self,
        broker_id: int,
        partitions: int,
        replicas: Mapping[int, Sequence[int]],
        budget_bytes: int,
        min_insync: int,
        peers: Peers,
        *,
        session_timeout_s: float = 10.0,
        start_offsets: Mapping[int, int] | None = None,
        clock: Callable[[], float] = time.monotonic,
        persistence: Persistence | None = None,
        start_sequences: Mapping[tuple[str, int], int] | None = None,
        wall_clock: Callable[[], float] = time.time,
        lag_s: float = 10.0,
        sequences: Callable[[Sequence[int]], Mapping[tuple[str, int], int]] | None = None,
        ship_bytes: int = 8 << 20,
        heartbeat_s: float = 0.5,
        on_fatal: Callable[[BaseException], None] | None = None,
    ) -> None:
        super().__init__(
            broker_id,
            partitions,
            replicas.keys(),
            budget_bytes,
            session_timeout_s,
            start_offsets,
            clock,
            persistence,
            start_sequences,
            wall_clock,
        )
        self._sequences = sequences
        self._files: dict[int, StateFile] = {}
        self._saved: dict[int, tuple[Any, ...]] = {}
        self.replicas: dict[int, PartitionReplica] = {}
        for p, members in replicas.items():
            saved: dict[str, Any] = {}
            if p in self._disks:
                self._files[p] = StateFile(self._disks[p].store.directory / "replica.json")
                saved = self._files[p].load()
            durable = bool(saved) and persistence is not None and persistence.fsync
            self.replicas[p] = PartitionReplica(
                p,
                broker_id,
                members,
                min_insync,
                _Log(self, p),
                history=[tuple(m) for m in saved.get("history", [])],  # type: ignore[misc]
                promised=int(saved.get("promised", 0)),
                lineage=saved.get("lineage"),
                fresh=not durable or bool(saved.get("fresh", True)),
                lag_s=lag_s,
            )
            self._saved_state(p)
        self._seq_at: dict[tuple[str, int], tuple[int, int]] = {}  # (producer, partition) -> (seq, offset)
        self._hw = asyncio.Condition()
        self.senders = Senders(self, peers, ship_bytes, heartbeat_s, on_fatal)

    # --- the log, as the state machine changes it ------------------------------------------------------

    def clock(self) -> float:
        """The broker's monotonic clock."""
        return self._clock()

    def log_of(self, partition: int) -> PartitionLog:
        """The memory log of a hosted partition."""
        return self._logs[partition]

    def mirror(self, partition: int, entry: Mirrored) -> None:
        """Append an entry a leader shipped (or a new leader's marker): disk first, then memory."""
        plog = self._logs[partition]
        offset = plog.end_offset
        if not Broker._write(
            self, partition, offset, entry.producer, entry.seq, entry.rows, entry.nbytes, entry.payload, entry.encoded
        ):
            raise _DiskFull(f"partition {partition}: the queue volume is full", partition=partition)
        plog.append(entry.payload, entry.rows, entry.nbytes, self._clock(), entry.producer, entry.seq)
        if entry.producer is not None and entry.seq is not None:
            key = (entry.producer, partition)
            if entry.seq > self._last_seq.get(key, -1):
                self._last_seq[key] = entry.seq
                self._seq_at[key] = (entry.seq, offset)

    def cut(self, partition: int, end: int) -> None:
        """Drop the entries at ``end`` and above, in memory and on disk, and the sequences they carried."""
        dropped = self._logs[partition].truncate_tail(end)
        first: dict[str, int] = {}
        for e in dropped:
            if e.producer is not None and e.seq is not None:
                first[e.producer] = min(e.seq, first.get(e.producer, e.seq))
        for producer, seq in first.items():
            # The producer sends one flush at a time, so every earlier sequence is below the cut.
            self._last_seq[(producer, partition)] = seq - 1
            self._seq_at[(producer, partition)] = (seq - 1, end - 1)
        disk = self._disks.get(partition)
        if disk is not None:
            disk.store.truncate(end)
            disk.used = disk.store.disk_bytes()
        log.warning(
            "partition %d: dropped %d entries at offsets >= %d (not on the leader)", partition, len(dropped), end
        )

    def restart_log(self, partition: int, start: int) -> None:
        """Drop everything: the log starts again at ``start`` (a replica rebuilt from its leader)."""
        self._logs[partition] = PartitionLog(partition, start)
        for key in [k for k in self._last_seq if k[1] == partition]:
            del self._last_seq[key]
            self._seq_at.pop(key, None)
        disk = self._disks.get(partition)
        if disk is not None:
            disk.store.truncate(0)
            disk.used = 0
        log.info("partition %d: rebuilding from the leader, from offset %d", partition, start)

    def _saved_state(self, partition: int) -> None:
        """Store the replica's epoch history, promise and lineage when they changed (before it answers)."""
        file = self._files.get(partition)
        if file is None:
            return
        rep = self.replicas[partition]
        state = (tuple(rep.history.marks), rep.promised, rep.lineage, rep.fresh)
        if self._saved.get(partition) != state:
            file.save(
                {"history": rep.history.marks, "promised": rep.promised, "lineage": rep.lineage, "fresh": rep.fresh}
            )
            self._saved[partition] = state

    def _write(
        self, partition: int, offset: int, producer: str | None, seq: int | None, rows: int, nbytes: int, payload: Any,
        encoded: tuple[bytes, bytes] | None = None,
    ) -> bool:
        self._leading(partition)  # an append that waited for budget may find it led elsewhere since
        return super()._write(partition, offset, producer, seq, rows, nbytes, payload, encoded)

    def _visible_end(self, partition: int) -> int:
        return self.replicas[partition].high_water

    # --- leading -----------------------------------------------------------------------------------------

    def _leading(self, partition: int) -> PartitionReplica:
        rep = self.replicas.get(partition)
        if rep is None:
            raise NotLeader(f"broker {self.broker_id} holds no replica of partition {partition}", partition=partition)
        if not rep.is_leader:
            raise NotLeader(
                f"broker {self.broker_id} does not lead partition {partition} (epoch {rep.epoch}, leader {rep.leader})",
                partition=partition,
                leader=rep.leader,
                epoch=rep.epoch,
            )
        return rep

    async def append_batch(  # type: ignore[override]
        self,
        producer: str | None,
        seq: int | None,
        envelope: Envelope,
        ranges: list[tuple[int, int, int]],
        expect: Mapping[int, str] | None = None,
    ) -> list[AppendResult]:
        """Append locally, ship, and return once ``min_insync`` replicas hold every range.

        ``expect`` maps partitions to the lineage the producer last saw: a partition whose log began
        again (an unclean election) raises ``BrokerRestarted`` so that it re-sends what it retains.
        """
        leading = {p: self._leading(p) for p, _, _ in ranges}
        for p, lineage in (expect or {}).items():
            rep = leading.get(p)
            if rep is not None and lineage and lineage != rep.lineage:
                raise BrokerRestarted(
                    f"partition {p}: its log began again (lineage {rep.lineage}, producer expected {lineage})",
                    broker=self.broker_id,
                    incarnation=rep.lineage,
                    partition=p,
                )
        epochs = {p: rep.epoch for p, rep in leading.items()}
        results = await super().append_batch(producer, seq, envelope, ranges)
        moved = False
        waits = []
        for r in results:
            rep = self.replicas[r.partition]
            if r.duplicate:
                offset = self._seq_at.get((producer or "", r.partition), (0, rep.log.start_offset - 1))[1]
            else:
                offset = r.offset
                if producer is not None and seq is not None:
                    self._seq_at[(producer, r.partition)] = (seq, offset)
            moved = rep.appended() or moved
            waits.append((r.partition, offset))
        self.senders.wake()
        if moved:
            await self._moved()
        for partition, offset in waits:
            await self._held(partition, offset, epochs[partition])
        return [dataclasses.replace(r, incarnation=self.replicas[r.partition].lineage) for r in results]

    async def _held(self, partition: int, offset: int, epoch: int) -> None:
        """Wait until the high-water mark passes ``offset``; ``NotLeader`` if leadership changed meanwhile."""
        async with self._hw:
            while True:
                rep = self.replicas[partition]
                if not rep.is_leader or rep.epoch != epoch:
                    raise NotLeader(
                        f"partition {partition}: leadership moved (epoch {rep.epoch}) before offset {offset} "
                        "was replicated; send it to the new leader",
                        partition=partition,
                        leader=rep.leader,
                        epoch=rep.epoch,
                    )
                if rep.high_water > offset:
                    return
                await self._hw.wait()

    async def moved(self) -> None:
        """The high-water mark moved (a follower's answer): wake acks and fetches."""
        await self._moved()

    async def _moved(self) -> None:
        """The high-water mark moved or a leader stepped down: wake acks and fetches."""
        async with self._hw:
            self._hw.notify_all()
        async with self._data:
            self._data.notify_all()

    async def fetch(
        self,
        group: str,
        member: str,
        generation: int,
        positions: Mapping[int, int],
        max_rows: int,
        timeout_s: float = 0.0,
    ) -> FetchResult:
        """Below the high-water mark of partitions led here."""
        for p in positions:
            self._leading(p)
        return await super().fetch(group, member, generation, positions, max_rows, timeout_s)

    async def commit(self, group: str, member: str, generation: int, offsets: Mapping[int, int]) -> None:
        """Record committed offsets (leaders only); followers learn them with the next shipment."""
        for p in offsets:
            self._leading(p)
        await super().commit(group, member, generation, offsets)
        self.senders.committed()

    def join(self, group: str, member: str) -> Assignment:
        """Join (the leader of partition 0 coordinates groups)."""
        self._leading(COORDINATOR)
        return super().join(group, member)

    def heartbeat(self, group: str, member: str, generation: int) -> Assignment:
        """Heartbeat (at the leader of partition 0)."""
        self._leading(COORDINATOR)
        return super().heartbeat(group, member, generation)

    def leave(self, group: str, member: str) -> None:
        """Leave (at the leader of partition 0)."""
        self._leading(COORDINATOR)
        super().leave(group, member)

    # --- elections (the supervisor calls these) ----------------------------------------------------------

    async def vote(self, epochs: Mapping[int, int]) -> dict[int, Vote | None]:
        """Promise each partition's new epoch; a leader that promises stops leading."""
        out: dict[int, Vote | None] = {}
        for p, epoch in epochs.items():
            rep = self.replicas.get(p)
            out[p] = None if rep is None else rep.vote(epoch)
            if rep is not None:
                self._saved_state(p)
                self._lost_coordination(p)
        await self._moved()
        return out

    async def lead(self, orders: Mapping[int, tuple[int, str | None]]) -> dict[int, bool]:
        """Lead each partition in its epoch (with a new lineage after an unclean election)."""
        out: dict[int, bool] = {}
        for p, (epoch, lineage) in orders.items():
            rep = self.replicas.get(p)
            marker = Mirrored(Envelope(empty_wire()), 0, 1)
            try:
                out[p] = rep is not None and rep.lead(epoch, marker, lineage)
            except _DiskFull as exc:
                log.error("partition %d: cannot lead epoch %d: %s", p, epoch, exc)
                out[p] = False
            self._saved_state(p)
        led = [p for p, ok in out.items() if ok]
        if led:
            await self._refresh_sequences(led)
            if COORDINATOR in led:
                self._groups.clear()  # coordination starts afresh here: members rejoin
            log.info("broker %d leads partitions %s", self.broker_id, {p: orders[p][0] for p in led})
        self.senders.start()
        self.senders.wake()
        await self._moved()
        return out

    async def follow(self, orders: Mapping[int, tuple[int, int]]) -> dict[int, bool]:
        """Follow each partition's leader in its epoch (a restarted replica is told so)."""
        out: dict[int, bool] = {}
        for p, (epoch, leader) in orders.items():
            rep = self.replicas.get(p)
            out[p] = rep is not None and rep.follow(epoch, leader)
            if rep is not None:
                self._saved_state(p)
                self._lost_coordination(p)
        await self._moved()
        return out

    def committed_of(self, partition: int) -> dict[str, int]:
        """Each group's committed offset in ``partition``."""
        return {g: c[partition] for g, c in self._committed.items() if partition in c}

    async def fenced(self, partition: int) -> None:
        """A follower refused this leader: another one was elected; stop acknowledging."""
        self._saved_state(partition)
        self._lost_coordination(partition)
        await self._moved()

    def _lost_coordination(self, partition: int) -> None:
        if partition == COORDINATOR and not self.replicas[partition].is_leader:
            self._groups.clear()

    async def _refresh_sequences(self, partitions: list[int]) -> None:
        """A new leader deduplicates on every stored sequence: the database's, then its own entries'."""
        stored: Mapping[tuple[str, int], int] = {}
        if self._sequences is not None:
            try:
                stored = await asyncio.to_thread(self._sequences, partitions)
            except Exception as exc:  # the database away must not stop an election; dedup stays as it was
                log.warning("partitions %s: stored sequences unavailable (%s)", partitions, exc)
        for (producer, p), seq in stored.items():
            if p in partitions and seq > self._last_seq.get((producer, p), -1):
                self._last_seq[(producer, p)] = seq
                self._seq_at[(producer, p)] = (seq, self._logs[p].start_offset - 1)

    def leadership(self) -> dict[int, tuple[int, str]]:
        """Partitions led here: their epoch and lineage (producers and consumers route by it)."""
        return {p: (r.epoch, r.lineage) for p, r in self.replicas.items() if r.is_leader}

    def probe(self) -> dict[str, Any]:
        """What the supervisor watches: the incarnation and every replica's state (cheap: no stats)."""
        return {"incarnation": self.incarnation, "replicas": self.replication_state()}

    def replication_state(self) -> dict[int, ReplicaStatus]:
        """Every replica held here: role, epochs, offsets; leaders add the in-sync set and lags."""
        now = self._clock()
        out: dict[int, ReplicaStatus] = {}
        for p, r in self.replicas.items():
            out[p] = {
                "role": r.role,
                "epoch": r.epoch,
                "promised": r.promised,
                "leader": r.leader,
                "replicas": list(r.replicas),
                "in_sync": list(r.in_sync(now)),
                "lag": r.lag(),
                "start_offset": r.log.start_offset,
                "end_offset": r.log.end_offset,
                "high_water": r.high_water,
                "lineage": r.lineage,
                "fresh": r.fresh,
                "truncated": r.truncated,
            }
        return out

    # --- following -----------------------------------------------------------------------------------------

    async def replicate(self, shipment: Shipment) -> dict[int, Reply]:
        """Take a leader's shipment; each reply is given only once what it reports is stored."""
        replies: dict[int, Reply] = {}
        stepped_down = False
        for (p, request, _), entries in zip(shipment.requests, unpack(shipment), strict=True):
            rep = self.replicas.get(p)
            if rep is None:
                replies[p] = Reply(0, 0, "unattached")
                continue
            was_leader = rep.is_leader
            try:
                replies[p] = rep.accept(request, entries)
            except _DiskFull:
                replies[p] = Reply(rep.log.end_offset, rep.promised)
            stepped_down = stepped_down or (was_leader and not rep.is_leader)
            self._saved_state(p)
            self._lost_coordination(p)
            if replies[p].refused:
                continue
            self._mirror_commits(p, request.start_offset, shipment.committed.get(p, {}))
        if stepped_down:
            await self._moved()
        return replies

    def _mirror_commits(self, partition: int, leader_start: int, committed: Mapping[str, int]) -> None:
        plog = self._logs[partition]
        for group, offset in committed.items():
            mine = self._committed.setdefault(group, {})
            mine[partition] = max(mine.get(partition, 0), min(offset, plog.end_offset))
        floor = min(leader_start, plog.end_offset)
        if floor > plog.start_offset:
            plog.trim(floor)
            self._retain(partition, floor)
        if committed:
            self._persist_committed(partition)

    # --- observability -----------------------------------------------------------------------------------

    def positions(self) -> tuple[str, dict[int, tuple[int, int]]]:
        """This incarnation and the ``(start, end)`` of each partition led here."""
        incarnation, positions = super().positions()
        return incarnation, {p: v for p, v in positions.items() if self.replicas[p].is_leader}

    def stats(self) -> BrokerStats:
        """Stats of the partitions led here, plus every replica's state under ``replication``."""
        out = super().stats()
        out["partitions"] = {p: s for p, s in out["partitions"].items() if self.replicas[p].is_leader}
        out["replication"] = self.replication_state()
        return out

    def hosted(self) -> Iterable[int]:
        """Every partition with a replica here."""
        return self.replicas.keys()
