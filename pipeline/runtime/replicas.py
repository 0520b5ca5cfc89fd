"""Replicated partitions on Ray: the broker actor that hosts replicas, and how brokers reach each other.

``replication_factor > 1`` makes every broker a ``ReplicatedBroker`` (``pipeline.queue.replicated``)
hosting the replicas of ``replicas_of(p, brokers, replication_factor)``: partition p's preferred
leader is broker ``p % brokers``, its followers the next ones. Brokers are spread over nodes (SPREAD,
and on KubeRay one ``broker_<i>`` worker group per broker), so no two replicas of a partition share
a node when there are as many nodes as brokers. The supervisor's ``Elector`` decides who leads.

Calls between brokers carry a deadline and are never retried by Ray (``max_task_retries=0``): a
follower that is away is the sender's to retry, and a backlog of stale calls must not reach a
broker Ray restarts.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import ray

from pipeline.config import QueueSettings
from pipeline.errors import QueueError
from pipeline.queue.api import BrokerStats
from pipeline.queue.disk import Persistence
from pipeline.queue.replicated import ReplicatedBroker
from pipeline.queue.replication import Reply, replicas_of
from pipeline.queue.shipment import Shipment
from pipeline.runtime.instruments import BrokerMetrics
from pipeline.runtime.names import ActorHandle, broker_name, call_once, find
from pipeline.storage.writer import TelemetryWriter

__all__ = ["Broker", "RayPeers", "answering_stats", "committed_state", "hosted_replicas"]

log = logging.getLogger(__name__)


# Ray sends a call's arguments with the call up to 100 KiB serialized (``max_direct_call_object_size``),
# through the object store above: this leaves room for the shipment's requests and offsets.
INLINE_BYTES = 90_000


def hosted_replicas(index: int, queue: QueueSettings) -> dict[int, tuple[int, ...]]:
    """The partitions broker ``index`` holds a replica of, each with its replica brokers (leader first)."""
    out = {}
    for p in range(queue.partitions):
        members = replicas_of(p, queue.brokers, queue.replication_factor)
        if index in members:
            out[p] = members
    return out


class RayPeers:
    """The other brokers, found by name in the pipeline's namespace (again after a re-creation)."""

    def __init__(self, namespace: str, timeout_s: float = 2.0) -> None:
        self._namespace = namespace
        self._timeout = timeout_s
        self._handles: dict[int, ActorHandle] = {}
        self._put: tuple[Shipment, Any] | None = None

    def _argument(self, shipment: Shipment) -> Any:
        """The shipment, or a reference to one copy in the object store shared by every follower it goes to."""
        if not shipment.entries or shipment.data_bytes <= INLINE_BYTES:
            return shipment  # small: it travels inline with the call (no put, no transfer by the raylets)
        if self._put is None or self._put[0] is not shipment:
            self._put = (shipment, ray.put(shipment))
        return self._put[1]

    def _handle(self, target: int) -> ActorHandle:
        handle = self._handles.get(target)
        if handle is None:
            handle = find(broker_name(target), self._namespace)
            if handle is None:
                raise QueueError(f"broker {target} is not registered")
            self._handles[target] = handle
        return handle

    async def replicate(self, target: int, shipment: Shipment) -> dict[int, Reply]:
        """One shipment to ``target`` with a deadline; ``QueueError`` when it does not answer."""
        handle = self._handle(target)
        ref = call_once(handle, "replicate", self._argument(shipment))
        try:
            replies: dict[int, Reply] = await asyncio.wait_for(ref, self._timeout)  # type: ignore[arg-type]
            return replies
        except TimeoutError:
            _cancel(ref)
            raise QueueError(f"broker {target} did not answer within {self._timeout:.1f}s") from None
        except ray.exceptions.RayActorError as exc:
            self._handles.pop(target, None)  # re-created, perhaps: find it again
            raise QueueError(f"broker {target} is unavailable ({type(exc).__name__})") from None


def _cancel(ref: Any) -> None:
    try:
        ray.cancel(ref)
    except Exception as exc:  # best effort: the call dies with the deadline anyway
        log.debug("could not cancel a replication call: %s", exc)


def _fatal(exc: BaseException) -> None:
    """A replication task failed unexpectedly: end the process so that Ray restarts the broker."""
    logging.shutdown()
    os._exit(70)


class Broker(ReplicatedBroker):
    """The broker actor of a replicated queue (named ``Broker`` like the single-copy one).

    It starts its logs at the offsets committed in the database and deduplicates on the stored
    sequences (as the single-copy broker does), and re-reads those sequences whenever it takes
    over a partition. With a queue dir each broker keeps its replicas under ``<dir>/broker-<i>``
    (on KubeRay every broker has its own volume anyway).
    """

    def __init__(self, broker_id: int, queue: QueueSettings, namespace: str, conninfo: str) -> None:
        hosted = hosted_replicas(broker_id, queue)
        offsets, sequences = committed_state(conninfo, queue.group, list(hosted))
        persistence = None
        if queue.dir is not None:
            persistence = Persistence(
                Path(queue.dir) / f"broker-{broker_id}",
                queue.segment_bytes,
                queue.retention_s,
                queue.disk_budget_bytes,
                queue.fsync,
                retention_bytes=queue.retention_bytes,
            )
        self._conninfo = conninfo
        self._group = queue.group
        super().__init__(
            broker_id,
            queue.partitions,
            hosted,
            queue.partition_budget_bytes,
            queue.min_insync,
            RayPeers(namespace),
            session_timeout_s=queue.session_timeout_s,
            start_offsets=offsets,
            persistence=persistence,
            start_sequences=sequences,
            lag_s=queue.replica_lag_s,
            sequences=self._stored_sequences,
            on_fatal=_fatal,
        )
        self._metrics = BrokerMetrics()

    def _stored_sequences(self, partitions: Sequence[int]) -> Mapping[tuple[str, int], int]:
        return committed_state(self._conninfo, self._group, partitions)[1]

    def stats(self) -> BrokerStats:
        """Stats (led partitions and every replica), also exported as Ray metrics."""
        out = super().stats()
        out["pid"] = os.getpid()
        self._metrics.export(out)
        return out

    def probe(self) -> dict[str, Any]:
        """What the supervisor watches, with the process id."""
        return {**super().probe(), "pid": os.getpid()}


def answering_stats(handles: Sequence[ActorHandle], timeout_s: float = 5.0) -> list[BrokerStats]:
    """The stats of the brokers that answer within ``timeout_s`` (with replication a lost broker's
    partitions are led elsewhere: callers count partitions no answer covers)."""
    refs = [call_once(h, "stats") for h in handles]
    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
    done = set(ready)
    out = []
    for ref in refs:
        if ref in done:
            try:
                out.append(ray.get(ref, timeout=0))
            except ray.exceptions.RayError:
                continue
    return out


def committed_state(
    conninfo: str, group: str, partitions: Sequence[int]
) -> tuple[dict[int, int], dict[tuple[str, int], int]]:
    """Where the group's stored offsets stand for these partitions, and the producers' stored sequences."""
    writer = TelemetryWriter(conninfo)
    writer.open()
    try:
        stored = writer.offsets(group)
        sequences = writer.sequences(group, partitions)
    finally:
        writer.close()
    return {p: stored[p]["next_offset"] for p in partitions if p in stored}, sequences
