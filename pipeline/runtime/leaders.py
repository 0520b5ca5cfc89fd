"""The queue's Ray transport over replicated partitions: every call goes to the partition's leader.

The same ``Producer``/``Consumer`` contract as ``RayQueue`` (``pipeline.runtime.transport``), for
``replication_factor > 1``. The client keeps a map partition -> (leader, epoch, lineage), read from
the brokers (``leadership``); a ``NotLeader`` answer, a broker that dies, or a call that stays
unanswered while the map moves sends the work to the new leader. Nothing is lost or doubled by
sending again: a flush carries its producer id and sequence number, which the leader (whichever it
is: followers hold the same entries) deduplicates; fetches and commits are idempotent.

Calls are never retried by Ray (``max_task_retries=0``): a call parked on a dead leader's
restart would stall a producer past the failover. ``expect`` tells a leader which lineage of each
partition's log the producer last saw, so a log that began again (an unclean election) raises
``BrokerRestarted`` and the producer re-sends what it retains, as with a single-copy broker.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa
import ray

from pipeline.config import QueueSettings
from pipeline.errors import BrokerRestarted, FencedError, NotLeader, QueueError
from pipeline.queue.api import AppendResult, BrokerStats, FetchResult
from pipeline.queue.group import Assignment
from pipeline.queue.replicated import COORDINATOR
from pipeline.queue.routing import merge_results
from pipeline.records import Envelope
from pipeline.runtime.names import ActorHandle, call_once, find_brokers
from pipeline.runtime.transport import RayQueue

__all__ = ["ReplicatedQueue", "queue_client"]

log = logging.getLogger(__name__)
T = TypeVar("T")
_REROUTABLE = (NotLeader, ray.exceptions.RayActorError)


@dataclass(slots=True)
class _Call:
    broker: int
    partitions: list[int]
    ref: Any
    sent: float


@dataclass(slots=True)
class _Flush:
    """A flush being published: what each partition's leader acknowledged, the calls in flight."""

    key: tuple[str, int]
    done: dict[int, AppendResult] = field(default_factory=dict)
    calls: list[_Call] = field(default_factory=list)


class ReplicatedQueue:
    """Producer and Consumer over replicated Broker actors."""

    def __init__(
        self,
        brokers: Sequence[ActorHandle],
        call_timeout_s: float = 120.0,
        namespace: str | None = None,
        poll_s: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not brokers:
            raise ValueError("at least one broker is needed")
        self._brokers = list(brokers)
        self._timeout = call_timeout_s
        self._namespace = namespace
        self._poll = poll_s
        self._clock = clock
        self._leaders: dict[int, tuple[int, int]] = {}  # partition -> (broker, epoch)
        self._lineages: dict[int, str] = {}  # partition -> lineage of its last acknowledgement
        self._refreshed = float("-inf")
        self._flush: _Flush | None = None

    # --- the leadership map --------------------------------------------------------------------------

    def refresh(self, force: bool = False) -> dict[int, tuple[int, int]]:
        """Ask every broker what it leads (at most every 0.2 s unless ``force``); returns the map."""
        now = self._clock()
        if not force and now - self._refreshed < 0.2:
            return self._leaders
        self._refreshed = now
        refs = {b: call_once(h, "leadership") for b, h in enumerate(self._brokers)}
        ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=1.0)
        done = set(ready)
        gone = False
        for b, ref in refs.items():
            if ref not in done:
                continue
            try:
                led: dict[int, tuple[int, str]] = ray.get(ref, timeout=0)
            except ray.exceptions.RayActorError:
                gone = True
                continue
            for p, (epoch, _) in led.items():
                if p not in self._leaders or epoch >= self._leaders[p][1] or self._leaders[p][0] == b:
                    self._leaders[p] = (b, epoch)
        if gone:
            self._refind()
        return self._leaders

    def _leader(self, partition: int) -> int | None:
        if partition not in self._leaders:
            self.refresh()
        found = self._leaders.get(partition)
        return None if found is None else found[0]

    def _refind(self) -> None:
        if self._namespace is None:
            return
        found = find_brokers(self._namespace, len(self._brokers))
        if len(found) == len(self._brokers):
            self._brokers = found

    def _rerouted(self, exc: BaseException) -> None:
        if isinstance(exc, ray.exceptions.ActorDiedError):
            self._refind()
        self.refresh(force=True)

    # --- Producer --------------------------------------------------------------------------------------

    def publish(
        self, producer: str, seq: int, envelope: Envelope, ranges: Sequence[tuple[int, int, int]]
    ) -> list[AppendResult]:
        """Each partition's ranges to its leader; returns once every leader acknowledged (``min_insync`` hold it).

        Past the call deadline this raises ``QueueError``; retried with the same sequence, the calls
        in flight are awaited again and only the unacknowledged ranges are sent anew.
        """
        key = (producer, seq)
        if self._flush is None or self._flush.key != key:
            self._flush = _Flush(key)
        flush = self._flush
        deadline = self._clock() + self._timeout
        while True:
            missing = [r for r in ranges if r[0] not in flush.done]
            if not missing:
                self._flush = None
                return [flush.done[p] for p, _, _ in ranges]
            busy = {p for c in flush.calls for p in c.partitions}
            self._send(flush, producer, seq, envelope, ranges, [r for r in missing if r[0] not in busy])
            if self._clock() > deadline:
                raise QueueError(f"publish {producer}#{seq}: partitions {[r[0] for r in missing]} not acknowledged")
            if not flush.calls:
                time.sleep(self._poll)  # no leader known yet for some partition: an election is on
                self.refresh(force=True)
                continue
            self._collect(flush)

    def _send(
        self,
        flush: _Flush,
        producer: str,
        seq: int,
        envelope: Envelope,
        ranges: Sequence[tuple[int, int, int]],
        todo: list[tuple[int, int, int]],
    ) -> None:
        by_leader: dict[int, list[tuple[int, int, int]]] = {}
        for r in todo:
            leader = self._leader(r[0])
            if leader is not None:
                by_leader.setdefault(leader, []).append(r)
        for b, mine in by_leader.items():
            part, rebased = _take(envelope, mine, with_rejects=mine[0] == ranges[0])
            expect = {p: self._lineages[p] for p, _, _ in mine if p in self._lineages}
            ref = call_once(self._brokers[b], "append_batch", producer, seq, part, rebased, expect)
            flush.calls.append(_Call(b, [p for p, _, _ in mine], ref, self._clock()))

    def _collect(self, flush: _Flush) -> None:
        """Take the answers that came within one poll; give up calls whose partitions moved elsewhere."""
        ready, _ = ray.wait([c.ref for c in flush.calls], num_returns=1, timeout=self._poll)
        done = set(ready)
        for call in [c for c in flush.calls if c.ref in done]:
            flush.calls.remove(call)
            try:
                results: list[AppendResult] = ray.get(call.ref, timeout=0)
            except BrokerRestarted as exc:
                if exc.partition is not None:
                    self._lineages[exc.partition] = exc.incarnation
                self._flush = None
                raise
            except _REROUTABLE as exc:
                log.info("publish: broker %d: %s; asking who leads now", call.broker, type(exc).__name__)
                self._rerouted(exc)
                continue
            for r in results:
                flush.done[r.partition] = r
                self._lineages[r.partition] = r.incarnation
        if ready:
            return
        now = self._clock()
        if any(now - c.sent > self._poll for c in flush.calls):
            self.refresh()
            for call in list(flush.calls):
                if any(self._leader(p) != call.broker for p in call.partitions):
                    flush.calls.remove(call)  # its ranges go to the new leader next round
                    _cancel(call.ref)

    def released_below(self) -> dict[int, int]:
        """Per partition, its leader's log start (below it every group has committed)."""
        out: dict[int, int] = {}
        for b, answer in self._each_leader("positions"):
            _, positions = answer
            for p, (start, _) in positions.items():
                if self._leader(p) == b:
                    out[p] = start
        return out

    def checkpoint(self, producer: str, state: Mapping[str, Any]) -> None:
        """Store on the coordinator (streamers keep theirs in the database)."""
        self._on_leader(COORDINATOR, "checkpoint", producer, dict(state))

    def producer_state(self, producer: str) -> dict[str, Any] | None:
        """From the coordinator."""
        state: dict[str, Any] | None = self._on_leader(COORDINATOR, "producer_state", producer)
        return state

    # --- Consumer ----------------------------------------------------------------------------------------

    def join(self, group: str, member: str) -> Assignment:
        """Join at the leader of partition 0 (the coordinator)."""
        result: Assignment = self._on_leader(COORDINATOR, "join", group, member)
        return result

    def heartbeat(self, group: str, member: str, generation: int) -> Assignment:
        """Heartbeat at the coordinator."""
        result: Assignment = self._on_leader(COORDINATOR, "heartbeat", group, member, generation)
        return result

    def leave(self, group: str, member: str) -> None:
        """Leave at the coordinator."""
        self._on_leader(COORDINATOR, "leave", group, member)

    def fetch(
        self, group: str, member: str, generation: int, positions: Mapping[int, int], max_rows: int, timeout_s: float
    ) -> FetchResult:
        """From each partition's leader, in parallel (a leader that does not answer: its partitions wait)."""
        mine = self._by_leader(positions)
        calls = [
            (b, call_once(self._brokers[b], "fetch", group, member, generation, p, max_rows, timeout_s))
            for b, p in mine.items()
        ]
        results = self._gather(calls, timeout_s + self._poll + 1.0, "fetch")
        return merge_results(results) if len(results) != 1 else results[0]

    def commit(self, group: str, member: str, generation: int, offsets: Mapping[int, int]) -> None:
        """At each partition's leader; ``QueueError`` if one did not take it (the collector reports again)."""
        mine = self._by_leader(offsets)
        calls = [(b, call_once(self._brokers[b], "commit", group, member, generation, p)) for b, p in mine.items()]
        if len(self._gather(calls, self._poll * 4 + 2.0, "commit")) != len(calls):
            raise QueueError(f"commit: not every leader of {sorted(offsets)} took it")

    def stats(self) -> list[BrokerStats]:
        """The stats of every broker that answers."""
        refs = [call_once(b, "stats") for b in self._brokers]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=10)
        return [ray.get(r) for r in refs if r in set(ready)]

    # --- calls -------------------------------------------------------------------------------------------------

    def _by_leader(self, values: Mapping[int, int]) -> dict[int, dict[int, int]]:
        out: dict[int, dict[int, int]] = {}
        for p, o in values.items():
            leader = self._leader(p)
            if leader is not None:
                out.setdefault(leader, {})[p] = o
        if not out and values:
            self.refresh(force=True)
            raise QueueError(f"no leader known for partitions {sorted(values)} (an election is on?)")
        return out

    def _gather(self, calls: list[tuple[int, Any]], timeout_s: float, what: str) -> list[Any]:
        """Answers of the calls that came in time; a fenced consumer's ``FencedError`` passes through."""
        ready, _ = ray.wait([ref for _, ref in calls], num_returns=len(calls), timeout=timeout_s)
        done = set(ready)
        out, rerouted = [], False
        for b, ref in calls:
            if ref not in done:
                _cancel(ref)
                rerouted = True
                continue
            try:
                out.append(ray.get(ref, timeout=0))
            except FencedError:
                raise
            except _REROUTABLE as exc:
                log.info("%s: broker %d: %s", what, b, type(exc).__name__)
                self._rerouted(exc)
        if rerouted:
            self.refresh(force=True)
        if calls and not out:
            raise QueueError(f"{what}: no leader answered")
        return out

    def _on_leader(self, partition: int, method: str, *args: Any) -> Any:
        """Call ``method`` on the partition's leader, following it when it moves, within the call deadline."""
        deadline = self._clock() + self._timeout
        while True:
            leader = self._leader(partition)
            if leader is None:
                self.refresh(force=True)
                raise QueueError(f"{method}: no leader of partition {partition} known (an election is on?)")
            ref = call_once(self._brokers[leader], method, *args)
            while True:
                ready, _ = ray.wait([ref], timeout=min(1.0, max(0.0, deadline - self._clock())))
                if ready:
                    try:
                        return ray.get(ref, timeout=0)
                    except FencedError:
                        raise
                    except _REROUTABLE as exc:
                        self._rerouted(exc)
                        raise QueueError(f"{method}: broker {leader} does not lead partition {partition}") from None
                if self._clock() > deadline:
                    _cancel(ref)
                    raise QueueError(f"{method}: no answer from broker {leader} within {self._timeout:.0f}s")
                if self.refresh().get(partition, (leader, 0))[0] != leader:
                    _cancel(ref)
                    break  # it moved: ask the new leader

    def _each_leader(self, method: str) -> list[tuple[int, Any]]:
        leaders = sorted({b for b, _ in self.refresh().values()})
        calls = [(b, call_once(self._brokers[b], method)) for b in leaders]
        ready, _ = ray.wait([r for _, r in calls], num_returns=len(calls), timeout=5.0)
        out = []
        for b, ref in calls:
            if ref in set(ready):
                try:
                    out.append((b, ray.get(ref, timeout=0)))
                except ray.exceptions.RayActorError:
                    continue
        return out


def queue_client(brokers: Sequence[ActorHandle], queue: QueueSettings, namespace: str) -> RayQueue | ReplicatedQueue:
    """The queue's client for these settings: to partition leaders when replicated, else to fixed brokers."""
    if queue.replication_factor > 1:
        return ReplicatedQueue(brokers, queue.call_timeout_s, namespace=namespace)
    return RayQueue(brokers, queue.call_timeout_s, namespace=namespace)


def _take(
    envelope: Envelope, ranges: list[tuple[int, int, int]], with_rejects: bool
) -> tuple[Envelope, list[tuple[int, int, int]]]:
    """The rows of ``ranges`` as one batch (the envelope itself when they are all of it), ranges rebased."""
    rejects = envelope.rejects if with_rejects else None
    if (
        sum(r[2] for r in ranges) == envelope.num_rows
        and all(a[1] + a[2] == b[1] for a, b in itertools.pairwise(ranges))
        and (not ranges or ranges[0][1] == 0)
    ):
        return Envelope(envelope.samples, rejects), list(ranges)
    indices = np.concatenate([np.arange(first, first + rows) for _, first, rows in ranges])
    samples = envelope.samples.take(pa.array(indices))
    rebased, at = [], 0
    for partition, _, rows in ranges:
        rebased.append((partition, at, rows))
        at += rows
    return Envelope(samples, rejects), rebased


def _cancel(ref: Any) -> None:
    try:
        ray.cancel(ref)
    except Exception as exc:  # best effort: a cancelled call is also abandoned
        log.debug("could not cancel a call: %s", exc)
