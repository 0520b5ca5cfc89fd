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
from typing import Any, cast

import ray

from pipeline.config import Settings
from pipeline.errors import PipelineError
from pipeline.queue.api import BrokerStats, lag_of
from pipeline.queue.routing import broker_of
from pipeline.runtime import actors
from pipeline.runtime.names import ActorHandle, collector_name, find, streamer_name
from pipeline.runtime.reports import CollectorStatus, StreamerStatus
from pipeline.runtime.supervisor import make_controller
from pipeline.storage.database import Database
from pipeline.storage.writer import TelemetryWriter

__all__ = ["Pipeline", "Progress"]

log = logging.getLogger(__name__)


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
    streamers: list[StreamerStatus] = field(default_factory=list)
    collectors: list[CollectorStatus] = field(default_factory=list)
    brokers: list[BrokerStats] = field(default_factory=list)
    status: dict[str, Any] = field(default_factory=dict)
    at: float = field(default_factory=time.monotonic)


class Pipeline:
    """Brokers and the controller (which owns streamers and collectors) of one run."""

    def __init__(self, settings: Settings, database: Database) -> None:
        self.settings = settings
        self.database = database
        self.brokers: list[ActorHandle] = []
        self.controller: ActorHandle | None = None
        self.run_id = int(time.time() * 1000)
        self._baseline = (0, 0)

    # --- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        """Start brokers (resuming offsets stored in the database), then the controller and its fleet."""
        q = self.settings.queue
        placement = self.settings.ray.placement
        offsets = self._stored_offsets()
        self._baseline = (sum(o["rows"] for o in offsets.values()), sum(o["rejects"] for o in offsets.values()))
        starts = {p: o["next_offset"] for p, o in offsets.items()}
        for b in range(q.brokers):
            hosted = [p for p in range(q.partitions) if broker_of(p, q.brokers) == b]
            first = {p: starts.get(p, 0) for p in hosted}
            self.brokers.append(
                actors.make_broker(b, q, self.settings.ray.namespace, hosted, first, placement=placement)
            )
        ray.get([b.stats.remote() for b in self.brokers])
        self.controller = make_controller(self.settings, self.database.conninfo, self.brokers, self.run_id)
        ray.get(self.controller.stats.remote())

    @property
    def streamers(self) -> list[ActorHandle]:
        """Current streamer handles (owned by the controller)."""
        return self._handles(streamer_name, self._counts()["streamer"])

    @property
    def collectors(self) -> list[ActorHandle]:
        """Current collector handles (owned by the controller)."""
        return self._handles(collector_name, self._counts()["collector"])

    def _handles(self, name: Callable[[int], str], count: int) -> list[ActorHandle]:
        found = [find(name(i), self.settings.ray.namespace) for i in range(count)]
        return [h for h in found if h is not None]

    def _counts(self) -> dict[str, int]:
        assert self.controller is not None
        status = cast(dict[str, Any], ray.get(self.controller.status.remote(), timeout=60))
        roles = status["roles"]
        return {role: int(r["actual"]) for role, r in roles.items()}

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
        fleet = self._call(self.controller, "progress")
        p.streamers = fleet["streamers"]
        p.collectors = fleet["collectors"]
        p.status = fleet["status"]
        p.brokers = ray.get([b.stats.remote() for b in self.brokers]) if self.brokers else []
        p.produced = fleet["retired"]["produced"] + sum(int(s.get("produced", 0)) for s in p.streamers)
        p.rejected = fleet["retired"]["rejected"] + sum(int(s.get("rejected", 0)) for s in p.streamers)
        p.streamers_done = all(s.get("done") or not s.get("running", True) for s in p.streamers)
        p.errors = [f"{s['id']}: {s['error']}" for s in p.streamers + p.collectors if s.get("error")]
        group = self.settings.queue.group
        for b in p.brokers:
            for part in b["partitions"].values():
                rows, batches = lag_of(part, group)
                p.lag_rows += rows
                p.lag_batches += batches
        p.stored = sum(int(c.get("rows", 0)) for c in p.collectors)
        p.stored_rejects = sum(int(c.get("rejects", 0)) for c in p.collectors)
        return p

    def scale(self, role: str, count: int | None) -> dict[str, Any]:
        """Pin a role's count (None: back to the policy)."""
        assert self.controller is not None
        return cast(dict[str, Any], ray.get(self.controller.scale.remote(role, count), timeout=900))

    def stored_totals(self) -> tuple[int, int]:
        """Rows and rejects committed by this run, from the database's own offsets table."""
        offsets = self._stored_offsets()
        rows = sum(o["rows"] for o in offsets.values()) - self._baseline[0]
        rejects = sum(o["rejects"] for o in offsets.values()) - self._baseline[1]
        return rows, rejects

    def stop_streamers(self) -> None:
        """Stop producing (each streamer finishes the message it is publishing); scaling freezes."""
        self._call(self.controller, "stop_streamers")

    @staticmethod
    def _call(handle: ActorHandle | None, method: str, attempts: int = 5) -> Any:
        """Call ``method``, retrying an actor that is restarting."""
        for attempt in range(attempts):
            try:
                return ray.get(getattr(handle, method).remote(), timeout=900)
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError) as exc:
                if attempt == attempts - 1:
                    raise
                log.info("%s() failed (%s); retrying", method, type(exc).__name__)
                time.sleep(min(2.0, 0.2 * 2**attempt))
        return None

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
        """Collectors finish their batch and leave; then every actor is killed."""
        if self.controller is not None:
            self._call(self.controller, "stop")
            ray.kill(self.controller, no_restart=True)
            self.controller = None
        for a in self.brokers:
            ray.kill(a, no_restart=True)
        self.brokers = []
