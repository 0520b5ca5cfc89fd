"""The gateway's own metrics: request latency and counts (an ASGI middleware), pool, cache and queue lag.

``registry(...)`` builds one registry per app; ``Observe`` records every HTTP request into it by route
template, method and status.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pipeline import metrics
from pipeline.gateway.cache import ResponseCache
from pipeline.storage.reader import Reader

__all__ = ["Observe", "QueueStats", "RequestMetrics", "request_metrics"]

log = logging.getLogger(__name__)

QueueStats = Callable[[], list[dict[str, Any]]]
# Every label comes from a closed set: a request cannot add series by inventing a method or a path.
_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE"})


class RequestMetrics:
    """The request histogram and counter of one registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.duration = Histogram(
            metrics.HTTP_DURATION.name,
            metrics.HTTP_DURATION.help,
            metrics.HTTP_DURATION.labels,
            buckets=metrics.HTTP_DURATION.buckets,
            registry=registry,
        )
        self.requests = Counter(
            metrics.HTTP_REQUESTS.name.removesuffix("_total"),
            metrics.HTTP_REQUESTS.help,
            metrics.HTTP_REQUESTS.labels,
            registry=registry,
        )


def request_metrics(
    reader: Reader, cache: ResponseCache | None, queue_stats: QueueStats | None, missing_after_s: float | None = None
) -> tuple[CollectorRegistry, RequestMetrics]:
    """A registry holding the request metrics and the pool, cache, queue-lag and fleet-health collector.

    ``missing_after_s``: the health threshold; the fleet gauges (GPUs missing, hosts silent) are read from the
    latest-value table on each scrape (one small query).
    """
    registry = CollectorRegistry(auto_describe=True)
    registry.register(_GatewayCollector(queue_stats, reader, cache, missing_after_s))
    return registry, RequestMetrics(registry)


class Observe:
    """ASGI middleware: request latency and counts by route template, method and status."""

    def __init__(self, app: ASGIApp, recorder: RequestMetrics) -> None:
        self._app = app
        self._metrics = recorder

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self._app(scope, receive, send_status)
        finally:
            # The template without convertors (``{uuid}``, not ``{uuid:path}``), as the OpenAPI spec names it.
            path = getattr(scope.get("route"), "path_format", None) or "unmatched"
            method = scope.get("method", "GET")
            labels = (path, method if method in _METHODS else "other", str(status))
            self._metrics.duration.labels(*labels).observe(time.perf_counter() - started)
            self._metrics.requests.labels(*labels).inc()


class _GatewayCollector:
    """Pool usage, and the queue's lag under the seed's metric name (read from the brokers on scrape)."""

    def __init__(
        self,
        queue_stats: QueueStats | None,
        reader: Reader,
        cache: ResponseCache | None = None,
        missing_after_s: float | None = None,
    ) -> None:
        self._stats = queue_stats
        self._reader = reader
        self._cache = cache
        self._missing_after = missing_after_s

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterable[Any]:
        pool = GaugeMetricFamily(metrics.GATEWAY_POOL.name, metrics.GATEWAY_POOL.help, labels=["state"])
        for state, value in self._reader.pool_stats().items():
            pool.add_metric([state], value)
        yield pool
        if self._cache is not None:
            lookups = CounterMetricFamily(
                metrics.GATEWAY_CACHE.name.removesuffix("_total"), metrics.GATEWAY_CACHE.help, labels=["result"]
            )
            for label, attr in (("hit", "hits"), ("miss", "misses"), ("error", "errors")):
                lookups.add_metric([label], getattr(self._cache, attr))
            yield lookups
        yield from self._fleet()
        if self._stats is None:
            return
        lag = GaugeMetricFamily(metrics.CONSUMER_LAG.name, metrics.CONSUMER_LAG.help, labels=["group", "partition"])
        lag_b = GaugeMetricFamily(
            metrics.CONSUMER_LAG_BATCHES.name, metrics.CONSUMER_LAG_BATCHES.help, labels=["group", "partition"]
        )
        try:
            brokers = self._stats()
        except Exception:  # a scrape must not fail because a broker is restarting
            log.warning("queue stats unavailable for this scrape", exc_info=True)
            brokers = []
        for b in brokers:
            for partition, p in b["partitions"].items():
                for group, g in p["groups"].items():
                    lag.add_metric([group, str(partition)], g["lag_rows"])
                    lag_b.add_metric([group, str(partition)], g["lag_batches"])
        yield lag
        yield lag_b
        yield from _replication_metrics(brokers)

    def _fleet(self) -> Iterable[Any]:
        """GPUs missing and hosts silent (nothing when the database is away or lacks the table)."""
        if self._missing_after is None:
            return
        try:
            if not self._reader.features().gpu_metrics:
                return
            missing, silent = self._reader.missing_counts(self._missing_after)
        except Exception:  # a scrape must not fail because the database is away
            log.warning("fleet health unavailable for this scrape", exc_info=True)
            return
        for metric, value in ((metrics.GPUS_MISSING, missing), (metrics.HOSTS_SILENT, silent)):
            gauge = GaugeMetricFamily(metric.name, metric.help)
            gauge.add_metric([], value)
            yield gauge


def _replication_metrics(brokers: list[dict[str, Any]]) -> Iterable[Any]:
    """Under-replicated partitions and each follower's lag, from the leaders' reports (none: one copy)."""
    leaders: dict[int, dict[str, Any]] = {}
    partitions: set[int] = set()
    for b in brokers:
        for partition, s in b.get("replication", {}).items():
            partitions.add(int(partition))
            if s["role"] == "leader" and s["epoch"] >= leaders.get(int(partition), s)["epoch"]:
                leaders[int(partition)] = s
    if not partitions:
        return
    under = GaugeMetricFamily(metrics.UNDER_REPLICATED.name, metrics.UNDER_REPLICATED.help)
    short = [p for p in partitions if p not in leaders or len(leaders[p]["in_sync"]) < len(leaders[p]["replicas"])]
    under.add_metric([], len(short))
    yield under
    lag = GaugeMetricFamily(metrics.REPLICA_LAG.name, metrics.REPLICA_LAG.help, labels=["partition", "replica"])
    for p, s in sorted(leaders.items()):
        for replica, behind in sorted(s["lag"].items()):
            lag.add_metric([str(p), str(replica)], behind)
    yield lag
