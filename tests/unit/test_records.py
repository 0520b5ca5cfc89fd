"""The records every part agrees on."""

from __future__ import annotations

import pyarrow as pa

from pipeline.records import SAMPLE_SCHEMA, Envelope, make_rejects


def test_envelope_counts() -> None:
    samples = pa.RecordBatch.from_pylist([], schema=SAMPLE_SCHEMA)
    rejects = make_rejects(0, "f.csv", [3, None], ["a", None], ["bad", "worse"])
    env = Envelope(samples, rejects)
    assert (env.num_rows, env.num_rejects) == (0, 2)
    assert env.nbytes >= rejects.nbytes
