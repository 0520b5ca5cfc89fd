"""The streamer and collector actors of one pipeline: start, resize, stop (driver-side Ray code).

The ``Controller`` actor owns a ``Fleet``. Its layout (a shard *epoch* and the counts) is stored on
broker 0 beside the producer checkpoints, so a restarted controller recreates the same actors and
each resumes exactly where it was.

Resizing collectors is a group rebalance: a new collector joins; a leaving one finishes the batch in
hand, commits and leaves. Resizing streamers re-splits the source at a pass boundary: every streamer
finishes the same pass, the new layout's producers get checkpoints that start at that pass (with a
timestamp floor above every stamp given so far), and only then do the new streamers start. Each row
of a pass is therefore produced by exactly one streamer, and per-series timestamps keep increasing.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import ray

from pipeline.config import Settings
from pipeline.errors import PipelineError
from pipeline.queue.api import ProducerCheckpoint
from pipeline.runtime import actors
from pipeline.runtime.names import ActorHandle, ProducerId, collector_name, streamer_name
from pipeline.runtime.reports import CollectorStatus, FleetStats, StreamerStatus, Totals
from pipeline.runtime.transport import RayQueue

__all__ = ["LAYOUT_KEY", "Fleet"]

log = logging.getLogger(__name__)
LAYOUT_KEY = "controller/layout"


class Fleet:
    """Streamers and collectors of one pipeline."""

    def __init__(self, settings: Settings, conninfo: str, brokers: list[ActorHandle], run_id: int = 0) -> None:
        self._settings = settings
        self._namespace = settings.ray.namespace
        self._conninfo = conninfo
        self._brokers = brokers
        self._queue = RayQueue(brokers)
        self._layout_key = f"{LAYOUT_KEY}/{run_id}"
        self._lock = threading.RLock()
        self.streamers: list[ActorHandle] = []
        self.collectors: list[ActorHandle] = []
        self.epoch = 0
        self.retired: Totals = {"produced": 0, "rejected": 0}
        self.started_at = time.time()
        self._last: dict[str, Any] = {}

    # --- layout -------------------------------------------------------------------------------------

    def start(self) -> None:
        """Create the actors of the stored layout (or of the settings, the first time)."""
        layout = self._queue.producer_state(self._layout_key)
        if layout is None:
            layout = {
                "epoch": int(time.time() * 1000),
                "streamers": self._settings.streamer.count,
                "collectors": self._settings.collector.count,
                "retired": self.retired,
                "started_at": self.started_at,
            }
            self._queue.checkpoint(self._layout_key, layout)
        else:
            log.info("resuming layout %s", layout)
        self.epoch = int(layout["epoch"])
        retired = layout.get("retired", self.retired)
        self.retired = {"produced": int(retired["produced"]), "rejected": int(retired["rejected"])}
        self.started_at = float(layout.get("started_at", self.started_at))
        with self._lock:
            for i in range(int(layout["collectors"])):
                self.collectors.append(self._collector(i))
            n = int(layout["streamers"])
            self.streamers = [self._streamer(i, n) for i in range(n)]

    def _save(self) -> None:
        self._queue.checkpoint(
            self._layout_key,
            {
                "epoch": self.epoch,
                "streamers": len(self.streamers),
                "collectors": len(self.collectors),
                "retired": self.retired,
                "started_at": self.started_at,
            },
        )

    def _streamer(self, index: int, count: int) -> ActorHandle:
        s = self._settings
        settings = s.streamer
        if settings.duration_s is not None:  # a new layout streams for what is left of the run
            left = max(0.001, settings.duration_s - (time.time() - self.started_at))
            settings = settings.model_copy(update={"duration_s": left})
        producer = ProducerId(index, count, self.epoch)
        return actors.make_streamer(
            producer, settings, s.queue, self._namespace, self._brokers, placement=s.ray.placement
        )

    def _collector(self, index: int) -> ActorHandle:
        s = self._settings
        return actors.make_collector(
            index, s.collector, s.queue, self._namespace, self._conninfo, self._brokers, placement=s.ray.placement
        )

    def counts(self) -> dict[str, int]:
        """Actors running per role."""
        return {"streamer": len(self.streamers), "collector": len(self.collectors)}

    # --- resizing ----------------------------------------------------------------------------------------

    def resize(self, role: str, count: int) -> None:
        """Bring ``role`` to ``count`` actors."""
        if role == "collector":
            self.resize_collectors(count)
        elif role == "streamer":
            self.resize_streamers(count)
        else:
            raise ValueError(f"unknown role {role!r}")

    def resize_collectors(self, count: int) -> None:
        """Add collectors (they join and claim) or retire the newest (they commit, then leave)."""
        with self._lock:
            while len(self.collectors) < count:
                self.collectors.append(self._collector(len(self.collectors)))
            while len(self.collectors) > count:
                handle = self.collectors.pop()
                name = collector_name(len(self.collectors))
                _call(handle, "stop")
                _kill(handle, name, self._namespace)
            self._save()

    def resize_streamers(self, count: int) -> None:
        """Re-split the source over ``count`` streamers at the next common pass boundary."""
        with self._lock:
            if count == len(self.streamers):
                return
            old = self.streamers
            stats = [_get(h.stats.remote()) for h in old]
            if old and all(s["done"] for s in stats):
                log.info("streamers are done; not re-splitting")
                return
            # Two phases, so that no streamer ever runs past the common boundary: every streamer
            # stops at the end of the pass it is in; the boundary is the furthest of those; the
            # ones behind catch up to it. Each row of a pass then comes from exactly one layout.
            paused: list[StreamerStatus] = ray.get([h.pause.remote() for h in old], timeout=900)
            boundary = max((int(s["passes"]) for s in paused), default=0)
            passes = self._settings.streamer.passes
            if passes is not None:
                boundary = min(boundary, passes)
            final: list[StreamerStatus] = ray.get([h.run_until.remote(boundary) for h in old], timeout=900)
            if any(int(s["passes"]) != boundary and not s["done"] for s in final):
                raise PipelineError(
                    f"re-split: streamers did not all reach pass {boundary}: {[s['passes'] for s in final]}"
                )
            for s in final:
                self.retired["produced"] += int(s["produced"])
                self.retired["rejected"] += int(s["rejected"])
            stamp_floor = max((int(s["last_stamp_us"]) for s in final), default=0)
            epoch = max(int(time.time() * 1000), self.epoch + 1)
            done = passes is not None and boundary >= passes
            start: ProducerCheckpoint = {
                "pass": boundary,
                "position": None,
                "seq": 0,
                "stamp_us": stamp_floor,
                "done": done,
                "produced": 0,
                "rejected": 0,
            }
            for i in range(count):
                self._queue.checkpoint(str(ProducerId(i, count, epoch)), start)
            self.epoch = epoch
            for i, handle in enumerate(old):
                _kill(handle, streamer_name(i), self._namespace)
            self.streamers = [self._streamer(i, count) for i in range(count)]
            self._save()
            log.info("re-split the source over %d streamer(s) from pass %d (epoch %d)", count, boundary, epoch)

    # --- observing and stopping --------------------------------------------------------------------------

    def stats(self) -> FleetStats:
        """Every actor's stats; one that is restarting reports its last known figures and ``restarting``."""
        # No lock: a resize may hold it for a whole pass. The lists are copied; a stale handle answers
        # with RayActorError, reported below as restarting.
        streamers: list[StreamerStatus] = self._all_stats(list(self.streamers), "streamer")
        collectors: list[CollectorStatus] = self._all_stats(list(self.collectors), "collector")
        return {
            "streamers": streamers,
            "collectors": collectors,
            "retired": Totals(**self.retired),
            "epoch": self.epoch,
        }

    def _all_stats(self, handles: list[ActorHandle], role: str) -> list[Any]:
        refs: list[Any] = [h.stats.remote() for h in handles]
        out: list[Any] = []
        for i, ref in enumerate(refs):
            key = f"{role}-{i}"
            stats: dict[str, Any]
            try:
                stats = ray.get(ref, timeout=30)
                self._last[key] = stats
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError) as exc:
                base = self._last.get(
                    key, {"id": key, "produced": 0, "rejected": 0, "rows": 0, "rejects": 0, "passes": 0}
                )
                stats = {
                    **base,
                    "restarting": True,
                    "error": None,
                    "done": False,
                    "running": True,
                    "detail": type(exc).__name__,
                }
            out.append(stats)
        return out

    def stop_streamers(self) -> None:
        """Stop producing."""
        with self._lock:
            for h in self.streamers:
                _call(h, "stop")

    def stop_collectors(self) -> None:
        """Collectors finish their batch and leave."""
        with self._lock:
            for h in self.collectors:
                _call(h, "stop")

    def kill_all(self) -> None:
        """Kill every actor of the fleet."""
        with self._lock:
            for h in self.streamers + self.collectors:
                ray.kill(h, no_restart=True)
            self.streamers, self.collectors = [], []


def _get(ref: ray.ObjectRef[Any], timeout: float = 60.0) -> Any:
    return ray.get(ref, timeout=timeout)


def _call(handle: ActorHandle, method: str, attempts: int = 5) -> None:
    """Call ``method``, retrying an actor that is restarting."""
    for attempt in range(attempts):
        try:
            ray.get(getattr(handle, method).remote(), timeout=120)
            return
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError) as exc:
            log.info("%s() failed (%s); retrying", method, type(exc).__name__)
            time.sleep(min(2.0, 0.2 * 2**attempt))


def _kill(handle: ActorHandle, name: str, namespace: str, wait_s: float = 30.0) -> None:
    """Kill an actor and wait until its name is free again (so it can be reused)."""
    ray.kill(handle, no_restart=True)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        try:
            ray.get_actor(name, namespace=namespace)
        except ValueError:
            return
        time.sleep(0.05)
    log.warning("actor %s still registered %.0fs after kill", name, wait_s)
