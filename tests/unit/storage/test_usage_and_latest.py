"""The write path's accounting rules without a database: usage holds and cells, the latest-value state."""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.storage.latest import LatestValues
from pipeline.storage.usage import MINUTE_US, ORIGIN_US, UsageAccounting, UsageRules

UTIL, POWER, FB = 1, 6, 7
T0 = ORIGIN_US + 10_000 * MINUTE_US  # on the minute grid
S = 1_000_000


def samples(gpu: int, seconds: list[float], util: float, power: float, fb: float, workload: int) -> list[Any]:
    """Util, power and fb samples of one GPU at the given seconds after T0 (gpu, metric, ts, value, workload)."""
    n = len(seconds)
    ts = np.repeat(np.array([T0 + round(s * S) for s in seconds], dtype=np.int64), 3)
    metric = np.tile(np.array([UTIL, POWER, FB], dtype=np.int16), n)
    value = np.tile(np.array([util, power, fb]), n)
    return [np.full(3 * n, gpu, dtype=np.int32), metric, ts, value, np.full(3 * n, workload, dtype=np.int32)]


def batch(*parts: list[Any]) -> list[Any]:
    return [np.concatenate(cols) for cols in zip(*parts, strict=True)]


def write(accounting: UsageAccounting, b: list[Any]) -> dict[tuple[int, int, int], tuple[float, ...]]:
    """Stage and commit one batch; its cells as {(minute, gpu, workload): (s, active, mem idle, util s, J)}."""
    staged = accounting.stage(*b, (UTIL, POWER, FB))
    accounting.commit(staged)
    if not staged.cells:
        return {}
    bucket, gpu, workload, *sums = staged.cells
    minutes = (bucket - T0) // MINUTE_US
    return {
        (int(m), int(g), int(w)): tuple(round(float(x[i]), 6) for x in sums)
        for i, (m, g, w) in enumerate(zip(minutes, gpu, workload, strict=True))
    }


def test_each_sample_holds_until_the_next_and_counts_for_its_workload() -> None:
    u = UsageAccounting(UsageRules(active_above=5, memory_held_mib=1024, max_gap_s=120))
    first = write(u, batch(samples(1, [0, 1, 2], 80, 300, 40_000, 7)))
    assert first == {(0, 1, 7): (2.0, 2.0, 0.0, 160.0, 600.0)}  # the third sample's hold waits for the next
    second = write(u, batch(samples(1, [3, 4], 0, 100, 20_000, 8)))
    # the held-over sample at 2 s (workload 7) gets its hold now; 3 s holds until 4 s for workload 8
    assert second == {(0, 1, 7): (1.0, 1.0, 0.0, 80.0, 300.0), (0, 1, 8): (1.0, 0.0, 1.0, 0.0, 100.0)}


def test_a_gap_longer_than_max_gap_holds_nothing() -> None:
    u = UsageAccounting(UsageRules(max_gap_s=10))
    assert write(u, batch(samples(1, [0, 5, 30, 31], 50, 200, 0, 1))) == {(0, 1, 1): (6.0, 6.0, 0.0, 300.0, 1200.0)}


def test_holds_land_in_the_minute_of_their_sample() -> None:
    u = UsageAccounting(UsageRules())
    cells = write(u, batch(samples(2, [58, 59.5, 61], 10, 100, 0, 3)))
    assert cells == {(0, 2, 3): (3.0, 3.0, 0.0, 30.0, 300.0)}  # 58 -> 59.5 -> 61: both holds start in minute 0
    assert write(u, batch(samples(2, [62], 10, 100, 0, 3))) == {(1, 2, 3): (1.0, 1.0, 0.0, 10.0, 100.0)}


def test_gpus_are_independent_and_a_repeated_instant_counts_once() -> None:
    u = UsageAccounting(UsageRules())
    b = batch(samples(1, [0, 1], 80, 300, 0, 1), samples(2, [0, 2], 0, 50, 4096, 0), samples(1, [1], 80, 300, 0, 1))
    assert write(u, b) == {(0, 1, 1): (1.0, 1.0, 0.0, 80.0, 300.0), (0, 2, 0): (2.0, 0.0, 2.0, 0.0, 100.0)}


def test_power_and_memory_are_taken_at_the_same_instant_only() -> None:
    u = UsageAccounting(UsageRules())
    gpu, metric, ts, value, workload = batch(samples(1, [0, 1, 2], 0, 300, 4096, 1))
    keep = ~((metric == POWER) & (ts == T0))  # no power reading at 0 s
    cells = write(u, [gpu[keep], metric[keep], ts[keep], value[keep], workload[keep]])
    assert cells == {(0, 1, 1): (2.0, 0.0, 2.0, 0.0, 300.0)}  # 0 s holds no energy, 1 s holds 300 J


def test_latest_values_keep_the_newest_sample_per_series_and_flush_on_their_period() -> None:
    now = [0.0]
    latest = LatestValues(every_s=5, clock=lambda: now[0])
    gpu = np.array([3, 3, 3, 4], dtype=np.int32)
    metric = np.array([UTIL, UTIL, POWER, UTIL], dtype=np.int16)
    ts = np.array([T0 + 2 * S, T0 + S, T0, T0], dtype=np.int64)  # out of order within the batch
    value = np.array([20.0, 10.0, 300.0, 70.0])
    staged = latest.stage(gpu, metric, np.array([UTIL, POWER], dtype=np.int16), ts, value)
    assert not staged.flush and staged.dirty[[3, 4]].all()
    latest.commit(staged)
    util = latest.value_of(UTIL)
    assert util is not None and (util[0][3], util[1][3]) == (T0 + 2 * S, 20.0) and util[1][4] == 70.0
    older = latest.stage(gpu[:1], metric[:1], metric[:1], ts[2:3], np.array([99.0]))  # older than what is held
    assert older.val[3, 0] == 20.0
    now[0] = 6.0
    assert latest.stage(gpu[:1], metric[:1], metric[:1], ts[:1], value[:1]).flush
