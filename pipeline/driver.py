"""The driver behind ``python -m pipeline run``: starts Ray, the actors and the gateway; drains.

Start-up order: brokers (resuming offsets from the database), collectors (they claim partitions),
then streamers. Shutdown order is the reverse with a drain in between: streamers stop, the queue is
drained until every partition's committed offset equals its end offset, then collectors leave.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import ray

from pipeline import actors
from pipeline.config import Settings
from pipeline.controller_actor import make_controller
from pipeline.errors import ConfigError, PipelineError
from pipeline.queue.client import broker_of
from pipeline.storage.database import Database
from pipeline.storage.writer import TelemetryWriter

__all__ = ["Pipeline", "Progress", "connect_ray"]

log = logging.getLogger(__name__)


def local_cpus(settings: Settings) -> int:
    """Logical CPUs for a local cluster: the machine's, or enough for every actor the run may start.

    Ray schedules by the CPUs actors *request* (0.5 each here), not by load: on a 2-core laptop two
    collectors, a streamer and a broker already ask for 2, and the gateway's replicas would wait
    forever. The actors mostly wait on I/O, so advertising more logical CPUs than cores is safe.
    """
    low_c, high_c = settings.policy_bounds("collector")
    low_s, high_s = settings.policy_bounds("streamer")
    wanted = 0.5 * (settings.queue.brokers + max(high_c, low_c) + max(high_s, low_s)) + 0.25 * 2 + 1
    return max(os.cpu_count() or 1, math.ceil(wanted))


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
    else:
        kwargs["num_cpus"] = settings.ray.num_cpus or local_cpus(settings)
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
    status: dict[str, Any] = field(default_factory=dict)
    at: float = field(default_factory=time.monotonic)


class Pipeline:
    """Brokers and the controller (which owns streamers and collectors) of one run."""

    def __init__(self, settings: Settings, database: Database) -> None:
        if settings.queue.partitions < settings.collector.count:
            raise ConfigError(
                f"queue.partitions ({settings.queue.partitions}) must be at least the number of collectors "
                f"({settings.collector.count}) [PIPELINE_QUEUE__PARTITIONS]"
            )
        self.settings = settings
        self.database = database
        self.brokers: list[Any] = []
        self.controller: Any = None
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
            self.brokers.append(actors.make_broker(b, q, hosted, first, placement=placement))
        ray.get([b.stats.remote() for b in self.brokers])
        self.controller = make_controller(self.settings, self.database.conninfo, self.brokers, self.run_id)
        ray.get(self.controller.stats.remote())

    @property
    def streamers(self) -> list[Any]:
        """Current streamer handles (owned by the controller)."""
        return [
            ray.get_actor(actors.streamer_name(i), namespace=actors.NAMESPACE)
            for i in range(self._counts()["streamer"])
        ]

    @property
    def collectors(self) -> list[Any]:
        """Current collector handles (owned by the controller)."""
        return [
            ray.get_actor(actors.collector_name(i), namespace=actors.NAMESPACE)
            for i in range(self._counts()["collector"])
        ]

    def _counts(self) -> dict[str, int]:
        roles = ray.get(self.controller.status.remote(), timeout=60)["roles"]
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
                lag = part["groups"].get(group)
                if lag is None:
                    p.lag_batches += part["end_offset"] - part["start_offset"]
                    p.lag_rows += part["rows_held"]
                else:
                    p.lag_batches += lag["lag_batches"]
                    p.lag_rows += lag["lag_rows"]
        p.stored = sum(int(c.get("rows", 0)) for c in p.collectors)
        p.stored_rejects = sum(int(c.get("rejects", 0)) for c in p.collectors)
        return p

    def scale(self, role: str, count: int | None) -> dict[str, Any]:
        """Pin a role's count (None: back to the policy)."""
        result: dict[str, Any] = ray.get(self.controller.scale.remote(role, count), timeout=900)
        return result

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
    def _call(handle: Any, method: str, attempts: int = 5) -> Any:
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
