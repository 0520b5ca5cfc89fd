"""The queue without Ray: partition log, sticky assignment, fencing, backpressure, dedupe."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.errors import FencedError, OffsetOutOfRange
from pipeline.queue.broker import Broker
from pipeline.queue.group import GroupCoordinator, sticky_assign
from pipeline.queue.log import PartitionLog
from tests.support import envelope_of


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_log_offsets_read_and_trim() -> None:
    log = PartitionLog(0, start_offset=5)
    for i in range(4):
        assert log.append(f"m{i}", rows=10 * (i + 1), nbytes=100, now=0.0) == 5 + i
    assert (log.start_offset, log.end_offset, log.bytes_held) == (5, 9, 400)
    assert [e.payload for e in log.read(6, max_rows=50)] == ["m1", "m2"]
    assert [e.payload for e in log.read(6, max_rows=1)] == ["m1"]  # at least one message
    assert log.read(9, max_rows=100) == []
    assert log.rows_between(6, 9) == 20 + 30 + 40
    log.trim(7)
    assert (log.start_offset, log.bytes_held, log.rows_held) == (7, 200, 70)
    with pytest.raises(OffsetOutOfRange):
        log.read(6, 10)
    with pytest.raises(OffsetOutOfRange):
        log.read(10, 10)


@given(
    st.integers(1, 64),
    st.lists(st.text("abcdefgh", min_size=1, max_size=3), min_size=1, max_size=12, unique=True),
    st.data(),
)
def test_sticky_assignment_is_balanced_and_moves_little(
    partitions: int, members: list[str], data: st.DataObject
) -> None:
    parts = list(range(partitions))
    before = sticky_assign(parts, members, {})
    assert sorted(p for ps in before.values() for p in ps) == parts
    sizes = [len(ps) for ps in before.values()]
    assert max(sizes) - min(sizes) <= 1
    leaving = data.draw(st.sampled_from(members))
    rest = [m for m in members if m != leaving]
    after = sticky_assign(parts, rest, before)
    if rest:
        assert sorted(p for ps in after.values() for p in ps) == parts
        # Only the leaver's partitions (and at most one per member for rebalancing) move.
        moved = sum(1 for m, ps in after.items() for p in ps if p not in before[m])
        assert moved <= len(before[leaving]) + len(rest)
        kept = sum(1 for m in rest for p in before[m] if p in after[m])
        assert kept >= sum(len(before[m]) for m in rest) - len(rest)


def test_join_leave_and_generations() -> None:
    clock = Clock()
    g = GroupCoordinator("g", range(4), session_timeout_s=10, clock=clock, first_generation=100)
    a = g.join("a")
    assert a.generation == 101 and a.partitions == (0, 1, 2, 3)
    b = g.join("b")
    assert b.generation == 102 and len(b.partitions) == 2
    a2 = g.heartbeat("a", a.generation)
    assert a2.generation == 102 and len(a2.partitions) == 2
    assert set(a2.partitions) <= set(a.partitions)  # sticky: a kept half of what it had
    with pytest.raises(FencedError):
        g.check("a", a.generation, a2.partitions[0])  # old generation refused
    g.check("a", a2.generation, a2.partitions[0])
    with pytest.raises(FencedError, match="not assigned"):
        g.check("a", a2.generation, b.partitions[0])
    g.leave("b")
    assert g.heartbeat("a", a2.generation).partitions == (0, 1, 2, 3)


def test_a_member_that_stalls_past_the_session_timeout_is_fenced() -> None:
    clock = Clock()
    g = GroupCoordinator("g", range(2), session_timeout_s=5, clock=clock)
    a = g.join("a")
    g.join("b")
    a = g.heartbeat("a", g.generation)
    clock.now += 4
    g.heartbeat("b", g.generation)
    clock.now += 3  # a silent for 7 s > 5 s
    b = g.heartbeat("b", g.generation)
    assert b.partitions == (0, 1)
    with pytest.raises(FencedError, match="rejoin"):
        g.heartbeat("a", a.generation)
    with pytest.raises(FencedError):
        g.check("a", a.generation, 0)


def test_a_new_incarnation_replaces_the_old_member_at_once() -> None:
    g = GroupCoordinator("g", range(4), session_timeout_s=60, clock=Clock())
    g.join("collector-0#1")
    g.join("collector-1#1")
    a = g.join("collector-0#2")
    assert g.members == ("collector-0#2", "collector-1#1")
    assert len(a.partitions) == 2


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def test_broker_dedupes_producer_sequences() -> None:
    async def scenario() -> None:
        b = Broker(0, 2, [0, 1], budget_bytes=1 << 20)
        r1 = await b.append(0, envelope_of(10), 10, 100, producer="p", seq=0)
        r2 = await b.append(1, envelope_of(10), 10, 100, producer="p", seq=1)
        dup = await b.append(0, envelope_of(10), 10, 100, producer="p", seq=0)
        assert (r1.offset, r2.offset, dup.duplicate) == (0, 0, True)
        r3 = await b.append(0, envelope_of(10), 10, 100, producer="p", seq=2)
        assert r3.offset == 1
        assert b.stats()["partitions"][0]["duplicates"] == 1
        b.checkpoint("p", {"pass": 3, "seq": 3})
        assert b.producer_state("p") == {"pass": 3, "seq": 3}
        assert b.producer_state("q") is None

    run(scenario())


def test_producer_waits_for_budget_and_resumes_after_commit() -> None:
    async def scenario() -> None:
        b = Broker(0, 1, [0], budget_bytes=250)
        a = b.join("g", "c")
        for _i in range(2):
            await b.append(0, envelope_of(1), 1, 100)
        blocked = asyncio.create_task(b.append(0, envelope_of(1), 1, 100))
        await asyncio.sleep(0.05)
        assert not blocked.done()  # over budget: waits, never drops
        fetched = await b.fetch("g", "c", a.generation, {0: 0}, max_rows=1)
        await b.commit("g", "c", a.generation, {0: fetched.messages[-1].offset + 1})
        result = await asyncio.wait_for(blocked, 1.0)
        assert result.offset == 2
        stats = b.stats()["partitions"][0]
        assert stats["blocked_s"] > 0.04
        assert stats["groups"]["g"]["lag_batches"] == 2 and stats["groups"]["g"]["lag_rows"] == 2

    run(scenario())


def test_fetch_waits_for_data_and_commits_are_fenced() -> None:
    async def scenario() -> None:
        b = Broker(0, 1, [0], budget_bytes=1 << 20, session_timeout_s=30)
        a = b.join("g", "c1")
        waiter = asyncio.create_task(b.fetch("g", "c1", a.generation, {0: 0}, 100, timeout_s=2.0))
        await asyncio.sleep(0.05)
        await b.append(0, envelope_of(5, "hello"), 5, 10)
        got = await asyncio.wait_for(waiter, 1.0)
        assert [m.rows for m in got.messages] == [5]
        assert got.data is not None and got.data.samples.column("hostname").to_pylist() == ["hello"] * 5
        b.join("g", "c2")  # rebalance: c1's generation is stale now
        with pytest.raises(FencedError):
            await b.commit("g", "c1", a.generation, {0: 1})
        empty = await b.fetch("g", "c1", b.heartbeat("g", "c1", a.generation).generation, {}, 100)
        assert empty.messages == []

    run(scenario())


def test_fetch_reports_offsets_outside_the_log() -> None:
    async def scenario() -> None:
        b = Broker(0, 1, [0], budget_bytes=1 << 20, start_offsets={0: 10})
        a = b.join("g", "c")
        result = await b.fetch("g", "c", a.generation, {0: 3}, 10)
        assert result.out_of_range == {0: (10, 10)}

    run(scenario())


def test_data_is_released_only_when_every_group_committed() -> None:
    async def scenario() -> None:
        b = Broker(0, 1, [0], budget_bytes=1 << 20)
        g1 = b.join("g1", "a")
        g2 = b.join("g2", "b")
        for _i in range(3):
            await b.append(0, envelope_of(1), 1, 10)
        await b.commit("g1", "a", g1.generation, {0: 3})
        assert b.stats()["partitions"][0]["start_offset"] == 0
        await b.commit("g2", "b", g2.generation, {0: 2})
        assert b.stats()["partitions"][0]["start_offset"] == 2

    run(scenario())
