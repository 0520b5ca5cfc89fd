"""Binary COPY encoding: the PostgreSQL wire format, byte for byte."""

from __future__ import annotations

import struct

import numpy as np

from pipeline.storage.copy_format import HEADER, PG_EPOCH_US, encode_telemetry


def test_binary_copy_encoding_is_the_postgres_wire_format() -> None:
    ts = np.array([PG_EPOCH_US + 1, PG_EPOCH_US + 2], dtype=np.int64)
    payload = encode_telemetry(ts, np.array([7, 8], np.int32), np.array([1, 2], np.int16), np.array([1.5, -2.0]))
    assert payload.startswith(HEADER) and payload.endswith(b"\xff\xff")
    row = payload[len(HEADER) : len(HEADER) + 2 + 4 + 8 + 4 + 4 + 4 + 2 + 4 + 8]
    fields = struct.unpack(">hiqiiihid", row)
    assert fields == (4, 8, 1, 4, 7, 2, 1, 8, 1.5)
    assert len(payload) == len(HEADER) + 2 * 40 + 2
