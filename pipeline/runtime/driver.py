"""A client of a deployed pipeline: deploy or reconcile it, follow its progress, drain and stop it.

``deploy`` creates the supervisor (a named, detached actor in the pipeline's namespace) or hands a
running one the new settings, and returns: nothing here owns an actor, so the end of this process —
``python -m pipeline deploy`` returning, a RayJob's driver exiting or being killed — never stops
the pipeline. ``stop`` is the reverse with a drain in between: streamers stop, the queue is drained
until every partition's committed offset equals its end offset, then the supervisor removes every
actor and forgets the deployment. ``run`` is deploy, follow, stop in one process.
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
from pipeline.runtime.desired import spec_of
from pipeline.runtime.names import CONTROLLER_NAME, ActorHandle, collector_name, find, find_brokers, streamer_name
from pipeline.runtime.replicas import answering_stats
from pipeline.runtime.reports import CollectorStatus, StreamerStatus
from pipeline.runtime.supervisor import make_controller
from pipeline.storage.database import Database
from pipeline.storage.deployments import DeploymentStore

__all__ = ["Pipeline", "Progress", "Summary"]

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
    started_at: float = 0.0  # wall time the deployment started
    at: float = field(default_factory=time.monotonic)


@dataclass(frozen=True, slots=True)
class Summary:
    """What a deployment did, from its start to its stop (``run --json`` and ``stop --json`` print it)."""

    produced: int
    stored: int
    rejected: int
    rejects_stored: int
    seconds: float = 0.0  # from the deployment's start to its stop

    def as_dict(self) -> dict[str, int | float]:
        """The JSON form (``run`` and ``stop`` add where the database is)."""
        return {
            "produced": self.produced,
            "stored": self.stored,
            "rejected": self.rejected,
            "rejects_stored": self.rejects_stored,
            "seconds": round(self.seconds, 2),
            "rows_per_s": round(self.stored / self.seconds, 1) if self.seconds > 0 else 0.0,
        }


class Pipeline:
    """The deployed pipeline of ``settings.ray.namespace``, seen from a client process."""

    def __init__(self, settings: Settings, database: Database | None = None) -> None:
        self.settings = settings
        self.database = database
        self.controller: ActorHandle | None = None

    @property
    def namespace(self) -> str:
        """The Ray namespace the pipeline lives in."""
        return self.settings.ray.namespace

    # --- lifecycle ---------------------------------------------------------------------------------

    def deploy(self, fresh: bool = False) -> dict[str, Any]:
        """Create the pipeline, or reconcile the running one to these settings; returns what happened.

        ``fresh`` (``run``): forget a stored deployment that no supervisor runs any more (a run that
        ended without ``stop``), so this one starts from the settings given.
        """
        running = find(CONTROLLER_NAME, self.namespace)
        if running is not None and fresh:
            raise PipelineError(
                f"a pipeline is already deployed in Ray namespace {self.namespace!r}: follow it with `status`, "
                "remove it with `stop`, or run in another namespace (PIPELINE_RAY__NAMESPACE)"
            )
        if running is None:
            if self.database is None:
                raise PipelineError("deploying needs the database (DATABASE_URL)")
            if fresh:
                DeploymentStore(self.database.conninfo).delete(self.namespace)
            self.controller = make_controller(self.settings, self.database.conninfo)
            ray.get(self.controller.stats.remote(), timeout=900)  # the fleet is up (a queue dir may take long)
            # A stored deployment (the cluster lost its supervisor) resumes; this deploy's settings win.
            self._reconcile()
            return {"action": "created", "namespace": self.namespace}
        self.controller = running
        result = self._reconcile()
        return {"action": "reconciled" if result["changed"] else "unchanged", "namespace": self.namespace, **result}

    def _reconcile(self) -> dict[str, Any]:
        spec = spec_of(self.settings)
        return cast(dict[str, Any], ray.get(self._supervisor().reconcile.remote(spec), timeout=900))

    def attach(self) -> None:
        """Find the running supervisor; ``PipelineError`` when nothing is deployed in the namespace."""
        self.controller = find(CONTROLLER_NAME, self.namespace)
        if self.controller is None:
            raise PipelineError(f"no pipeline is deployed in Ray namespace {self.namespace!r}")

    def _supervisor(self) -> ActorHandle:
        if self.controller is None:
            self.attach()
        assert self.controller is not None
        return self.controller

    @property
    def brokers(self) -> list[ActorHandle]:
        """Current broker handles (owned by the supervisor)."""
        return find_brokers(self.namespace, self.settings.queue.brokers)

    @property
    def streamers(self) -> list[ActorHandle]:
        """Current streamer handles (owned by the supervisor)."""
        return self._handles(streamer_name, self._counts()["streamer"])

    @property
    def collectors(self) -> list[ActorHandle]:
        """Current collector handles (owned by the supervisor)."""
        return self._handles(collector_name, self._counts()["collector"])

    def _handles(self, name: Callable[[int], str], count: int) -> list[ActorHandle]:
        found = [find(name(i), self.namespace) for i in range(count)]
        return [h for h in found if h is not None]

    def _counts(self) -> dict[str, int]:
        status = cast(dict[str, Any], self._call("status"))
        return {role: int(r["actual"]) for role, r in status["roles"].items()}

    def progress(self) -> Progress:
        """Counters from every actor and the queue's lag."""
        p = Progress()
        fleet = self._call("progress")
        p.streamers = fleet["streamers"]
        p.collectors = fleet["collectors"]
        p.status = fleet["status"]
        p.started_at = float(fleet.get("started_at", 0.0))
        brokers = find_brokers(self.namespace, int(p.status.get("brokers", self.settings.queue.brokers)))
        replicated = p.status.get("replication") is not None
        if replicated:  # a lost broker's partitions are led elsewhere: read those that answer
            p.brokers = answering_stats(brokers)
        else:
            p.brokers = ray.get([b.stats.remote() for b in brokers], timeout=120) if brokers else []
        p.produced = fleet["retired"]["produced"] + sum(int(s.get("produced", 0)) for s in p.streamers)
        p.rejected = fleet["retired"]["rejected"] + sum(int(s.get("rejected", 0)) for s in p.streamers)
        p.streamers_done = all(s.get("done") or not s.get("running", True) for s in p.streamers)
        p.errors = [f"{s['id']}: {s['error']}" for s in [*p.streamers, *p.collectors] if s.get("error")]
        group = self.settings.queue.group
        reported = set()
        for b in p.brokers:
            for partition, part in b["partitions"].items():
                rows, batches = lag_of(part, group)
                p.lag_rows += rows
                p.lag_batches += batches
                reported.add(int(partition))
        if replicated:  # a partition no leader reports is not drained (its leader is being elected)
            p.lag_batches += len({int(k) for k in p.status["replication"]["partitions"]} - reported)
        p.stored = sum(int(c.get("rows", 0)) for c in p.collectors)
        p.stored_rejects = sum(int(c.get("rejects", 0)) for c in p.collectors)
        return p

    def scale(self, role: str, count: int | None) -> dict[str, Any]:
        """Pin a role's count (None: back to the policy)."""
        return cast(dict[str, Any], ray.get(self._supervisor().scale.remote(role, count), timeout=900))

    def stored_totals(self) -> tuple[int, int]:
        """Rows and rejects committed by this deployment, from the database's own offsets table."""
        totals = cast(dict[str, int], self._call("stored_totals"))
        return totals["rows"], totals["rejects"]

    def stop_streamers(self) -> None:
        """Stop producing (each streamer finishes the message it is publishing); scaling freezes."""
        self._call("stop_streamers")

    def _call(self, method: str, attempts: int = 8) -> Any:
        """Call the supervisor, waiting out a supervisor that Ray is restarting."""
        for attempt in range(attempts):
            try:
                return ray.get(getattr(self._supervisor(), method).remote(), timeout=900)
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError) as exc:
                if attempt == attempts - 1:
                    raise PipelineError(f"the pipeline's supervisor did not answer {method}(): {exc}") from None
                log.info("%s() failed (%s); retrying", method, type(exc).__name__)
                time.sleep(min(5.0, 0.2 * 2**attempt))
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
        """Collectors finish their batch and leave; every actor is removed; the deployment is forgotten."""
        controller = self._supervisor()
        self._call("stop")
        ray.kill(controller, no_restart=True)
        self.controller = None

    def finish(self, on_tick: Callable[[Progress], None] | None = None, timeout_s: float = 300.0) -> Summary:
        """Stop streamers, drain, stop everything; returns what this deployment produced and stored."""
        self.stop_streamers()
        final = self.drain(timeout_s, on_tick)
        stored, rejects = self.stored_totals()
        self.stop()
        seconds = time.time() - final.started_at if final.started_at else 0.0
        return Summary(final.produced, stored, final.rejected, rejects, seconds)
