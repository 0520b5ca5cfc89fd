"""The replicated queue over real Broker actors (one node, the session's Ray): producers and consumers
follow partition leaders, a re-sent flush is a duplicate on whichever leader, a killed leader is
replaced by an in-sync follower and comes back as a follower rebuilt from the new leader.

The multi-node faults (a node's loss, a returning old leader) are in ``test_replication.py``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import ray

from pipeline.config import QueueSettings
from pipeline.runtime.actors import make_broker
from pipeline.runtime.elector import Elector
from pipeline.runtime.leaders import ReplicatedQueue
from pipeline.runtime.names import ActorHandle
from tests.support import envelope_of

PARTITIONS = 3


@dataclass
class Replicated:
    queue: ReplicatedQueue
    elector: Elector
    handles: list[ActorHandle]

    def leader(self, partition: int) -> int:
        self.elector.round()
        leader = self.elector.report()[partition]["leader"]
        assert leader is not None
        return int(leader)


@pytest.fixture
def replicated(ray_local: None, fresh_db: str) -> Iterator[Replicated]:
    settings = QueueSettings(
        partitions=PARTITIONS,
        brokers=3,
        replication_factor=3,
        min_insync=2,
        partition_budget_bytes=1 << 20,
        session_timeout_s=30,
        failover_s=0.5,
        replica_lag_s=2.0,
    )
    namespace = f"replicated-{uuid.uuid4().hex[:8]}"
    handles = [make_broker(b, settings, namespace, [], fresh_db, 0.0) for b in range(3)]
    ray.get([h.stats.remote() for h in handles], timeout=120)
    elector = Elector(settings, lambda: handles)
    elector.settle()
    yield Replicated(ReplicatedQueue(handles, namespace=namespace, poll_s=0.2), elector, handles)
    for h in handles:
        ray.kill(h, no_restart=True)


def rows_of(r: Replicated, group: str) -> list[str]:
    a = r.queue.join(group, "reader")
    got = r.queue.fetch(group, "reader", a.generation, dict.fromkeys(range(PARTITIONS), 0), 10_000, 0.0)
    assert got.data is not None
    return sorted(str(h) for h in got.data.samples.column("hostname").to_pylist())


def test_each_partition_is_led_by_its_preferred_broker_and_a_resend_is_a_duplicate(replicated: Replicated) -> None:
    assert [replicated.leader(p) for p in range(PARTITIONS)] == [0, 1, 2]
    env = envelope_of(6, "a")
    ranges = [(0, 0, 2), (1, 2, 2), (2, 4, 2)]
    first = replicated.queue.publish("p", 0, env, ranges)
    assert [(r.partition, r.offset, r.duplicate) for r in first] == [(0, 1, False), (1, 1, False), (2, 1, False)]
    again = replicated.queue.publish("p", 0, env, ranges)
    assert all(r.duplicate for r in again)
    assert rows_of(replicated, "g") == ["a"] * 6  # markers (offset 0) carry no rows


def test_a_killed_leader_is_replaced_and_rejoins_as_a_rebuilt_follower(replicated: Replicated) -> None:
    q = replicated.queue
    for seq in range(5):
        q.publish("p", seq, envelope_of(3, f"before{seq}"), [(0, 0, 3)])
    old = replicated.leader(0)
    pid = ray.get(replicated.handles[old].probe.remote())["pid"]
    ray.kill(replicated.handles[old], no_restart=False)  # Ray restarts it: empty (no queue dir)
    deadline = time.monotonic() + 60
    while True:
        replicated.elector.round()
        leader = replicated.elector.report()[0]["leader"]
        if leader not in (None, old):
            break
        assert time.monotonic() < deadline, "no new leader"
        time.sleep(0.2)
    for seq in range(5, 10):
        q.publish("p", seq, envelope_of(3, f"after{seq}"), [(0, 0, 3)])
    expected = sorted([f"before{s}" for s in range(5)] * 3 + [f"after{s}" for s in range(5, 10)] * 3)
    assert rows_of(replicated, "g2") == expected
    deadline = time.monotonic() + 60
    while True:  # the restarted broker follows the new leader, rebuilt from it
        replicated.elector.round()
        probe: dict[str, Any] = ray.get(replicated.handles[old].probe.remote(), timeout=30)
        state = probe["replicas"][0]
        if state["role"] == "follower" and not state["fresh"] and len(replicated.elector.report()[0]["in_sync"]) == 3:
            break
        assert time.monotonic() < deadline, state
        time.sleep(0.2)
    assert probe["pid"] != pid
