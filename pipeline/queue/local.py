"""``LocalQueue``: the queue's ``Producer`` and ``Consumer`` over plain ``Broker`` objects, in process.

It runs the real broker logic on a private event loop in its own thread, every call on that loop, as
an async Ray actor runs them: calls from several threads (a fetch waiting while another thread
publishes) behave as they do against Broker actors. What unit tests and single-process tools use.
``pipeline.runtime.transport.RayQueue`` implements the same contract over Broker actors; both pass
the contract suite in ``tests/unit/queue/test_contract.py``.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any, TypeVar

from pipeline.queue.api import AppendResult, BrokerStats, FetchResult
from pipeline.queue.broker import Broker
from pipeline.queue.group import Assignment
from pipeline.queue.routing import broker_of, merge_results, per_broker, split_for_brokers
from pipeline.records import Envelope

__all__ = ["LocalQueue"]

T = TypeVar("T")


class LocalQueue:
    """Producer and Consumer over in-process brokers (no Ray)."""

    def __init__(
        self,
        partitions: int,
        brokers: int = 1,
        budget_bytes: int = 64 << 20,
        session_timeout_s: float = 10.0,
        clock: Any = None,
    ) -> None:
        self.partitions = partitions
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="local-queue", daemon=True)
        self._thread.start()
        extra = {} if clock is None else {"clock": clock}
        self.brokers = [
            Broker(
                b,
                partitions,
                [p for p in range(partitions) if broker_of(p, brokers) == b],
                budget_bytes,
                session_timeout_s,
                **extra,
            )
            for b in range(brokers)
        ]

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def _call(self, fn: Callable[..., T], *args: Any) -> T:
        async def on_loop() -> T:
            return fn(*args)

        return self._run(on_loop())

    def close(self) -> None:
        """Stop and close the private event loop."""
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def publish(
        self, producer: str, seq: int, envelope: Envelope, ranges: Sequence[tuple[int, int, int]]
    ) -> list[AppendResult]:
        """One ``append_batch`` per broker holding some of the ranges."""
        results: list[AppendResult] = []
        for b, (part, part_ranges) in split_for_brokers(envelope, ranges, len(self.brokers)).items():
            results += self._run(self.brokers[b].append_batch(producer, seq, part, part_ranges))
        return results

    def checkpoint(self, producer: str, state: Mapping[str, Any]) -> None:
        """Checkpoints live on broker 0."""
        self._call(self.brokers[0].checkpoint, producer, state)

    def producer_state(self, producer: str) -> dict[str, Any] | None:
        """From broker 0."""
        return self._call(self.brokers[0].producer_state, producer)

    def released_below(self) -> dict[int, int]:
        """Per partition, the log's start offset."""
        return {p: start for b in self.brokers for p, (start, _) in self._call(b.positions)[1].items()}

    def join(self, group: str, member: str) -> Assignment:
        """Broker 0 coordinates groups."""
        return self._call(self.brokers[0].join, group, member)

    def heartbeat(self, group: str, member: str, generation: int) -> Assignment:
        """Via broker 0."""
        return self._call(self.brokers[0].heartbeat, group, member, generation)

    def leave(self, group: str, member: str) -> None:
        """Via broker 0."""
        self._call(self.brokers[0].leave, group, member)

    def fetch(
        self, group: str, member: str, generation: int, positions: Mapping[int, int], max_rows: int, timeout_s: float
    ) -> FetchResult:
        """Fetch from every broker holding a requested partition, concurrently (as the Ray transport does)."""
        mine = per_broker(dict(positions), len(self.brokers))

        async def all_brokers() -> list[FetchResult]:
            calls = [self.brokers[b].fetch(group, member, generation, p, max_rows, timeout_s) for b, p in mine.items()]
            return list(await asyncio.gather(*calls))

        return merge_results(self._run(all_brokers()))

    def commit(self, group: str, member: str, generation: int, offsets: Mapping[int, int]) -> None:
        """Commit on each broker holding a committed partition."""
        for b, part in per_broker(dict(offsets), len(self.brokers)).items():
            self._run(self.brokers[b].commit(group, member, generation, part))

    def stats(self) -> list[BrokerStats]:
        """Every broker's stats."""
        return [self._call(b.stats) for b in self.brokers]
