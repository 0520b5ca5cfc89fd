"""What a partition leader sends a follower in one call: requests for several partitions, one Arrow batch.

A leader broker ships to each follower broker in one call per round: one ``Replicate`` request per
partition the follower holds (with the entries from the request's first offset), the committed
offsets of each, and every entry's rows packed into ONE envelope (``pack_envelopes``), as a fetch
does: an Arrow slice pickles with its parent's whole buffers, so slices never travel on their own.

The packed rows travel as an Arrow IPC stream with zstd-compressed buffers (level 1; ``data``):
a 10,000-row flush of the synthetic fleet, its attribution columns included, is 541 kB of buffers,
56 kB compressed (LZ4: 100 kB, and ~1 ms either way), which keeps a shipment of a flush under Ray's
inline limit for call arguments (100 KiB), so it goes with the call itself instead of through the
object store (a put on the leader's node and a transfer by the raylets to each follower's: measured
with ``bench/queue.py --replication-only``, that was most of what replication cost). ``unpack``
decodes once (a follower answers only for rows it could read: a damaged stream, or a codec this build
lacks, fails the call and the leader does not count it) and cuts the batch back into one envelope per
entry (zero-copy slices). An entry that came alone in its shipment also carries the compressed
streams it came in (``Mirrored.encoded``): the follower writes those to its segments, not encoding
again (a fifth of the bytes; the segment reader decodes either; the dictionaries are the packed
batch's, not compacted to the rows the entry uses).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import pyarrow as pa

from pipeline.queue.log import Entry
from pipeline.queue.replication import Replicate
from pipeline.records import Envelope, empty_wire, pack_envelopes

__all__ = ["EntryMeta", "Mirrored", "Shipment", "pack", "unpack"]


@dataclass(frozen=True, slots=True)
class EntryMeta:
    """One entry's bookkeeping (its rows travel in ``Shipment.data``)."""

    rows: int
    rejects: int
    nbytes: int
    producer: str | None = None
    seq: int | None = None


@dataclass(frozen=True, slots=True)
class Mirrored:
    """An entry as a follower appends it (and as a new leader appends its marker)."""

    payload: Envelope
    rows: int
    nbytes: int
    producer: str | None = None
    seq: int | None = None
    encoded: tuple[bytes, bytes] | None = None  # its (samples, rejects) IPC streams, when it came alone


@dataclass(slots=True)
class Shipment:
    """One leader-to-follower call: per partition a request and its entries' metadata."""

    source: int
    requests: list[tuple[int, Replicate, list[EntryMeta]]] = field(default_factory=list)
    committed: dict[int, dict[str, int]] = field(default_factory=dict)
    data: bytes | None = None  # the entries' samples, one compressed Arrow IPC stream
    rejects: bytes | None = None  # their rejects, likewise (None: none)

    @property
    def entries(self) -> int:
        """Entries carried, over every partition."""
        return sum(len(metas) for _, _, metas in self.requests)

    @property
    def data_bytes(self) -> int:
        """Bytes of the encoded rows (what decides whether the shipment travels inline)."""
        return len(self.data or b"") + len(self.rejects or b"")


def _codec() -> pa.Codec | None:
    for name, level in (("zstd", 1), ("lz4", None)):  # pyarrow's wheels carry both; a build may lack one
        if pa.Codec.is_available(name):
            return pa.Codec(name, level)
    return None


_IPC = pa.ipc.IpcWriteOptions(compression=_codec())


def _encode(batch: pa.RecordBatch) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema, options=_IPC) as writer:
        writer.write_batch(batch)
    return bytes(sink.getvalue().to_pybytes())


def _decode(data: bytes) -> pa.RecordBatch:
    return pa.ipc.open_stream(data).read_next_batch()


def pack(
    source: int, parts: Sequence[tuple[int, Replicate, Sequence[Entry]]], committed: dict[int, dict[str, int]]
) -> Shipment:
    """A shipment of these requests and log entries (their payloads packed as one envelope)."""
    shipment = Shipment(source, committed=committed)
    payloads: list[Envelope] = []
    for partition, request, entries in parts:
        metas = [EntryMeta(e.rows, e.payload.num_rejects, e.nbytes, e.producer, e.seq) for e in entries]
        shipment.requests.append((partition, request, metas))
        payloads.extend(e.payload for e in entries)
    packed = pack_envelopes(payloads)
    if packed is not None:
        shipment.data = _encode(packed.samples)
        shipment.rejects = None if packed.rejects is None else _encode(packed.rejects)
    return shipment


def unpack(shipment: Shipment) -> list[list[Mirrored]]:
    """Per request, its entries as a follower appends them (decoded here: rows it cannot read raise)."""
    samples = _decode(shipment.data) if shipment.data is not None else empty_wire()
    rejects = _decode(shipment.rejects) if shipment.rejects is not None else None
    alone = shipment.entries == 1 and shipment.data is not None
    encoded = (shipment.data or b"", shipment.rejects or b"") if alone else None
    at = rat = 0
    out: list[list[Mirrored]] = []
    for _, _, metas in shipment.requests:
        mine = []
        for m in metas:
            piece_rejects = rejects.slice(rat, m.rejects) if rejects is not None and m.rejects else None
            payload = Envelope(samples.slice(at, m.rows), piece_rejects)
            mine.append(Mirrored(payload, m.rows, m.nbytes, m.producer, m.seq, encoded))
            at += m.rows
            rat += m.rejects
        out.append(mine)
    return out
