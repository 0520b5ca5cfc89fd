"""The Arrow schemas every part of the pipeline agrees on.

A *sample* is one value of one DCGM field of one GPU at one instant. Column names match
``sql/001_schema.sql`` where a column is stored; the rest (labels, source_ts, ...) travel with the
sample for attribution but are not written to ``telemetry``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

import numpy as np
import pyarrow as pa

__all__ = [
    "DCGM_FIELDS",
    "REJECT_SCHEMA",
    "SAMPLE_SCHEMA",
    "TIME_GRID_ORIGIN",
    "TS_TYPE",
    "WIRE_SCHEMA",
    "Envelope",
    "compact_dictionaries",
    "empty_samples",
    "empty_wire",
    "make_rejects",
    "pack_envelopes",
    "to_wire",
]

TS_TYPE: Final = pa.timestamp("us", tz="UTC")
# The one origin of every time grid: aggregate buckets and time partitions are aligned to it
# (TimescaleDB's time_bucket default: Monday 2000-01-03, midnight UTC).
TIME_GRID_ORIGIN: Final = datetime(2000, 1, 3, tzinfo=UTC)

SAMPLE_SCHEMA: Final = pa.schema(
    [
        pa.field("ts", TS_TYPE, nullable=False),  # processing time, stamped by the streamer
        pa.field("source_ts", TS_TYPE),  # the exporter's own timestamp, when it had one
        pa.field("uuid", pa.string(), nullable=False),  # the GPU's identity
        pa.field("hostname", pa.string()),
        pa.field("gpu_index", pa.int16()),  # local index 0..7, repeats on every host
        pa.field("device", pa.string()),
        pa.field("model", pa.string()),
        pa.field("metric", pa.string(), nullable=False),
        pa.field("value", pa.float64(), nullable=False),
        pa.field("labels", pa.map_(pa.string(), pa.string())),
    ]
)

_DICT = pa.dictionary(pa.int32(), pa.string())

# What travels through the queue: the columns collectors store or need to register a GPU, with the
# repeated strings dictionary-encoded (labels and source_ts stay with the streamer).
WIRE_SCHEMA: Final = pa.schema(
    [
        pa.field("ts", TS_TYPE, nullable=False),
        pa.field("uuid", _DICT, nullable=False),
        pa.field("hostname", _DICT),
        pa.field("gpu_index", pa.int16()),
        pa.field("device", _DICT),
        pa.field("model", _DICT),
        pa.field("metric", _DICT, nullable=False),
        pa.field("value", pa.float64(), nullable=False),
    ]
)
_WIRE_STRINGS: Final = ("uuid", "hostname", "device", "model", "metric")


def to_wire(samples: pa.RecordBatch) -> pa.RecordBatch:
    """Project a sample batch onto ``WIRE_SCHEMA`` (dictionary-encoding the strings)."""
    arrays = []
    for field in WIRE_SCHEMA:
        column = samples.column(field.name)
        if field.name in _WIRE_STRINGS and not pa.types.is_dictionary(column.type):
            column = column.dictionary_encode()
        arrays.append(column)
    return pa.RecordBatch.from_arrays(arrays, schema=WIRE_SCHEMA)


def compact_dictionaries(batch: pa.RecordBatch) -> pa.RecordBatch:
    """Drop dictionary entries a (sliced) batch does not use.

    Splitting a batch by partition leaves every piece with its parent's whole dictionary: for a
    10,000-GPU fleet that is ~400 kB of UUIDs riding along with each few-thousand-row message. Only the
    entries in use are kept, with indices remapped (NumPy, no per-row Python).
    """
    arrays = []
    for column in batch.columns:
        compacted = column
        if pa.types.is_dictionary(column.type) and len(column.dictionary) > 1:
            indices = column.indices.to_numpy(zero_copy_only=False)
            used, remapped = np.unique(indices, return_inverse=True)
            if len(used) < len(column.dictionary):
                compacted = pa.DictionaryArray.from_arrays(
                    pa.array(remapped.astype(np.int32), pa.int32()), column.dictionary.take(pa.array(used))
                )
        arrays.append(compacted)
    return pa.RecordBatch.from_arrays(arrays, schema=batch.schema)


REJECT_SCHEMA: Final = pa.schema(
    [
        pa.field("ts", TS_TYPE, nullable=False),  # when it was rejected
        pa.field("source", pa.string(), nullable=False),  # file path or URL
        pa.field("line", pa.int64()),  # record number in the source, header = 1
        pa.field("raw", pa.string()),
        pa.field("reason", pa.string(), nullable=False),
    ]
)

# The ten DCGM fields of ../shared/data, with their units (as dcgm-exporter documents them).
DCGM_FIELDS: Final[dict[str, str]] = {
    "DCGM_FI_DEV_GPU_UTIL": "%",
    "DCGM_FI_DEV_MEM_COPY_UTIL": "%",
    "DCGM_FI_DEV_ENC_UTIL": "%",
    "DCGM_FI_DEV_DEC_UTIL": "%",
    "DCGM_FI_DEV_GPU_TEMP": "C",
    "DCGM_FI_DEV_POWER_USAGE": "W",
    "DCGM_FI_DEV_FB_USED": "MiB",
    "DCGM_FI_DEV_FB_FREE": "MiB",
    "DCGM_FI_DEV_SM_CLOCK": "MHz",
    "DCGM_FI_DEV_MEM_CLOCK": "MHz",
}


@dataclass(frozen=True, slots=True)
class Envelope:
    """What one queue message carries: good samples and the rejects found beside them.

    Rejects ride in the same message as the samples of their batch so that both are committed in
    the same transaction: neither can be stored twice or lost.
    """

    samples: pa.RecordBatch
    rejects: pa.RecordBatch | None = None

    @property
    def num_rows(self) -> int:
        """Sample rows in the message (rejects not counted)."""
        return int(self.samples.num_rows)

    @property
    def num_rejects(self) -> int:
        """Reject rows in the message."""
        return 0 if self.rejects is None else int(self.rejects.num_rows)

    @property
    def nbytes(self) -> int:
        """Bytes of Arrow buffers held by the message."""
        extra = 0 if self.rejects is None else int(self.rejects.nbytes)
        return int(self.samples.nbytes) + extra


def empty_samples() -> pa.RecordBatch:
    """A sample batch with no rows."""
    return pa.RecordBatch.from_pylist([], schema=SAMPLE_SCHEMA)


def empty_wire() -> pa.RecordBatch:
    """A wire batch with no rows."""
    return pa.RecordBatch.from_arrays([pa.array([], f.type) for f in WIRE_SCHEMA], schema=WIRE_SCHEMA)


def make_rejects(
    ts_us: int, source: str, lines: list[int | None], raws: list[str | None], reasons: list[str]
) -> pa.RecordBatch:
    """Build a reject batch from parallel lists (rejects are rare: plain lists are fine)."""
    n = len(reasons)
    return pa.RecordBatch.from_arrays(
        [
            pa.array([ts_us] * n, type=pa.int64()).cast(TS_TYPE),
            pa.array([source] * n, type=pa.string()),
            pa.array(lines, type=pa.int64()),
            pa.array(raws, type=pa.string()),
            pa.array(reasons, type=pa.string()),
        ],
        schema=REJECT_SCHEMA,
    )


def pack_envelopes(envelopes: list[Envelope]) -> Envelope | None:
    """One envelope holding the samples (and rejects) of many, in order; dictionaries unified."""
    if not envelopes:
        return None
    samples = [e.samples for e in envelopes if e.num_rows]
    rejects = [e.rejects for e in envelopes if e.rejects is not None and e.num_rejects]
    if samples:
        table = pa.Table.from_batches([to_wire(b) for b in samples]).unify_dictionaries().combine_chunks()
        batch = table.to_batches(max_chunksize=max(1, table.num_rows))[0]
    else:
        batch = empty_wire()
    packed_rejects = None
    if rejects:
        packed_rejects = pa.Table.from_batches(rejects).combine_chunks().to_batches(max_chunksize=1 << 62)[0]
    return Envelope(batch, packed_rejects)
