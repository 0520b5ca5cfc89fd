"""What producers and consumers see of the queue, and an in-process implementation.

``Producer`` and ``Consumer`` are the seams the streamer and collector are written against.
``LocalQueue`` implements both over plain ``Broker`` objects on a private event loop: it is what
unit tests (and single-process tools) use; ``pipeline.queue.ray_glue`` implements them over Broker
actors.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import pyarrow as pa

from pipeline.queue.broker import AppendResult, Broker, FetchResult
from pipeline.queue.group import Assignment
from pipeline.records import Envelope, pack_envelopes

__all__ = ["Consumer", "LocalQueue", "Producer", "broker_of", "merge_results", "split_for_brokers"]


def broker_of(partition: int, brokers: int) -> int:
    """Which broker hosts a partition (round robin)."""
    return partition % brokers


def split_for_brokers(
    envelope: Envelope, ranges: Sequence[tuple[int, int, int]], brokers: int
) -> dict[int, tuple[Envelope, list[tuple[int, int, int]]]]:
    """Per broker: the rows of its partitions (one batch) and their ranges within it.

    With one broker this is the envelope itself. Rejects travel with the first range.
    """
    if brokers == 1:
        return {0: (envelope, list(ranges))} if ranges else {}
    out: dict[int, tuple[Envelope, list[tuple[int, int, int]]]] = {}
    by_broker: dict[int, list[tuple[int, int, int]]] = {}
    for r in ranges:
        by_broker.setdefault(broker_of(r[0], brokers), []).append(r)
    first_broker = broker_of(ranges[0][0], brokers) if ranges else -1
    for b, mine in by_broker.items():
        indices = np.concatenate([np.arange(first, first + rows) for _, first, rows in mine])
        samples = envelope.samples.take(pa.array(indices))
        rebased, at = [], 0
        for partition, _, rows in mine:
            rebased.append((partition, at, rows))
            at += rows
        out[b] = (Envelope(samples, envelope.rejects if b == first_broker else None), rebased)
    return out


def merge_results(parts: Sequence[FetchResult]) -> FetchResult:
    """One fetch result from several brokers' (their packed data concatenated in message order)."""
    if len(parts) == 1:
        return parts[0]
    merged = FetchResult()
    datas = []
    for part in parts:
        merged.messages.extend(part.messages)
        merged.out_of_range.update(part.out_of_range)
        if part.data is not None:
            datas.append(part.data)
    merged.data = pack_envelopes(datas)
    return merged


class Producer(Protocol):
    """Publishes batches; remembers a resume checkpoint per producer."""

    def publish(
        self, producer: str, seq: int, envelope: Envelope, ranges: Sequence[tuple[int, int, int]]
    ) -> list[AppendResult]:
        """Append a batch ordered by partition (``ranges``: partition, first row, rows); returns when acked."""
        ...

    def checkpoint(self, producer: str, state: Mapping[str, Any]) -> None:
        """Store the producer's resume state."""
        ...

    def producer_state(self, producer: str) -> dict[str, Any] | None:
        """The producer's last checkpoint."""
        ...


class Consumer(Protocol):
    """Group membership, fetch and commit."""

    def join(self, group: str, member: str) -> Assignment:
        """Join; returns the first assignment."""
        ...

    def heartbeat(self, group: str, member: str, generation: int) -> Assignment:
        """Stay alive; returns the current assignment."""
        ...

    def leave(self, group: str, member: str) -> None:
        """Leave gracefully."""
        ...

    def fetch(
        self, group: str, member: str, generation: int, positions: Mapping[int, int], max_rows: int, timeout_s: float
    ) -> FetchResult:
        """Messages from each partition's position (payloads are ``Envelope``)."""
        ...

    def commit(self, group: str, member: str, generation: int, offsets: Mapping[int, int]) -> None:
        """Tell the brokers what was committed to the database."""
        ...


class LocalQueue:
    """Producer and Consumer over in-process brokers (no Ray)."""

    def __init__(
        self,
        partitions: int,
        brokers: int = 1,
        budget_bytes: int = 64 << 20,
        session_timeout_s: float = 10.0,
        clock: Any = None,
    ) -> None:
        self.partitions = partitions
        self._loop = asyncio.new_event_loop()
        extra = {} if clock is None else {"clock": clock}
        self.brokers = [
            Broker(
                b,
                partitions,
                [p for p in range(partitions) if broker_of(p, brokers) == b],
                budget_bytes,
                session_timeout_s,
                **extra,
            )
            for b in range(brokers)
        ]

    def _run(self, coro: Any) -> Any:
        return self._loop.run_until_complete(coro)

    def close(self) -> None:
        """Close the private event loop."""
        self._loop.close()

    def _broker(self, partition: int) -> Broker:
        return self.brokers[broker_of(partition, len(self.brokers))]

    def publish(
        self, producer: str, seq: int, envelope: Envelope, ranges: Sequence[tuple[int, int, int]]
    ) -> list[AppendResult]:
        """One ``append_batch`` per broker holding some of the ranges."""
        results: list[AppendResult] = []
        for b, (part, part_ranges) in split_for_brokers(envelope, ranges, len(self.brokers)).items():
            results += self._run(self.brokers[b].append_batch(producer, seq, part, part_ranges))
        return results

    def checkpoint(self, producer: str, state: Mapping[str, Any]) -> None:
        """Checkpoints live on broker 0."""
        self.brokers[0].checkpoint(producer, state)

    def producer_state(self, producer: str) -> dict[str, Any] | None:
        """From broker 0."""
        return self.brokers[0].producer_state(producer)

    def join(self, group: str, member: str) -> Assignment:
        """Broker 0 coordinates groups."""
        return self.brokers[0].join(group, member)

    def heartbeat(self, group: str, member: str, generation: int) -> Assignment:
        """Via broker 0."""
        return self.brokers[0].heartbeat(group, member, generation)

    def leave(self, group: str, member: str) -> None:
        """Via broker 0."""
        self.brokers[0].leave(group, member)

    def fetch(
        self, group: str, member: str, generation: int, positions: Mapping[int, int], max_rows: int, timeout_s: float
    ) -> FetchResult:
        """Fetch from each broker holding a requested partition."""
        parts = []
        for b, broker in enumerate(self.brokers):
            mine = {p: o for p, o in positions.items() if broker_of(p, len(self.brokers)) == b}
            if mine:
                parts.append(
                    self._run(broker.fetch(group, member, generation, mine, max_rows, timeout_s if b == 0 else 0))
                )
        return merge_results(parts)

    def commit(self, group: str, member: str, generation: int, offsets: Mapping[int, int]) -> None:
        """Commit on each broker holding a committed partition."""
        for b, broker in enumerate(self.brokers):
            mine = {p: o for p, o in offsets.items() if broker_of(p, len(self.brokers)) == b}
            if mine:
                self._run(broker.commit(group, member, generation, mine))

    def stats(self) -> list[dict[str, Any]]:
        """Every broker's stats."""
        return [b.stats() for b in self.brokers]
