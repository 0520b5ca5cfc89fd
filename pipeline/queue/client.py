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

from pipeline.queue.broker import AppendResult, Broker, FetchResult
from pipeline.queue.group import Assignment
from pipeline.records import Envelope

__all__ = ["Consumer", "LocalQueue", "Producer", "broker_of"]


def broker_of(partition: int, brokers: int) -> int:
    """Which broker hosts a partition (round robin)."""
    return partition % brokers


class Producer(Protocol):
    """Appends messages; remembers a resume checkpoint per producer."""

    def append_all(self, producer: str, messages: Sequence[tuple[int, int, Envelope]]) -> list[AppendResult]:
        """Append ``(partition, seq, envelope)`` messages; returns when every one is acknowledged."""
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

    def append_all(self, producer: str, messages: Sequence[tuple[int, int, Envelope]]) -> list[AppendResult]:
        """Append each message in order."""
        return [
            self._run(self._broker(p).append(p, env, env.num_rows, env.nbytes, producer, seq))
            for p, seq, env in messages
        ]

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
        merged = FetchResult()
        for b, broker in enumerate(self.brokers):
            mine = {p: o for p, o in positions.items() if broker_of(p, len(self.brokers)) == b}
            if mine:
                part = self._run(broker.fetch(group, member, generation, mine, max_rows, timeout_s if b == 0 else 0))
                merged.messages.extend(part.messages)
                merged.out_of_range.update(part.out_of_range)
        return merged

    def commit(self, group: str, member: str, generation: int, offsets: Mapping[int, int]) -> None:
        """Commit on each broker holding a committed partition."""
        for b, broker in enumerate(self.brokers):
            mine = {p: o for p, o in offsets.items() if broker_of(p, len(self.brokers)) == b}
            if mine:
                self._run(broker.commit(group, member, generation, mine))

    def stats(self) -> list[dict[str, Any]]:
        """Every broker's stats."""
        return [b.stats() for b in self.brokers]
