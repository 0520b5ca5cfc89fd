"""Disk: retention by size, a budget at or below one segment, and ENOSPC as a state, not a crash."""

from __future__ import annotations

import asyncio
import errno
import os
from pathlib import Path

import pytest

import pipeline.queue.segments as segments
from pipeline.config import QueueSettings
from pipeline.queue.broker import Broker, Persistence
from pipeline.queue.segments import SegmentStore
from tests.unit.queue.test_persistence import envelope


def frame_size() -> int:
    return len(segments.encode_envelope({"offset": 0}, envelope()))


def broker(tmp: Path, **persist: object) -> Broker:
    return Broker(0, 1, [0], budget_bytes=1 << 30, persistence=Persistence(tmp, **persist))  # type: ignore[arg-type]


async def put(b: Broker, seq: int) -> int:
    env = envelope()
    return (await b.append(0, env, env.num_rows, env.nbytes, "p", seq)).offset


def test_committed_segments_are_deleted_by_size_as_well_as_age(tmp_path: Path) -> None:
    store = SegmentStore(tmp_path, segment_bytes=1)
    for i in range(6):
        store.append(i, {}, envelope())
    size = frame_size()
    freed = store.apply_retention(committed=4, retention_s=10**9, max_bytes=None, retention_bytes=2 * size)
    assert freed > 0
    # committed 0..3; keep at most two segments' worth of committed data (2, 3) plus what is uncommitted
    assert [b for b, _ in store.segments()] == [2, 3, 4, 5]


def test_a_disk_budget_at_or_below_one_segment_does_not_deadlock_producers_at_lag_zero(tmp_path: Path) -> None:
    async def scenario() -> None:
        size = frame_size()
        b = broker(tmp_path, segment_bytes=64 * size, disk_budget_bytes=int(size * 1.5), retention_s=10**9)
        a = b.join("g", "c")
        for seq in range(4):
            offset = await asyncio.wait_for(put(b, seq), 2.0)
            assert offset == seq
            await b.commit("g", "c", a.generation, {0: seq + 1})  # lag 0 after every append
        assert b.stats()["partitions"][0]["disk_bytes"] <= int(size * 1.5)
        again = broker(tmp_path, segment_bytes=64 * size, disk_budget_bytes=int(size * 1.5), retention_s=10**9)
        assert again.stats()["partitions"][0]["end_offset"] == 4  # offsets are not reused after the roll

    asyncio.run(scenario())


def test_enospc_while_writing_a_segment_is_a_state_producers_wait_and_no_fragment_stays(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = segments._write_all
    failures = {"left": 3}

    def full_disk(fd: int, data: bytes) -> None:
        if failures["left"]:
            failures["left"] -= 1
            os.write(fd, data[: len(data) // 2])  # half the frame lands, then the volume is full
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fd, data)

    async def scenario() -> None:
        b = broker(tmp_path, enospc_retry_s=0.01)
        monkeypatch.setattr(segments, "_write_all", full_disk)
        task = asyncio.create_task(put(b, 0))
        for _ in range(100):
            await asyncio.sleep(0.001)
            if b.stats()["partitions"][0]["disk_full"] == "enospc":
                break
        assert b.stats()["partitions"][0]["disk_full"] == "enospc"
        assert await asyncio.wait_for(task, 2.0) == 0  # space came back: the append completed
        assert b.stats()["partitions"][0]["disk_full"] is None
        assert await put(b, 1) == 1
        store = SegmentStore(tmp_path / "partition-0", segment_bytes=1 << 30)
        frames, next_offset, _ = store.recover(0)
        assert [f.offset for f in frames] == [0, 1] and next_offset == 2
        assert store.truncated_bytes == store.skipped_bytes == 0  # no torn fragment was left behind

    asyncio.run(scenario())


def test_default_disk_settings_fit_the_smallest_overlay_volume() -> None:
    q = QueueSettings()
    assert q.disk_budget_bytes is not None and q.retention_bytes is not None
    dev_volume = 5 << 30  # kuberay dev overlay: one broker holding every partition on a 5 GiB claim
    assert q.partitions * q.disk_budget_bytes <= 0.8 * dev_volume
    assert q.segment_bytes * 4 <= q.disk_budget_bytes  # retention can free space segment by segment
    assert q.retention_bytes <= q.disk_budget_bytes


@pytest.mark.parametrize("segment_bytes", [1, 1 << 20], ids=["a-segment-per-frame", "one-segment"])
def test_a_cut_tail_is_gone_from_disk_and_the_log_continues_at_the_cut(tmp_path: Path, segment_bytes: int) -> None:
    store = SegmentStore(tmp_path, segment_bytes=segment_bytes)
    for i in range(6):
        store.append(i, {"i": i}, envelope())
    assert store.truncate(3) > 0
    store.append(3, {"i": "new"}, envelope())
    frames, next_offset, _ = SegmentStore(tmp_path, segment_bytes=segment_bytes).recover(0)
    assert [f.offset for f in frames] == [0, 1, 2, 3] and next_offset == 4
    assert frames[3].header["i"] == "new"
    assert store.truncate(0) > 0  # a replica rebuilt from its leader starts empty
    assert SegmentStore(tmp_path, segment_bytes=segment_bytes).recover(0)[0] == []
