"""Partition and shard keys: stable per GPU; splitting keeps order."""

from __future__ import annotations

import pyarrow as pa

from pipeline.queue.keys import KeyHasher
from tests.support import split


def test_partitions_are_stable_and_split_keeps_order() -> None:
    h = KeyHasher()
    uuids = pa.array(["GPU-a", "GPU-b", "GPU-a", "GPU-c"])
    parts = h.partitions(uuids, 4)
    assert parts[0] == parts[2] and list(parts) == list(KeyHasher().partitions(uuids, 4))
    batch = pa.RecordBatch.from_arrays([uuids, pa.array([0, 1, 2, 3])], names=["uuid", "i"])
    pieces = dict(split(batch, parts, 4))
    assert pieces[int(parts[0])].column("i").to_pylist()[:2] == [0, 2]
    assert sum(p.num_rows for p in pieces.values()) == 4
