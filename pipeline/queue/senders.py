"""A leader broker's sender tasks: one per follower broker, shipping what each lacks, round after round.

Each task keeps one call in flight to its follower: what accumulates while it waits goes in the next
shipment (so a follower that keeps up gets one call per flush, a slow one bigger calls). A shipment
carries every partition the follower holds that lacks entries or is due a heartbeat (which keeps a
caught-up follower in the in-sync set and brings it the newest high-water mark, trims and commits).
A follower that does not answer, or refuses (restarted and not yet attached), is retried with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Protocol

from pipeline.errors import QueueError
from pipeline.queue.log import Entry
from pipeline.queue.replication import Replicate, Reply
from pipeline.queue.shipment import Shipment, pack

if TYPE_CHECKING:
    from pipeline.queue.replicated import ReplicatedBroker

__all__ = ["Peers", "Senders"]

log = logging.getLogger(__name__)


class Peers(Protocol):
    """How a leader reaches the other brokers."""

    async def replicate(self, target: int, shipment: Shipment) -> dict[int, Reply]:
        """Deliver ``shipment`` to broker ``target``; ``QueueError`` when it does not answer in time."""
        ...


class Senders:
    """The sender tasks of one broker (started when it first leads a partition)."""

    def __init__(
        self,
        owner: ReplicatedBroker,
        peers: Peers,
        ship_bytes: int,
        heartbeat_s: float,
        on_fatal: Callable[[BaseException], None] | None,
    ) -> None:
        self._owner = owner
        self._peers = peers
        self._ship_bytes = ship_bytes
        self._heartbeat_s = heartbeat_s
        self._on_fatal = on_fatal
        self._wakeups: dict[int, asyncio.Event] = {}
        self.tasks: dict[int, asyncio.Task[None]] = {}
        self._shipped: dict[tuple[int, int], float] = {}  # (follower, partition) -> when last shipped
        self._last: tuple[tuple[tuple[int, int, int, int], ...], Shipment] | None = None

    def start(self) -> None:
        """A task for every follower of a partition led here (those that ended are started again)."""
        for rep in self._owner.replicas.values():
            if not rep.is_leader:
                continue
            for target in rep.followers:
                task = self.tasks.get(target)
                if task is None or task.done():
                    self._wakeups.setdefault(target, asyncio.Event())
                    self.tasks[target] = asyncio.get_running_loop().create_task(self._ship_to(target))
                    self.tasks[target].add_done_callback(self._ended)

    def wake(self) -> None:
        """Something new to ship (an append, a commit, a new leadership)."""
        for event in self._wakeups.values():
            event.set()

    def committed(self) -> None:
        """A group committed: followers get the new offsets with the next shipment (or heartbeat)."""

    def _ended(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or task.exception() is None:
            return
        exc = task.exception()
        log.critical("broker %d: a replication sender failed", self._owner.broker_id, exc_info=exc)
        if self._on_fatal is not None and exc is not None:
            self._on_fatal(exc)

    async def _ship_to(self, target: int) -> None:
        backoff = 0.0
        wakeup = self._wakeups[target]
        while True:
            wakeup.clear()
            shipment = self._next(target)
            if shipment is None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wakeup.wait(), self._heartbeat_s)
                continue
            try:
                replies = await self._peers.replicate(target, shipment)
                taken = await self._took(target, shipment, replies)
            except QueueError as exc:
                log.debug("broker %d -> %d: %s", self._owner.broker_id, target, exc)
                taken = False
            if taken:
                backoff = 0.0
            else:
                backoff = min(1.0, max(0.05, backoff * 2))
                await asyncio.sleep(backoff)

    async def _took(self, target: int, shipment: Shipment, replies: Mapping[int, Reply]) -> bool:
        """Apply the follower's answers; whether it took anything (False: it refused every request)."""
        owner = self._owner
        now = owner.clock()
        moved, taken = False, False
        for p, request, _ in shipment.requests:
            rep = owner.replicas[p]
            reply = replies.get(p)
            was_leader = rep.is_leader
            if reply is not None:
                taken = taken or not reply.refused
                moved = rep.on_reply(target, request, reply, now) or moved
            if was_leader and not rep.is_leader:
                log.warning("partition %d: fenced by broker %d (epoch %d promised)", p, target, rep.promised)
                await owner.fenced(p)
        if moved:
            await owner.moved()
        return taken

    def _next(self, target: int) -> Shipment | None:
        """What ``target`` lacks or has not heard; None when nothing is due."""
        owner = self._owner
        now = owner.clock()
        parts: list[tuple[int, Replicate, list[Entry]]] = []
        budget = self._ship_bytes
        for p, rep in owner.replicas.items():
            if not rep.is_leader or target not in rep.followers:
                continue
            request, count = rep.request_for(target, 10_000)
            entries = owner.log_of(p).read(request.first_offset, 1 << 62, count) if count and budget > 0 else []
            taken: list[Entry] = []
            for e in entries:
                if taken and e.nbytes > budget:
                    break
                taken.append(e)
                budget -= e.nbytes
            # A new high-water mark, trim or commit rides with the next entries, or with the heartbeat
            # when none come: a call of its own per change would double the calls per flush.
            last = self._shipped.get((target, p))
            due = last is None or now - last >= self._heartbeat_s
            if taken or due or not rep.followers[target].answered:
                parts.append((p, request, taken))
                self._shipped[(target, p)] = now
        if not parts:
            return None
        # Followers that keep up lack the same entries: they get the same shipment object, packed
        # once (and, over Ray, put in the object store once: see pipeline.runtime.replicas.RayPeers).
        key = tuple((p, r.epoch, r.first_offset, len(entries)) for p, r, entries in parts)
        if self._last is not None and self._last[0] == key and self._last[1].entries:
            return self._last[1]
        committed: dict[int, dict[str, int]] = {p: owner.committed_of(p) for p, _, _ in parts}
        shipment = pack(owner.broker_id, parts, committed)
        self._last = (key, shipment)
        return shipment
