"""Broker persistence: segments, recovery after a restart, torn tails, retention, disk budget."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from pipeline.errors import QueueError
from pipeline.queue.broker import Broker, Persistence
from pipeline.queue.segments import SegmentStore
from pipeline.records import Envelope, make_rejects, to_wire
from pipeline.sources import Shard
from pipeline.sources.synthetic import SyntheticFleet


def envelope(hosts: int = 1, with_rejects: bool = False) -> Envelope:
    samples = to_wire(next(iter(SyntheticFleet(hosts=hosts).read_pass(Shard()))).samples)
    rejects = make_rejects(0, "f.csv", [3], ["raw"], ["bad"]) if with_rejects else None
    return Envelope(samples, rejects)


def broker(tmp: Path, **persist: object) -> Broker:
    return Broker(0, 2, [0, 1], budget_bytes=1 << 30, persistence=Persistence(tmp, **persist))  # type: ignore[arg-type]


async def fill(b: Broker, partition: int, n: int, producer: str = "p", first_seq: int = 0) -> None:
    for i in range(n):
        env = envelope(with_rejects=i == 0)
        await b.append(partition, env, env.num_rows, env.nbytes, producer, first_seq + i)


def test_a_restarted_broker_recovers_uncommitted_messages(tmp_path: Path) -> None:
    async def scenario() -> None:
        b = broker(tmp_path)
        await fill(b, 0, 5)
        a = b.join("g", "c")
        await b.commit("g", "c", a.generation, {0: 2})
        b.checkpoint("p", {"pass": 4, "seq": 5})
        again = broker(tmp_path)  # the actor restarted: same arguments, state from disk
        stats = again.stats()["partitions"][0]
        assert (stats["start_offset"], stats["end_offset"]) == (2, 5)
        assert again.producer_state("p") == {"pass": 4, "seq": 5}
        dup = await again.append(0, envelope(), 10, 10, "p", 4)  # re-sent after the crash
        assert dup.duplicate
        a2 = again.join("g", "c")
        fetched = await again.fetch("g", "c", a2.generation, {0: 2}, max_rows=10**6)
        assert [m.offset for m in fetched.messages] == [2, 3, 4]
        first = fetched.data.samples.slice(0, fetched.messages[0].rows)  # type: ignore[union-attr]
        assert first.column("value").equals(envelope().samples.column("value"))
        assert first.column("uuid").to_pylist() == envelope().samples.column("uuid").to_pylist()

    asyncio.run(scenario())


def test_a_torn_last_frame_is_truncated_to_the_last_whole_message(tmp_path: Path) -> None:
    async def scenario() -> None:
        b = broker(tmp_path)
        await fill(b, 1, 3)
        seg = sorted((tmp_path / "partition-1").glob("*.seg"))[-1]
        whole = seg.stat().st_size
        with seg.open("ab") as f:
            f.write(b"GTQ1\x00\x00\x10\x00garbage")  # a crash in the middle of writing frame 3
        again = broker(tmp_path)
        assert seg.stat().st_size == whole
        assert again.stats()["partitions"][1]["end_offset"] == 3
        r = await again.append(1, envelope(), 10, 10, "p", 3)
        assert r.offset == 3
        third = broker(tmp_path)
        assert third.stats()["partitions"][1]["end_offset"] == 4

    asyncio.run(scenario())


def test_damage_in_a_sealed_segment_is_refused(tmp_path: Path) -> None:
    store = SegmentStore(tmp_path, segment_bytes=1)  # every frame rolls a new segment
    for i in range(3):
        store.append(i, {"producer": None, "seq": None}, envelope())
    store.close()
    first = sorted(tmp_path.glob("*.seg"))[0]
    data = bytearray(first.read_bytes())
    data[40] ^= 0xFF
    first.write_bytes(bytes(data))
    with pytest.raises(QueueError, match="checksum mismatch .* sealed segment"):
        SegmentStore(tmp_path, segment_bytes=1).recover(0)


def test_retention_deletes_only_committed_old_segments(tmp_path: Path) -> None:
    store = SegmentStore(tmp_path, segment_bytes=1)
    for i in range(4):
        store.append(i, {}, envelope())
    assert len(store.segments()) == 4
    assert store.apply_retention(committed=2, retention_s=3600, max_bytes=None) == 0  # not old yet
    old = time.time() - 7200
    for _, path in store.segments():
        os.utime(path, (old, old))
    freed = store.apply_retention(committed=2, retention_s=3600, max_bytes=None)
    assert freed > 0 and [b for b, _ in store.segments()] == [2, 3]  # 2 and 3 are not committed
    frames, next_offset, _ = SegmentStore(tmp_path, segment_bytes=1).recover(0)
    assert [f.offset for f in frames] == [2, 3] and next_offset == 4


def test_producers_wait_when_the_disk_budget_is_full(tmp_path: Path) -> None:
    async def scenario() -> None:
        env = envelope()
        size = len(__import__("pipeline.queue.segments", fromlist=["x"]).encode_envelope({"offset": 0}, env))
        b = broker(tmp_path, segment_bytes=1, disk_budget_bytes=int(size * 2.5), retention_s=10**9)
        a = b.join("g", "c")
        for i in range(2):
            await b.append(0, env, env.num_rows, env.nbytes, "p", i)
        blocked = asyncio.create_task(b.append(0, env, env.num_rows, env.nbytes, "p", 2))
        await asyncio.sleep(0.05)
        assert not blocked.done()
        await b.commit("g", "c", a.generation, {0: 2})  # committed segments may now go: over budget
        assert (await asyncio.wait_for(blocked, 1.0)).offset == 2

    asyncio.run(scenario())
