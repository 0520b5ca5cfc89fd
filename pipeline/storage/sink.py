"""The sink contract: where collectors write, and what a write is and returns.

``TelemetryWriter`` (``pipeline.storage.writer``) is the real sink; ``tests/support.MemorySink``
is the test double. Both pass the contract suite in ``tests/unit/storage/test_sink_contract.py``
(the writer against a real PostgreSQL), so the double cannot drift from the database's behaviour.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from pipeline.records import Envelope

__all__ = ["PartitionBatch", "Sink", "WriteResult"]


@dataclass(frozen=True, slots=True)
class PartitionBatch:
    """Consecutive messages ``[first_offset, next_offset)`` of one partition, written together."""

    partition: int
    first_offset: int
    next_offset: int
    rows: int
    rejects: int = 0
    # newest sequence number per producer among these messages (stored with the rows)
    sequences: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True, slots=True)
class WriteResult:
    """What one committed transaction stored."""

    rows: int
    rejects: int
    offsets: dict[int, int]  # partition -> next offset now stored
    events: int = 0  # GPU health events (XID errors) recorded with the rows


class Sink(Protocol):
    """Where collectors write: claims partitions, writes batches with offsets atomically."""

    def open(self) -> None:
        """Connect."""
        ...

    def close(self) -> None:
        """Disconnect."""
        ...

    def claim(self, group: str, generation: int, partitions: Sequence[int]) -> dict[int, int]:
        """Own ``partitions`` in ``generation``; returns their stored next offsets."""
        ...

    def write(
        self, group: str, generation: int, batches: Sequence[PartitionBatch], data: Envelope | None
    ) -> WriteResult:
        """Store ``data`` (the batches' rows and rejects) and advance offsets, all or nothing."""
        ...

    def reset(self, group: str, generation: int, partition: int, offset: int) -> None:
        """Move a stored offset (the broker no longer holds the stored position)."""
        ...
