"""Which source a streamer reads, built from its settings (readers are imported only when chosen)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from pipeline.sources.base import Source

if TYPE_CHECKING:
    from pipeline.config import StreamerSettings

__all__ = ["build_source", "source_for"]


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
    synthetic_events: bool = False,
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

    return SyntheticFleet(hosts, gpus_per_host, batch_rows=batch_rows, events=synthetic_events)


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
        synthetic_events=settings.synthetic_events,
    )
