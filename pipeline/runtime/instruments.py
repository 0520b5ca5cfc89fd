"""Ray metric objects for the ``MetricDef``s an actor records (``pipeline.metrics`` defines each once)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ray.util import metrics as ray_metrics

from pipeline import metrics

__all__ = ["BrokerMetrics", "Instruments"]


class Instruments:
    """Counters, gauges and histograms of one actor, keyed by their definitions."""

    def __init__(self, defs: Sequence[metrics.MetricDef]) -> None:
        self._m: dict[str, Any] = {}
        for d in defs:
            if d.kind == "counter":
                self._m[d.name] = ray_metrics.Counter(d.name, d.help, tag_keys=d.labels)
            elif d.kind == "gauge":
                self._m[d.name] = ray_metrics.Gauge(d.name, d.help, tag_keys=d.labels)
            else:
                self._m[d.name] = ray_metrics.Histogram(d.name, d.help, boundaries=list(d.buckets), tag_keys=d.labels)

    def inc(self, d: metrics.MetricDef, value: float, **tags: str) -> None:
        """Add ``value`` (ignored unless positive)."""
        if value > 0:
            self._m[d.name].inc(value, tags=tags)

    def set(self, d: metrics.MetricDef, value: float, **tags: str) -> None:
        """Set a gauge."""
        self._m[d.name].set(value, tags=tags)

    def observe(self, d: metrics.MetricDef, value: float, **tags: str) -> None:
        """Record one observation of a histogram."""
        self._m[d.name].observe(value, tags=tags)


class BrokerMetrics:
    """The queue's per-partition metrics of one broker, exported from its stats."""

    DEFS = (
        metrics.QUEUE_LOG_END,
        metrics.QUEUE_BYTES_HELD,
        metrics.QUEUE_BLOCKED_SECONDS,
        metrics.QUEUE_APPENDED_ROWS,
        metrics.QUEUE_FETCHED_ROWS,
        metrics.CONSUMER_LAG,
        metrics.QUEUE_DISK_FULL,
    )

    def __init__(self) -> None:
        self._instruments: Instruments | None = None  # made on first use: an actor's constructor stays light
        self._reported: dict[int, tuple[float, int, int]] = {}

    def export(self, stats: Any) -> None:
        """Set gauges and add counter increments since the last call (``stats``: a ``BrokerStats``)."""
        if self._instruments is None:
            self._instruments = Instruments(self.DEFS)
        ins = self._instruments
        for p, s in stats["partitions"].items():
            tag = str(p)
            blocked, appended, fetched = self._reported.get(p, (0.0, 0, 0))
            ins.set(metrics.QUEUE_LOG_END, s["end_offset"], partition=tag)
            ins.set(metrics.QUEUE_BYTES_HELD, s["bytes_held"], partition=tag)
            ins.inc(metrics.QUEUE_BLOCKED_SECONDS, s["blocked_s"] - blocked, partition=tag)
            ins.inc(metrics.QUEUE_APPENDED_ROWS, s["rows_appended"] - appended, partition=tag)
            ins.inc(metrics.QUEUE_FETCHED_ROWS, s["rows_fetched"] - fetched, partition=tag)
            self._reported[p] = (s["blocked_s"], s["rows_appended"], s["rows_fetched"])
            for group, g in s["groups"].items():
                ins.set(metrics.CONSUMER_LAG, g["lag_rows"], group=group, partition=tag)
            for reason in ("budget", "enospc"):
                ins.set(
                    metrics.QUEUE_DISK_FULL, 1.0 if s.get("disk_full") == reason else 0.0, partition=tag, reason=reason
                )
