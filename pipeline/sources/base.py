"""The source contract: a reader of passes that yields Arrow batches of samples and their rejects."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import pyarrow as pa

__all__ = ["Shard", "Source", "SourceBatch"]


@dataclass(frozen=True, slots=True)
class Shard:
    """This streamer's share of a source: GPUs whose shard hash mod ``count`` is ``index``."""

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.index < self.count:
            raise ValueError(f"shard index {self.index} outside 0..{self.count - 1}")


@dataclass(frozen=True, slots=True)
class SourceBatch:
    """Samples (``ts`` not yet stamped) and rejects read from one stretch of a source.

    ``position`` is where reading resumes after this batch, within the current pass.
    """

    samples: pa.RecordBatch
    rejects: pa.RecordBatch | None
    position: int
    # Optional fast paths a source may offer: the batch already in the queue's wire form, and a
    # promise that no (GPU, metric) occurs twice in it (the streamer then skips that check).
    wire: pa.RecordBatch | None = None
    unique_series: bool = False


@runtime_checkable
class Source(Protocol):
    """A source of samples. One ``read_pass`` call reads the source once."""

    @property
    def name(self) -> str:
        """Where the data comes from (a path or URL), recorded with rejects."""
        ...

    @property
    def replayable(self) -> bool:
        """True when reading a pass again from a position yields the same rows (a file); False for live reads.

        A streamer that restarts re-sends the flush it had in flight: from a replayable source it
        reads exactly that flush's rows again; from a live one it reads anew under a new number.
        """
        ...

    def open(self) -> None:
        """Check the source can be read; raise ``SourceError`` naming the problem if not."""
        ...

    def read_pass(self, shard: Shard, start: int = 0) -> Iterator[SourceBatch]:
        """Yield the shard's batches of one pass, starting at ``start`` (a position from a batch)."""
        ...

    def close(self) -> None:
        """Release what ``open`` acquired."""
        ...
