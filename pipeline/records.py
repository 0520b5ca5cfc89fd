"""The Arrow schemas every part of the pipeline agrees on.

A *sample* is one value of one DCGM field of one GPU at one instant. Column names match
``sql/001_schema.sql`` where a column is stored; the rest (labels, source_ts, ...) travel with the
sample but are not written to ``telemetry``.

Attribution travels as two canonical strings per sample, not as labels: ``workload`` (who holds the
GPU: namespace, pod, container, HPC job) and ``gpu_info`` (static facts of the GPU: driver version,
exporter instance, MIG parent, instance id and profile), each the fields joined by ``FIELD_SEP``.
Dictionary-encoded on the wire they cost one small integer per row; the collector turns changes of
``workload`` into allocation intervals and ``gpu_info`` into columns of the GPU's row.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

import numpy as np
import pyarrow as pa

__all__ = [
    "DCGM_FIELDS",
    "FIELD_SEP",
    "GPU_INFO_FIELDS",
    "REJECT_SCHEMA",
    "SAMPLE_SCHEMA",
    "TIME_GRID_ORIGIN",
    "TS_TYPE",
    "WIRE_SCHEMA",
    "WORKLOAD_FIELDS",
    "Envelope",
    "compact_dictionaries",
    "empty_samples",
    "empty_wire",
    "make_rejects",
    "pack_envelopes",
    "split_fields",
    "to_wire",
]

TS_TYPE: Final = pa.timestamp("us", tz="UTC")
# The one origin of every time grid: aggregate buckets and time partitions are aligned to it
# (TimescaleDB's time_bucket default: Monday 2000-01-03, midnight UTC).
TIME_GRID_ORIGIN: Final = datetime(2000, 1, 3, tzinfo=UTC)

# The canonical attribution strings: fields joined by the ASCII unit separator (removed from values).
FIELD_SEP: Final = "\x1f"
WORKLOAD_FIELDS: Final = ("namespace", "pod", "container", "job")
GPU_INFO_FIELDS: Final = ("driver_version", "instance", "parent_uuid", "mig_instance", "mig_profile")

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
        pa.field("workload", pa.string()),  # WORKLOAD_FIELDS joined by FIELD_SEP; null: nobody holds the GPU
        pa.field("gpu_info", pa.string()),  # GPU_INFO_FIELDS joined by FIELD_SEP; null: none known
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
        pa.field("workload", _DICT),
        pa.field("gpu_info", _DICT),
    ]
)
_WIRE_STRINGS: Final = ("uuid", "hostname", "device", "model", "metric", "workload", "gpu_info")


def to_wire(samples: pa.RecordBatch) -> pa.RecordBatch:
    """Project a sample batch onto ``WIRE_SCHEMA`` (dictionary-encoding the strings).

    A batch without the attribution columns (written by an older version, e.g. a queue segment on
    disk) gets them as nulls.
    """
    arrays = []
    names = set(samples.schema.names)
    for field in WIRE_SCHEMA:
        if field.name not in names:
            arrays.append(pa.nulls(samples.num_rows, field.type))
            continue
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
            indices = column.indices.fill_null(-1).to_numpy(zero_copy_only=False)
            valid = indices >= 0  # a null row (nobody holds the GPU) stays null
            used, remapped = np.unique(indices[valid], return_inverse=True)
            if len(used) < len(column.dictionary):
                out = np.zeros(len(indices), dtype=np.int32)
                out[valid] = remapped
                mask = None if valid.all() else ~valid
                compacted = pa.DictionaryArray.from_arrays(
                    pa.array(out, pa.int32(), mask=mask), column.dictionary.take(pa.array(used, pa.int64()))
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
        # Where the reject is data about a GPU (a DCGM blank code): the GPU, the metric and the code.
        pa.field("uuid", pa.string()),
        pa.field("metric", pa.string()),
        pa.field("blank", pa.string()),
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


def split_fields(text: str | None, count: int) -> tuple[str | None, ...]:
    """The fields of a canonical attribution string (empty fields as None); all None for None."""
    if text is None:
        return (None,) * count
    parts = text.split(FIELD_SEP)
    parts += [""] * (count - len(parts))
    return tuple(p or None for p in parts[:count])


def empty_samples() -> pa.RecordBatch:
    """A sample batch with no rows."""
    return pa.RecordBatch.from_pylist([], schema=SAMPLE_SCHEMA)


def empty_wire() -> pa.RecordBatch:
    """A wire batch with no rows."""
    return pa.RecordBatch.from_arrays([pa.array([], f.type) for f in WIRE_SCHEMA], schema=WIRE_SCHEMA)


def make_rejects(
    ts_us: int,
    source: str,
    lines: list[int | None],
    raws: list[str | None],
    reasons: list[str],
    uuids: list[str | None] | None = None,
    metrics: list[str | None] | None = None,
    blanks: list[str | None] | None = None,
) -> pa.RecordBatch:
    """Build a reject batch from parallel lists (rejects are rare: plain lists are fine)."""
    n = len(reasons)
    none: list[str | None] = [None] * n
    return pa.RecordBatch.from_arrays(
        [
            pa.array([ts_us] * n, type=pa.int64()).cast(TS_TYPE),
            pa.array([source] * n, type=pa.string()),
            pa.array(lines, type=pa.int64()),
            pa.array(raws, type=pa.string()),
            pa.array(reasons, type=pa.string()),
            pa.array(uuids or none, type=pa.string()),
            pa.array(metrics or none, type=pa.string()),
            pa.array(blanks or none, type=pa.string()),
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
        rejects = [_reject_schema(r) for r in rejects]
        packed_rejects = pa.Table.from_batches(rejects).combine_chunks().to_batches(max_chunksize=1 << 62)[0]
    return Envelope(batch, packed_rejects)


def _reject_schema(rejects: pa.RecordBatch) -> pa.RecordBatch:
    """``rejects`` with every REJECT_SCHEMA column (an older version's rejects lack the GPU columns)."""
    if rejects.schema.names == REJECT_SCHEMA.names:
        return rejects
    names = set(rejects.schema.names)
    columns = [rejects.column(f.name) if f.name in names else pa.nulls(rejects.num_rows, f.type) for f in REJECT_SCHEMA]
    return pa.RecordBatch.from_arrays(columns, schema=REJECT_SCHEMA)
