"""The queue's contract: what producers and consumers see, and the typed records that cross it.

``Producer`` and ``Consumer`` are the seams the streamer and collector are written against; the
in-process ``LocalQueue`` (``pipeline.queue.local``) and the Ray transport
(``pipeline.runtime.transport``) both implement them and pass one contract suite
(``tests/unit/queue/test_contract.py``). Everything here pickles: it crosses Ray.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypedDict

from pipeline.queue.group import Assignment
from pipeline.records import Envelope

__all__ = [
    "AppendResult",
    "BrokerStats",
    "Consumer",
    "FetchResult",
    "Fetched",
    "GroupLag",
    "PartitionStats",
    "Producer",
    "ProducerCheckpoint",
    "ReplicaStatus",
    "lag_of",
]


@dataclass(frozen=True, slots=True)
class AppendResult:
    """Where an append landed; ``duplicate`` when the producer had already stored it."""

    partition: int
    offset: int
    duplicate: bool = False
    incarnation: str = ""  # the broker process that acknowledged it (a restart changes it)
    released: int = 0  # the partition's log start then: below it every group had committed


@dataclass(frozen=True, slots=True)
class Fetched:
    """One message handed to a consumer (its rows travel packed in ``FetchResult.data``)."""

    partition: int
    offset: int
    rows: int
    rejects: int = 0
    producer: str | None = None  # who published it, with which sequence number: committed with the rows
    seq: int | None = None


@dataclass(slots=True)
class FetchResult:
    """Messages, their rows, and partitions whose requested offset is outside the log.

    ``data`` holds the samples and rejects of every message in ``messages`` order as ONE envelope
    (dictionaries unified): one Arrow batch per fetch, never one per message. ``out_of_range``
    maps a partition to the ``(start, end)`` its log really holds.
    """

    messages: list[Fetched] = field(default_factory=list)
    out_of_range: dict[int, tuple[int, int]] = field(default_factory=dict)
    data: Envelope | None = None


# A streamer's resume state, stored before each flush is published and after the last: the pass and
# position of the next row to read (position None = the pass's start), the next sequence number, the
# last processing timestamp given (a resumed stream stamps above it), and "end": where the flush in
# flight ends ([pass, position], None when none is in flight), so that a restart re-sends exactly that
# flush under that number. Functional syntax: "pass" is a keyword.
ProducerCheckpoint = TypedDict(
    "ProducerCheckpoint",
    {
        "pass": int,
        "position": "int | None",
        "end": "list[int | None] | None",
        "seq": int,
        "stamp_us": int,
        "done": bool,
        "produced": int,
        "rejected": int,
    },
)


class GroupLag(TypedDict):
    """One consumer group's position in one partition."""

    committed: int
    lag_batches: int
    lag_rows: int


class PartitionStats(TypedDict):
    """One partition's offsets, holdings and counters, as its broker reports them."""

    disk_bytes: int
    disk_full: str | None  # why producers wait on the disk: "budget", "enospc", or None
    start_offset: int
    end_offset: int
    bytes_held: int
    rows_held: int
    rows_appended: int
    rows_fetched: int
    appends: int
    duplicates: int
    blocked_s: float
    groups: dict[str, GroupLag]


class ReplicaStatus(TypedDict):
    """One replica of one partition, as its broker reports it (leaders add the in-sync set and lags)."""

    role: str  # leader, follower, unattached (restarted, not told yet whom to follow)
    epoch: int
    promised: int
    leader: int | None
    replicas: list[int]
    in_sync: list[int]
    lag: dict[int, int]  # follower -> entries it lacks (leaders only)
    start_offset: int
    end_offset: int
    high_water: int
    lineage: str
    fresh: bool
    truncated: int


class BrokerStats(TypedDict, total=False):
    """What ``Broker.stats()`` returns (``pid`` is added by the actor).

    With replication, ``partitions`` holds the partitions this broker leads and ``replication``
    every replica it holds.
    """

    broker: int
    partitions: dict[int, PartitionStats]
    replication: dict[int, ReplicaStatus]
    budget_bytes: int
    groups: dict[str, Any]
    uptime_s: float
    pid: int


def lag_of(partition: PartitionStats, group: str) -> tuple[int, int]:
    """(rows, batches) that ``group`` has not committed in ``partition``; all held data if it never did."""
    lag = partition["groups"].get(group)
    if lag is None:
        return partition["rows_held"], partition["end_offset"] - partition["start_offset"]
    return lag["lag_rows"], lag["lag_batches"]


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

    def released_below(self) -> dict[int, int]:
        """Per partition, the offset below which every group has committed (the brokers released it)."""
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
        """Messages from each partition's position, waiting up to ``timeout_s`` when none is ready."""
        ...

    def commit(self, group: str, member: str, generation: int, offsets: Mapping[int, int]) -> None:
        """Tell the brokers what was committed to the database."""
        ...
