"""A shipment's rows travel compressed and come back as the same entries (rows, rejects, metadata)."""

from __future__ import annotations

import pickle
from pathlib import Path

import pyarrow as pa
import pytest

from pipeline.queue.log import Entry
from pipeline.queue.replication import Replicate
from pipeline.queue.segments import SegmentStore
from pipeline.queue.shipment import pack, unpack
from pipeline.records import Envelope, make_rejects, to_wire
from pipeline.runtime.replicas import INLINE_BYTES
from pipeline.sources import Shard
from pipeline.sources.synthetic import SyntheticFleet
from tests.support import envelope_of


def _request(first: int) -> Replicate:
    return Replicate(1, 0, ((1, 0),), 0, 0, first + 2, first, "lineage")


def test_entries_come_back_as_they_were_shipped() -> None:
    rejected = Envelope(envelope_of(3, "b").samples, make_rejects(1, "src", [7], ["bad,line"], ["unparsable"]))
    entries = {
        0: [Entry(0, envelope_of(5, "a"), 5, 100, 0.0, "p", 1), Entry(1, rejected, 3, 60, 0.0, "p", 2)],
        2: [Entry(4, envelope_of(0, "c"), 0, 1, 0.0)],  # a marker: no rows
    }
    shipment = pack(0, [(p, _request(es[0].offset), es) for p, es in entries.items()], {0: {"g": 1}})
    shipment = pickle.loads(pickle.dumps(shipment))  # as it crosses to the follower
    got = unpack(shipment)
    for (p, es), mine in zip(entries.items(), got, strict=True):
        assert [(m.rows, m.nbytes, m.producer, m.seq) for m in mine] == [
            (e.rows, e.nbytes, e.producer, e.seq) for e in es
        ]
        for m, e in zip(mine, es, strict=True):
            assert m.payload.samples.to_pylist() == e.payload.samples.to_pylist(), p
            assert m.payload.num_rejects == e.payload.num_rejects
    assert got[0][1].payload.rejects is not None
    assert got[0][1].payload.rejects.to_pylist() == rejected.rejects.to_pylist()  # type: ignore[union-attr]
    assert shipment.committed == {0: {"g": 1}}


def test_rows_travel_compressed() -> None:
    entry = Entry(0, envelope_of(2_000), 2_000, 0, 0.0)
    shipment = pack(0, [(0, _request(0), [entry])], {})
    assert 0 < shipment.data_bytes < entry.payload.nbytes / 2


def test_a_flush_of_the_synthetic_fleet_travels_inline_with_the_call() -> None:
    """A 10,000-row flush, attribution columns included, packs under the inline bound: no object-store put.

    Over the bound a shipment is put in the leader's object store and pulled by each follower's raylet;
    measured with ``bench/queue.py --replication-only``, that doubled what replication costs.
    """
    fleet = SyntheticFleet(hosts=125, batch_rows=10_000)  # 1,000 GPUs x 10 metrics: one scrape
    wire = to_wire(next(iter(fleet.read_pass(Shard()))).samples)
    assert wire.num_rows == 10_000 and "workload" in wire.schema.names
    entry = Entry(0, Envelope(wire), wire.num_rows, wire.nbytes, 0.0, "p", 1)
    shipment = pack(0, [(0, _request(0), [entry])], {})
    assert shipment.data_bytes <= INLINE_BYTES, shipment.data_bytes
    assert unpack(shipment)[0][0].payload.samples.equals(wire)


def _one_flush(rows: int = 2_000) -> pa.RecordBatch:
    return to_wire(next(iter(SyntheticFleet(hosts=max(1, rows // 80), batch_rows=rows).read_pass(Shard()))).samples)


def test_a_follower_refuses_rows_it_cannot_read_before_it_answers() -> None:
    """A damaged stream fails the follower's call (the leader does not count it), not a later read."""
    wire = _one_flush()
    entries = [Entry(0, Envelope(wire.slice(0, 500)), 500, 1, 0.0), Entry(1, Envelope(wire.slice(500)), 1_500, 1, 0.0)]
    shipment = pickle.loads(pickle.dumps(pack(0, [(0, _request(0), entries)], {})))
    (mine,) = unpack(shipment)
    assert [(m.payload.num_rows, m.payload.num_rejects, m.rows) for m in mine] == [(500, 0, 500), (1_500, 0, 1_500)]
    assert all(m.encoded is None for m in mine)  # two entries: each is a slice of the one stream
    assert mine[1].payload.samples.to_pylist() == wire.slice(500).to_pylist()
    assert shipment.data is not None
    shipment.data = shipment.data[:40]
    with pytest.raises(pa.ArrowInvalid):
        unpack(shipment)


def test_a_lone_entry_goes_to_the_followers_segments_as_it_was_shipped(tmp_path: Path) -> None:
    """The compressed stream is written as it came (not encoded again: a fraction of the bytes) and reads back exact."""
    wire = _one_flush()
    rejected = Envelope(wire, make_rejects(1, "src", [7], ["bad,line"], ["unparsable"]))
    shipment = pickle.loads(pickle.dumps(pack(0, [(0, _request(0), [Entry(0, rejected, 2_000, 1, 0.0, "p", 3)])], {})))
    ((lone,),) = unpack(shipment)
    assert lone.encoded is not None
    store = SegmentStore(tmp_path, segment_bytes=1 << 20, fsync=False)
    written = store.append(0, {"producer": "p", "seq": 3, "rows": 2_000}, lone.payload, lone.encoded)
    assert written < wire.nbytes / 3
    plain = SegmentStore(tmp_path / "plain", segment_bytes=1 << 20, fsync=False)
    assert written < plain.append(0, {"producer": "p", "seq": 3, "rows": 2_000}, rejected) / 3
    (frame,), next_offset, _ = SegmentStore(tmp_path, segment_bytes=1 << 20).recover(0)
    assert next_offset == 1 and frame.header["seq"] == 3
    assert frame.envelope.samples.to_pylist() == wire.to_pylist()
    assert frame.envelope.rejects is not None and frame.envelope.rejects.to_pylist() == rejected.rejects.to_pylist()  # type: ignore[union-attr]
