"""Every metric of the pipeline, defined once.

Two exporters carry them:

* Ray actors (streamers, collectors, brokers, controller) record through ``ray.util.metrics``;
  Ray's per-node metrics agent exports them and prefixes every name with ``ray_``
  (``pipeline_collector_rows_total`` is scraped as ``ray_pipeline_collector_rows_total``).
* The gateway serves ``/metrics`` with ``prometheus_client``: HTTP metrics under their seed names
  (``http_request_duration_seconds``) and the queue gauges it reads from the brokers, so
  ``message_queue_consumer_lag`` is scraped under the exact name the seed's alert uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["ALL", "GATEWAY", "RAY", "MetricDef", "exported_metric_names"]

Kind = Literal["counter", "gauge", "histogram"]
Exporter = Literal["ray", "gateway"]


@dataclass(frozen=True)
class MetricDef:
    """One metric: its name, kind, help text, fixed label set and exporter."""

    name: str
    kind: Kind
    help: str
    labels: tuple[str, ...]
    exporter: Exporter
    buckets: tuple[float, ...] = ()

    @property
    def exported_name(self) -> str:
        """The name Prometheus sees (Ray prefixes ``ray_`` to actor metrics)."""
        return f"ray_{self.name}" if self.exporter == "ray" else self.name

    def series_names(self) -> tuple[str, ...]:
        """Every series name Prometheus stores for this metric."""
        base = self.exported_name
        if self.kind == "histogram":
            return (f"{base}_bucket", f"{base}_sum", f"{base}_count")
        return (base,)


_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

# --- recorded inside Ray actors -------------------------------------------------------------
STREAMER_ROWS = MetricDef(
    "pipeline_streamer_rows_total", "counter", "Rows published to the queue.", ("streamer",), "ray"
)
REJECTS = MetricDef("pipeline_rejects_total", "counter", "Input rows rejected, by reason.", ("reason",), "ray")
COLLECTOR_ROWS = MetricDef(
    "pipeline_collector_rows_total", "counter", "Rows committed to the database.", ("collector",), "ray"
)
COLLECTOR_COMMIT_SECONDS = MetricDef(
    "pipeline_collector_commit_seconds",
    "histogram",
    "Time to write and commit one transaction.",
    ("collector",),
    "ray",
    _LATENCY_BUCKETS,
)
COLLECTOR_LAST_COMMIT = MetricDef(
    "pipeline_collector_last_commit_timestamp_seconds",
    "gauge",
    "Unix time of the collector's last committed transaction.",
    ("collector",),
    "ray",
)
QUEUE_LOG_END = MetricDef("pipeline_queue_log_end_offset", "gauge", "Next offset to be written.", ("partition",), "ray")
QUEUE_BYTES_HELD = MetricDef("pipeline_queue_bytes_held", "gauge", "Bytes held by a partition.", ("partition",), "ray")
QUEUE_BLOCKED_SECONDS = MetricDef(
    "pipeline_queue_producer_blocked_seconds_total",
    "counter",
    "Time producers spent waiting for partition budget.",
    ("partition",),
    "ray",
)
QUEUE_APPENDED_ROWS = MetricDef(
    "pipeline_queue_appended_rows_total", "counter", "Rows appended.", ("partition",), "ray"
)
QUEUE_FETCHED_ROWS = MetricDef(
    "pipeline_queue_fetched_rows_total", "counter", "Rows fetched by consumers.", ("partition",), "ray"
)
QUEUE_DISK_FULL = MetricDef(
    "pipeline_queue_disk_full",
    "gauge",
    "1 while a partition's appends wait for disk (reason: budget = its disk budget, enospc = the volume is full).",
    ("partition", "reason"),
    "ray",
)
STORAGE_REFUSED_METRICS = MetricDef(
    "pipeline_storage_refused_metric_names",
    "gauge",
    "Metric names refused because the metrics table's smallint key is exhausted (their rows become rejects).",
    ("collector",),
    "ray",
)
XID_EVENTS = MetricDef(
    "pipeline_xid_events_total",
    "counter",
    "XID errors recorded as GPU events (DCGM_FI_DEV_XID_ERRORS turning to a code).",
    ("collector",),
    "ray",
)
CONTROLLER_DESIRED = MetricDef(
    "pipeline_controller_desired_actors", "gauge", "Actors the controller wants.", ("role",), "ray"
)
CONTROLLER_ACTUAL = MetricDef("pipeline_controller_actual_actors", "gauge", "Actors running.", ("role",), "ray")
CONTROLLER_DECISIONS = MetricDef(
    "pipeline_controller_decisions_total",
    "counter",
    "Scaling decisions by direction and reason.",
    ("role", "direction", "reason"),
    "ray",
)
SUPERVISOR_RESTARTS = MetricDef(
    "pipeline_supervisor_actor_restarts_total",
    "counter",
    "Actor processes Ray restarted (seen by the supervisor as a new pid), by role.",
    ("role",),
    "ray",
)
SUPERVISOR_RECREATIONS = MetricDef(
    "pipeline_supervisor_actor_recreations_total",
    "counter",
    "Actors gone for good (node lost, restarts exhausted, constructor failing) that the supervisor re-created.",
    ("role",),
    "ray",
)

# --- served by the gateway's /metrics ---------------------------------------------------------
HTTP_DURATION = MetricDef(
    "http_request_duration_seconds",
    "histogram",
    "HTTP request latency by route, method and status.",
    ("route", "method", "status"),
    "gateway",
    _LATENCY_BUCKETS,
)
HTTP_REQUESTS = MetricDef(
    "http_requests_total",
    "counter",
    "HTTP requests by route, method and status.",
    ("route", "method", "status"),
    "gateway",
)
CONSUMER_LAG = MetricDef(
    "message_queue_consumer_lag",
    "gauge",
    "Rows appended to a partition and not yet committed by the group.",
    ("group", "partition"),
    "gateway",
)
CONSUMER_LAG_BATCHES = MetricDef(
    "message_queue_consumer_lag_batches",
    "gauge",
    "Batches appended to a partition and not yet committed by the group.",
    ("group", "partition"),
    "gateway",
)
UNDER_REPLICATED = MetricDef(
    "message_queue_under_replicated_partitions",
    "gauge",
    "Partitions with fewer in-sync replicas than replication_factor (one without a leader counts too).",
    (),
    "gateway",
)
REPLICA_LAG = MetricDef(
    "message_queue_replica_lag",
    "gauge",
    "Entries a follower replica lacks of its partition's leader log.",
    ("partition", "replica"),
    "gateway",
)
GATEWAY_POOL = MetricDef(
    "pipeline_gateway_pool_connections",
    "gauge",
    "Database pool connections by state (size, available, waiting).",
    ("state",),
    "gateway",
)

GPUS_MISSING = MetricDef(
    "pipeline_gpus_missing",
    "gauge",
    "GPUs with no sample for the health threshold (missing_intervals x scrape_interval_s + health_grace_s).",
    (),
    "gateway",
)
HOSTS_SILENT = MetricDef(
    "pipeline_hosts_silent",
    "gauge",
    "Hosts none of whose GPUs reported within the health threshold (the exporter went silent).",
    (),
    "gateway",
)
GATEWAY_CACHE = MetricDef(
    "pipeline_gateway_cache_requests_total",
    "counter",
    "Redis cache lookups by result (hit, miss, error).",
    ("result",),
    "gateway",
)

RAY: tuple[MetricDef, ...] = (
    STREAMER_ROWS,
    REJECTS,
    COLLECTOR_ROWS,
    COLLECTOR_COMMIT_SECONDS,
    COLLECTOR_LAST_COMMIT,
    QUEUE_LOG_END,
    QUEUE_BYTES_HELD,
    QUEUE_BLOCKED_SECONDS,
    QUEUE_APPENDED_ROWS,
    QUEUE_FETCHED_ROWS,
    QUEUE_DISK_FULL,
    STORAGE_REFUSED_METRICS,
    XID_EVENTS,
    CONTROLLER_DESIRED,
    CONTROLLER_ACTUAL,
    CONTROLLER_DECISIONS,
    SUPERVISOR_RESTARTS,
    SUPERVISOR_RECREATIONS,
)
GATEWAY: tuple[MetricDef, ...] = (
    HTTP_DURATION,
    HTTP_REQUESTS,
    CONSUMER_LAG,
    CONSUMER_LAG_BATCHES,
    UNDER_REPLICATED,
    REPLICA_LAG,
    GATEWAY_POOL,
    GATEWAY_CACHE,
    GPUS_MISSING,
    HOSTS_SILENT,
)
ALL: tuple[MetricDef, ...] = RAY + GATEWAY


def exported_metric_names() -> frozenset[str]:
    """Every series name a Prometheus scraping the pipeline can see."""
    return frozenset(n for m in ALL for n in m.series_names())
