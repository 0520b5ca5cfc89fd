"""Which broker hosts which partition, and how one flush or fetch is split over brokers and merged back."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from pipeline.queue.api import FetchResult
from pipeline.records import Envelope, pack_envelopes

__all__ = ["broker_of", "merge_results", "per_broker", "split_for_brokers"]


def broker_of(partition: int, brokers: int) -> int:
    """Which broker hosts a partition (round robin)."""
    return partition % brokers


def split_for_brokers(
    envelope: Envelope, ranges: Sequence[tuple[int, int, int]], brokers: int
) -> dict[int, tuple[Envelope, list[tuple[int, int, int]]]]:
    """Per broker: the rows of its partitions (one batch) and their ranges within it.

    With one broker this is the envelope itself. Rejects travel with the first range.
    """
    if brokers == 1:
        return {0: (envelope, list(ranges))} if ranges else {}
    out: dict[int, tuple[Envelope, list[tuple[int, int, int]]]] = {}
    by_broker: dict[int, list[tuple[int, int, int]]] = {}
    for r in ranges:
        by_broker.setdefault(broker_of(r[0], brokers), []).append(r)
    first_broker = broker_of(ranges[0][0], brokers) if ranges else -1
    for b, mine in by_broker.items():
        indices = np.concatenate([np.arange(first, first + rows) for _, first, rows in mine])
        samples = envelope.samples.take(pa.array(indices))
        rebased, at = [], 0
        for partition, _, rows in mine:
            rebased.append((partition, at, rows))
            at += rows
        out[b] = (Envelope(samples, envelope.rejects if b == first_broker else None), rebased)
    return out


def merge_results(parts: Sequence[FetchResult]) -> FetchResult:
    """One fetch result from several brokers' (their packed data concatenated in message order)."""
    if len(parts) == 1:
        return parts[0]
    merged = FetchResult()
    datas = []
    for part in parts:
        merged.messages.extend(part.messages)
        merged.out_of_range.update(part.out_of_range)
        if part.data is not None:
            datas.append(part.data)
    merged.data = pack_envelopes(datas)
    return merged


def per_broker(values: dict[int, int] | Sequence[tuple[int, int]], brokers: int) -> dict[int, dict[int, int]]:
    """Per broker: the partition -> offset entries of the partitions it hosts."""
    items = values.items() if isinstance(values, dict) else values
    out: dict[int, dict[int, int]] = {}
    for p, o in items:
        out.setdefault(broker_of(p, brokers), {})[p] = o
    return out
