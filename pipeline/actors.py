"""The one place plain classes become Ray actors.

Actor classes are named ``Broker``, ``Streamer`` and ``Collector`` so that ``ray list actors`` and
process titles read ``ray::Broker`` and so on. Streamer and Collector actors start their loop in a
thread from ``__init__``, so an actor that Ray restarts after a crash (``max_restarts``) resumes by
itself: from the broker checkpoint (streamers) and from the database offsets (collectors).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import ray
from ray.util import metrics as ray_metrics

from pipeline import metrics
from pipeline.collector import Collector as CollectorLogic
from pipeline.config import CollectorSettings, QueueSettings, StreamerSettings
from pipeline.queue.broker import Broker as BrokerLogic
from pipeline.queue.broker import Persistence
from pipeline.queue.ray_glue import RayQueue
from pipeline.records import WriteResult
from pipeline.sources import Shard, source_for
from pipeline.sources.prometheus import PrometheusSource
from pipeline.storage.writer import TelemetryWriter
from pipeline.streamer import Streamer as StreamerLogic

__all__ = [
    "CONTROLLER_NAME",
    "NAMESPACE",
    "actor_options",
    "broker_name",
    "collector_name",
    "make_broker",
    "make_collector",
    "make_streamer",
    "streamer_name",
]

log = logging.getLogger(__name__)
NAMESPACE = "gpu-telemetry"
CONTROLLER_NAME = "controller"
# Ray's logical memory requests: on KubeRay they make the autoscaler add pods that fit the actors.
STREAMER_MEMORY = 512 << 20
COLLECTOR_MEMORY = 768 << 20


def broker_name(i: int) -> str:
    """Named-actor name of broker ``i``."""
    return f"broker-{i}"


def streamer_name(i: int) -> str:
    """Named-actor name of streamer ``i``."""
    return f"streamer-{i}"


def collector_name(i: int) -> str:
    """Named-actor name of collector ``i``."""
    return f"collector-{i}"


class _Instruments:
    """Ray metric objects for the MetricDefs an actor records."""

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
        if value > 0:
            self._m[d.name].inc(value, tags=tags)

    def set(self, d: metrics.MetricDef, value: float, **tags: str) -> None:
        self._m[d.name].set(value, tags=tags)

    def observe(self, d: metrics.MetricDef, value: float, **tags: str) -> None:
        self._m[d.name].observe(value, tags=tags)


class Broker(BrokerLogic):
    """The Broker plain class, plus Ray metrics on every stats() call."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._instruments: _Instruments | None = None
        self._reported: dict[int, tuple[float, int, int]] = {}

    def stats(self) -> dict[str, Any]:
        """Stats, also exported as Ray metrics."""
        out = super().stats()
        out["pid"] = _pid()
        if self._instruments is None:
            self._instruments = _Instruments(
                (
                    metrics.QUEUE_LOG_END,
                    metrics.QUEUE_BYTES_HELD,
                    metrics.QUEUE_BLOCKED_SECONDS,
                    metrics.QUEUE_APPENDED_ROWS,
                    metrics.QUEUE_FETCHED_ROWS,
                    metrics.CONSUMER_LAG,
                )
            )
        ins = self._instruments
        for p, s in out["partitions"].items():
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
        return out


class Streamer:
    """Actor around ``pipeline.streamer.Streamer``: runs it in a thread from construction."""

    def __init__(
        self,
        streamer_id: str,
        settings: StreamerSettings,
        queue: QueueSettings,
        brokers: list[Any],
        shard: tuple[int, int],
    ) -> None:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        source = source_for(settings)
        self._source = source
        self._logic = StreamerLogic(
            streamer_id,
            source,
            RayQueue(brokers),
            queue.partitions,
            Shard(*shard),
            settings.interval_s,
            settings.batch_rows,
            settings.passes,
            settings.duration_s,
        )
        self._error: str | None = None
        self._instruments = _Instruments((metrics.STREAMER_ROWS, metrics.REJECTS))
        self._reported = (0, 0)
        # Load the checkpoint before answering anyone: stats() must report the resumed pass at once
        # (a re-split computes its boundary from it).
        self._logic.open()
        self._thread = threading.Thread(target=self._run, name="streamer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._logic.run()
        except Exception as exc:  # reported through stats(); the actor stays up for inspection
            log.exception("streamer %s failed", self._logic.streamer_id)
            self._error = f"{type(exc).__name__}: {exc}"

    def stats(self) -> dict[str, Any]:
        """Counters, whether the run finished, and the last error."""
        s = self._logic.stats
        rows, rejects = self._reported
        self._instruments.inc(metrics.STREAMER_ROWS, s.produced - rows, streamer=self._logic.streamer_id)
        self._instruments.inc(metrics.REJECTS, s.rejected - rejects, reason="input")
        self._reported = (s.produced, s.rejected)
        return {
            "id": self._logic.streamer_id,
            "produced": s.produced,
            "rejected": s.rejected,
            "messages": s.messages,
            "duplicates": s.duplicates,
            "passes": s.passes,
            "done": s.done,
            "running": self._thread.is_alive(),
            "blocked_s": s.blocked_s,
            "busy_s": s.busy_s,
            "last_stamp_us": self._logic.last_stamp_us,
            "error": self._error,
            "resumed": s.resumed_from is not None,
            "pid": _pid(),
            # Scrape sources: per-target health (up, last_success, consecutive_failures, last_error).
            "targets": self._source.health() if isinstance(self._source, PrometheusSource) else {},
        }

    def pause(self, timeout_s: float = 600.0) -> dict[str, Any]:
        """Stop at the end of the pass in progress (never later); returns stats with the passes done."""
        self._logic.stop_at_pass(self._logic.passes_done + 1)
        self._thread.join(timeout_s)
        return self.stats()

    def run_until(self, completed: int, timeout_s: float = 600.0) -> dict[str, Any]:
        """After ``pause``: stream on until ``completed`` passes are done, then stop again."""
        if not self._thread.is_alive() and self._logic.passes_done < completed and not self._logic.stats.done:
            self._logic.stop_at_pass(completed)
            self._thread = threading.Thread(target=self._run, name="streamer", daemon=True)
            self._thread.start()
        self._thread.join(timeout_s)
        return self.stats()

    def stop(self, timeout_s: float = 30.0) -> dict[str, Any]:
        """Stop streaming (the batch being published is finished first)."""
        self._logic.stop()
        self._thread.join(timeout_s)
        return self.stats()


class Collector:
    """Actor around ``pipeline.collector.Collector`` writing through ``TelemetryWriter``."""

    def __init__(
        self, member: str, settings: CollectorSettings, queue: QueueSettings, conninfo: str, brokers: list[Any]
    ) -> None:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        self._instruments = _Instruments(
            (metrics.COLLECTOR_ROWS, metrics.COLLECTOR_COMMIT_SECONDS, metrics.COLLECTOR_LAST_COMMIT)
        )
        # Every incarnation gets a fresh member id: a restarted actor must not inherit the old
        # generation's claims, it rejoins and claims again.
        self._member = f"{member}#{int(time.time() * 1000)}"
        self._name = member
        self._logic = CollectorLogic(
            self._member,
            queue.group,
            RayQueue(brokers),
            TelemetryWriter(conninfo),
            settings.max_rows,
            settings.poll_timeout_s,
            heartbeat_s=min(1.0, queue.session_timeout_s / 4),
            on_commit=self._committed,
        )
        self._error: str | None = None
        self._thread = threading.Thread(target=self._run, name="collector", daemon=True)
        self._thread.start()

    def _committed(self, result: WriteResult, seconds: float) -> None:
        self._instruments.inc(metrics.COLLECTOR_ROWS, result.rows, collector=self._name)
        self._instruments.observe(metrics.COLLECTOR_COMMIT_SECONDS, seconds, collector=self._name)
        self._instruments.set(metrics.COLLECTOR_LAST_COMMIT, time.time(), collector=self._name)

    def _run(self) -> None:
        try:
            self._logic.run()
        except Exception as exc:  # reported through stats()
            log.exception("collector %s failed", self._member)
            self._error = f"{type(exc).__name__}: {exc}"

    def stats(self) -> dict[str, Any]:
        """Counters, assignment and the last error."""
        s = self._logic.stats
        return {
            "id": self._member,
            "rows": s.rows,
            "rejects": s.rejects,
            "transactions": s.transactions,
            "retries": s.retries,
            "fenced": s.fenced,
            "generation": s.generation,
            "partitions": list(s.partitions),
            "positions": self._logic.positions,
            "last_commit_at": s.last_commit_at,
            "last_error": s.last_error,
            "error": self._error,
            "running": self._thread.is_alive(),
            "commit_seconds": s.commit_seconds,
            "pid": _pid(),
        }

    def stop(self, timeout_s: float = 30.0) -> dict[str, Any]:
        """Finish the batch in hand, leave the group, return final stats."""
        self._logic.stop()
        self._thread.join(timeout_s)
        return self.stats()


def _pid() -> int:
    import os

    return os.getpid()


def actor_options(
    name: str, num_cpus: float, memory_bytes: int | None = None, restarts: int = -1, **extra: Any
) -> dict[str, Any]:
    """Options every pipeline actor shares: a name in our namespace, resources, restarts."""
    opts: dict[str, Any] = {
        "name": name,
        "namespace": NAMESPACE,
        "num_cpus": num_cpus,
        "max_restarts": restarts,
        "lifetime": None,
    }
    if memory_bytes:
        opts["memory"] = memory_bytes
    opts.update(extra)
    return opts


def role_resources(role: str, index: int, placement: bool) -> dict[str, Any]:
    """Custom resources an actor requests when placement on KubeRay worker groups is on."""
    if not placement:
        return {}
    if role == "broker":
        return {"resources": {"broker": 1, f"broker_{index}": 1}}
    return {"resources": {role: 1}}


def make_broker(
    index: int,
    queue: QueueSettings,
    hosted: Sequence[int],
    start_offsets: Mapping[int, int],
    num_cpus: float = 0.5,
    placement: bool = False,
) -> Any:
    """Start broker ``index`` (an async actor; Ray restarts it on failure)."""
    # Calls in flight when a broker dies are retried on its next incarnation: appends are
    # deduplicated by sequence, fetches and commits are idempotent.
    opts = actor_options(
        broker_name(index),
        num_cpus,
        memory_bytes=min(len(hosted) * queue.partition_budget_bytes, 4 << 30) + (256 << 20),
        max_concurrency=1000,
        max_task_retries=-1,
        # Brokers hold the data: spread them over nodes so one node's loss takes as few as possible.
        scheduling_strategy="SPREAD",
        **role_resources("broker", index, placement),
    )
    persistence = None
    if queue.dir is not None:
        persistence = Persistence(
            Path(queue.dir), queue.segment_bytes, queue.retention_s, queue.disk_budget_bytes, queue.fsync
        )
    cls = ray.remote(**opts)(Broker)
    return cls.remote(
        index,
        queue.partitions,
        list(hosted),
        queue.partition_budget_bytes,
        queue.session_timeout_s,
        dict(start_offsets),
        persistence=persistence,
    )


def make_streamer(
    index: int,
    count: int,
    settings: StreamerSettings,
    queue: QueueSettings,
    brokers: list[Any],
    num_cpus: float = 0.5,
    placement: bool = False,
    epoch: int | None = None,
) -> Any:
    """Start streamer ``index`` of ``count`` (it starts streaming by itself).

    ``epoch`` names the shard layout: producer ids carry it, so a re-split never reuses the
    sequence numbers of an earlier layout, while a restarted actor (same arguments) keeps its own.
    """
    opts = actor_options(
        streamer_name(index),
        num_cpus,
        memory_bytes=STREAMER_MEMORY,
        max_concurrency=4,
        **role_resources("streamer", index, placement),
    )
    cls = ray.remote(**opts)(Streamer)
    producer = streamer_name(index) if epoch is None else f"{streamer_name(index)}@{epoch}"
    return cls.remote(producer, settings, queue, brokers, (index, count))


def make_collector(
    index: int,
    settings: CollectorSettings,
    queue: QueueSettings,
    conninfo: str,
    brokers: list[Any],
    num_cpus: float = 0.5,
    placement: bool = False,
) -> Any:
    """Start collector ``index`` (it joins the group and starts writing by itself)."""
    opts = actor_options(
        collector_name(index),
        num_cpus,
        memory_bytes=COLLECTOR_MEMORY,
        max_concurrency=4,
        **role_resources("collector", index, placement),
    )
    cls = ray.remote(**opts)(Collector)
    return cls.remote(collector_name(index), settings, queue, conninfo, brokers)
