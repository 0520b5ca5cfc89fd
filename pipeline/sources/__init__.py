"""Readers that yield Arrow batches of samples (and the rejects found beside them)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import pyarrow as pa

if TYPE_CHECKING:
    from pipeline.config import StreamerSettings

__all__ = ["Shard", "Source", "SourceBatch", "build_source", "source_for"]


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
    """A replayable source of samples. One ``read_pass`` call reads the source once."""

    @property
    def name(self) -> str:
        """Where the data comes from (a path or URL), recorded with rejects."""
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


def build_source(
    csv: str | None,
    batch_rows: int,
    hosts: int = 32,
    gpus_per_host: int = 8,
    *,
    kind: str = "auto",
    scrape: Sequence[str] = (),
    scrape_file: str | None = None,
    interval_s: float = 1.0,
    scrape_timeout_s: float = 2.0,
    scrape_retries: int = 2,
) -> Source:
    """The source a streamer reads: dcgm-exporter scrapes, NVML, a dcgm-exporter CSV, or a synthetic fleet.

    ``kind="auto"`` scrapes when targets are given, else replays ``csv`` when given, else generates.
    """
    if kind == "auto":
        kind = "scrape" if scrape or scrape_file else "csv" if csv else "synthetic"
    if kind == "scrape":
        from pipeline.sources.prometheus import PrometheusSource

        return PrometheusSource(scrape, interval_s, scrape_timeout_s, scrape_retries, targets_file=scrape_file)
    if kind == "nvml":
        from pipeline.sources.nvml import NvmlSource

        return NvmlSource()
    if kind == "csv" and csv:
        from pipeline.sources.dcgm_csv import DcgmCsvSource

        return DcgmCsvSource(csv, batch_rows=batch_rows)
    from pipeline.sources.synthetic import SyntheticFleet

    return SyntheticFleet(hosts, gpus_per_host, batch_rows=batch_rows)


def source_for(settings: StreamerSettings) -> Source:
    """The source a streamer's settings describe."""
    return build_source(
        str(settings.csv) if settings.csv else None,
        settings.batch_rows,
        settings.hosts,
        settings.gpus_per_host,
        kind=settings.source,
        scrape=settings.scrape,
        scrape_file=str(settings.scrape_file) if settings.scrape_file else None,
        interval_s=settings.interval_s,
        scrape_timeout_s=settings.scrape_timeout_s,
        scrape_retries=settings.scrape_retries,
    )
