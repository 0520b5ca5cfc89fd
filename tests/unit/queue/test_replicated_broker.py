"""Replicated brokers in process (no Ray): acks wait for min_insync, fetches stop at the high-water
mark, a leader change keeps offsets and producer dedup, a returning old leader truncates, an emptied
replica is rebuilt, group coordination follows partition 0's leader."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from pipeline.errors import NotLeader, QueueError
from pipeline.queue.disk import Persistence
from pipeline.queue.replicated import ReplicatedBroker
from pipeline.queue.replication import Reply, Vote, choose_leader, replicas_of
from pipeline.queue.shipment import Shipment
from tests.support import envelope_of

T = TypeVar("T")
PARTITIONS = 3


class InProcessPeers:
    """The brokers reach each other by plain calls; ``down`` ones do not answer."""

    def __init__(self) -> None:
        self.brokers: dict[int, ReplicatedBroker] = {}
        self.down: set[int] = set()

    async def replicate(self, target: int, shipment: Shipment) -> dict[int, Reply]:
        if target in self.down or shipment.source in self.down or target not in self.brokers:
            await asyncio.sleep(0.01)
            raise QueueError(f"broker {target} does not answer")
        return await self.brokers[target].replicate(shipment)


class Cluster:
    """Three replicated brokers on one event loop, and the supervisor's election."""

    def __init__(self, loop: asyncio.AbstractEventLoop, root: Path | None = None, min_insync: int = 2) -> None:
        self.loop = loop
        self.root = root
        self.min_insync = min_insync
        self.peers = InProcessPeers()
        self.epochs: dict[int, int] = {}
        for b in range(3):
            self.start(b)

    def start(self, b: int) -> ReplicatedBroker:
        """(Re)start broker ``b``: from its queue dir when there is one, else empty."""
        persistence = None if self.root is None else Persistence(self.root / f"broker-{b}", segment_bytes=1 << 20)
        hosted = {p: replicas_of(p, 3, 3) for p in range(PARTITIONS)}
        broker = ReplicatedBroker(b, PARTITIONS, hosted, 1 << 20, self.min_insync, self.peers, persistence=persistence)
        self.peers.brokers[b] = broker
        self.peers.down.discard(b)
        return broker

    def crash(self, b: int) -> None:
        """Broker ``b`` stops: it answers nothing and its sender tasks end."""
        self.peers.down.add(b)
        broker = self.peers.brokers.pop(b)
        for task in broker.senders.tasks.values():
            task.cancel()

    def run(self, coro: Awaitable[T], timeout: float = 5.0) -> T:
        return self.loop.run_until_complete(asyncio.wait_for(coro, timeout))  # type: ignore[arg-type]

    def elect(self, partition: int) -> int:
        async def election() -> int:
            epoch = self.epochs.get(partition, 0) + 1
            self.epochs[partition] = epoch
            votes: list[Vote] = []
            for broker in self.peers.brokers.values():
                vote = (await broker.vote({partition: epoch}))[partition]
                if vote is not None:
                    votes.append(vote)
            outcome = choose_leader(votes, replicas_of(partition, 3, 3), self.min_insync, len(votes) == 3)
            assert outcome is not None, votes
            assert (await self.peers.brokers[outcome.leader].lead({partition: (epoch, None)}))[partition]
            for v in votes:
                if v.replica != outcome.leader:
                    await self.peers.brokers[v.replica].follow({partition: (epoch, outcome.leader)})
            return outcome.leader

        return self.run(election())

    def attach(self, b: int, partition: int, leader: int) -> None:
        self.run(self.peers.brokers[b].follow({partition: (self.epochs[partition], leader)}))

    def broker(self, b: int) -> ReplicatedBroker:
        return self.peers.brokers[b]

    def rows(self, b: int, partition: int) -> list[str]:
        """Every row's hostname tag a consumer of broker ``b`` reads from ``partition``."""

        async def read() -> list[str]:
            broker = self.broker(b)
            result = await broker.fetch("g", "m", 1, {partition: broker.log_of(partition).start_offset}, 10**6)
            assert result.data is not None
            return [str(h) for h in result.data.samples.column("hostname").to_pylist()]

        return self.run(read())


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    for task in asyncio.all_tasks(loop):
        task.cancel()
    with contextlib.suppress(Exception):
        loop.run_until_complete(asyncio.sleep(0))
    loop.close()


def publish(c: Cluster, leader: int, partition: int, tag: str, seq: int, rows: int = 3) -> Any:
    return c.broker(leader).append_batch("prod", seq, envelope_of(rows, tag), [(partition, 0, rows)])


def test_an_append_is_acknowledged_once_min_insync_replicas_hold_it(loop: asyncio.AbstractEventLoop) -> None:
    c = Cluster(loop)
    assert c.elect(0) == 0
    c.peers.down |= {1, 2}
    task = loop.create_task(publish(c, 0, 0, "a", 0))
    loop.run_until_complete(asyncio.sleep(0.3))
    assert not task.done()  # only the leader holds it
    assert c.rows(0, 0) == []  # and consumers do not see it
    c.peers.down.discard(1)
    (result,) = c.run(task)
    assert result.offset == 1  # offset 0 is the epoch's marker
    assert c.rows(0, 0) == ["a"] * 3
    assert c.broker(1).log_of(0).end_offset == 2


def test_a_dead_follower_does_not_stall_the_partition_and_shows_under_replicated(
    loop: asyncio.AbstractEventLoop,
) -> None:
    c = Cluster(loop)
    c.elect(0)
    c.crash(2)
    for seq in range(3):
        c.run(publish(c, 0, 0, f"t{seq}", seq))
    state = c.broker(0).replication_state()[0]
    assert state["role"] == "leader" and state["lag"][2] >= 3  # three flushes it never got
    assert c.rows(0, 0) == [f"t{s}" for s in range(3) for _ in range(3)]


def test_a_leader_change_keeps_offsets_and_dedups_a_resent_flush(loop: asyncio.AbstractEventLoop) -> None:
    c = Cluster(loop)
    c.elect(0)
    first = c.run(publish(c, 0, 0, "a", 0))[0]
    # Flush 1 reaches the followers but its ack never reaches the producer: the leader dies.
    c.run(publish(c, 0, 0, "b", 1))
    c.crash(0)
    leader = c.elect(0)
    assert leader in (1, 2)
    again = c.run(publish(c, leader, 0, "b", 1))[0]  # the producer re-sends flush 1 to the new leader
    assert again.duplicate
    third = c.run(publish(c, leader, 0, "c", 2))[0]
    assert third.offset == first.offset + 3  # a's offset kept, b's kept, then the new marker, then c
    assert c.rows(leader, 0) == ["a"] * 3 + ["b"] * 3 + ["c"] * 3


def test_a_stale_leader_is_fenced_and_refuses_appends(loop: asyncio.AbstractEventLoop) -> None:
    c = Cluster(loop)
    c.elect(0)
    c.run(publish(c, 0, 0, "a", 0))
    # The supervisor takes 0 for dead (it was frozen) and elects 1; 0 wakes up still leading.
    c.peers.down.add(0)
    epoch = c.epochs[0] + 1
    c.epochs[0] = epoch
    votes = [c.run(c.broker(b).vote({0: epoch}))[0] for b in (1, 2)]
    assert all(votes)
    c.run(c.broker(1).lead({0: (epoch, None)}))
    c.run(c.broker(2).follow({0: (epoch, 1)}))
    c.peers.down.discard(0)
    task = loop.create_task(publish(c, 0, 0, "lost", 1))
    with pytest.raises(NotLeader):
        c.run(task)
    with pytest.raises(NotLeader):
        c.run(publish(c, 0, 0, "x", 2))
    c.run(publish(c, 1, 0, "b", 3))
    loop.run_until_complete(asyncio.sleep(0.3))
    assert c.rows(1, 0) == ["a"] * 3 + ["b"] * 3
    assert c.broker(0).replicas[0].truncated >= 1  # its unacknowledged entry is gone


def test_an_old_leader_back_from_its_disk_truncates_what_the_new_leader_lacks(
    loop: asyncio.AbstractEventLoop, tmp_path: Path
) -> None:
    c = Cluster(loop, tmp_path)
    c.elect(0)
    c.run(publish(c, 0, 0, "a", 0))
    c.peers.down |= {1, 2}
    task = loop.create_task(publish(c, 0, 0, "tail", 1))  # on 0's disk only
    loop.run_until_complete(asyncio.sleep(0.2))
    task.cancel()
    c.crash(0)
    c.peers.down -= {1, 2}
    assert c.elect(0) == 1
    c.run(publish(c, 1, 0, "b", 2))
    old = c.start(0)  # back from its queue dir, with the tail
    assert old.log_of(0).end_offset == 3 and old.replicas[0].role == "unattached"
    c.attach(0, 0, 1)
    c.run(publish(c, 1, 0, "c", 3))
    loop.run_until_complete(asyncio.sleep(0.3))
    assert old.replicas[0].truncated == 1
    assert [e.rows for e in old.log_of(0).entries()] == [e.rows for e in c.broker(1).log_of(0).entries()]
    restarted = c.start(0)  # and its disk says the same after another restart
    assert restarted.log_of(0).end_offset == c.broker(1).log_of(0).end_offset


def test_a_follower_writes_a_lone_shipped_entry_as_it_came_and_reads_it_back(
    loop: asyncio.AbstractEventLoop, tmp_path: Path
) -> None:
    """The follower's frame is the leader's compressed stream (far fewer bytes), and a restart reads it exactly."""
    c = Cluster(loop, tmp_path)
    c.elect(0)
    c.run(publish(c, 0, 0, "big", 0, rows=5_000))
    loop.run_until_complete(asyncio.sleep(0.3))  # shipped to both followers
    leader_bytes = c.broker(0)._disks[0].used
    follower_bytes = c.broker(1)._disks[0].used
    assert 0 < follower_bytes < leader_bytes / 2, (follower_bytes, leader_bytes)
    c.crash(1)
    back = c.start(1)
    want = [(e.rows, e.payload.samples.to_pylist()) for e in c.broker(0).log_of(0).entries()]
    assert [(e.rows, e.payload.samples.to_pylist()) for e in back.log_of(0).entries()] == want


def test_an_emptied_replica_is_rebuilt_from_the_leaders_start(loop: asyncio.AbstractEventLoop) -> None:
    c = Cluster(loop)
    c.elect(0)
    for seq in range(3):
        c.run(publish(c, 0, 0, f"t{seq}", seq))
    generation = c.broker(0).join("g", "m").generation
    c.run(c.broker(0).commit("g", "m", generation, {0: 2}))
    c.crash(2)
    fresh = c.start(2)  # no queue dir: empty, and it must not vote on what it lacks
    assert fresh.replicas[0].fresh
    c.attach(2, 0, 0)
    c.run(publish(c, 0, 0, "t3", 3))
    loop.run_until_complete(asyncio.sleep(0.3))
    log = fresh.log_of(0)
    assert log.start_offset == 2 and log.end_offset == c.broker(0).log_of(0).end_offset
    assert not fresh.replicas[0].fresh
    assert fresh.replication_state()[0]["role"] == "follower"


def test_groups_are_coordinated_by_the_leader_of_partition_zero(loop: asyncio.AbstractEventLoop) -> None:
    c = Cluster(loop)
    c.elect(0)
    c.elect(1)
    assert c.broker(0).join("g", "m").partitions
    with pytest.raises(NotLeader):
        c.broker(1).join("g", "m")
    c.crash(0)
    assert c.elect(0) == 1
    assignment = c.broker(1).join("g", "m2")
    assert set(assignment.partitions) == set(range(PARTITIONS))


def test_stats_report_led_partitions_and_every_replica(loop: asyncio.AbstractEventLoop) -> None:
    c = Cluster(loop)
    c.elect(0)
    c.elect(1)
    stats = c.broker(0).stats()
    assert set(stats["partitions"]) == {0}
    assert set(stats["replication"]) == {0, 1, 2}
    assert stats["replication"][1]["role"] == "follower" and stats["replication"][1]["leader"] == 1
