"""Segments under faults: damage inside the newest segment, and a restart that must not re-read committed history."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

import pipeline.queue.segments as segments
from pipeline.errors import QueueError
from pipeline.queue.broker import Broker, Persistence
from pipeline.queue.segments import SegmentStore
from tests.unit.queue.test_persistence import envelope, fill


def broker(tmp: Path, **persist: object) -> Broker:
    return Broker(0, 1, [0], budget_bytes=1 << 30, persistence=Persistence(tmp, **persist))  # type: ignore[arg-type]


def newest(tmp: Path) -> Path:
    return sorted((tmp / "partition-0").glob("*.seg"))[-1]


def frame_starts(path: Path) -> list[int]:
    data = path.read_bytes()
    out, pos = [], 0
    while pos < len(data):
        out.append(pos)
        _, length, _ = segments._PREFIX.unpack(data[pos : pos + segments._PREFIX.size])
        pos += segments._PREFIX.size + length
    return out


def test_a_torn_fragment_inside_the_newest_segment_keeps_every_later_frame(tmp_path: Path) -> None:
    async def scenario() -> None:
        b = broker(tmp_path)
        await fill(b, 0, 3)
        with newest(tmp_path).open("ab") as f:  # a write that failed half way (ENOSPC), then later appends
            f.write(b"GTQ1\x00\x00\x10\x00torn")
        await fill(b, 0, 2, first_seq=3)
        again = broker(tmp_path)
        stats = again.stats()["partitions"][0]
        assert (stats["start_offset"], stats["end_offset"]) == (0, 5)  # offsets 3 and 4 are not reused
        a = again.join("g", "c")
        got = await again.fetch("g", "c", a.generation, {0: 0}, max_rows=10**6)
        assert [m.offset for m in got.messages] == [0, 1, 2, 3, 4]
        r = await again.append(0, envelope(), 10, 10, "p", 5)
        assert r.offset == 5

    asyncio.run(scenario())


def test_a_bad_byte_in_an_uncommitted_frame_of_the_newest_segment_refuses_to_start(tmp_path: Path) -> None:
    async def scenario() -> None:
        b = broker(tmp_path)
        await fill(b, 0, 5)
        path = newest(tmp_path)
        starts = frame_starts(path)
        data = bytearray(path.read_bytes())
        data[starts[2] + 60] ^= 0xFF  # inside frame 2's body
        path.write_bytes(bytes(data))
        with pytest.raises(QueueError) as err:
            broker(tmp_path)
        assert err.value.path == str(path) and err.value.position == starts[2]
        assert "offset 2" in str(err.value)
        assert path.stat().st_size == len(data)  # nothing cut: an operator decides

    asyncio.run(scenario())


def test_a_bad_byte_in_a_committed_frame_of_the_newest_segment_is_skipped_and_later_frames_kept(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        b = broker(tmp_path)
        await fill(b, 0, 5)
        a = b.join("g", "c")
        await b.commit("g", "c", a.generation, {0: 3})
        path = newest(tmp_path)
        starts = frame_starts(path)
        data = bytearray(path.read_bytes())
        data[starts[2] + 60] ^= 0xFF  # frame 2: already in the database
        path.write_bytes(bytes(data))
        again = broker(tmp_path)
        stats = again.stats()["partitions"][0]
        assert (stats["start_offset"], stats["end_offset"]) == (3, 5)
        a2 = again.join("g", "c")
        got = await again.fetch("g", "c", a2.generation, {0: 3}, max_rows=10**6)
        assert [m.offset for m in got.messages] == [3, 4]

    asyncio.run(scenario())


def test_a_restart_does_not_decode_or_checksum_committed_frames(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def scenario() -> None:
        size = len(segments.encode_envelope({"offset": 0}, envelope()))
        b = broker(tmp_path, segment_bytes=size * 3)  # several segments
        await fill(b, 0, 10)
        a = b.join("g", "c")
        await b.commit("g", "c", a.generation, {0: 8})
        decoded: list[int] = []
        real = segments.decode_envelope

        def counting(body):  # type: ignore[no-untyped-def]
            decoded.append(body.size)
            return real(body)

        checksummed: list[int] = []
        real_crc = segments.zlib.crc32

        def counting_crc(data, *args):  # type: ignore[no-untyped-def]
            checksummed.append(len(data))
            return real_crc(data, *args)

        monkeypatch.setattr(segments, "decode_envelope", counting)
        monkeypatch.setattr(segments, "_crc32", counting_crc)
        again = broker(tmp_path, segment_bytes=size * 3)
        assert len(decoded) == 2 and len(checksummed) == 2  # only the two uncommitted frames
        stats = again.stats()["partitions"][0]
        assert (stats["start_offset"], stats["end_offset"]) == (8, 10)
        dup = await again.append(0, envelope(), 10, 10, "p", 4)  # a committed flush re-sent: still a duplicate
        assert dup.duplicate

    asyncio.run(scenario())


def test_a_store_walks_committed_segments_by_name_only(tmp_path: Path) -> None:
    store = SegmentStore(tmp_path, segment_bytes=1)
    for i in range(4):
        store.append(i, {"producer": "p", "seq": i}, envelope())
    store.close()
    first = sorted(tmp_path.glob("*.seg"))[0]
    first.write_bytes(b"rotten history")  # committed and sealed: never read at start
    frames, next_offset, _ = SegmentStore(tmp_path, segment_bytes=1).recover(keep_from=2, last_seq_known=True)
    assert [f.offset for f in frames] == [2, 3] and next_offset == 4


def test_damage_in_a_sealed_segment_that_lost_only_committed_messages_is_skipped(tmp_path: Path) -> None:
    store = SegmentStore(tmp_path, segment_bytes=3 * len(segments.encode_envelope({"offset": 0}, envelope())))
    for i in range(6):
        store.append(i, {"producer": "p", "seq": i}, envelope())
    store.close()
    sealed = sorted(tmp_path.glob("*.seg"))[0]
    data = bytearray(sealed.read_bytes())
    data[1] ^= 0xFF  # frame 0's magic: committed; frames 1, 2 in the same segment are not
    sealed.write_bytes(bytes(data))
    with pytest.raises(QueueError, match="in a sealed segment: message"):
        SegmentStore(tmp_path, segment_bytes=1 << 30).recover(keep_from=0)
    frames, next_offset, _ = SegmentStore(tmp_path, segment_bytes=1 << 30).recover(keep_from=1)
    assert [f.offset for f in frames] == [1, 2, 3, 4, 5] and next_offset == 6


def test_a_fragment_at_the_end_of_a_sealed_segment_loses_nothing(tmp_path: Path) -> None:
    store = SegmentStore(tmp_path, segment_bytes=1)  # every frame its own segment
    for i in range(3):
        store.append(i, {}, envelope())
    store.close()
    with sorted(tmp_path.glob("*.seg"))[0].open("ab") as f:
        f.write(b"GTQ1\x00\x00\x10\x00torn")  # left by a failed write before the roll
    frames, next_offset, _ = SegmentStore(tmp_path, segment_bytes=1).recover(keep_from=0)
    assert [f.offset for f in frames] == [0, 1, 2] and next_offset == 3
