"""The driver behind ``python -m pipeline run``: starts Ray, the actors and the gateway; drains.

Start-up order: brokers (resuming offsets from the database), collectors (they claim partitions),
then streamers. Shutdown order is the reverse with a drain in between: streamers stop, the queue is
drained until every partition's committed offset equals its end offset, then collectors leave.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import ray

from pipeline import actors
from pipeline.config import Settings
from pipeline.errors import ConfigError, PipelineError
from pipeline.queue.client import broker_of
from pipeline.storage.database import Database
from pipeline.storage.writer import TelemetryWriter

__all__ = ["Pipeline", "Progress", "connect_ray"]

log = logging.getLogger(__name__)


def connect_ray(settings: Settings, quiet: bool = False) -> dict[str, Any]:
    """Connect to RAY_ADDRESS or start a local Ray; returns what ``ray.init`` reported."""
    if ray.is_initialized():
        return {}
    kwargs: dict[str, Any] = {
        "namespace": settings.ray.namespace,
        "log_to_driver": not quiet,
        "configure_logging": not quiet,
        "include_dashboard": settings.ray.dashboard,
    }
    if settings.ray.address:
        kwargs["address"] = settings.ray.address
        kwargs.pop("include_dashboard")
    elif settings.ray.num_cpus:
        kwargs["num_cpus"] = settings.ray.num_cpus
    context = ray.init(**kwargs)
    return {
        "dashboard_url": getattr(context, "dashboard_url", None),
        "address": getattr(context, "address_info", {}).get("address"),
    }


@dataclass(slots=True)
class Progress:
    """A snapshot of the running pipeline."""

    produced: int = 0
    rejected: int = 0
    stored: int = 0
    stored_rejects: int = 0
    lag_rows: int = 0
    lag_batches: int = 0
    streamers_done: bool = False
    errors: list[str] = field(default_factory=list)
    streamers: list[dict[str, Any]] = field(default_factory=list)
    collectors: list[dict[str, Any]] = field(default_factory=list)
    brokers: list[dict[str, Any]] = field(default_factory=list)
    at: float = field(default_factory=time.monotonic)


class Pipeline:
    """Brokers, collectors and streamers of one run, on the connected Ray cluster."""

    def __init__(self, settings: Settings, database: Database) -> None:
        if settings.queue.partitions < settings.collector.count:
            raise ConfigError(
                f"queue.partitions ({settings.queue.partitions}) must be at least the number of collectors "
                f"({settings.collector.count}) [PIPELINE_QUEUE__PARTITIONS]"
            )
        self.settings = settings
        self.database = database
        self.brokers: list[Any] = []
        self.streamers: list[Any] = []
        self.collectors: list[Any] = []
        self._baseline = (0, 0)
        self._last: dict[str, dict[str, Any]] = {}

    # --- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        """Start every actor; returns once they are constructed."""
        q = self.settings.queue
        placement = self.settings.ray.placement
        offsets = self._stored_offsets()
        self._baseline = (sum(o["rows"] for o in offsets.values()), sum(o["rejects"] for o in offsets.values()))
        starts = {p: o["next_offset"] for p, o in offsets.items()}
        for b in range(q.brokers):
            hosted = [p for p in range(q.partitions) if broker_of(p, q.brokers) == b]
            first = {p: starts.get(p, 0) for p in hosted}
            self.brokers.append(actors.make_broker(b, q, hosted, first, placement=placement))
        ray.get([b.stats.remote() for b in self.brokers])
        for i in range(self.settings.collector.count):
            self.collectors.append(
                actors.make_collector(
                    i, self.settings.collector, q, self.database.conninfo, self.brokers, placement=placement
                )
            )
        n = self.settings.streamer.count
        for i in range(n):
            self.streamers.append(
                actors.make_streamer(i, n, self.settings.streamer, q, self.brokers, placement=placement)
            )
        ray.get([a.stats.remote() for a in self.collectors + self.streamers])

    def _stored_offsets(self) -> dict[int, dict[str, int]]:
        writer = TelemetryWriter(self.database.conninfo)
        writer.open()
        try:
            return writer.offsets(self.settings.queue.group)
        finally:
            writer.close()

    def progress(self) -> Progress:
        """Counters from every actor and the queue's lag."""
        p = Progress()
        p.streamers = self._stats("streamer", self.streamers)
        p.collectors = self._stats("collector", self.collectors)
        p.brokers = ray.get([b.stats.remote() for b in self.brokers]) if self.brokers else []
        p.produced = sum(s["produced"] for s in p.streamers)
        p.rejected = sum(s["rejected"] for s in p.streamers)
        p.streamers_done = all(s["done"] or not s["running"] for s in p.streamers)
        p.errors = [f"{s['id']}: {s['error']}" for s in p.streamers + p.collectors if s.get("error")]
        group = self.settings.queue.group
        for b in p.brokers:
            for part in b["partitions"].values():
                lag = part["groups"].get(group)
                if lag is None:
                    p.lag_batches += part["end_offset"] - part["start_offset"]
                    p.lag_rows += part["rows_held"]
                else:
                    p.lag_batches += lag["lag_batches"]
                    p.lag_rows += lag["lag_rows"]
        p.stored = sum(c["rows"] for c in p.collectors)
        p.stored_rejects = sum(c["rejects"] for c in p.collectors)
        return p

    def _stats(self, role: str, handles: list[Any]) -> list[dict[str, Any]]:
        """Each actor's stats; an actor that is restarting reports its last known figures."""
        refs = [h.stats.remote() for h in handles]
        out = []
        for i, ref in enumerate(refs):
            key = f"{role}-{i}"
            try:
                stats: dict[str, Any] = ray.get(ref, timeout=30)
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError) as exc:
                log.info("%s is unavailable (restarting?): %s", key, type(exc).__name__)
                stats = {
                    **self._last.get(key, {"id": key, "produced": 0, "rejected": 0, "rows": 0, "rejects": 0}),
                    "restarting": True,
                    "done": False,
                    "running": True,
                    "error": None,
                }
            else:
                self._last[key] = stats
            out.append(stats)
        return out

    def stored_totals(self) -> tuple[int, int]:
        """Rows and rejects committed by this run, from the database's own offsets table."""
        offsets = self._stored_offsets()
        rows = sum(o["rows"] for o in offsets.values()) - self._baseline[0]
        rejects = sum(o["rejects"] for o in offsets.values()) - self._baseline[1]
        return rows, rejects

    def stop_streamers(self) -> None:
        """Stop producing (each streamer finishes the message it is publishing)."""
        self._call_all(self.streamers, "stop")

    @staticmethod
    def _call_all(handles: list[Any], method: str, attempts: int = 5) -> None:
        """Call ``method`` on every actor, retrying one that is restarting."""
        for handle in handles:
            for attempt in range(attempts):
                try:
                    ray.get(getattr(handle, method).remote(), timeout=60)
                    break
                except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError) as exc:
                    log.info("%s() failed (%s); retrying", method, type(exc).__name__)
                    time.sleep(min(2.0, 0.2 * 2**attempt))

    def drain(self, timeout_s: float = 300.0, on_tick: Callable[[Progress], None] | None = None) -> Progress:
        """Wait until the group has committed everything appended; raises on timeout."""
        deadline = time.monotonic() + timeout_s
        while True:
            p = self.progress()
            if on_tick is not None:
                on_tick(p)
            if p.lag_batches == 0:
                return p
            if time.monotonic() > deadline:
                raise PipelineError(
                    f"queue did not drain within {timeout_s:.0f}s: {p.lag_rows} rows "
                    f"({p.lag_batches} batches) uncommitted"
                )
            time.sleep(0.2)

    def stop(self) -> None:
        """Stop collectors (they finish their batch and leave), then kill every actor."""
        self._call_all(self.collectors, "stop")
        for a in self.streamers + self.collectors + self.brokers:
            ray.kill(a, no_restart=True)
        self.streamers, self.collectors, self.brokers = [], [], []
