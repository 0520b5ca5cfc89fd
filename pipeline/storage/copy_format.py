"""PostgreSQL binary COPY encoding of fixed-width columns, vectorised with NumPy.

Every telemetry row has the same width (no NULLs, no variable-length fields), so a whole batch
is one NumPy structured array in network byte order: field count, then (length, value) per column.
No per-row Python runs; encoding costs one pass of memory copies.
"""

from __future__ import annotations

from typing import Final

import numpy as np
import numpy.typing as npt

__all__ = [
    "HEADER",
    "OID_FLOAT8",
    "OID_INT2",
    "OID_INT4",
    "OID_TIMESTAMPTZ",
    "PG_EPOCH_US",
    "TELEMETRY_COLUMNS",
    "TRAILER",
    "array_value",
    "decode_arrays",
    "encode_latest",
    "encode_row",
    "encode_telemetry",
]

# PostgreSQL timestamps count microseconds from 2000-01-01 00:00:00 UTC.
PG_EPOCH_US: Final = 946_684_800_000_000
HEADER: Final = b"PGCOPY\n\xff\r\n\x00" + (0).to_bytes(4, "big") + (0).to_bytes(4, "big")
TRAILER: Final = (-1).to_bytes(2, "big", signed=True)
TELEMETRY_COLUMNS: Final = ("ts", "gpu_key", "metric_id", "value")

_ROW: Final = np.dtype(
    [
        ("nfields", ">i2"),
        ("ts_len", ">i4"),
        ("ts", ">i8"),
        ("gpu_len", ">i4"),
        ("gpu", ">i4"),
        ("metric_len", ">i4"),
        ("metric", ">i2"),
        ("value_len", ">i4"),
        ("value", ">f8"),
    ]
)


def encode_telemetry(
    ts_unix_us: npt.NDArray[np.int64],
    gpu_key: npt.NDArray[np.int32],
    metric_id: npt.NDArray[np.int16],
    value: npt.NDArray[np.float64],
    header: bool = True,
    trailer: bool = True,
) -> bytes:
    """Encode rows (ts, gpu_key, metric_id, value) as a binary COPY stream."""
    n = len(ts_unix_us)
    rows = np.empty(n, dtype=_ROW)
    rows["nfields"] = 4
    rows["ts_len"] = 8
    rows["ts"] = ts_unix_us - PG_EPOCH_US
    rows["gpu_len"] = 4
    rows["gpu"] = gpu_key
    rows["metric_len"] = 2
    rows["metric"] = metric_id
    rows["value_len"] = 8
    rows["value"] = value
    body = rows.tobytes()
    return (HEADER if header else b"") + body + (TRAILER if trailer else b"")


# --- arrays and rows with arrays (the attribution tables) ----------------------------------------------

OID_INT2: Final = 21
OID_INT4: Final = 23
OID_FLOAT8: Final = 701
OID_TIMESTAMPTZ: Final = 1184
_ELEMENT: Final = {OID_INT2: (">i2", 2), OID_INT4: (">i4", 4), OID_FLOAT8: (">f8", 8), OID_TIMESTAMPTZ: (">i8", 8)}


def array_value(values: npt.NDArray[np.generic], oid: int) -> bytes:
    """One one-dimensional array without NULLs, as a binary COPY field value (no length prefix).

    Timestamps are given as Unix microseconds and shifted to PostgreSQL's epoch here.
    """
    dtype, width = _ELEMENT[oid]
    n = len(values)
    if n == 0:
        return np.array([0, 0, oid], dtype=">i4").tobytes()
    body = np.empty(n, dtype=[("len", ">i4"), ("v", dtype)])
    body["len"] = width
    body["v"] = values - PG_EPOCH_US if oid == OID_TIMESTAMPTZ else values
    return np.array([1, 0, oid, n, 1], dtype=">i4").tobytes() + body.tobytes()


def encode_row(fields: list[bytes]) -> bytes:
    """One binary COPY row of the given field values (none NULL)."""
    parts = [len(fields).to_bytes(2, "big", signed=True)]
    for f in fields:
        parts += [len(f).to_bytes(4, "big", signed=True), f]
    return b"".join(parts)


def encode_latest(
    gpu_key: npt.NDArray[np.int32],
    newest_us: npt.NDArray[np.int64],
    metric_ids: npt.NDArray[np.int16],
    ts_us: npt.NDArray[np.int64],
    values: npt.NDArray[np.float64],
) -> bytes:
    """Rows (gpu_key, ts, metric_ids[], sample_ts[], vals[]) of GPUs with ``k`` metrics each, vectorised.

    ``metric_ids``, ``ts_us`` and ``values`` are (rows, k) arrays; one row is one GPU.
    """
    n, k = metric_ids.shape
    header = np.array([1, 0, 0, k, 1], dtype=">i4")

    def array_of(dtype: str) -> list[tuple[str, object, tuple[int, ...]] | tuple[str, object]]:
        return [("len", ">i4"), ("head", ">i4", (5,)), ("items", [("len", ">i4"), ("v", dtype)], (k,))]

    row = np.dtype(
        [
            ("nfields", ">i2"),
            ("key_len", ">i4"),
            ("key", ">i4"),
            ("ts_len", ">i4"),
            ("ts", ">i8"),
            ("ids", array_of(">i2")),
            ("stamps", array_of(">i8")),
            ("vals", array_of(">f8")),
        ]
    )
    rows = np.empty(n, dtype=row)
    rows["nfields"] = 5
    rows["key_len"] = 4
    rows["key"] = gpu_key
    rows["ts_len"] = 8
    rows["ts"] = newest_us - PG_EPOCH_US
    for name, oid, width, data in (
        ("ids", OID_INT2, 2, metric_ids),
        ("stamps", OID_TIMESTAMPTZ, 8, ts_us - PG_EPOCH_US),
        ("vals", OID_FLOAT8, 8, values),
    ):
        head = header.copy()
        head[2] = oid
        rows[name]["len"] = 20 + k * (4 + width)
        rows[name]["head"] = head
        rows[name]["items"]["len"] = width
        rows[name]["items"]["v"] = data
    return rows.tobytes()


# --- reading: a fleet ranking ----------------------------------------------------------------------

_ARRAY_OF: Final = {OID_INT4: ">i4", OID_FLOAT8: ">f8", OID_TIMESTAMPTZ: ">i8"}
# What Python's datetime holds (years 1-9999), in PostgreSQL's microseconds: beyond is refused, never wrapped.
_TS_MIN: Final = -62_135_596_800_000_000 - PG_EPOCH_US
_TS_MAX: Final = 253_402_300_799_999_999 - PG_EPOCH_US


def decode_arrays(stream: bytes, oids: tuple[int, ...]) -> list[npt.NDArray[np.generic]]:
    """A binary COPY stream of one row of one-dimensional arrays (element types ``oids``, no NULL elements).

    Each array's elements have one width, so each is read as one structured array (no per-element Python);
    timestamps come back as Unix microseconds. A NULL field is an empty array. A stream of any other shape
    (more rows, NULL elements, other types, header extensions, times beyond years 1-9999) is refused with
    ``ValueError``, never misread.
    """
    if len(stream) < len(HEADER) + 2 + len(TRAILER) or stream[: len(HEADER)] != HEADER or stream[-2:] != TRAILER:
        raise ValueError("not a binary COPY stream without header extensions")
    at = len(HEADER)
    if int.from_bytes(stream[at : at + 2], "big", signed=True) != len(oids):
        raise ValueError(f"expected one row of {len(oids)} fields")
    at += 2
    out: list[npt.NDArray[np.generic]] = []
    for oid in oids:
        dtype = np.dtype(_ARRAY_OF[oid])
        native = dtype.newbyteorder("=")
        length = int.from_bytes(stream[at : at + 4], "big", signed=True)
        at += 4
        if length < 0:  # NULL: array_agg of no rows
            out.append(np.empty(0, dtype=native))
            continue
        ndim, has_null, element, n, _lower = np.frombuffer(stream, dtype=">i4", count=5, offset=at).tolist()
        width = dtype.itemsize
        if ndim != 1 or has_null or element != oid or length != 20 + n * (4 + width):
            raise ValueError(f"field is not a one-dimensional array of type {oid} without NULLs")
        items = np.frombuffer(stream, dtype=[("len", ">i4"), ("v", dtype)], count=n, offset=at + 20)
        if (items["len"] != width).any():
            raise ValueError("array elements of an unexpected width")
        values = items["v"].astype(native)
        if oid == OID_TIMESTAMPTZ:
            if len(values) and (values.min() < _TS_MIN or values.max() > _TS_MAX):
                raise ValueError("a timestamp outside years 1-9999 (infinity?)")
            values = values + PG_EPOCH_US
        out.append(values)
        at += length
    if at != len(stream) - len(TRAILER):
        raise ValueError("more than one row")
    return out
