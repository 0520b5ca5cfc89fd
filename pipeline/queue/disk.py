"""A broker partition's disk: its segments, its state file, its budget and whether the volume is full.

The broker keeps one ``PartitionDisk`` per hosted partition when it has a queue directory. Recovery
reads back what is not committed; retention frees committed segments by age, by size and to fit the
disk budget; a full volume (ENOSPC) makes ``write`` return False instead of raising, so the append
waits (the broker retries) and ``full`` says why.
"""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.queue.log import PartitionLog
from pipeline.queue.segments import SegmentStore, StateFile

__all__ = ["PartitionDisk", "Persistence"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Persistence:
    """Where and how a broker keeps its partitions on disk."""

    directory: Path
    segment_bytes: int = 1 << 30
    retention_s: float = 7 * 24 * 3600.0
    disk_budget_bytes: int | None = None  # per partition; producers wait when it is full
    fsync: bool = True
    retention_bytes: int | None = None  # per partition: committed data kept at most (besides retention_s)
    enospc_retry_s: float = 1.0  # how often an append waiting on a full volume tries again


class PartitionDisk:
    """Segments and state of one partition under a queue directory."""

    def __init__(self, persistence: Persistence, partition: int) -> None:
        self.persistence = persistence
        self.partition = partition
        self.store = SegmentStore(
            persistence.directory / f"partition-{partition}", persistence.segment_bytes, persistence.fsync
        )
        self._state = StateFile(self.store.directory / "state.json")
        self.used = 0  # bytes of all segments
        self.reserve = 0  # room wanted by an append that waits for the budget
        self.full: str | None = None  # "budget" or "enospc" while appends wait for disk

    def recover(
        self, start_offset: int, now: Callable[[], float]
    ) -> tuple[PartitionLog, dict[str, int], dict[str, int]]:
        """The log of uncommitted messages, the committed offsets per group, the newest seq per producer."""
        saved = self._state.load()
        committed = {str(g): int(o) for g, o in saved.get("committed", {}).items()}
        keep_from = min(committed.values()) if committed else 0
        # Sequences of committed frames are in the state file, so committed history is not re-read.
        last_seq = {str(k): int(v) for k, v in saved.get("last_seq", {}).items()}
        frames, next_offset, seen = self.store.recover(keep_from, last_seq_known="last_seq" in saved)
        for producer, seq in seen.items():
            last_seq[producer] = max(seq, last_seq.get(producer, -1))
        p = self.partition
        if next_offset is None:
            plog = PartitionLog(p, start_offset)
        else:
            plog = PartitionLog(p, frames[0].offset if frames else next_offset)
            for f in frames:
                h = f.header
                plog.append(f.envelope, f.envelope.num_rows, f.nbytes, now(), h.get("producer"), h.get("seq"))
        self.used = self.store.disk_bytes()
        if frames or self.store.truncated_bytes or self.store.skipped_bytes:
            log.info(
                "partition %d: recovered %d uncommitted message(s), offsets [%d, %d); "
                "truncated %d torn byte(s), skipped %d damaged byte(s)",
                p,
                len(frames),
                plog.start_offset,
                plog.end_offset,
                self.store.truncated_bytes,
                self.store.skipped_bytes,
            )
        return plog, committed, last_seq

    def save(self, committed: dict[str, int], last_seq: dict[str, int]) -> None:
        """Store committed offsets with the sequences that cover every frame below them."""
        # Losing it only means re-reading more: both are saved together, in one file.
        self._state.save({"committed": committed, "last_seq": last_seq}, fsync=False)

    def retain(self, floor: int, end_offset: int) -> None:
        """Apply retention below the committed ``floor`` (sealing the active segment when all is committed)."""
        p = self.persistence
        budget = None if p.disk_budget_bytes is None else p.disk_budget_bytes - self.reserve
        freed = self.store.apply_retention(
            floor, p.retention_s, budget, retention_bytes=p.retention_bytes, end_offset=end_offset
        )
        if freed:
            self.used = self.store.disk_bytes()

    def over_budget(self, nbytes: int) -> bool:
        """Whether writing ``nbytes`` more would pass the disk budget (an empty partition always may)."""
        budget = self.persistence.disk_budget_bytes
        return budget is not None and self.used > 0 and self.used + nbytes > budget

    def write(
        self, offset: int, header: dict[str, Any], payload: Any, encoded: tuple[bytes, bytes] | None = None
    ) -> bool:
        """Append a message (fsynced; ``encoded``: its streams as shipped); False, nothing written, while full."""
        try:
            self.used += self.store.append(offset, {**header, "at": time.time()}, payload, encoded)
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            if self.full != "enospc":
                log.error(
                    "partition %d: %s is full (%s); appends wait for space", self.partition, self.store.directory, exc
                )
            self.full = "enospc"
            return False
        if self.full == "enospc":
            log.info("partition %d: space is back; appends resume", self.partition)
            self.full = None
        return True

    def close(self) -> None:
        """Close the active segment."""
        self.store.close()
