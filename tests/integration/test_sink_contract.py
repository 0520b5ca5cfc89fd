"""One contract for every Sink: the in-memory double and the real PostgreSQL writer pass it alike.

If the double drifts from the database's rules (compare-and-set of offsets, generation fencing on
claim, write and reset), the collector's unit tests would prove nothing: this suite keeps them equal.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pipeline.errors import FencedError, OffsetMismatch
from pipeline.storage.sink import Sink
from pipeline.storage.writer import TelemetryWriter
from tests.support import MemorySink, batches, envelope_of

G = "contract"


@pytest.fixture(params=["memory", "postgres"])
def sink(request: pytest.FixtureRequest) -> Iterator[Sink]:
    if request.param == "memory":
        yield MemorySink()
        return
    writer = TelemetryWriter(request.getfixturevalue("fresh_db"))
    writer.open()
    yield writer
    writer.close()


def test_claim_starts_new_partitions_at_zero_and_writes_advance_them(sink: Sink) -> None:
    assert sink.claim(G, 5, [0, 1]) == {0: 0, 1: 0}
    b, data = batches((0, 0, 2, (envelope_of(3), envelope_of(4))), (1, 0, 1, (envelope_of(2),)))
    result = sink.write(G, 5, b, data)
    assert (result.rows, result.offsets) == (9, {0: 2, 1: 1})
    assert sink.claim(G, 6, [0, 1]) == {0: 2, 1: 1}  # a new owner resumes where the rows are


def test_a_write_whose_first_offset_is_not_the_stored_one_changes_nothing(sink: Sink) -> None:
    sink.claim(G, 5, [0])
    b, data = batches((0, 0, 1, (envelope_of(3),)))
    sink.write(G, 5, b, data)
    with pytest.raises(OffsetMismatch):
        sink.write(G, 5, b, data)  # the same batch again: already stored
    gap, gap_data = batches((0, 2, 3, (envelope_of(1),)))
    with pytest.raises(OffsetMismatch):
        sink.write(G, 5, gap, gap_data)
    assert sink.claim(G, 6, [0]) == {0: 1}


def test_an_older_generation_can_neither_claim_write_nor_reset(sink: Sink) -> None:
    sink.claim(G, 5, [0])
    sink.claim(G, 7, [0])
    with pytest.raises(FencedError):
        sink.claim(G, 6, [0])
    b, data = batches((0, 0, 1, (envelope_of(1),)))
    with pytest.raises(FencedError):
        sink.write(G, 5, b, data)
    with pytest.raises(FencedError):
        sink.reset(G, 5, 0, 10)
    sink.reset(G, 7, 0, 10)
    assert sink.claim(G, 8, [0]) == {0: 10}
