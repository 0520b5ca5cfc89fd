"""The queue's Ray transport: ``Producer`` and ``Consumer`` over Broker actors.

The same contract as ``pipeline.queue.local.LocalQueue`` (both pass
``tests/integration/test_queue_contract.py``); broker 0 coordinates groups and keeps producer
checkpoints.

A broker that is away (restarting, its node lost, slow to recover a large queue dir) is a state, not
a crash: every call has a deadline, and a call that misses it, or reaches a dead incarnation, raises
``QueueError`` for the caller to retry with backoff. When the supervisor re-creates a broker, the
handles are found again by name in the pipeline's namespace. A publish that timed out is not sent
twice: the retry waits on the call already in flight, unless its broker died.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import ray

from pipeline.errors import BrokerRestarted, QueueError
from pipeline.queue.api import AppendResult, BrokerStats, FetchResult, Producer
from pipeline.queue.group import Assignment
from pipeline.queue.routing import merge_results, per_broker, split_for_brokers
from pipeline.records import Envelope
from pipeline.runtime.names import ActorHandle, find_brokers
from pipeline.storage.checkpoints import CheckpointStore

__all__ = ["DurableProducer", "RayQueue"]


class RayQueue:
    """Talks to Broker actors; broker 0 coordinates groups and keeps producer checkpoints."""

    def __init__(
        self, brokers: Sequence[ActorHandle], call_timeout_s: float = 120.0, namespace: str | None = None
    ) -> None:
        if not brokers:
            raise ValueError("at least one broker is needed")
        self._brokers = list(brokers)
        self._timeout = call_timeout_s
        self._namespace = namespace
        self._inflight: dict[tuple[str, int], tuple[list[int], list[Any]]] = {}
        self._incarnations: dict[int, str] = {}  # broker -> the incarnation that acknowledged our last flush

    def _get(self, refs: Any, what: str = "call") -> Any:
        try:
            return ray.get(refs, timeout=self._timeout)
        except ray.exceptions.GetTimeoutError:
            raise QueueError(f"{what}: no answer from the brokers within {self._timeout:.0f}s") from None
        except ray.exceptions.RayActorError as exc:
            self._refind()
            raise QueueError(f"{what}: broker unavailable ({type(exc).__name__})") from None

    def _refind(self) -> None:
        """Look the brokers up again by name (the supervisor may have re-created one)."""
        if self._namespace is None:
            return
        found = find_brokers(self._namespace, len(self._brokers))
        if len(found) == len(self._brokers):
            self._brokers = found

    # --- Producer -----------------------------------------------------------------------------------

    def publish(
        self, producer: str, seq: int, envelope: Envelope, ranges: Sequence[tuple[int, int, int]]
    ) -> list[AppendResult]:
        """One ``append_batch`` call per broker (one Arrow batch each), then wait for every ack.

        Waiting on backpressure may take long (the broker never drops): past the call deadline this
        raises ``QueueError`` and the same call is awaited again when the producer retries.
        """
        key = (producer, seq)
        inflight = self._inflight.get(key)
        if inflight is None:
            self._inflight.clear()  # a producer has one flush in flight at a time
            parts = split_for_brokers(envelope, ranges, len(self._brokers))
            refs = [
                self._brokers[b].append_batch.remote(producer, seq, part, r, self._incarnations.get(b))
                for b, (part, r) in parts.items()
            ]
            inflight = self._inflight[key] = (list(parts), refs)
        order, refs = inflight
        try:
            acked: list[list[AppendResult]] = self._get(refs, f"publish {producer}#{seq}")
        except BrokerRestarted as exc:
            self._incarnations[exc.broker] = exc.incarnation
            self._inflight.pop(key, None)
            raise
        except QueueError:
            if not _pending(refs):
                self._inflight.pop(key, None)  # a dead incarnation: send again (duplicates are dropped)
            raise
        self._inflight.pop(key, None)
        for b, results in zip(order, acked, strict=True):
            if results:
                self._incarnations[b] = results[0].incarnation
        return [result for results in acked for result in results]

    def released_below(self) -> dict[int, int]:
        """Per partition, the offset below which every group has committed (the log's start)."""
        positions: list[tuple[str, dict[int, tuple[int, int]]]] = self._get(
            [b.positions.remote() for b in self._brokers], "positions"
        )
        return {p: start for _, parts in positions for p, (start, _) in parts.items()}

    def checkpoint(self, producer: str, state: Mapping[str, Any]) -> None:
        """Store on broker 0."""
        self._get(self._brokers[0].checkpoint.remote(producer, dict(state)))

    def producer_state(self, producer: str) -> dict[str, Any] | None:
        """From broker 0."""
        state: dict[str, Any] | None = self._get(self._brokers[0].producer_state.remote(producer))
        return state

    # --- Consumer ---------------------------------------------------------------------------------------

    def join(self, group: str, member: str) -> Assignment:
        """Join via broker 0."""
        result: Assignment = self._get(self._brokers[0].join.remote(group, member), "join")
        return result

    def heartbeat(self, group: str, member: str, generation: int) -> Assignment:
        """Heartbeat via broker 0."""
        result: Assignment = self._get(self._brokers[0].heartbeat.remote(group, member, generation), "heartbeat")
        return result

    def leave(self, group: str, member: str) -> None:
        """Leave via broker 0."""
        self._get(self._brokers[0].leave.remote(group, member))

    def fetch(
        self, group: str, member: str, generation: int, positions: Mapping[int, int], max_rows: int, timeout_s: float
    ) -> FetchResult:
        """Fetch from every broker holding a requested partition, in parallel."""
        refs = [
            self._brokers[b].fetch.remote(group, member, generation, mine, max_rows, timeout_s)
            for b, mine in per_broker(dict(positions), len(self._brokers)).items()
        ]
        return merge_results(self._get(refs, "fetch"))

    def commit(self, group: str, member: str, generation: int, offsets: Mapping[int, int]) -> None:
        """Commit on every broker holding a committed partition."""
        mine = per_broker(dict(offsets), len(self._brokers))
        self._get(
            [self._brokers[b].commit.remote(group, member, generation, part) for b, part in mine.items()], "commit"
        )

    def stats(self) -> list[BrokerStats]:
        """Every broker's stats."""
        result: list[BrokerStats] = self._get([b.stats.remote() for b in self._brokers])
        return result


def _pending(refs: list[Any]) -> bool:
    """True while every call is still in flight (none failed): waiting on them again is safe."""
    _, unready = ray.wait(refs, num_returns=len(refs), timeout=0)
    done = [r for r in refs if r not in unready]
    for ref in done:
        try:
            ray.get(ref, timeout=0)
        except ray.exceptions.RayError:
            return False
    return True


class DurableProducer:
    """The ``Producer`` a streamer actor uses: flushes go to the brokers, checkpoints to the database.

    A checkpoint that lived on broker 0 was lost with it (no queue dir): the CSV replayed from the
    start, and a live source restarted its sequence numbers below what the other brokers had seen.
    A database that is away raises ``DatabaseUnavailable``, which the streamer waits out.
    """

    def __init__(self, queue: Producer, store: CheckpointStore) -> None:
        self._queue = queue
        self._store = store

    def publish(
        self, producer: str, seq: int, envelope: Envelope, ranges: Sequence[tuple[int, int, int]]
    ) -> list[AppendResult]:
        """Through the brokers."""
        return self._queue.publish(producer, seq, envelope, ranges)

    def checkpoint(self, producer: str, state: Mapping[str, Any]) -> None:
        """In the database."""
        self._store.save(producer, state)

    def producer_state(self, producer: str) -> dict[str, Any] | None:
        """From the database."""
        return self._store.load(producer)

    def released_below(self) -> dict[int, int]:
        """From the brokers."""
        return self._queue.released_below()
