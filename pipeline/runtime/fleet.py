"""The actors of one pipeline: brokers, streamers and collectors — create or adopt, resize, heal, stop.

The supervisor owns a ``Fleet``. Its layout (a shard *epoch* and the counts) is stored in the
database (``pipeline_deployments``), so a restarted supervisor adopts the same actors (they are
detached and named; creation is get-if-exists) and each resumes exactly where it was.

Resizing collectors is a group rebalance: a new collector joins; a leaving one finishes the batch in
hand, commits and leaves. Resizing streamers re-splits the source at a pass boundary: every streamer
finishes the same pass, the new layout is stored *before* any old streamer is removed (so a
supervisor that dies half way resumes the new layout, never both), the new layout's producers get
checkpoints that start at that pass (with a timestamp floor above every stamp given so far), and only
then do the new streamers start. Each row of a pass is produced by exactly one streamer.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, cast

import ray

from pipeline.config import Settings
from pipeline.errors import PipelineError
from pipeline.queue.api import ProducerCheckpoint
from pipeline.queue.routing import broker_of
from pipeline.runtime import actors
from pipeline.runtime.elector import Elector
from pipeline.runtime.names import ActorHandle, ProducerId, broker_name, collector_name, find, streamer_name
from pipeline.runtime.reports import CollectorStatus, FleetStats, StreamerStatus, Totals
from pipeline.runtime.supervision import Supervision
from pipeline.storage.checkpoints import CheckpointStore
from pipeline.storage.deployments import DeploymentStore

__all__ = ["Fleet", "Layout"]

log = logging.getLogger(__name__)
Layout = dict[str, Any]  # {"epoch", "streamers", "collectors", "retired", "started_at", "resplit"?}
PROBE_S = 10.0


class Fleet:
    """Brokers, streamers and collectors of one pipeline."""

    def __init__(self, settings: Settings, conninfo: str, store: DeploymentStore, supervision: Supervision) -> None:
        self._settings = settings
        self._namespace = settings.ray.namespace
        self._conninfo = conninfo
        self._store = store
        self.supervision = supervision
        self._lock = threading.RLock()
        self.brokers: list[ActorHandle] = []
        self.streamers: list[ActorHandle] = []
        self.collectors: list[ActorHandle] = []
        self.epoch = 0
        self.retired: Totals = {"produced": 0, "rejected": 0}
        self.started_at = time.time()
        self._last: dict[str, Any] = {}
        # With replication the supervisor elects partition leaders (pipeline.runtime.elector).
        self.elector = Elector(settings.queue, lambda: self.brokers) if settings.queue.replication_factor > 1 else None

    # --- layout -------------------------------------------------------------------------------------

    def start(self, layout: Layout | None) -> None:
        """Create or adopt the brokers and the actors of the stored layout (or of the settings, the first time)."""
        if layout is None:
            layout = {
                "epoch": int(time.time() * 1000),
                "streamers": self._settings.streamer.count,
                "collectors": self._settings.collector.count,
                "retired": self.retired,
                "started_at": self.started_at,
            }
        else:
            log.info("resuming layout %s", layout)
        self.epoch = int(layout["epoch"])
        retired = layout.get("retired", self.retired)
        self.retired = {"produced": int(retired["produced"]), "rejected": int(retired["rejected"])}
        self.started_at = float(layout.get("started_at", self.started_at))
        with self._lock:
            self.brokers = [self._broker(b) for b in range(self._settings.queue.brokers)]
            ray.get([b.stats.remote() for b in self.brokers], timeout=600)  # recovery of a queue dir may take long
            if self.elector is not None:
                self.elector.settle()  # every partition has a leader before anyone produces or consumes
            self._checkpoints = CheckpointStore(self._conninfo, self._namespace)
            if layout.get("resplit"):
                self._finish_resplit(layout)
            self.collectors = [self._collector(i) for i in range(int(layout["collectors"]))]
            n = int(layout["streamers"])
            self.streamers = [self._adopt_streamer(i, n) for i in range(n)]
            self._save()

    def layout(self) -> Layout:
        """The layout to store."""
        return {
            "epoch": self.epoch,
            "streamers": len(self.streamers),
            "collectors": len(self.collectors),
            "retired": dict(self.retired),
            "started_at": self.started_at,
        }

    def _save(self, **extra: Any) -> None:
        self._store.save_layout(self._namespace, {**self.layout(), **extra})

    def _broker(self, index: int) -> ActorHandle:
        s = self._settings
        q = s.queue
        hosted = [p for p in range(q.partitions) if broker_of(p, q.brokers) == index]
        return actors.make_broker(index, q, self._namespace, hosted, self._conninfo, placement=s.ray.placement)

    def _streamer(self, index: int, count: int) -> ActorHandle:
        s = self._settings
        settings = s.streamer
        if settings.duration_s is not None:  # a new layout streams for what is left of the run
            left = max(0.001, settings.duration_s - (time.time() - self.started_at))
            settings = settings.model_copy(update={"duration_s": left})
        producer = ProducerId(index, count, self.epoch)
        return actors.make_streamer(
            producer, settings, s.queue, self._namespace, self._conninfo, self.brokers, placement=s.ray.placement
        )

    def _adopt_streamer(self, index: int, count: int) -> ActorHandle:
        """The running streamer ``index`` if it belongs to this layout; else a new one (an old one is removed).

        One of this layout that a re-split had paused at its pass boundary (the supervisor died before
        it stored the new layout) streams on: this layout is the one that goes on.
        """
        handle = self._streamer(index, count)
        status = cast(StreamerStatus, ray.get(handle.stats.remote(), timeout=120))
        if status["id"] != str(ProducerId(index, count, self.epoch)):
            log.warning("streamer-%d runs %s, not the stored layout's: replacing it", index, status["id"])
            _kill(handle, streamer_name(index), self._namespace)
            handle = self._streamer(index, count)
        else:
            ray.get(handle.resume.remote(), timeout=120)
        return handle

    def _collector(self, index: int) -> ActorHandle:
        s = self._settings
        return actors.make_collector(
            index,
            s.collector,
            s.queue,
            self._namespace,
            self._conninfo,
            self.brokers,
            s.database,
            placement=s.ray.placement,
            attribution=s.attribution,
        )

    def counts(self) -> dict[str, int]:
        """Actors running per role."""
        return {"streamer": len(self.streamers), "collector": len(self.collectors)}

    # --- healing -------------------------------------------------------------------------------------

    def expected(self) -> list[tuple[str, str, ActorHandle, Callable[[], ActorHandle]]]:
        """(name, role, handle, re-create) of every actor the layout wants."""
        out: list[tuple[str, str, ActorHandle, Callable[[], ActorHandle]]] = []
        for i, h in enumerate(self.brokers):
            out.append((broker_name(i), "broker", h, lambda i=i: self._broker(i)))  # type: ignore[misc]
        n = len(self.streamers)
        for i, h in enumerate(self.streamers):
            out.append((streamer_name(i), "streamer", h, lambda i=i: self._streamer(i, n)))  # type: ignore[misc]
        for i, h in enumerate(self.collectors):
            out.append((collector_name(i), "collector", h, lambda i=i: self._collector(i)))  # type: ignore[misc]
        return out

    def heal(self) -> list[str]:
        """Probe every actor; re-create those gone for good (with backoff). Returns what was re-created."""
        with self._lock:
            wanted = self.expected()
            refs: list[Any] = [h.stats.remote() for _, _, h, _ in wanted]
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=PROBE_S)
            done = set(ready)
            made = []
            for (name, role, _, make), ref in zip(wanted, refs, strict=True):
                if ref not in done:
                    self.supervision.silent(name, role, restarting=False)
                    continue
                try:
                    answer: dict[str, Any] = ray.get(ref, timeout=0)
                    pid = int(answer.get("pid", 0))
                except ray.exceptions.ActorDiedError as exc:
                    if self.supervision.gone(name, role, _reason(exc)):
                        log.warning("%s is gone for good (%s): re-creating it", name, _reason(exc))
                        self._replace(role, name, make())
                        self.supervision.recreated(name, role)
                        made.append(name)
                    continue
                except ray.exceptions.RayActorError:
                    self.supervision.silent(name, role, restarting=True)
                    continue
                if self.supervision.answered(name, role, pid):
                    log.warning("%s was restarted by Ray (now pid %d)", name, pid)
            return made

    def _replace(self, role: str, name: str, handle: ActorHandle) -> None:
        index = int(name.rsplit("-", 1)[1])
        {"broker": self.brokers, "streamer": self.streamers, "collector": self.collectors}[role][index] = handle

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
                self.supervision.forget(name)
            self._save()

    def resize_streamers(self, count: int) -> None:
        """Re-split the source over ``count`` streamers at the next common pass boundary."""
        with self._lock:
            if count == len(self.streamers):
                return
            old = self.streamers
            stats: list[StreamerStatus] = ray.get([h.stats.remote() for h in old], timeout=60)
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
            resplit = {
                "count": count,
                "boundary": boundary,
                "stamp_floor": max((int(s["last_stamp_us"]) for s in final), default=0),
                "done": passes is not None and boundary >= passes,
                "old": len(old),
            }
            self.epoch = max(int(time.time() * 1000), self.epoch + 1)
            # Write-ahead: a supervisor that dies from here on resumes the new layout, never the old one.
            self._store.save_layout(self._namespace, {**self.layout(), "streamers": count, "resplit": resplit})
            self._finish_resplit({"epoch": self.epoch, "resplit": resplit})
            self.streamers = [self._streamer(i, count) for i in range(count)]
            self._save()
            log.info("re-split the source over %d streamer(s) from pass %d (epoch %d)", count, boundary, self.epoch)

    def _finish_resplit(self, layout: Layout) -> None:
        """Seed the new layout's checkpoints and remove every streamer of the old one (idempotent)."""
        r = layout["resplit"]
        start: ProducerCheckpoint = {
            "pass": int(r["boundary"]),
            "position": None,
            "end": None,
            "seq": 0,
            "stamp_us": int(r["stamp_floor"]),
            "done": bool(r["done"]),
            "produced": 0,
            "rejected": 0,
        }
        for i in range(int(r["count"])):
            producer = str(ProducerId(i, int(r["count"]), int(layout["epoch"])))
            if self._checkpoints.load(producer) is None:
                self._checkpoints.save(producer, start)
        for i in range(max(int(r["old"]), int(r["count"]))):
            handle = find(streamer_name(i), self._namespace)
            if handle is not None:
                _kill(handle, streamer_name(i), self._namespace)

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
            "started_at": self.started_at,
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
        """Kill every actor of the fleet, brokers last."""
        with self._lock:
            for h in self.streamers + self.collectors + self.brokers:
                ray.kill(h, no_restart=True)
            self.streamers, self.collectors, self.brokers = [], [], []


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200] if text else ''}".rstrip(": ")


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
        if find(name, namespace) is None:
            return
        time.sleep(0.05)
    log.warning("actor %s still registered %.0fs after kill", name, wait_s)
