"""Split raw string rows into good samples and rejects, each reject with a reason naming the value.

Input is a batch of string columns (as a CSV or exposition parser produced them) plus each row's
record number. Checks run on whole columns with Arrow compute; Python loops only over the rejects,
which are rare.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Final

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.records import SAMPLE_SCHEMA, TS_TYPE, make_rejects
from pipeline.sources.attribution import gpu_identity, workload_column

__all__ = ["POD_COLUMNS", "RAW_COLUMNS", "ValidatedBatch", "blank_code", "parse_labels", "validate"]

# Canonical names of the raw columns validate() reads.
RAW_COLUMNS: Final = ("timestamp", "metric", "gpu_index", "device", "uuid", "model", "hostname", "value", "labels_raw")
# Optional raw columns (the CSV export's): who holds the GPU, when the exporter filled them in.
POD_COLUMNS: Final = ("namespace", "pod", "container")

_NUMBER = r"^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?$"
_NAN = r"(?i)^[+-]?nan$"
_INF = r"(?i)^[+-]?inf(inity)?$"
_TIME = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?(Z|z|[+-][0-9]{2}:?[0-9]{2})?$"
_INDEX = r"^[0-9]{1,4}$"
DCGM_BLANK_STRING: Final = "<<<NULL>>>"

# DCGM "no value" codes: a base and the 15 codes above it (dcgm_fields.h).
_INT64_BLANK: Final = 0x7FFFFFFFFFFFFFF0
_INT32_BLANK: Final = 0x7FFFFFF0
_FP64_BLANK: Final = 140737488355328.0  # 2**47
_CODE_NAMES: Final = {0: "blank", 1: "not found", 2: "not supported", 3: "no permission"}


class ValidatedBatch:
    """Good samples (``ts`` still zero: the streamer stamps it) and rejects with reasons."""

    __slots__ = ("rejects", "samples")

    def __init__(self, samples: pa.RecordBatch, rejects: pa.RecordBatch | None) -> None:
        self.samples = samples
        self.rejects = rejects


def blank_code(raw: str, value: float) -> str | None:
    """Name the DCGM blank code a value is, or None if it is a real value."""

    def name(offset: int) -> str:
        return _CODE_NAMES.get(offset, f"blank+{offset}")

    if value >= 9.2233720368547748e18:  # int64 blank range, at float precision
        try:
            offset = int(raw) - _INT64_BLANK
        except ValueError:
            offset = 0
        return f"int64 {name(max(0, min(offset, 15)))}"
    if _INT32_BLANK <= value <= _INT32_BLANK + 15 and value == int(value):
        return f"int32 {name(int(value) - _INT32_BLANK)}"
    if _FP64_BLANK <= value <= _FP64_BLANK + 15:
        return f"fp64 {name(int(value - _FP64_BLANK))}"
    return None


def _mask(arr: pa.Array) -> npt.NDArray[np.bool_]:
    return np.asarray(arr.fill_null(False).to_numpy(zero_copy_only=False), dtype=bool)


def validate(
    raw: pa.RecordBatch | pa.Table, records: npt.NDArray[np.int64], source: str, now_us: int
) -> ValidatedBatch:
    """Validate raw string columns named as in ``RAW_COLUMNS``; ``records`` numbers each row."""
    col = {name: raw.column(name) for name in RAW_COLUMNS}
    col.update({name: raw.column(name) for name in POD_COLUMNS if name in raw.schema.names})
    if isinstance(raw, pa.Table):
        col = {k: v.combine_chunks() for k, v in col.items()}  # type: ignore[union-attr]
    value = col["value"]
    is_number = _mask(pc.match_substring_regex(value, _NUMBER))
    safe_value = pc.if_else(pa.array(is_number), value, pa.scalar("0"))
    numbers = pc.cast(safe_value, pa.float64()).to_numpy(zero_copy_only=False)
    finite = np.isfinite(numbers)
    # Sentinels are huge: a cheap range test finds candidates, blank_code() names them.
    suspicious = is_number & finite & (numbers >= float(_INT32_BLANK))
    ts_ok = _mask(pc.match_substring_regex(col["timestamp"], _TIME))
    idx_raw = col["gpu_index"]
    idx_ok = _mask(pc.match_substring_regex(idx_raw, _INDEX)) | _mask(pc.equal(idx_raw, ""))
    uuid_ok = _mask(pc.greater(pc.utf8_length(col["uuid"]), 0))
    metric_ok = _mask(pc.greater(pc.utf8_length(col["metric"]), 0))

    nul_in = _nul_fields(col)
    good = is_number & finite & ts_ok & idx_ok & uuid_ok & metric_ok
    bad_positions: list[int] = np.flatnonzero(~good).tolist()
    sentinel_positions = np.flatnonzero(good & suspicious).tolist()
    reasons: dict[int, str] = {}
    blanks: dict[int, str] = {}  # rejects that are data about the GPU: its DCGM blank code
    for i in sentinel_positions:
        raw_value = value[i].as_py()
        code = blank_code(raw_value, float(numbers[i]))
        if code is not None:
            reasons[i] = f"value `{raw_value}` for {col['metric'][i].as_py()} is a DCGM {code} code (no value)"
            blanks[i] = code
    for i in bad_positions:
        reasons[i] = _reason(col, i, bool(is_number[i]), bool(ts_ok[i]), bool(idx_ok[i]))
        if not is_number[i] and value[i].as_py() == DCGM_BLANK_STRING:
            blanks[i] = "string blank"
    for i, name in nul_in.items():  # PostgreSQL refuses NUL in text: never send one
        reasons[i] = f"field {name} contains a NUL byte"
    if reasons:
        good[list(reasons)] = False

    # Timestamps: the regex admits the RFC 3339 shape; a calendar-invalid one fails the cast.
    good_idx = pa.array(np.flatnonzero(good))
    ts_strings = pc.take(col["timestamp"], good_idx)
    try:
        source_ts = _parse_times(ts_strings)
    except (pa.ArrowInvalid, ValueError):
        source_ts, bad_ts = _parse_times_slowly(ts_strings)
        if bad_ts:
            positions = np.flatnonzero(good)[bad_ts]
            for i in positions.tolist():
                reasons[i] = f"timestamp `{col['timestamp'][i].as_py()}` is not an RFC 3339 time"
            good[positions] = False
            keep = np.ones(len(ts_strings), dtype=bool)
            keep[bad_ts] = False
            source_ts = source_ts.filter(pa.array(keep))
            good_idx = pa.array(np.flatnonzero(good))

    samples = _samples(col, good_idx, numbers, source_ts)
    rejects = None
    if reasons:
        order = sorted(reasons)
        rejects = make_rejects(
            now_us,
            source,
            [int(records[i]) for i in order],
            [_raw_text(col, i) for i in order],
            [reasons[i] for i in order],
            uuids=[col["uuid"][i].as_py() if i in blanks else None for i in order],
            metrics=[col["metric"][i].as_py() if i in blanks else None for i in order],
            blanks=[blanks.get(i) for i in order],
        )
    return ValidatedBatch(samples, rejects)


def _nul_fields(col: dict[str, pa.Array]) -> dict[int, str]:
    """Rows holding a NUL byte, with the first field that does."""
    found: dict[int, str] = {}
    for name in RAW_COLUMNS:
        data = col[name].buffers()[-1]  # the text bytes (shared with slices: a cheap pre-check)
        if data is None or not np.any(np.frombuffer(data, dtype=np.uint8) == 0):
            continue
        for i in np.flatnonzero(_mask(pc.match_substring(col[name], "\x00"))).tolist():
            found.setdefault(i, name)
    return found


def _reason(col: dict[str, pa.Array], i: int, is_number: bool, ts_ok: bool, idx_ok: bool) -> str:
    metric = col["metric"][i].as_py() or ""
    if not col["uuid"][i].as_py():
        return f"missing GPU uuid (metric `{metric}`)"
    if not metric:
        return "missing metric name"
    raw_value = col["value"][i].as_py()
    if not is_number:
        if raw_value in (None, ""):
            return f"missing value for {metric}"
        if raw_value == DCGM_BLANK_STRING:
            return f"value `{raw_value}` for {metric} is the DCGM blank string (no value)"
        low = raw_value.strip().lower().lstrip("+-")
        if low == "nan":
            return f"value `{raw_value}` for {metric} is NaN"
        if low in ("inf", "infinity"):
            return f"value `{raw_value}` for {metric} is infinite"
        return f"value `{raw_value}` for {metric} is not a number"
    if not math.isfinite(float(raw_value)):
        return f"value `{raw_value}` for {metric} is infinite"
    if not ts_ok:
        return f"timestamp `{col['timestamp'][i].as_py()}` is not an RFC 3339 time"
    if not idx_ok:
        return f"gpu index `{col['gpu_index'][i].as_py()}` is not an integer"
    return "invalid row"  # unreachable: every failing mask is named above


def _parse_times(strings: pa.Array) -> pa.Array:
    """RFC 3339 strings to UTC microseconds; naive times are taken as UTC."""
    normalized = pc.replace_substring_regex(strings, r"[zZ]$", "+00:00")
    has_zone = _mask(pc.match_substring_regex(normalized, r"[+-][0-9]{2}:?[0-9]{2}$"))
    if not has_zone.all():
        normalized = pc.if_else(pa.array(has_zone), normalized, pc.binary_join_element_wise(normalized, "+00:00", ""))
    normalized = pc.replace_substring(normalized, " ", "T")
    return pc.cast(normalized, TS_TYPE)


def _parse_times_slowly(strings: pa.Array) -> tuple[pa.Array, list[int]]:
    values: list[datetime | None] = []
    bad: list[int] = []
    for i, s in enumerate(strings.to_pylist()):
        try:
            text = s.replace("z", "Z")
            if not text.endswith("Z") and not (len(text) > 6 and text[-6] in "+-"):
                text += "+00:00"
            values.append(datetime.fromisoformat(text))
        except (ValueError, AttributeError):
            values.append(None)
            bad.append(i)
    return pa.array(values, type=TS_TYPE), bad


def parse_labels(raw: pa.Array) -> pa.Array:
    """Parse Prometheus label text (``a="x",b="y"``) into a map column, all rows at once."""
    if len(raw) == 0:
        return pa.array([], type=SAMPLE_SCHEMA.field("labels").type)
    text = pc.if_else(pc.equal(raw, ""), pa.scalar(None, pa.string()), raw)
    pairs = pc.split_pattern(text, '",')
    flat = pc.list_flatten(pairs)
    kv = pc.split_pattern(flat, '="', max_splits=1)
    keys = pc.list_element(kv, 0)
    lengths = pc.list_value_length(kv)
    has_value = _mask(pc.equal(lengths, 2))
    safe_kv = pc.if_else(pa.array(has_value), kv, pa.scalar(["", ""], type=kv.type))
    values = pc.replace_substring_regex(pc.list_element(safe_kv, 1), r'"$', "")
    if pairs.null_count:
        return _labels_with_nulls(pairs, keys, values)
    return pa.MapArray.from_arrays(pairs.offsets, keys, values)


def _labels_with_nulls(pairs: pa.ListArray, keys: pa.Array, values: pa.Array) -> pa.Array:
    lengths = pc.fill_null(pc.list_value_length(pairs), 0).to_numpy(zero_copy_only=False)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    mask = pa.array(~_mask(pairs.is_valid()))
    return pa.MapArray.from_arrays(pa.array(offsets), keys, values, mask=mask)


def _samples(
    col: dict[str, pa.Array], good_idx: pa.Array, numbers: npt.NDArray[np.float64], source_ts: pa.Array
) -> pa.RecordBatch:
    take = good_idx
    count = len(take)
    positions = take.to_numpy(zero_copy_only=False)
    gpu_index_raw = pc.take(col["gpu_index"], take)
    gpu_index = pc.cast(
        pc.if_else(pc.equal(gpu_index_raw, ""), pa.scalar(None, pa.string()), gpu_index_raw), pa.int16()
    )

    def text(name: str) -> pa.Array:
        arr = pc.take(col[name], take)
        return pc.if_else(pc.equal(arr, ""), pa.scalar(None, pa.string()), arr)

    labels = parse_labels(pc.take(col["labels_raw"], take))
    uuid, gpu_info = gpu_identity(pc.take(col["uuid"], take), labels)
    pods: dict[str, pa.Array] = {name: pc.take(col[name], take) for name in POD_COLUMNS if name in col}
    return pa.RecordBatch.from_arrays(
        [
            pa.array(np.zeros(count, dtype=np.int64)).cast(TS_TYPE),
            source_ts,
            uuid,
            text("hostname"),
            gpu_index,
            text("device"),
            text("model"),
            pc.take(col["metric"], take),
            pa.array(numbers[positions], type=pa.float64()),
            labels,
            workload_column(labels, pods),
            gpu_info,
        ],
        schema=SAMPLE_SCHEMA,
    )


def _raw_text(col: dict[str, pa.Array], i: int) -> str:
    fields = [col[name][i].as_py() for name in RAW_COLUMNS]
    text = ",".join('"' + ("" if f is None else str(f)).replace('"', '""') + '"' for f in fields)
    return text.replace("\x00", "\\x00")  # stored as text: NUL shown, not sent
