"""Streamer and collector logic over the in-process queue and an in-memory sink."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pyarrow as pa
import pytest

from pipeline.collector import Collector, group_messages
from pipeline.errors import DatabaseUnavailable, QueueError
from pipeline.queue.api import Fetched
from pipeline.queue.local import LocalQueue
from pipeline.sources import Shard
from pipeline.sources.dcgm_csv import DcgmCsvSource
from pipeline.sources.synthetic import SyntheticFleet, write_csv
from pipeline.streamer import Streamer, stamp
from tests.support import MemorySink
from tests.unit.conftest import FleetCsv


def drain(collectors: list[Collector], rounds: int = 200) -> None:
    for _ in range(rounds):
        idle = sum(c.poll_once() for c in collectors) == 0 and all(c.positions for c in collectors)
        # one more round to be sure nothing is left
        if idle and sum(c.poll_once() for c in collectors) == 0:
            return


def test_k_passes_are_stored_exactly_once(fleet_csv: FleetCsv) -> None:
    q = LocalQueue(partitions=4, budget_bytes=1 << 30)
    s = Streamer("s", DcgmCsvSource(fleet_csv.path), q, partitions=4, interval_s=0, batch_rows=5000, passes=3)
    stats = s.run()
    assert stats.produced == 3 * fleet_csv.rows and stats.done
    sink = MemorySink()
    c = Collector("c", "g", q, sink, poll_timeout_s=0.0)
    c.start()
    drain([c])
    keys = sink.sample_keys()
    assert len(keys) == 3 * fleet_csv.rows
    assert len(set(keys)) == 3 * fleet_csv.rows
    per_series = Counter((u, m) for u, m, _, _ in keys)
    assert set(per_series.values()) == {3}


def test_timestamps_strictly_increase_per_series_across_passes(fleet_csv: FleetCsv) -> None:
    q = LocalQueue(partitions=2, budget_bytes=1 << 30)
    times = iter(range(10**9))
    Streamer(
        "s",
        DcgmCsvSource(fleet_csv.path),
        q,
        partitions=2,
        interval_s=0,
        batch_rows=1000,
        passes=4,
        clock=lambda: 1_700_000_000.0 + next(times) * 0,
    ).run()  # a frozen clock
    sink = MemorySink()
    c = Collector("c", "g", q, sink, poll_timeout_s=0.0)
    c.start()
    drain([c])
    series: dict[tuple[str, str], list[int]] = {}
    for u, m, ts, _ in sink.sample_keys():
        series.setdefault((u, m), []).append(ts)
    assert all(len(v) == 4 and len(set(v)) == 4 for v in series.values())


def test_stamp_gives_repeats_of_a_series_consecutive_microseconds() -> None:
    fleet = SyntheticFleet(hosts=1, gpus_per_host=1)
    one = next(iter(fleet.read_pass(Shard()))).samples
    batch = pa.Table.from_batches([one, one]).combine_chunks().to_batches()[0]
    stamped, last = stamp(batch, 1000)
    ts = stamped.column("ts").cast(pa.int64()).to_pylist()
    assert ts[:10] == [1000] * 10 and ts[10:] == [1001] * 10 and last == 1001


def test_a_restarted_streamer_resumes_without_duplicates_or_gaps(tmp_path: Path) -> None:
    path = tmp_path / "fleet.csv"
    write_csv(path, hosts=4, scrapes=1)  # 320 rows
    q = LocalQueue(partitions=4, budget_bytes=1 << 30)

    class Crash(Exception):
        pass

    calls = {"n": 0}
    real_publish = q.publish

    def flaky(producer, seq, envelope, ranges):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 4:
            real_publish(producer, seq, envelope, ranges[:2])  # half the flush lands, then the process dies
            raise Crash
        return real_publish(producer, seq, envelope, ranges)

    q.publish = flaky  # type: ignore[method-assign]
    first = Streamer("s", DcgmCsvSource(path, batch_rows=50), q, partitions=4, interval_s=0, batch_rows=50, passes=3)
    with pytest.raises(Crash):
        first.run()
    q.publish = real_publish  # type: ignore[method-assign]
    second = Streamer("s", DcgmCsvSource(path, batch_rows=50), q, partitions=4, interval_s=0, batch_rows=50, passes=3)
    stats = second.run()
    assert stats.resumed_from is not None and stats.duplicates == 2
    sink = MemorySink()
    c = Collector("c", "g", q, sink, poll_timeout_s=0.0)
    c.start()
    drain([c])
    per_series = Counter((u, m) for u, m, _, _ in sink.sample_keys())
    assert len(per_series) == 320 and set(per_series.values()) == {3}


def test_two_collectors_share_partitions_and_store_everything_once(fleet_csv: FleetCsv) -> None:
    q = LocalQueue(partitions=8, budget_bytes=1 << 30)
    Streamer("s", DcgmCsvSource(fleet_csv.path), q, partitions=8, interval_s=0, batch_rows=2000, passes=2).run()
    sink = MemorySink()
    a = Collector("a", "g", q, sink, poll_timeout_s=0.0)
    b = Collector("b", "g", q, sink, poll_timeout_s=0.0, heartbeat_s=0.0)
    a.start()
    b.start()
    a._sync(force=True)
    assert set(a.positions).isdisjoint(b.positions) and len(a.positions) + len(b.positions) == 8
    drain([a, b])
    assert len(sink.sample_keys()) == len(set(sink.sample_keys())) == 2 * fleet_csv.rows


def test_a_failed_write_is_retried_and_nothing_is_lost(fleet_csv: FleetCsv) -> None:
    q = LocalQueue(partitions=2, budget_bytes=1 << 30)
    Streamer("s", DcgmCsvSource(fleet_csv.path), q, partitions=2, interval_s=0, batch_rows=1000, passes=1).run()
    sink = MemorySink()
    sink.fail_next = [DatabaseUnavailable("connection lost")]
    c = Collector("c", "g", q, sink, poll_timeout_s=0.0, backoff_s=(0.0, 0.0))
    c.start()
    assert c.poll_once() == 0 and c.stats.retries == 1
    drain([c])
    assert len(sink.sample_keys()) == fleet_csv.rows


def test_a_stale_collector_cannot_write() -> None:
    q = LocalQueue(partitions=1, budget_bytes=1 << 30)
    fleet = SyntheticFleet(hosts=1)
    Streamer("s", fleet, q, partitions=1, interval_s=0, passes=2).run()
    sink = MemorySink()
    zombie = Collector("z", "g", q, sink, poll_timeout_s=0.0)
    zombie.start()
    fresh = Collector("f", "g", q, sink, poll_timeout_s=0.0)
    fresh.start()  # rebalance: the only partition now belongs to one of them, in a newer generation
    owner, other = (fresh, zombie) if fresh.positions else (zombie, fresh)
    drain([owner])
    # the other member still believes in its old generation: its writes are refused by the sink
    assert sink.generations[("g", 0)] == owner.stats.generation
    assert len(sink.sample_keys()) == 160
    del other


def test_group_messages_counts_rows_and_refuses_gaps() -> None:
    msgs = [Fetched(0, 5, 10, 1), Fetched(0, 6, 20), Fetched(1, 3, 7)]
    batches = group_messages(msgs, {0: 5, 1: 3})
    assert [(b.partition, b.first_offset, b.next_offset, b.rows, b.rejects) for b in batches] == [
        (0, 5, 7, 30, 1),
        (1, 3, 4, 7, 0),
    ]
    with pytest.raises(QueueError, match="partition 0: fetched offset 8, expected 7"):
        group_messages([msgs[0], msgs[1], Fetched(0, 8, 1)], {0: 5})


def test_one_flush_is_one_batch_per_broker_and_fetches_come_packed() -> None:
    q = LocalQueue(partitions=4, brokers=2, budget_bytes=1 << 30)
    fleet = SyntheticFleet(hosts=2)
    s = Streamer("s", fleet, q, partitions=4, interval_s=0, batch_rows=10_000, passes=1)
    s.run()
    assert s.stats.flushes == 1 and s.stats.messages == 4  # one publish, a message per partition
    a = q.join("g", "c")
    got = q.fetch("g", "c", a.generation, dict.fromkeys(a.partitions, 0), 10**6, 0)
    assert len(got.messages) == 4
    assert got.data is not None and got.data.num_rows == sum(m.rows for m in got.messages) == 160
    # rows arrive in message order: each message's rows belong to its partition
    from pipeline.queue.keys import KeyHasher

    parts = KeyHasher().partitions(got.data.samples.column("uuid"), 4)
    expected = [m.partition for m in got.messages for _ in range(m.rows)]
    assert list(parts) == expected


def test_sliced_wire_batches_keep_only_used_dictionary_entries() -> None:
    from pipeline.queue.keys import KeyHasher
    from pipeline.records import compact_dictionaries, to_wire
    from tests.support import split

    fleet = SyntheticFleet(hosts=4)
    wire = to_wire(next(iter(fleet.read_pass(Shard()))).samples)
    parts = split(wire, KeyHasher().partitions(wire.column("uuid"), 8), 8)
    # every piece carries the parent's dictionary, though it uses only some of it
    assert all(len(p.column("uuid").dictionary) == 32 for _, p in parts)
    assert sum(len(set(p.column("uuid").to_pylist())) for _, p in parts) == 32
    # what persistence writes keeps only the entries in use, values unchanged
    for _, p in parts:
        compact = compact_dictionaries(p)
        assert len(compact.column("uuid").dictionary) == len(set(p.column("uuid").to_pylist()))
        assert compact.column("uuid").to_pylist() == p.column("uuid").to_pylist()


def test_a_commit_the_broker_missed_is_reported_again_when_idle(fleet_csv: FleetCsv) -> None:
    q = LocalQueue(partitions=2, budget_bytes=1 << 30)
    Streamer("s", DcgmCsvSource(fleet_csv.path), q, partitions=2, interval_s=0, passes=1).run()
    sink = MemorySink()
    c = Collector("c", "g", q, sink, poll_timeout_s=0.0)
    c.start()
    real_commit = q.commit
    q.commit = lambda *a, **k: (_ for _ in ()).throw(QueueError("broker restarting"))  # type: ignore[method-assign]
    drain([c])
    assert len(sink.sample_keys()) == fleet_csv.rows
    lag = sum(p["groups"]["g"]["lag_batches"] for b in q.stats() for p in b["partitions"].values())
    assert lag > 0  # the brokers never heard of the commits
    q.commit = real_commit  # type: ignore[method-assign]
    c.poll_once()  # idle: nothing to fetch, so it reports what the database holds
    lag = sum(p["groups"]["g"]["lag_batches"] for b in q.stats() for p in b["partitions"].values())
    assert lag == 0
