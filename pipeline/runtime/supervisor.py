"""The supervisor: the controller actor that owns the fleet and applies ``pipeline.scaling`` decisions.

It schedules storage maintenance (time partitions, and folding the collectors' usage log into the
usage rollups) as Ray tasks instead of running DDL or long statements itself, so a slow or failing
maintenance round never stalls scaling decisions.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar

import ray

from pipeline import metrics
from pipeline.config import Settings, collectors_problem
from pipeline.errors import ConfigError, DatabaseUnavailable, PipelineError, QueueError
from pipeline.queue.api import BrokerStats, lag_of
from pipeline.runtime.desired import apply_spec, changes, spec_of
from pipeline.runtime.instruments import Instruments
from pipeline.runtime.names import CONTROLLER_NAME, ActorHandle, actor_options, spawn
from pipeline.runtime.replicas import answering_stats
from pipeline.runtime.supervision import Supervision
from pipeline.scaling import Autoscaler, ScalePolicy
from pipeline.storage.deployments import Deployment, DeploymentStore
from pipeline.storage.setup import compact_usage, maintain
from pipeline.storage.time_partitions import PartitionReport
from pipeline.storage.writer import TelemetryWriter

__all__ = ["Controller", "make_controller"]

log = logging.getLogger(__name__)
T = TypeVar("T")
REPLICATION_PERIOD_S = 0.5


class Controller:
    """The supervisor: keeps the deployed pipeline's actors alive and sized, from its stored desired state.

    On start (first deploy, or Ray restarting this detached actor) it loads the namespace's row of
    ``pipeline_deployments`` — the settings of the latest deploy, the operator's pins, the shard
    layout — and adopts or creates the brokers, collectors and streamers it describes. Every
    ``scaling.period_s`` it heals (re-creates actors gone for good, with backoff; counts restarts),
    keeps time partitions ahead (a storage job), reads consumer lag and streamer utilisation and
    resizes the fleet by each role's ``Autoscaler``. ``scale()`` pins a count; ``reconcile()``
    applies a new deploy's settings.
    """

    def __init__(self, settings: Settings, conninfo: str) -> None:
        from pipeline.runtime.fleet import Fleet

        self._conninfo = conninfo
        self._namespace = settings.ray.namespace
        self._store = DeploymentStore(conninfo)
        # Ray re-runs this constructor when it restarts the supervisor: a constructor that raised would
        # leave the actor dead for good, with nothing to re-create it. The database or a broker being
        # away is a state to wait out here too.
        deployment = _wait_out("read the stored deployment", lambda: self._load_or_create(settings))
        self._settings = apply_spec(settings, deployment.spec)
        self.baseline = dict(deployment.baseline)
        self._supervision = Supervision(time.monotonic)
        self._fleet = Fleet(self._settings, conninfo, self._store, self._supervision)
        self._maintenance: ray.ObjectRef[PartitionReport] | None = None
        self._maintain = ray.remote(num_cpus=0, max_retries=0)(maintain)  # a storage job, run as a Ray task
        self._compaction: ray.ObjectRef[Any] | None = None
        self._compact = ray.remote(num_cpus=0, max_retries=0)(compact_usage)
        _wait_out("start the fleet", lambda: self._fleet.start(deployment.layout))
        self._scalers: dict[str, Autoscaler] = {}
        self._auto: dict[str, bool] = {}
        self._policies(self._settings)
        for role, count in deployment.pins.items():
            if role in self._scalers:
                self._scalers[role].pin(count)
        self._decisions: deque[dict[str, Any]] = deque(maxlen=200)
        self._busy: dict[str, tuple[float, float]] = {}
        self._desired = self._fleet.counts()
        self._frozen = threading.Event()
        self._stop = threading.Event()
        # Decisions and their application are serialized: a tick never applies a decision taken
        # before an operator's pin changed the picture.
        self._decide_lock = threading.Lock()
        self._instruments = Instruments(
            (
                metrics.CONTROLLER_DESIRED,
                metrics.CONTROLLER_ACTUAL,
                metrics.CONTROLLER_DECISIONS,
                metrics.SUPERVISOR_RESTARTS,
                metrics.SUPERVISOR_RECREATIONS,
            )
        )
        self._thread = threading.Thread(target=self._loop, name="controller", daemon=True)
        self._thread.start()
        if self._fleet.elector is not None:
            threading.Thread(target=self._replication_loop, name="elector", daemon=True).start()

    def _load_or_create(self, settings: Settings) -> Deployment:
        deployment = self._store.load(self._namespace)
        if deployment is None:
            deployment = self._store.create(self._namespace, spec_of(settings), _committed(self._conninfo, settings))
        return deployment

    def _policies(self, settings: Settings) -> None:
        """Each role's autoscaler from the settings (pins are kept across a change of bounds)."""
        sc = settings.scaling
        for role, target in (("collector", sc.target_lag), ("streamer", sc.target_utilization)):
            low, high = settings.policy_bounds(role)
            policy = ScalePolicy(
                low, high, target, sc.up_window_s, sc.down_window_s, sc.up_percent, sc.down_percent, sc.rate_period_s
            )
            pinned = self._scalers[role].pinned if role in self._scalers else None
            self._scalers[role] = Autoscaler(role, policy, time.monotonic)
            if pinned is not None:
                self._scalers[role].pin(pinned)
            self._auto[role] = sc.enabled or low < high
        # Streamers only scale on demand when passes are paced; flat out (interval 0) they are always busy.
        if settings.streamer.interval_s == 0 and not (
            settings.scaling.streamers_min is not None or settings.scaling.streamers_max is not None
        ):
            self._auto["streamer"] = False

    # --- the loop ------------------------------------------------------------------------------------

    def _loop(self) -> None:
        next_partitions = next_usage = 0.0
        while not self._stop.wait(self._settings.scaling.period_s):
            try:
                self._heal()
                if time.monotonic() >= next_partitions:
                    next_partitions = time.monotonic() + self._settings.storage.ensure_every_s
                    self._ensure_partitions()
                if self._settings.attribution.enabled and time.monotonic() >= next_usage:
                    next_usage = time.monotonic() + self._settings.attribution.compact_every_s
                    self._fold_usage()
                if not self._frozen.is_set():
                    self.tick()
            except Exception:  # one bad round must not end supervision; it is logged with its traceback
                log.exception("supervisor round failed")

    def _replication_loop(self) -> None:
        """Watch the replicas and elect leaders, twice a second (failover must not wait for a heal round)."""
        elector = self._fleet.elector
        assert elector is not None
        while not self._stop.wait(REPLICATION_PERIOD_S):
            try:
                elector.round()
            except Exception:  # one bad round must not end the elections; it is logged with its traceback
                log.exception("replication round failed")

    def _heal(self) -> None:
        """Re-create actors gone for good; count the restarts Ray made."""
        if self._stop.is_set():
            return
        before = {n: r.restarts for n, r in self._supervision.records.items()}
        for name in self._fleet.heal():
            self._instruments.inc(metrics.SUPERVISOR_RECREATIONS, 1, role=self._supervision.records[name].role)
        for name, r in self._supervision.records.items():
            self._instruments.inc(metrics.SUPERVISOR_RESTARTS, r.restarts - before.get(name, 0), role=r.role)

    def _ensure_partitions(self) -> None:
        """Schedule a maintenance job (time partitions ahead of ingest, within retention) unless one runs."""
        if self._maintenance is not None:
            ready, _ = ray.wait([self._maintenance], timeout=0)
            if not ready:
                return  # the previous round is still running
            try:
                ray.get(self._maintenance)
            except PipelineError as exc:
                log.warning("partition maintenance failed (retried next period): %s", exc)
            except ray.exceptions.RayError as exc:
                log.warning("partition maintenance job was lost (retried next period): %s", exc)
        self._maintenance = self._maintain.remote(self._conninfo, self._settings.storage)

    def _fold_usage(self) -> None:
        """Schedule a compaction of the usage log (a storage job) unless the previous one still runs."""
        if self._compaction is not None:
            ready, _ = ray.wait([self._compaction], timeout=0)
            if not ready:
                return
            try:
                ray.get(self._compaction)
            except (PipelineError, ray.exceptions.RayError) as exc:
                log.warning("usage compaction failed (retried next period): %s", exc)
        self._compaction = self._compact.remote(self._conninfo)

    def _signals(self) -> dict[str, float]:
        group = self._settings.queue.group
        lag = 0.0
        brokers: list[BrokerStats]
        if self._fleet.elector is not None:  # a lost broker's partitions are led elsewhere
            brokers = answering_stats(self._fleet.brokers)
        else:
            brokers = ray.get([b.stats.remote() for b in self._fleet.brokers], timeout=30)
        for b in brokers:
            for part in b["partitions"].values():
                lag += lag_of(part, group)[0]
        utilisation = 0.0
        now = time.monotonic()
        for s in self._fleet.stats()["streamers"]:
            busy = float(s.get("busy_s", 0.0))
            before = self._busy.get(s["id"])
            self._busy[s["id"]] = (now, busy)
            if before is not None and now > before[0]:
                utilisation += max(0.0, min(1.0, (busy - before[1]) / (now - before[0])))
            elif not s.get("done"):
                utilisation += self._scalers["streamer"].policy.target  # no history yet: assume on target
        return {"collector": lag, "streamer": utilisation}

    def tick(self) -> list[dict[str, Any]]:
        """One evaluation of every role; resizes the fleet where a decision says so."""
        with self._decide_lock:
            return self._tick()

    def _tick(self) -> list[dict[str, Any]]:
        signals = self._signals()
        counts = self._fleet.counts()
        made = []
        for role, scaler in self._scalers.items():
            if not self._auto[role] and scaler.pinned is None:
                continue
            decision = scaler.decide(counts[role], signals[role])
            self._desired[role] = decision.desired
            self._instruments.set(metrics.CONTROLLER_DESIRED, decision.desired, role=role)
            self._instruments.set(metrics.CONTROLLER_ACTUAL, counts[role], role=role)
            if decision.direction != "none":
                self._record(decision.as_dict())
                self._fleet.resize(role, decision.desired)
                made.append(decision.as_dict())
        return made

    def _record(self, decision: dict[str, Any]) -> None:
        log.info("%s: %s -> %s (%s)", decision["role"], decision["current"], decision["desired"], decision["reason"])
        self._decisions.append({**decision, "wall_time": time.time()})
        reason = "pinned" if decision["reason"].startswith("pinned") else "policy"
        self._instruments.inc(
            metrics.CONTROLLER_DECISIONS, 1, role=decision["role"], direction=decision["direction"], reason=reason
        )

    # --- what the CLI and the driver call ------------------------------------------------------------------

    def scale(self, role: str, count: int | None) -> dict[str, Any]:
        """Pin ``role`` at ``count`` now (None: back to the policy); returns the status."""
        if role not in self._scalers:
            raise ConfigError(f"unknown role {role!r}: use collector or streamer")
        problem = collectors_problem(self._settings.queue.partitions, count) if role == "collector" and count else None
        if problem:
            raise ConfigError(problem, setting="--collectors", value=str(count))
        with self._decide_lock:
            self._pin(role, count)
            self._store.save_pins(self._namespace, {r: sc.pinned for r, sc in self._scalers.items()})
        return self.status()

    def reconcile(self, spec: dict[str, Any]) -> dict[str, Any]:
        """Apply a new deploy's settings (``spec_of`` form); returns what changed (nothing: an identical deploy)."""
        with self._decide_lock:
            diff = changes(spec_of(self._settings), spec)
            if not diff:
                return {"changed": {}}
            self._store.save_spec(self._namespace, spec)
            self._settings = apply_spec(self._settings, spec)
            self._policies(self._settings)
            for role in ("collector", "streamer"):
                wanted = self._settings.collector.count if role == "collector" else self._settings.streamer.count
                low, high = self._settings.policy_bounds(role)
                current = self._fleet.counts()[role]
                target = min(max(current if self._auto[role] else wanted, low), high)
                if self._scalers[role].pinned is None and target != current:
                    self._fleet.resize(role, target)
            log.info("reconciled a new deploy: %s", diff)
            return {"changed": {k: list(v) for k, v in diff.items()}}

    def _pin(self, role: str, count: int | None) -> None:
        self._scalers[role].pin(count)
        current = self._fleet.counts()[role]
        if count is not None and count != current:
            decision = self._scalers[role].decide(current, 0.0)
            self._record(decision.as_dict())
            self._desired[role] = count
            self._fleet.resize(role, count)
        elif count is None:
            self._decisions.append(
                {
                    "role": role,
                    "current": current,
                    "desired": current,
                    "direction": "none",
                    "reason": "returned to the policy by an operator",
                    "wall_time": time.time(),
                }
            )

    def status(self) -> dict[str, Any]:
        """Counts, targets, pins, policy bounds and the last decisions."""
        counts = self._fleet.counts()
        return {
            "roles": {
                role: {
                    "actual": counts[role],
                    "desired": self._desired.get(role, counts[role]),
                    "pinned": s.pinned,
                    "auto": self._auto[role] and s.pinned is None,
                    "min": s.policy.min,
                    "max": s.policy.max,
                    "target": s.policy.target,
                }
                for role, s in self._scalers.items()
            },
            "decisions": list(self._decisions)[-20:],
            "epoch": self._fleet.epoch,
            "namespace": self._namespace,
            "actors": self._supervision.report(),
            "brokers": len(self._fleet.brokers),
            "replication": self._replication(),
        }

    def _replication(self) -> dict[str, Any] | None:
        """Per partition its leader, replicas, in-sync set and epoch; the last elections (None: one copy)."""
        elector = self._fleet.elector
        if elector is None:
            return None
        q = self._settings.queue
        partitions = elector.report()
        return {
            "factor": q.replication_factor,
            "min_insync": q.min_insync,
            "partitions": partitions,
            "under_replicated": sorted(p for p, r in partitions.items() if r["under_replicated"]),
            "elections": elector.recent(),
        }

    def progress(self) -> dict[str, Any]:
        """Fleet stats plus status."""
        return {**self._fleet.stats(), "status": self.status()}

    def stop_streamers(self) -> None:
        """Freeze scaling and stop producing (for a drain)."""
        self._frozen.set()
        self._fleet.stop_streamers()

    def stop(self) -> None:
        """Stop scaling, let collectors finish and leave, kill the fleet and forget the deployment."""
        self._frozen.set()
        self._stop.set()
        self._fleet.stop_collectors()
        self._fleet.kill_all()
        if self._settings.attribution.enabled:
            try:  # everything the collectors committed is in the usage rollups when the pipeline stops
                compact_usage(self._conninfo)
            except PipelineError as exc:
                log.warning("final usage compaction failed (the next deployment folds the rest): %s", exc)
        self._store.delete(self._namespace)

    def stored_totals(self) -> dict[str, int]:
        """Rows and rejects this deployment committed, from the database's own offsets table."""
        now = _committed(self._conninfo, self._settings)
        return {k: now[k] - int(self.baseline.get(k, 0)) for k in ("rows", "rejects")}

    def stats(self) -> dict[str, Any]:
        """For uniform probing: the pid and status."""
        return {"pid": os.getpid(), **self.status()}


# What a restarted supervisor waits out at start: the database or a broker away, an actor of the fleet
# lost while it was being adopted (re-created on the next try). A ConfigError still ends the start.
_TRANSIENT: tuple[type[BaseException], ...] = (
    DatabaseUnavailable,
    QueueError,
    ray.exceptions.GetTimeoutError,
    ray.exceptions.RayActorError,
)


def _wait_out(
    what: str,
    step: Callable[[], T],
    sleep: Callable[[float], None] = time.sleep,
    max_delay_s: float = 10.0,
) -> T:
    """``step()``, retried with backoff (0.5 s doubling to ``max_delay_s``) for as long as it fails transiently."""
    delay = 0.5
    attempt = 0
    while True:
        try:
            return step()
        except _TRANSIENT as exc:
            attempt += 1
            log.warning(
                "supervisor start: cannot %s yet (attempt %d, retrying in %.1f s): %s", what, attempt, delay, exc
            )
            sleep(delay)
            delay = min(delay * 2, max_delay_s)


def _committed(conninfo: str, settings: Settings) -> dict[str, int]:
    """Rows and rejects the group had committed before this deployment (``stop`` reports the difference)."""
    writer = TelemetryWriter(conninfo)
    writer.open()
    try:
        stored = writer.offsets(settings.queue.group)
    finally:
        writer.close()
    return {"rows": sum(o["rows"] for o in stored.values()), "rejects": sum(o["rejects"] for o in stored.values())}


def make_controller(settings: Settings, conninfo: str) -> ActorHandle:
    """Start the supervisor (or return the running one): named ``controller``, detached, restarted by Ray."""
    opts = actor_options(CONTROLLER_NAME, settings.ray.namespace, 0.0, memory_bytes=256 << 20, max_concurrency=8)
    return spawn(Controller, opts, settings, conninfo)
