"""Every GPU's newest value of one metric, ranked in memory: what fleet-wide ``fleet/latest`` pages are cut from.

Choosing a page of the fleet by value reads every ``gpu_latest`` row and sorts the fleet: at 25,000 GPUs
most of such a request's time, whatever its limit. ``Rankings`` keeps instead, per metric, the whole
fleet's (value, gpu key) order for at most ``max_age_s``: fetched with one binary COPY of three arrays
(gpu keys, values, times), decoded by NumPy and sorted once. A page is a slice of it; only the page's
hosts, models and holders are then read, by key. Pages cut from the same ranking agree with each other:
a cursor walk within its life meets every GPU once even while values change. The gateway keeps rankings
for its ``recent_ttl_s``, refreshed in the background, never older than twice that (on top of the
table's own ``latest_every_s``); with ``max_age_s = 0`` the reader does not rank at all (a page is one
query).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from pipeline.storage.copy_format import OID_FLOAT8, OID_INT4, OID_TIMESTAMPTZ, decode_arrays

__all__ = ["Ranking", "Rankings"]

log = logging.getLogger(__name__)

Order = Literal["asc", "desc"]
_KEEP = 16  # rankings held at once (metrics), each ~20 bytes a GPU


@dataclass(frozen=True, slots=True)
class Ranking:
    """One metric's newest value of every GPU that reports it, ascending by (value, gpu key)."""

    at: float  # time.monotonic() when its fetch began
    keys: npt.NDArray[np.int32]
    values: npt.NDArray[np.float64]
    ts_us: npt.NDArray[np.int64]  # the samples' times, Unix microseconds

    @classmethod
    def of(
        cls, keys: npt.NDArray[np.int32], values: npt.NDArray[np.float64], ts_us: npt.NDArray[np.int64], at: float
    ) -> Ranking:
        """Rank unordered rows (NaN sorts above every number, as in PostgreSQL)."""
        order = np.lexsort((keys, values))
        return cls(at, keys[order], values[order], ts_us[order])

    def page(self, order: Order, limit: int, after: tuple[float, int] | None = None) -> list[tuple[int, float, int]]:
        """(gpu key, value, Unix µs) of at most ``limit`` GPUs past the keyset cursor ``after``, in ``order``."""
        if order == "asc":
            start = 0 if after is None else self._count(after, inclusive=True)
            idx = np.arange(start, min(len(self.keys), start + limit))
        else:
            stop = len(self.keys) if after is None else self._count(after, inclusive=False)
            idx = np.arange(stop - 1, max(stop - 1 - limit, -1), -1)
        return list(zip(self.keys[idx].tolist(), self.values[idx].tolist(), self.ts_us[idx].tolist(), strict=True))

    def _count(self, after: tuple[float, int], inclusive: bool) -> int:
        """How many entries sort below (value, key) ``after``, and ``after`` itself when ``inclusive``."""
        value, key = after
        lo = int(np.searchsorted(self.values, value, side="left"))
        hi = int(np.searchsorted(self.values, value, side="right"))
        return lo + int(np.searchsorted(self.keys[lo:hi], key, side="right" if inclusive else "left"))


class Rankings:
    """Per metric, a ``Ranking`` made from ``fetch(metric_id)`` (a COPY stream), never older than twice ``max_age_s``.

    A ranking younger than ``max_age_s`` is served as it is. One older, but younger than twice that, is
    served too while a background thread makes the next (so a request never waits on a refresh while
    requests keep coming); an older one, or none, is made by the request itself. One fetch runs for a
    metric at a time (metrics do not wait on each other): requests that waited take the ranking it
    made, or the error it ended with, which is kept for ``max_age_s`` (so a database outage costs each
    waiting request one failure, not one fetch). ``clock`` is ``time.monotonic`` (tests step their own).
    """

    def __init__(
        self, fetch: Callable[[int], bytes], max_age_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._fetch = fetch
        self._max_age = max_age_s
        self._clock = clock
        self._held: dict[int, Ranking] = {}
        self._failed: dict[int, tuple[float, Exception]] = {}  # the last fetch's error, by metric, and when
        self._flags = threading.Lock()  # guards the dictionaries' changes; never held across a fetch
        self._locks: dict[int, threading.Lock] = {}  # one per metric, held while its ranking is made
        self._refreshing: set[int] = set()  # metrics a background thread is ranking

    @property
    def enabled(self) -> bool:
        """Whether rankings are kept at all (a ranking made for one page costs more than the page's query)."""
        return self._max_age > 0

    def of(self, metric_id: int) -> Ranking:
        """The metric's ranking (see the class)."""
        held = self._held.get(metric_id)
        age = self._clock() - held.at if held is not None else math.inf
        if age < self._max_age:
            return held  # type: ignore[return-value]
        if age < 2 * self._max_age:
            self._refresh_later(metric_id)
            return held  # type: ignore[return-value]
        asked = self._clock()
        with self._lock_of(metric_id):
            held = self._held.get(metric_id)
            if held is not None and self._clock() - held.at < self._max_age:
                return held
            failed = self._failed.get(metric_id)
            if failed is not None and failed[0] >= asked - self._max_age:
                raise failed[1]  # the fetch this request waited on (or one just before) failed
            return self._make(metric_id)

    def _lock_of(self, metric_id: int) -> threading.Lock:
        with self._flags:
            return self._locks.setdefault(metric_id, threading.Lock())

    def _make(self, metric_id: int) -> Ranking:
        """Fetch and rank (the metric's lock held)."""
        began = self._clock()
        try:
            keys, values, ts_us = decode_arrays(self._fetch(metric_id), (OID_INT4, OID_FLOAT8, OID_TIMESTAMPTZ))
        except Exception as exc:
            self._failed[metric_id] = (self._clock(), exc)
            raise
        self._failed.pop(metric_id, None)
        ranking = Ranking.of(keys, values, ts_us, at=began)  # type: ignore[arg-type]
        with self._flags:  # metrics are ranked concurrently: the dictionary changes under one lock
            self._held.pop(metric_id, None)
            self._held[metric_id] = ranking  # the newest last: the first is the longest unrefreshed
            while len(self._held) > _KEEP:
                del self._held[next(iter(self._held))]
        return ranking

    def _refresh_later(self, metric_id: int) -> None:
        with self._flags:  # a request serving a stale ranking never waits on a fetch
            if metric_id in self._refreshing:
                return
            self._refreshing.add(metric_id)

        def refresh() -> None:
            try:
                with self._lock_of(metric_id):
                    self._make(metric_id)
            except Exception:  # the held ranking ages on; the request that finds it too old fetches and fails
                log.warning("refreshing the fleet ranking of metric %d failed", metric_id, exc_info=True)
            finally:
                with self._flags:
                    self._refreshing.discard(metric_id)

        threading.Thread(target=refresh, name=f"fleet-ranking-{metric_id}", daemon=True).start()
