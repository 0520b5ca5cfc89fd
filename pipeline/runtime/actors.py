"""The one place the data path's plain classes become Ray actors.

Actor classes are named ``Broker``, ``Streamer`` and ``Collector`` so that ``ray list actors`` and
process titles read ``ray::Broker`` and so on. Streamer and Collector actors start their loop in a
thread from ``__init__``, so an actor that Ray restarts (``max_restarts``) resumes by itself: from
the broker checkpoint (streamers) and from the database offsets (collectors).

A worker loop never dies silently: an error the pipeline raises on purpose (``PipelineError``: a
source that cannot be read) is kept and reported by ``stats()``; anything else ends the actor's
process, so that Ray restarts it and the supervisor counts the restart.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from pipeline import metrics
from pipeline.collector import Collector as CollectorLogic
from pipeline.config import AttributionSettings, CollectorSettings, DatabaseSettings, QueueSettings, StreamerSettings
from pipeline.errors import PipelineError
from pipeline.queue.api import BrokerStats
from pipeline.queue.broker import Broker as BrokerLogic
from pipeline.queue.broker import Persistence
from pipeline.runtime import replicas
from pipeline.runtime.instruments import BrokerMetrics, Instruments
from pipeline.runtime.leaders import queue_client
from pipeline.runtime.names import (
    COLLECTOR_MEMORY,
    STREAMER_MEMORY,
    ActorHandle,
    ProducerId,
    actor_options,
    broker_name,
    collector_name,
    role_resources,
    spawn,
    streamer_name,
)
from pipeline.runtime.replicas import committed_state
from pipeline.runtime.reports import CollectorStatus, StreamerStatus
from pipeline.runtime.transport import DurableProducer
from pipeline.sources import Shard, source_for
from pipeline.sources.prometheus import PrometheusSource
from pipeline.storage.checkpoints import CheckpointStore
from pipeline.storage.setup import writer_for
from pipeline.storage.sink import WriteResult
from pipeline.streamer import Streamer as StreamerLogic

__all__ = ["make_broker", "make_collector", "make_streamer", "run_worker"]

log = logging.getLogger(__name__)


def run_worker(name: str, loop: Callable[[], object], on_error: Callable[[str], None]) -> None:
    """Run a worker loop; keep a ``PipelineError`` for ``stats()``, end the process on anything else."""
    try:
        loop()
    except PipelineError as exc:
        log.error("%s stopped: %s", name, exc)
        on_error(f"{type(exc).__name__}: {exc}")
    except BaseException:
        log.critical("%s: unexpected error; ending the process so that Ray restarts it", name, exc_info=True)
        logging.shutdown()
        os._exit(70)  # EX_SOFTWARE: an actor that stays up with a dead loop would be reported as running


class Broker(BrokerLogic):
    """The Broker plain class, plus Ray metrics on every stats() call.

    Every incarnation starts its partitions at the offsets committed in the database *now* (not at
    what its creator saw when it first started it), and knows each producer's newest stored
    sequence: a broker that Ray restarts without a queue dir must hand out offsets that follow what
    collectors already stored, and drop a re-sent flush that a collector already stored.
    """

    def __init__(self, broker_id: int, queue: QueueSettings, hosted: list[int], conninfo: str) -> None:
        offsets, sequences = committed_state(conninfo, queue.group, hosted)
        persistence = None
        if queue.dir is not None:
            persistence = Persistence(
                Path(queue.dir),
                queue.segment_bytes,
                queue.retention_s,
                queue.disk_budget_bytes,
                queue.fsync,
                retention_bytes=queue.retention_bytes,
            )
        super().__init__(
            broker_id,
            queue.partitions,
            hosted,
            queue.partition_budget_bytes,
            queue.session_timeout_s,
            offsets,
            persistence=persistence,
            start_sequences=sequences,
        )
        self._metrics = BrokerMetrics()

    def stats(self) -> BrokerStats:
        """Stats, also exported as Ray metrics."""
        out = super().stats()
        out["pid"] = os.getpid()
        self._metrics.export(out)
        return out


class Streamer:
    """Actor around ``pipeline.streamer.Streamer``: runs it in a thread from construction."""

    def __init__(
        self,
        producer: str,
        settings: StreamerSettings,
        queue: QueueSettings,
        brokers: list[ActorHandle],
        shard: tuple[int, int],
        namespace: str,
        conninfo: str,
    ) -> None:
        source = source_for(settings)
        self._source = source
        self._logic = StreamerLogic(
            producer,
            source,
            DurableProducer(queue_client(brokers, queue, namespace), CheckpointStore(conninfo, namespace)),
            queue.partitions,
            Shard(*shard),
            settings.interval_s,
            settings.batch_rows,
            settings.passes,
            settings.duration_s,
        )
        self._error: str | None = None
        self._instruments = Instruments((metrics.STREAMER_ROWS, metrics.REJECTS))
        self._reported = (0, 0)
        # Load the checkpoint before answering anyone: stats() must report the resumed pass at once
        # (a re-split computes its boundary from it).
        self._logic.open()
        self._thread = self._start()

    def _start(self) -> threading.Thread:
        thread = threading.Thread(
            target=run_worker, args=(self._logic.producer_id, self._logic.run, self._failed), daemon=True
        )
        thread.start()
        return thread

    def _failed(self, error: str) -> None:
        self._error = error

    def stats(self) -> StreamerStatus:
        """Counters, whether the run finished, and the last error."""
        s = self._logic.stats
        rows, rejects = self._reported
        self._instruments.inc(metrics.STREAMER_ROWS, s.produced - rows, streamer=self._logic.producer_id)
        self._instruments.inc(metrics.REJECTS, s.rejected - rejects, reason="input")
        self._reported = (s.produced, s.rejected)
        return {
            "id": self._logic.producer_id,
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
            "publish_retries": s.publish_retries,
            "resent": s.resent,
            "pid": os.getpid(),
            # Scrape sources: per-target health (up, last_success, consecutive_failures, last_error).
            "targets": self._source.health() if isinstance(self._source, PrometheusSource) else {},
        }

    def pause(self, timeout_s: float = 600.0) -> StreamerStatus:
        """Stop at the end of the pass in progress (never later); returns stats with the passes done."""
        self._logic.stop_at_pass(self._logic.passes_done + 1)
        self._thread.join(timeout_s)
        return self.stats()

    def run_until(self, completed: int, timeout_s: float = 600.0) -> StreamerStatus:
        """After ``pause``: stream on until ``completed`` passes are done, then stop again."""
        if not self._thread.is_alive() and self._logic.passes_done < completed and not self._logic.stats.done:
            self._logic.stop_at_pass(completed)
            self._thread = self._start()
        self._thread.join(timeout_s)
        return self.stats()

    def resume(self) -> StreamerStatus:
        """Drop a re-split's pass boundary and stream on (after ``pause``; its supervisor died before the
        new layout was stored, so this layout goes on). A streamer that was stopped stays stopped."""
        self._logic.stop_at_pass(None)
        logic = self._logic
        if not self._thread.is_alive() and not logic.stats.done and not logic.stopped and self._error is None:
            log.warning("%s: resuming after a re-split that did not finish", logic.producer_id)
            self._thread = self._start()
        return self.stats()

    def stop(self, timeout_s: float = 30.0) -> StreamerStatus:
        """Stop streaming (the batch being published is finished first)."""
        self._logic.stop()
        self._thread.join(timeout_s)
        return self.stats()


class Collector:
    """Actor around ``pipeline.collector.Collector`` writing through ``TelemetryWriter``."""

    def __init__(
        self,
        member: str,
        settings: CollectorSettings,
        queue: QueueSettings,
        conninfo: str,
        brokers: list[ActorHandle],
        namespace: str,
        database: DatabaseSettings,
        attribution: AttributionSettings | None = None,
    ) -> None:
        self._instruments = Instruments(
            (
                metrics.COLLECTOR_ROWS,
                metrics.XID_EVENTS,
                metrics.COLLECTOR_COMMIT_SECONDS,
                metrics.COLLECTOR_LAST_COMMIT,
                metrics.STORAGE_REFUSED_METRICS,
            )
        )
        # Every incarnation gets a fresh member id: a restarted actor must not inherit the old
        # generation's claims, it rejoins and claims again.
        self._member = f"{member}#{int(time.time() * 1000)}"
        self._name = member
        self._writer = writer_for(conninfo, database, attribution)
        self._logic = CollectorLogic(
            self._member,
            queue.group,
            queue_client(brokers, queue, namespace),
            self._writer,
            settings.max_rows,
            settings.poll_timeout_s,
            heartbeat_s=min(1.0, queue.session_timeout_s / 4),
            on_commit=self._committed,
        )
        self._error: str | None = None
        self._thread = threading.Thread(target=run_worker, args=(self._member, self._logic.run, self._failed))
        self._thread.daemon = True
        self._thread.start()

    def _failed(self, error: str) -> None:
        self._error = error

    def _committed(self, result: WriteResult, seconds: float) -> None:
        self._instruments.inc(metrics.COLLECTOR_ROWS, result.rows, collector=self._name)
        if result.events:
            self._instruments.inc(metrics.XID_EVENTS, result.events, collector=self._name)
        self._instruments.observe(metrics.COLLECTOR_COMMIT_SECONDS, seconds, collector=self._name)
        self._instruments.set(metrics.COLLECTOR_LAST_COMMIT, time.time(), collector=self._name)

    def stats(self) -> CollectorStatus:
        """Counters, assignment and the last error."""
        s = self._logic.stats
        self._instruments.set(metrics.STORAGE_REFUSED_METRICS, len(self._writer.refused_metrics), collector=self._name)
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
            "pid": os.getpid(),
        }

    def stop(self, timeout_s: float = 30.0) -> CollectorStatus:
        """Finish the batch in hand, leave the group, return final stats."""
        self._logic.stop()
        self._thread.join(timeout_s)
        return self.stats()


def make_broker(
    index: int,
    queue: QueueSettings,
    namespace: str,
    hosted: Sequence[int],
    conninfo: str,
    num_cpus: float = 0.5,
    placement: bool = False,
) -> ActorHandle:
    """Start broker ``index`` (an async actor; Ray restarts it on failure)."""
    # Calls in flight when a broker dies are retried on its next incarnation: appends are
    # deduplicated by sequence, fetches and commits are idempotent.
    replicated = queue.replication_factor > 1
    held = len(replicas.hosted_replicas(index, queue)) if replicated else len(hosted)
    opts = actor_options(
        broker_name(index),
        namespace,
        num_cpus,
        memory_bytes=min(held * queue.partition_budget_bytes, 4 << 30) + (256 << 20),
        max_concurrency=1000,
        max_task_retries=-1,
        # Brokers hold the data: spread them over nodes so one node's loss takes as few as possible.
        scheduling_strategy="SPREAD",
        **role_resources("broker", index, placement),
    )
    if replicated:  # every broker holds replicas; the supervisor's elector decides who leads
        return spawn(replicas.Broker, opts, index, queue, namespace, conninfo)
    return spawn(Broker, opts, index, queue, list(hosted), conninfo)


def make_streamer(
    producer: ProducerId,
    settings: StreamerSettings,
    queue: QueueSettings,
    namespace: str,
    conninfo: str,
    brokers: list[ActorHandle],
    num_cpus: float = 0.5,
    placement: bool = False,
) -> ActorHandle:
    """Start the streamer of shard ``producer.index`` of ``producer.count`` (it starts streaming by itself)."""
    opts = actor_options(
        streamer_name(producer.index),
        namespace,
        num_cpus,
        memory_bytes=STREAMER_MEMORY,
        max_concurrency=4,
        **role_resources("streamer", producer.index, placement),
    )
    shard = (producer.index, producer.count)
    return spawn(Streamer, opts, str(producer), settings, queue, brokers, shard, namespace, conninfo)


def make_collector(
    index: int,
    settings: CollectorSettings,
    queue: QueueSettings,
    namespace: str,
    conninfo: str,
    brokers: list[ActorHandle],
    database: DatabaseSettings,
    num_cpus: float = 0.5,
    placement: bool = False,
    attribution: AttributionSettings | None = None,
) -> ActorHandle:
    """Start collector ``index`` (it joins the group and starts writing by itself)."""
    opts = actor_options(
        collector_name(index),
        namespace,
        num_cpus,
        memory_bytes=COLLECTOR_MEMORY,
        max_concurrency=4,
        **role_resources("collector", index, placement),
    )
    name = collector_name(index)
    return spawn(Collector, opts, name, settings, queue, conninfo, brokers, namespace, database, attribution)
