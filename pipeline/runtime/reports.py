"""What actors and the fleet report: small typed records that pickle across Ray and print as JSON."""

from __future__ import annotations

from typing import Any, TypedDict

__all__ = ["CollectorStatus", "FleetStats", "StreamerStatus", "Totals"]


class StreamerStatus(TypedDict, total=False):
    """One streamer actor's counters and state (``restarting``/``unavailable`` when it did not answer)."""

    id: str
    produced: int
    rejected: int
    messages: int
    duplicates: int
    passes: int
    done: bool
    running: bool
    blocked_s: float
    busy_s: float
    last_stamp_us: int
    error: str | None
    resumed: bool
    publish_retries: int
    resent: int
    pid: int
    targets: dict[str, Any]
    restarting: bool
    unavailable: str
    detail: str


class CollectorStatus(TypedDict, total=False):
    """One collector actor's counters, assignment and state."""

    id: str
    rows: int
    rejects: int
    transactions: int
    retries: int
    fenced: int
    generation: int
    partitions: list[int]
    positions: dict[int, int]
    last_commit_at: float
    last_error: str | None
    error: str | None
    running: bool
    commit_seconds: float
    pid: int
    restarting: bool
    unavailable: str
    detail: str


class Totals(TypedDict):
    """Rows produced and rejected by streamers that a re-split retired."""

    produced: int
    rejected: int


class FleetStats(TypedDict):
    """Every actor's status, what retired streamers produced, and the shard epoch."""

    streamers: list[StreamerStatus]
    collectors: list[CollectorStatus]
    retired: Totals
    epoch: int
    started_at: float  # wall time the deployment started (kept across supervisor restarts)
