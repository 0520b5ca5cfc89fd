"""Collector under faults: the database away at start-up or mid-rebalance, two collectors joining at once."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

from pipeline.collector import Collector
from pipeline.errors import DatabaseUnavailable
from pipeline.queue.local import LocalQueue
from pipeline.sources.dcgm_csv import DcgmCsvSource
from pipeline.streamer import Streamer
from tests.support import MemorySink


class FlakySink(MemorySink):
    """A MemorySink whose open, claim and write fail with ``DatabaseUnavailable`` a given number of times."""

    def __init__(self, open_fails: int = 0, claim_fails: int = 0, write_fails: int = 0) -> None:
        super().__init__()
        self.open_fails = open_fails
        self.claim_fails = claim_fails
        self.write_fails = write_fails

    def open(self) -> None:
        if self.open_fails:
            self.open_fails -= 1
            raise DatabaseUnavailable("cannot connect: server is stopped")
        super().open()

    def claim(self, group: str, generation: int, partitions: Sequence[int]) -> dict[int, int]:
        if self.claim_fails and partitions:
            self.claim_fails -= 1
            raise DatabaseUnavailable("cannot connect: server is stopped")
        return super().claim(group, generation, partitions)

    def write(self, group, generation, batches, data):  # type: ignore[no-untyped-def]
        if self.write_fails:
            self.write_fails -= 1
            raise DatabaseUnavailable("database connection lost")
        return super().write(group, generation, batches, data)


def produce(q: LocalQueue, csv: Path, partitions: int) -> None:
    Streamer("s", DcgmCsvSource(csv), q, partitions=partitions, interval_s=0, batch_rows=1000, passes=1).run()


def run_until_stored(c: Collector, sink: MemorySink, rows: int) -> threading.Thread:
    """Run ``c`` in a thread until ``sink`` holds ``rows`` rows (or a generous bound), then stop it."""
    errors: list[BaseException] = []

    def target() -> None:
        try:
            c.run()
        except BaseException as exc:  # the test reports what escaped
            errors.append(exc)

    t = threading.Thread(target=target, daemon=True)
    t.start()
    for _ in range(600):
        if len(sink.sample_keys()) >= rows or not t.is_alive():
            break
        t.join(0.05)
    c.stop()
    t.join(10)
    assert not errors, f"run() raised {errors[0]!r}"
    return t


def test_a_database_down_at_start_up_is_waited_out(real_csv: Path) -> None:
    q = LocalQueue(partitions=2, budget_bytes=1 << 30)
    produce(q, real_csv, 2)
    sink = FlakySink(open_fails=2, claim_fails=2)
    c = Collector("c", "g", q, sink, poll_timeout_s=0.0, backoff_s=(0.0, 0.0))
    run_until_stored(c, sink, 2470)
    keys = sink.sample_keys()
    assert len(keys) == len(set(keys)) == 2470
    assert c.stats.retries >= 3


def test_a_database_error_while_re_syncing_after_a_fence_does_not_escape(real_csv: Path) -> None:
    q = LocalQueue(partitions=2, budget_bytes=1 << 30)
    produce(q, real_csv, 2)
    sink = FlakySink()
    c = Collector("c", "g", q, sink, poll_timeout_s=0.0, backoff_s=(0.0, 0.0))
    c.start()
    q.join("g", "other")  # a rebalance: c's generation is fenced on its next fetch...
    q.leave("g", "other")
    sink.claim_fails = 3  # ...and the database is away when it re-claims
    for _ in range(5):
        c.poll_once()  # must not raise
    assert c.stats.retries >= 3
    for _ in range(50):
        c.poll_once()
    assert len(sink.sample_keys()) == len(set(sink.sample_keys())) == 2470


def test_heartbeats_keep_flowing_while_the_database_is_away(real_csv: Path) -> None:
    # backoff grows past the session timeout; the member must stay in the group all along
    q = LocalQueue(partitions=2, budget_bytes=1 << 30, session_timeout_s=0.5)
    produce(q, real_csv, 2)
    sink = FlakySink(write_fails=3)
    c = Collector("c", "g", q, sink, poll_timeout_s=0.0, heartbeat_s=0.05, backoff_s=(0.2, 0.8))
    c.start()
    for _ in range(3):
        assert c.poll_once() == 0
    assert c.stats.retries == 3
    assert c.stats.fenced == 0
    assert q.brokers[0].group_state("g")["rebalances"] == 1  # only the join; no expiry, no rejoin
    for _ in range(50):
        c.poll_once()
    assert len(sink.sample_keys()) == 2470


class RacingSink(MemorySink):
    """Before the first claim it lets another collector join and claim (two collectors starting at once)."""

    def __init__(self) -> None:
        super().__init__()
        self.before_first_claim: Collector | None = None

    def claim(self, group: str, generation: int, partitions: Sequence[int]) -> dict[int, int]:
        other, self.before_first_claim = self.before_first_claim, None
        if other is not None:
            other.start()
        return super().claim(group, generation, partitions)


def test_two_collectors_joining_at_once_both_live_and_store_everything_once(real_csv: Path) -> None:
    q = LocalQueue(partitions=4, budget_bytes=1 << 30)
    produce(q, real_csv, 4)
    sink = RacingSink()
    a = Collector("a", "g", q, sink, poll_timeout_s=0.0, backoff_s=(0.0, 0.0))
    b = Collector("b", "g", q, sink, poll_timeout_s=0.0, backoff_s=(0.0, 0.0))
    sink.before_first_claim = b  # a joins (gets all), b joins and claims its half, then a claims
    a.start()  # a's claim is fenced by b's newer generation: a must re-sync, not die
    for _ in range(100):
        a.poll_once()
        b.poll_once()
    assert set(a.positions).isdisjoint(b.positions) and len(a.positions) + len(b.positions) == 4
    assert a.positions and b.positions
    keys = sink.sample_keys()
    assert len(keys) == len(set(keys)) == 2470
