"""The supervisor: the controller actor that owns the fleet and applies ``pipeline.scaling`` decisions.

It schedules storage maintenance (time partitions) as a Ray task instead of running DDL itself,
so a slow or failing maintenance round never stalls scaling decisions.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from typing import Any

import ray

from pipeline import metrics
from pipeline.config import Settings, collectors_problem
from pipeline.errors import ConfigError, PipelineError
from pipeline.queue.api import BrokerStats, lag_of
from pipeline.runtime.instruments import Instruments
from pipeline.runtime.names import CONTROLLER_NAME, ActorHandle, actor_options, spawn
from pipeline.scaling import Autoscaler, ScalePolicy
from pipeline.storage.setup import maintain
from pipeline.storage.time_partitions import PartitionReport

__all__ = ["Controller", "make_controller"]

log = logging.getLogger(__name__)


class Controller:
    """The elastic controller actor: owns the fleet, applies ``pipeline.scaling`` decisions.

    Every ``scaling.period_s`` it reads consumer lag (collectors) and streamer utilisation, asks each
    role's ``Autoscaler`` for a count and resizes the fleet. ``scale()`` pins a count (the CLI's
    ``python -m pipeline scale``); ``None`` hands the role back to the policy.
    """

    def __init__(self, settings: Settings, conninfo: str, brokers: list[ActorHandle], run_id: int) -> None:
        from pipeline.runtime.fleet import Fleet

        self._settings = settings
        self._conninfo = conninfo
        self._brokers = brokers
        self._fleet = Fleet(settings, conninfo, brokers, run_id)
        self._maintenance: ray.ObjectRef[PartitionReport] | None = None
        self._maintain = ray.remote(num_cpus=0, max_retries=0)(maintain)  # a storage job, run as a Ray task
        self._fleet.start()
        sc = settings.scaling
        self._scalers: dict[str, Autoscaler] = {}
        self._auto: dict[str, bool] = {}
        for role, target in (("collector", sc.target_lag), ("streamer", sc.target_utilization)):
            low, high = settings.policy_bounds(role)
            policy = ScalePolicy(
                low, high, target, sc.up_window_s, sc.down_window_s, sc.up_percent, sc.down_percent, sc.rate_period_s
            )
            self._scalers[role] = Autoscaler(role, policy, time.monotonic)
            self._auto[role] = sc.enabled or low < high
        # Streamers only scale on demand when passes are paced; flat out (interval 0) they are always busy.
        if settings.streamer.interval_s == 0 and not (
            settings.scaling.streamers_min is not None or settings.scaling.streamers_max is not None
        ):
            self._auto["streamer"] = False
        self._decisions: deque[dict[str, Any]] = deque(maxlen=200)
        self._busy: dict[str, tuple[float, float]] = {}
        self._desired = self._fleet.counts()
        self._frozen = threading.Event()
        self._stop = threading.Event()
        # Decisions and their application are serialized: a tick never applies a decision taken
        # before an operator's pin changed the picture.
        self._decide_lock = threading.Lock()
        self._instruments = Instruments(
            (metrics.CONTROLLER_DESIRED, metrics.CONTROLLER_ACTUAL, metrics.CONTROLLER_DECISIONS)
        )
        self._thread = threading.Thread(target=self._loop, name="controller", daemon=True)
        self._thread.start()

    # --- the loop ------------------------------------------------------------------------------------

    def _loop(self) -> None:
        next_partitions = 0.0
        while not self._stop.wait(self._settings.scaling.period_s):
            if time.monotonic() >= next_partitions:
                next_partitions = time.monotonic() + self._settings.storage.ensure_every_s
                self._ensure_partitions()
            if self._frozen.is_set():
                continue
            try:
                self.tick()
            except Exception:  # one bad tick must not end scaling; it is logged with its traceback
                log.exception("controller tick failed")

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

    def _signals(self) -> dict[str, float]:
        group = self._settings.queue.group
        lag = 0.0
        brokers: list[BrokerStats] = ray.get([b.stats.remote() for b in self._brokers], timeout=30)
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
        return self.status()

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
        }

    def progress(self) -> dict[str, Any]:
        """Fleet stats plus status."""
        return {**self._fleet.stats(), "status": self.status()}

    def stop_streamers(self) -> None:
        """Freeze scaling and stop producing (for a drain)."""
        self._frozen.set()
        self._fleet.stop_streamers()

    def stop(self) -> None:
        """Stop scaling, let collectors finish and leave, and kill the fleet."""
        self._frozen.set()
        self._stop.set()
        self._fleet.stop_collectors()
        self._fleet.kill_all()

    def stats(self) -> dict[str, Any]:
        """For uniform probing: the pid and status."""
        return {"pid": os.getpid(), **self.status()}


def make_controller(settings: Settings, conninfo: str, brokers: list[ActorHandle], run_id: int) -> ActorHandle:
    """Start the controller (it starts the fleet). Named ``controller`` for the CLI."""
    opts = actor_options(CONTROLLER_NAME, settings.ray.namespace, 0.0, memory_bytes=128 << 20, max_concurrency=8)
    return spawn(Controller, opts, settings, conninfo, brokers, run_id)
