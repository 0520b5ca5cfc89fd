"""An append-only log of messages for one partition.

Offsets count messages (each message is a batch of rows). The log keeps messages from
``start_offset`` (the oldest retained) to ``end_offset`` (the next to be written); ``trim`` drops
the prefix every consumer group has committed; ``truncate_tail`` drops a replica's diverging tail.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

from pipeline.errors import OffsetOutOfRange

__all__ = ["Entry", "PartitionLog"]


@dataclass(frozen=True, slots=True)
class Entry:
    """One message in the log."""

    offset: int
    payload: Any
    rows: int
    nbytes: int
    appended_at: float
    producer: str | None = None
    seq: int | None = None


class PartitionLog:
    """The messages of one partition, with running row and byte totals."""

    def __init__(self, partition: int, start_offset: int = 0) -> None:
        self.partition = partition
        self._entries: deque[Entry] = deque()
        self._start = start_offset
        self._end = start_offset
        self.bytes_held = 0
        self.rows_held = 0
        self.rows_appended = 0
        # Cumulative rows before each retained entry lets lag in rows be computed in O(log n).
        self._rows_before: deque[int] = deque()

    @property
    def start_offset(self) -> int:
        """Oldest offset still held."""
        return self._start

    @property
    def end_offset(self) -> int:
        """Offset the next message will get."""
        return self._end

    def __len__(self) -> int:
        return len(self._entries)

    def append(
        self, payload: Any, rows: int, nbytes: int, now: float, producer: str | None = None, seq: int | None = None
    ) -> int:
        """Append a message; returns its offset."""
        offset = self._end
        self._rows_before.append(self.rows_appended)
        self._entries.append(Entry(offset, payload, rows, nbytes, now, producer, seq))
        self._end += 1
        self.bytes_held += nbytes
        self.rows_held += rows
        self.rows_appended += rows
        return offset

    def read(self, offset: int, max_rows: int, max_entries: int = 10_000) -> list[Entry]:
        """Messages from ``offset`` on, at least one if any, until ``max_rows`` would be exceeded."""
        if offset < self._start or offset > self._end:
            raise OffsetOutOfRange(
                f"partition {self.partition}: offset {offset} outside [{self._start}, {self._end}]",
                partition=self.partition,
                offset=offset,
                start=self._start,
                end=self._end,
            )
        out: list[Entry] = []
        rows = 0
        index = offset - self._start
        while index < len(self._entries) and len(out) < max_entries:
            entry = self._entries[index]
            if out and rows + entry.rows > max_rows:
                break
            out.append(entry)
            rows += entry.rows
            index += 1
        return out

    def rows_between(self, first: int, end: int) -> int:
        """Rows in messages ``[first, end)``, both clamped to the retained range."""
        first = max(first, self._start)
        end = min(end, self._end)
        if first >= end:
            return 0
        lo = self._rows_before[first - self._start]
        hi = self.rows_appended if end == self._end else self._rows_before[end - self._start]
        return hi - lo

    def trim(self, up_to: int) -> int:
        """Drop messages with offsets below ``up_to``; returns how many were dropped."""
        dropped = 0
        while self._entries and self._start < up_to:
            entry = self._entries.popleft()
            self._rows_before.popleft()
            self.bytes_held -= entry.nbytes
            self.rows_held -= entry.rows
            self._start += 1
            dropped += 1
        if not self._entries and up_to > self._start:
            self._start = min(up_to, self._end)
        return dropped

    def truncate_tail(self, end: int) -> list[Entry]:
        """Drop the messages at ``end`` and above (a replica's diverging tail); returns them."""
        dropped: list[Entry] = []
        while self._entries and self._end > max(end, self._start):
            entry = self._entries.pop()
            self._rows_before.pop()
            self.bytes_held -= entry.nbytes
            self.rows_held -= entry.rows
            self.rows_appended -= entry.rows
            self._end -= 1
            dropped.append(entry)
        return dropped

    def entries(self) -> list[Entry]:
        """All retained messages (for persistence and tests)."""
        return list(self._entries)
