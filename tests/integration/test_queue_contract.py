"""One contract for the queue: the in-process ``LocalQueue`` and the Ray transport over Broker actors.

The streamer and collector unit tests run against ``LocalQueue``; this suite runs the same scenarios
against both, so the double cannot drift from what the Ray queue does (waits, dedupe, fencing,
checkpoints, packed fetches across brokers).
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from pipeline.config import QueueSettings
from pipeline.errors import FencedError
from pipeline.queue.local import LocalQueue
from pipeline.queue.routing import broker_of
from tests.support import envelope_of

PARTITIONS = 4
BROKERS = 2


@pytest.fixture(params=["local", "ray"])
def queue(request: pytest.FixtureRequest) -> Iterator[Any]:
    if request.param == "local":
        q = LocalQueue(PARTITIONS, brokers=BROKERS, budget_bytes=1 << 20, session_timeout_s=30)
        yield q
        q.close()
        return
    request.getfixturevalue("ray_local")
    conninfo = request.getfixturevalue("fresh_db")  # a broker starts at the offsets committed there
    import ray

    from pipeline.runtime.actors import make_broker
    from pipeline.runtime.transport import RayQueue

    settings = QueueSettings(
        partitions=PARTITIONS, brokers=BROKERS, partition_budget_bytes=1 << 20, session_timeout_s=30
    )
    namespace = f"contract-{uuid.uuid4().hex[:8]}"
    handles = [
        make_broker(b, settings, namespace, [p for p in range(PARTITIONS) if broker_of(p, BROKERS) == b], conninfo, 0.0)
        for b in range(BROKERS)
    ]
    yield RayQueue(handles)
    for h in handles:
        ray.kill(h, no_restart=True)


def test_a_publish_is_acked_once_and_a_resend_is_a_duplicate(queue: Any) -> None:
    env = envelope_of(6)
    ranges = [(0, 0, 2), (1, 2, 2), (3, 4, 2)]
    first = queue.publish("p", 0, env, ranges)
    assert sorted((r.partition, r.offset, r.duplicate) for r in first) == [(0, 0, False), (1, 0, False), (3, 0, False)]
    again = queue.publish("p", 0, env, ranges)
    assert all(r.duplicate for r in again)


def test_a_fetch_spans_brokers_and_comes_packed_in_message_order(queue: Any) -> None:
    queue.publish("p", 0, envelope_of(4, "a"), [(0, 0, 2), (1, 2, 2)])  # partitions 0 and 1 live on brokers 0 and 1
    a = queue.join("g", "m")
    got = queue.fetch("g", "m", a.generation, dict.fromkeys(a.partitions, 0), 1000, 0.0)
    assert sorted((m.partition, m.offset, m.rows) for m in got.messages) == [(0, 0, 2), (1, 0, 2)]
    assert got.data is not None and got.data.num_rows == 4


def test_a_waiting_fetch_returns_what_is_published_on_any_broker_meanwhile(queue: Any) -> None:
    a = queue.join("g", "m")
    result: dict[str, Any] = {}
    waiter = threading.Thread(
        target=lambda: result.setdefault("r", queue.fetch("g", "m", a.generation, {1: 0}, 1000, 20.0))
    )
    waiter.start()
    queue.publish("p", 0, envelope_of(3), [(1, 0, 3)])  # partition 1: broker 1
    waiter.join(30)
    assert not waiter.is_alive() and [m.rows for m in result["r"].messages] == [3]


def test_a_stale_generation_is_fenced_and_checkpoints_round_trip(queue: Any) -> None:
    a = queue.join("g", "m1")
    queue.join("g", "m2")  # a rebalance: m1's generation is stale now
    with pytest.raises(FencedError):
        queue.commit("g", "m1", a.generation, {0: 0})
    queue.checkpoint("p", {"pass": 2, "seq": 9})
    assert queue.producer_state("p") == {"pass": 2, "seq": 9}
    assert queue.producer_state("nobody") is None
