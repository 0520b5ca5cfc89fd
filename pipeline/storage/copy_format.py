"""PostgreSQL binary COPY encoding of fixed-width columns, vectorised with NumPy.

Every telemetry row has the same width (no NULLs, no variable-length fields), so a whole batch
is one NumPy structured array in network byte order: field count, then (length, value) per column.
No per-row Python runs; encoding costs one pass of memory copies.
"""

from __future__ import annotations

from typing import Final

import numpy as np
import numpy.typing as npt

__all__ = ["PG_EPOCH_US", "TELEMETRY_COLUMNS", "encode_telemetry"]

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
