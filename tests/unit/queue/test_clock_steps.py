"""Clock steps: a broker restarted on a clock behind, and streamer stamps across a restart onto a clock behind."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from pipeline.collector import Collector
from pipeline.queue.broker import Broker, Persistence
from pipeline.queue.group import GroupCoordinator
from pipeline.queue.local import LocalQueue
from pipeline.sources.dcgm_csv import DcgmCsvSource
from pipeline.sources.synthetic import write_csv
from pipeline.streamer import Streamer
from tests.support import MemorySink


def persistent_broker(tmp: Path, behind_s: float = 0.0) -> Broker:
    return Broker(0, 2, [0, 1], 1 << 30, persistence=Persistence(tmp), wall_clock=lambda: time.time() - behind_s)


def run_all(collectors: list[Collector], rounds: int = 100) -> None:
    for _ in range(rounds):
        for c in collectors:
            c.poll_once()


def test_a_broker_restarted_on_a_clock_behind_still_hands_out_claimable_generations(
    tmp_path: Path, real_csv: Path
) -> None:
    q = LocalQueue(partitions=2, budget_bytes=1 << 30)
    q.brokers[0] = persistent_broker(tmp_path)
    Streamer("s1", DcgmCsvSource(real_csv), q, partitions=2, interval_s=0, batch_rows=1000, passes=1).run()
    sink = MemorySink()
    old = Collector("old", "g", q, sink, poll_timeout_s=0.0, backoff_s=(0.0, 0.0))
    old.start()
    run_all([old], 20)
    before = old.stats.generation
    assert len(sink.sample_keys()) == 2470
    q.brokers[0] = persistent_broker(tmp_path, behind_s=3600)  # restarted an hour in the past
    Streamer("s2", DcgmCsvSource(real_csv), q, partitions=2, interval_s=0, batch_rows=1000, passes=1).run()
    new = Collector("new", "g", q, sink, poll_timeout_s=0.0, backoff_s=(0.0, 0.0))
    new.start()  # joins the restarted coordinator before the old member speaks
    run_all([new, old])
    keys = sink.sample_keys()
    assert len(keys) == len(set(keys)) == 2 * 2470
    assert min(new.stats.generation, old.stats.generation) > before
    assert new.positions and old.positions


def test_a_coordinator_moves_past_a_generation_a_member_reports() -> None:
    c = GroupCoordinator("g", range(4), 10.0, time.monotonic, first_generation=100)
    c.join("a")
    assert c.generation == 101
    got = c.heartbeat("a", 5000)  # a generation from an earlier incarnation whose clock was ahead
    assert got.generation > 5000 and c.generation == got.generation
    assert c.join("b").generation > got.generation


def test_timestamps_stay_increasing_across_a_restart_onto_a_clock_behind(tmp_path: Path) -> None:
    path = tmp_path / "fleet.csv"
    write_csv(path, hosts=4, scrapes=1)  # 320 rows, each series once per pass
    q = LocalQueue(partitions=2, budget_bytes=1 << 30)

    class Crash(Exception):
        pass

    published = {"n": 0}
    real_publish = q.publish

    def publish_then_die(producer, seq, envelope, ranges):  # type: ignore[no-untyped-def]
        out = real_publish(producer, seq, envelope, ranges)
        published["n"] += 1
        if published["n"] == 8:  # the flush landed; the process died before anything else
            raise Crash
        return out

    q.publish = publish_then_die  # type: ignore[method-assign]
    ahead = Streamer(
        "s",
        DcgmCsvSource(path, batch_rows=50),
        q,
        partitions=2,
        interval_s=0,
        batch_rows=50,
        passes=3,
        clock=lambda: time.time() + 3600,
    )
    with pytest.raises(Crash):
        ahead.run()
    q.publish = real_publish  # type: ignore[method-assign]
    Streamer("s", DcgmCsvSource(path, batch_rows=50), q, partitions=2, interval_s=0, batch_rows=50, passes=3).run()
    sink = MemorySink()
    c = Collector("c", "g", q, sink, poll_timeout_s=0.0)
    c.start()
    run_all([c], 50)
    series: dict[tuple[str, str], list[int]] = {}
    for u, m, ts, _ in sink.sample_keys():  # in offset order per partition: the order they were produced
        series.setdefault((u, m), []).append(ts)
    assert len(series) == 320 and all(len(v) == 3 for v in series.values())
    assert all(v == sorted(v) and len(set(v)) == 3 for v in series.values())
