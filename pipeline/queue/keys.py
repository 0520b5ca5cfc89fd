"""Stable keys: which partition and which streamer shard a GPU belongs to.

Both derive from CRC-32 of the GPU UUID, computed once per distinct UUID and cached, and applied to
whole Arrow columns with NumPy: no per-row Python on the hot path.
"""

from __future__ import annotations

import zlib

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["KeyHasher", "order_by_partition"]


class KeyHasher:
    """Maps UUID columns to CRC-32 hashes, caching each distinct UUID."""

    def __init__(self, max_cached: int = 1_000_000) -> None:
        self._cache: dict[str, int] = {}
        self._max_cached = max_cached

    def hash_one(self, uuid: str) -> int:
        """The stable 32-bit hash of one UUID."""
        h = self._cache.get(uuid)
        if h is None:
            h = zlib.crc32(uuid.encode())
            if len(self._cache) < self._max_cached:
                self._cache[uuid] = h
        return h

    def hashes(self, uuids: pa.Array | pa.ChunkedArray) -> npt.NDArray[np.uint32]:
        """Per-row hashes of a UUID column."""
        encoded = pc.dictionary_encode(uuids)
        if isinstance(encoded, pa.ChunkedArray):
            encoded = encoded.combine_chunks()
        dictionary = encoded.dictionary.to_pylist()
        table = np.fromiter((self.hash_one(u) for u in dictionary), dtype=np.uint32, count=len(dictionary))
        indices = encoded.indices.to_numpy(zero_copy_only=False)
        result: npt.NDArray[np.uint32] = table[indices]
        return result

    def partitions(self, uuids: pa.Array | pa.ChunkedArray, count: int) -> npt.NDArray[np.int64]:
        """Partition of each row: hash mod ``count``."""
        return (self.hashes(uuids) % np.uint32(count)).astype(np.int64)

    def shards(self, uuids: pa.Array | pa.ChunkedArray, count: int) -> npt.NDArray[np.int64]:
        """Streamer shard of each row; uses the high bits so it is independent of the partition."""
        return ((self.hashes(uuids) >> np.uint32(16)) % np.uint32(count)).astype(np.int64)

    def shard_of(self, uuid: str, count: int) -> int:
        """Streamer shard of one UUID."""
        return (self.hash_one(uuid) >> 16) % count


def order_by_partition(
    batch: pa.RecordBatch, partitions: npt.NDArray[np.int64], count: int
) -> tuple[pa.RecordBatch, list[tuple[int, int, int]]]:
    """The batch's rows grouped by partition (order kept within each) and (partition, first row, rows)."""
    order = np.argsort(partitions, kind="stable")
    counts = np.bincount(partitions, minlength=count)
    ordered = batch.take(pa.array(order))
    ranges: list[tuple[int, int, int]] = []
    start = 0
    for partition, n in enumerate(counts.tolist()):
        if n:
            ranges.append((partition, start, n))
            start += n
    return ordered, ranges
