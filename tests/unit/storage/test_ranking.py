"""The fleet ranking: pages cut from it are the keyset pages the SQL would give, and its COPY stream is read exactly."""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Callable

import numpy as np
import pytest

from pipeline.storage import copy_format as cf
from pipeline.storage.ranking import Ranking, Rankings

OIDS = (cf.OID_INT4, cf.OID_FLOAT8, cf.OID_TIMESTAMPTZ)


def stream(keys: list[int], values: list[float], ts_us: list[int]) -> bytes:
    """One COPY row of three arrays, as PostgreSQL sends ``array_agg`` of (int4, float8, timestamptz)."""
    fields = [
        cf.array_value(np.array(keys, np.int32), cf.OID_INT4),
        cf.array_value(np.array(values, np.float64), cf.OID_FLOAT8),
        cf.array_value(np.array(ts_us, np.int64), cf.OID_TIMESTAMPTZ),
    ]
    return cf.HEADER + cf.encode_row(fields) + cf.TRAILER


def sort_key(value: float, key: int) -> tuple[int, float, int]:
    """PostgreSQL's float8 order: NaN above every number, equal to itself."""
    return (1, 0.0, key) if math.isnan(value) else (0, value, key)


def walk(ranking: Ranking, order: str, limit: int) -> list[tuple[int, float, int]]:
    """Every page of ``ranking`` in ``order``, each next one after the last entry of the one before."""
    out: list[tuple[int, float, int]] = []
    after = None
    while page := ranking.page(order, limit, after):  # type: ignore[arg-type]
        out += page
        after = (page[-1][1], page[-1][0])
    return out


@pytest.mark.parametrize("seed", range(20))
def test_pages_walk_the_fleet_in_value_then_key_order_both_ways(seed: int) -> None:
    rng = random.Random(seed)
    n = rng.randrange(0, 60)
    keys = rng.sample(range(1, 10_000), n)
    pool = [0.0, -0.0, 1.5, 2.5, 80.0, -3.0, float("inf"), float("nan")]
    values = [rng.choice(pool) for _ in keys]  # many ties, signed zeros, infinities, NaN
    ts = [1_700_000_000_000_000 + rng.randrange(10**6) for _ in keys]
    entries = list(zip(keys, values, ts, strict=True))
    k, v, t = cf.decode_arrays(stream(keys, values, ts), OIDS)
    ranking = Ranking.of(k, v, t, at=0.0)  # type: ignore[arg-type]
    ascending = sorted(entries, key=lambda e: sort_key(e[1], e[0]))
    for limit in (1, 3, 7, 100):
        got_asc, got_desc = walk(ranking, "asc", limit), walk(ranking, "desc", limit)
        assert [(e[0], e[2]) for e in got_asc] == [(e[0], e[2]) for e in ascending]
        assert [(e[0], e[2]) for e in got_desc] == [(e[0], e[2]) for e in reversed(ascending)]
    assert ranking.page("desc", 0) == [] and ranking.page("asc", 0) == []


def test_a_cursor_between_entries_starts_where_the_sql_keyset_would() -> None:
    ranking = Ranking.of(
        np.array([5, 1, 3, 2], np.int32), np.array([10.0, 10.0, 20.0, 5.0]), np.zeros(4, np.int64), at=0.0
    )
    # ascending: (5.0, 2) (10.0, 1) (10.0, 5) (20.0, 3)
    assert [e[0] for e in ranking.page("asc", 10, after=(10.0, 3))] == [5, 3]  # (10, 3) lies between 1 and 5
    assert [e[0] for e in ranking.page("desc", 10, after=(10.0, 3))] == [1, 2]
    assert [e[0] for e in ranking.page("asc", 10, after=(7.0, 99))] == [1, 5, 3]
    assert ranking.page("desc", 10, after=(5.0, 2)) == [] and ranking.page("asc", 10, after=(20.0, 3)) == []


def test_the_stream_decodes_exactly_and_an_empty_fleet_is_empty_arrays() -> None:
    k, v, t = cf.decode_arrays(stream([7, 8], [1.25, -2.0], [1, 1_800_000_000_123_456]), OIDS)
    assert k.tolist() == [7, 8] and v.tolist() == [1.25, -2.0] and t.tolist() == [1, 1_800_000_000_123_456]
    # array_agg of no rows: three NULL fields
    nulls = cf.HEADER + (3).to_bytes(2, "big") + (-1).to_bytes(4, "big", signed=True) * 3 + cf.TRAILER
    assert [len(a) for a in cf.decode_arrays(nulls, OIDS)] == [0, 0, 0]


@pytest.mark.parametrize(
    "bad",
    [
        "not copy",
        "two rows",
        "null element",
        "wrong type",
        "short",
        "infinity",
    ],
)
def test_a_stream_of_another_shape_is_refused_not_misread(bad: str) -> None:
    good = stream([7, 8], [1.0, 2.0], [1, 2])
    body = good[len(cf.HEADER) : -len(cf.TRAILER)]
    if bad == "not copy":
        data = b"PGCOPX" + good[6:]
    elif bad == "two rows":
        data = cf.HEADER + body + body + cf.TRAILER
    elif bad == "null element":  # the has-null flag of the values array set, one element of length -1
        ints = bytearray(good)
        values_at = len(cf.HEADER) + 2 + 4 + len(cf.array_value(np.array([7, 8], np.int32), cf.OID_INT4))
        ints[values_at + 4 + 4 : values_at + 4 + 8] = (1).to_bytes(4, "big")
        data = bytes(ints)
    elif bad == "wrong type":
        data = cf.HEADER + cf.encode_row([cf.array_value(np.array([1], np.int16), 21)] * 3) + cf.TRAILER
    elif bad == "infinity":  # PostgreSQL's 'infinity' timestamptz is the largest int8
        data = stream([7], [1.0], [0])
        data = data[: -len(cf.TRAILER) - 8] + (2**63 - 1).to_bytes(8, "big") + cf.TRAILER  # the last time
    else:
        data = good[:-7] + cf.TRAILER
    with pytest.raises(ValueError):
        cf.decode_arrays(data, OIDS)


class Clock:
    """A monotonic clock the test steps by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def landed(condition: Callable[[], bool]) -> None:
    """Wait (a background thread's work) for ``condition``."""
    deadline = time.monotonic() + 10
    while not condition():
        assert time.monotonic() < deadline, "the background refresh never landed"
        time.sleep(0.005)


def test_a_ranking_is_reused_while_young_refreshed_behind_while_stale_and_remade_when_old() -> None:
    fetched: list[int] = []
    gate = threading.Event()

    def fetch(metric_id: int) -> bytes:
        fetched.append(metric_id)
        if len(fetched) == 3:
            assert gate.wait(10)  # the background refresh, held until the stale pages were served
        return stream([1, 2], [float(len(fetched)), 0.0], [0, 0])

    clock = Clock()
    rankings = Rankings(fetch, max_age_s=1.0, clock=clock)
    first = rankings.of(3)
    assert rankings.of(3) is first and fetched == [3]
    rankings.of(4)
    assert fetched == [3, 4]
    clock.now += 1.5  # stale (older than 1 s, younger than 2 s): served while a thread ranks again
    assert rankings.of(3) is first and rankings.of(3) is first
    gate.set()
    landed(lambda: rankings.of(3) is not first)
    assert fetched == [3, 4, 3] and rankings.of(3).page("desc", 1)[0][1] == 3.0  # one refresh for both
    clock.now += 2.5  # too old to serve: the request ranks itself
    assert rankings.of(4).page("desc", 1)[0][1] == 4.0 and fetched == [3, 4, 3, 4]
    assert not Rankings(fetch, max_age_s=0).enabled and rankings.enabled


def test_a_failed_background_refresh_keeps_the_old_ranking_until_it_is_too_old() -> None:
    calls: list[int] = []

    def fetch(metric_id: int) -> bytes:
        calls.append(metric_id)
        if len(calls) > 1:
            raise ConnectionError("database down")
        return stream([1], [1.0], [0])

    clock = Clock()
    rankings = Rankings(fetch, max_age_s=1.0, clock=clock)
    first = rankings.of(1)
    clock.now += 1.5
    assert rankings.of(1) is first  # stale: served, and the refresh fails behind it
    landed(lambda: len(calls) == 2 and not rankings._refreshing)
    clock.now += 1.0
    with pytest.raises(ConnectionError):  # too old to serve, the database still down: the request says so
        rankings.of(1)


def test_requests_waiting_on_a_failed_fetch_share_its_error_and_metrics_do_not_wait_on_each_other() -> None:
    started, release = threading.Event(), threading.Event()
    calls: list[int] = []

    def fetch(metric_id: int) -> bytes:
        calls.append(metric_id)
        if metric_id == 1:
            started.set()
            assert release.wait(10)
            raise ConnectionError("database down")
        return stream([5], [5.0], [0])

    rankings = Rankings(fetch, max_age_s=1.0, clock=Clock())
    errors: list[BaseException] = []

    def ask() -> None:
        try:
            rankings.of(1)
        except ConnectionError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=ask) for _ in range(3)]
    threads[0].start()
    assert started.wait(10)
    for t in threads[1:]:
        t.start()
    assert rankings.of(2).page("asc", 1) == [(5, 5.0, 0)]  # metric 2 is not held up by metric 1's fetch
    time.sleep(0.05)  # the two others now wait on metric 1's lock
    release.set()
    for t in threads:
        t.join(10)
    assert len(errors) == 3 and calls.count(1) == 1  # one fetch, one failure for all three
