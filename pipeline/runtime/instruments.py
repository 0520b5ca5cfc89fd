"""Ray metric objects for the ``MetricDef``s an actor records (``pipeline.metrics`` defines each once)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ray.util import metrics as ray_metrics

from pipeline import metrics

__all__ = ["Instruments"]


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
