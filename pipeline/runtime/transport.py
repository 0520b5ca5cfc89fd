"""The queue's Ray transport: ``Producer`` and ``Consumer`` over Broker actors.

The same contract as ``pipeline.queue.local.LocalQueue`` (both pass ``tests/unit/queue/test_contract.py``);
broker 0 coordinates groups and keeps producer checkpoints.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import ray

from pipeline.queue.api import AppendResult, BrokerStats, FetchResult
from pipeline.queue.group import Assignment
from pipeline.queue.routing import merge_results, per_broker, split_for_brokers
from pipeline.records import Envelope
from pipeline.runtime.names import ActorHandle

__all__ = ["RayQueue"]


class RayQueue:
    """Talks to Broker actors; broker 0 coordinates groups and keeps producer checkpoints."""

    def __init__(self, brokers: Sequence[ActorHandle], call_timeout_s: float = 120.0) -> None:
        if not brokers:
            raise ValueError("at least one broker is needed")
        self._brokers = list(brokers)
        self._timeout = call_timeout_s

    def _get(self, refs: Any) -> Any:
        return ray.get(refs, timeout=self._timeout)

    # --- Producer -----------------------------------------------------------------------------------

    def publish(
        self, producer: str, seq: int, envelope: Envelope, ranges: Sequence[tuple[int, int, int]]
    ) -> list[AppendResult]:
        """One ``append_batch`` call per broker (one Arrow batch each), then wait for every ack."""
        parts = split_for_brokers(envelope, ranges, len(self._brokers))
        refs = [self._brokers[b].append_batch.remote(producer, seq, part, r) for b, (part, r) in parts.items()]
        # Waiting on backpressure may take long: no timeout here, the broker never drops.
        acked: list[list[AppendResult]] = ray.get(refs)
        return [result for results in acked for result in results]

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
        result: Assignment = self._get(self._brokers[0].join.remote(group, member))
        return result

    def heartbeat(self, group: str, member: str, generation: int) -> Assignment:
        """Heartbeat via broker 0."""
        result: Assignment = self._get(self._brokers[0].heartbeat.remote(group, member, generation))
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
        return merge_results(self._get(refs))

    def commit(self, group: str, member: str, generation: int, offsets: Mapping[int, int]) -> None:
        """Commit on every broker holding a committed partition."""
        mine = per_broker(dict(offsets), len(self._brokers))
        self._get([self._brokers[b].commit.remote(group, member, generation, part) for b, part in mine.items()])

    def stats(self) -> list[BrokerStats]:
        """Every broker's stats."""
        result: list[BrokerStats] = self._get([b.stats.remote() for b in self._brokers])
        return result
