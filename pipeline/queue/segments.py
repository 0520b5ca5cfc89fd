"""Persistence of a partition log: segment files of framed Arrow IPC messages.

Layout: ``<dir>/partition-<p>/<base offset, 20 digits>.seg``. Each message is one frame::

    magic b"GTQ1" | body length u32 | CRC-32 of body u32 | body
    body = header length u32 | header JSON | samples IPC stream | rejects IPC stream (may be empty)

Each IPC stream is self-contained (schema, dictionaries, one batch), so a message reads back on its
own, zero-copy from a memory map (or decompressed: a follower writes a leader's zstd-compressed
shipment as it came). A frame is written with one ``write`` and (by default) an
``fsync`` before the append is acknowledged. Recovery reads only what is not committed (committed
history is neither checksummed nor decoded: a restart answers in seconds whatever the retained
size). A torn frame at the end of the newest segment (a crash mid-write) is cut off; damage inside
it is skipped up to the next intact frame when it lost no uncommitted message, and refused (an
error naming the file and byte) when it did. Segments roll at ``segment_bytes``; retention deletes
whole segments that every consumer group has committed, once they are older than ``retention_s`` or
the partition is over its disk budget.
"""

from __future__ import annotations

import json
import logging
import mmap
import os
import struct
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import pyarrow as pa

from pipeline.errors import QueueError
from pipeline.records import Envelope, compact_dictionaries

__all__ = ["Frame", "SegmentStore", "StateFile", "decode_envelope", "encode_envelope", "encode_frame"]

log = logging.getLogger(__name__)

MAGIC: Final = b"GTQ1"
_PREFIX = struct.Struct(">4sII")
_U32 = struct.Struct(">I")
SUFFIX: Final = ".seg"


def _ipc(batch: pa.RecordBatch | None) -> bytes:
    if batch is None:
        return b""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as writer:
        writer.write_batch(batch)
    return bytes(sink.getvalue())


def encode_envelope(header: dict[str, Any], envelope: Envelope) -> bytes:
    """One frame for a message."""
    return encode_frame(header, _ipc(envelope.samples), _ipc(envelope.rejects))


def encode_frame(header: dict[str, Any], samples: bytes, rejects: bytes) -> bytes:
    """One frame for a message already encoded: its samples' IPC stream and its rejects' (b"": none).

    The streams may have compressed buffers (a follower writes a leader's shipment as it came).
    """
    head = json.dumps(header, separators=(",", ":")).encode()
    body = b"".join([_U32.pack(len(head)), head, _U32.pack(len(samples)), samples, _U32.pack(len(rejects)), rejects])
    return _PREFIX.pack(MAGIC, len(body), zlib.crc32(body)) + body


def _read_stream(buf: pa.Buffer) -> pa.RecordBatch:
    reader = pa.ipc.open_stream(buf)
    return reader.read_next_batch()


def decode_envelope(body: pa.Buffer) -> tuple[dict[str, Any], Envelope]:
    """Header and envelope of a frame body (Arrow buffers are zero-copy slices of ``body``)."""
    pos = 0

    def take() -> pa.Buffer:
        nonlocal pos
        (n,) = _U32.unpack(body[pos : pos + 4].to_pybytes())
        out = body.slice(pos + 4, n)
        pos += 4 + n
        return out

    header = json.loads(take().to_pybytes())
    samples = _read_stream(take())
    rejects_buf = take()
    rejects = _read_stream(rejects_buf) if rejects_buf.size else None
    return header, Envelope(samples, rejects)


@dataclass(frozen=True, slots=True)
class Frame:
    """A recovered message."""

    offset: int
    header: dict[str, Any]
    envelope: Envelope
    nbytes: int


class SegmentStore:
    """The on-disk log of one partition."""

    def __init__(self, directory: Path, segment_bytes: int, fsync: bool = True) -> None:
        self.directory = directory
        self._segment_bytes = segment_bytes
        self._fsync = fsync
        directory.mkdir(parents=True, exist_ok=True)
        self._file: Any = None
        self._file_size = 0
        self._active_base: int | None = None
        self.truncated_bytes = 0
        self.skipped_bytes = 0

    def segments(self) -> list[tuple[int, Path]]:
        """(base offset, path) of every segment, oldest first."""
        out = []
        for path in self.directory.glob(f"*{SUFFIX}"):
            try:
                out.append((int(path.stem), path))
            except ValueError:
                log.warning("ignoring stray file %s", path)
        return sorted(out)

    def disk_bytes(self) -> int:
        """Bytes of all segments."""
        return sum(p.stat().st_size for _, p in self.segments())

    def recover(self, keep_from: int, last_seq_known: bool = False) -> tuple[list[Frame], int | None, dict[str, int]]:
        """Read back messages with offsets >= ``keep_from``.

        Returns them, the next offset (None if there is no data) and the newest sequence per
        producer found in the frames read (to keep deduplicating after a restart).

        Committed history (offsets below ``keep_from``) is not verified or decoded: sealed segments
        wholly below it are not opened at all, and inside a segment only frame prefixes are walked.
        With ``last_seq_known`` False (an older state file) their headers are read for sequences.

        Damage in the newest segment: the scan resyncs at the next intact frame. Bytes that held no
        message (a torn write, an ENOSPC fragment) are skipped; a lost message that was committed is
        skipped with a warning; a lost message that was not committed raises ``QueueError`` naming
        the file and byte. A torn tail is truncated. Damage in a sealed segment raises.
        """
        frames: list[Frame] = []
        next_offset: int | None = None
        last_seq: dict[str, int] = {}
        segments = self.segments()
        for i, (base, path) in enumerate(segments):
            newest = i == len(segments) - 1
            if not newest and segments[i + 1][0] <= keep_from and last_seq_known:
                next_offset = segments[i + 1][0]  # wholly committed: not read
                continue
            scan = _Scan(path, base, keep_from, None if newest else segments[i + 1][0], not last_seq_known)
            next_offset = scan.run(frames, last_seq)
            self.truncated_bytes += scan.truncated
            self.skipped_bytes += scan.skipped
            if newest and scan.end == 0 and base == next_offset and len(segments) > 1:
                path.unlink()  # an empty newest segment (rolled, then nothing written)
        return frames, next_offset, last_seq

    def append(
        self, offset: int, header: dict[str, Any], envelope: Envelope, encoded: tuple[bytes, bytes] | None = None
    ) -> int:
        """Write one message (offset must follow the previous); returns bytes written.

        ``encoded``: the message's (samples, rejects) IPC streams as a leader shipped them, written as they
        are instead of encoding ``envelope`` again.
        """
        if self._file is None or self._file_size >= self._segment_bytes:
            self._roll(offset)
        if encoded is not None:
            frame = encode_frame({**header, "offset": offset}, *encoded)
        else:
            # A slice keeps its parent's whole dictionary; only the entries it uses are written.
            compact = Envelope(compact_dictionaries(envelope.samples), envelope.rejects)
            frame = encode_envelope({**header, "offset": offset}, compact)
        fd = self._file.fileno()
        try:
            _write_all(fd, frame)
        except OSError:
            # A short write (ENOSPC, EIO) must not leave a fragment for later frames to follow.
            os.ftruncate(fd, self._file_size)
            raise
        if self._fsync:
            os.fsync(fd)
        self._file_size += len(frame)
        return len(frame)

    def truncate(self, end: int) -> int:
        """Cut the log at offset ``end``: that frame and every later one go (a replica's diverging tail).

        Returns the bytes removed. The next ``append`` writes offset ``end`` (a new segment when the
        cut emptied every one).
        """
        self.close()
        self._active_base = None
        removed = 0
        for base, path in reversed(self.segments()):
            size = path.stat().st_size
            if base >= end:
                path.unlink()
                removed += size
                continue
            with pa.memory_map(str(path), "r") as mm:
                data = mm.read_buffer()
                pos, offset = 0, base
                while pos < data.size and offset < end:
                    length = _prefix_length(data, pos)
                    if length is None:
                        break
                    pos += _PREFIX.size + length
                    offset += 1
            if pos < size:
                with path.open("r+b") as f:
                    f.truncate(pos)
                    if self._fsync:
                        os.fsync(f.fileno())
                removed += size - pos
            break
        if self._fsync:
            _fsync_dir(self.directory)
        return removed

    def seal_active(self, next_offset: int) -> None:
        """Start a new, empty active segment at ``next_offset`` so the old one can be deleted."""
        if self._file is not None and self._file_size == 0:
            return
        if self._file is None and not (self.segments() and self.segments()[-1][1].stat().st_size):
            return
        self.close()
        path = self.directory / f"{next_offset:020d}{SUFFIX}"
        self._file = path.open("ab", buffering=0)
        self._file_size = 0
        self._active_base = next_offset
        if self._fsync:
            _fsync_dir(self.directory)

    def _roll(self, base: int) -> None:
        if self._file is not None:
            self._file.close()
        path = self.directory / f"{base:020d}{SUFFIX}"
        existing = self.segments()
        if existing and existing[-1][1].stat().st_size < self._segment_bytes and self._active_base is None:
            # Reopen the newest segment after a restart instead of starting a tiny new one.
            path = existing[-1][1]
        self._file = path.open("ab", buffering=0)  # one os.write per frame, nothing buffered
        self._file_size = path.stat().st_size
        self._active_base = int(path.stem)
        if self._fsync:
            _fsync_dir(self.directory)

    def apply_retention(
        self,
        committed: int,
        retention_s: float,
        max_bytes: int | None,
        now: float | None = None,
        *,
        retention_bytes: int | None = None,
        end_offset: int | None = None,
    ) -> int:
        """Delete whole segments below ``committed``; returns bytes freed.

        A committed segment goes when it is older than ``retention_s``, when committed data exceeds
        ``retention_bytes``, or while the partition is over ``max_bytes`` (its disk budget). When
        everything is committed (``committed >= end_offset``) and the budget is still exceeded, the
        active segment is sealed first, so a budget at or below one segment never blocks producers.
        """
        now = time.time() if now is None else now
        segments = self.segments()
        sizes = [p.stat().st_size for _, p in segments]
        total = sum(sizes)
        if (
            max_bytes is not None
            and end_offset is not None
            and committed >= end_offset
            and total > max_bytes
            and segments
            and sizes[-1] > 0
        ):
            self.seal_active(end_offset)
            segments, sizes = self.segments(), [p.stat().st_size for _, p in self.segments()]
        committed_bytes = sum(s for i, s in enumerate(sizes[:-1]) if segments[i + 1][0] <= committed)
        freed = 0
        for i, (_, path) in enumerate(segments[:-1]):  # never the active (newest) segment
            next_base = segments[i + 1][0]
            if next_base > committed:
                break  # holds messages some group has not committed
            too_old = now - path.stat().st_mtime > retention_s
            too_big = max_bytes is not None and total - freed > max_bytes
            too_much = retention_bytes is not None and committed_bytes - freed > retention_bytes
            if not (too_old or too_big or too_much):
                break
            freed += sizes[i]
            path.unlink()
            log.info("retention: deleted %s (%d bytes)", path, sizes[i])
        return freed

    def close(self) -> None:
        """Close the active segment."""
        if self._file is not None:
            self._file.close()
            self._file = None


def _write_all(fd: int, data: bytes) -> None:
    """Write every byte (``os.write`` may write fewer); raises ``OSError`` (e.g. ENOSPC) part way."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _crc32(data: Any) -> int:
    return zlib.crc32(data)


class _Scan:
    """One pass over one segment file for ``SegmentStore.recover``."""

    def __init__(self, path: Path, base: int, keep_from: int, next_base: int | None, read_seq: bool) -> None:
        self.path = path
        self.base = base
        self.keep_from = keep_from
        self.next_base = next_base  # base offset of the next segment; None for the newest
        self.newest = next_base is None
        self.read_seq = read_seq
        self.truncated = 0
        self.skipped = 0
        self.end = 0

    def run(self, frames: list[Frame], last_seq: dict[str, int]) -> int:
        """Append this segment's kept frames to ``frames``; returns the offset after its last one."""
        with pa.memory_map(str(self.path), "r") as mm:
            data = mm.read_buffer()
        size, pos, offset = data.size, 0, self.base
        while pos < size:
            length = _prefix_length(data, pos)
            if offset < self.keep_from and length is not None:  # committed: walk the prefix only
                if self.read_seq:
                    _note_seq(_read_header(data.slice(pos + _PREFIX.size, length)), last_seq)
                pos += _PREFIX.size + length
                offset += 1
                continue
            body, bad = _checked_body(data, pos)
            if body is None:
                resume, offset = self._damaged(data, pos, offset, bad)
                if resume is None:
                    break  # truncated at pos
                pos = resume
                continue
            header, envelope = decode_envelope(body)
            _note_seq(header, last_seq)
            if int(header["offset"]) != offset:
                raise QueueError(
                    f"{self.path}: frame at byte {pos} has offset {header['offset']}, expected {offset}",
                    path=str(self.path),
                    position=pos,
                )
            if offset >= self.keep_from:
                frames.append(Frame(offset, header, envelope, int(header.get("nbytes", body.size))))
            pos += _PREFIX.size + body.size
            offset += 1
        self.end = pos
        return offset

    def _damaged(self, data: pa.Buffer, pos: int, offset: int, bad: str) -> tuple[int | None, int]:
        """Resync after damage at ``pos``; returns where to go on (None: nothing more here) and the offset."""
        where = "" if self.newest else " in a sealed segment"
        nxt = _resync(self.path, data, pos + 1)
        resumed = self.next_base if nxt is None else int(_read_header(_checked_body(data, nxt)[0])["offset"])  # type: ignore[arg-type]
        if resumed is None:  # the newest segment's tail: a crash mid-write
            log.warning(
                "%s: %s at byte %d (crash mid-write); truncating %d byte(s)", self.path, bad, pos, data.size - pos
            )
            self.truncated += data.size - pos
            with self.path.open("r+b") as f:
                f.truncate(pos)
            return None, offset
        if resumed < offset:
            raise QueueError(
                f"{self.path}: {bad} at byte {pos}{where}; the next intact message has offset {resumed}, "
                f"expected at least {offset}; refusing to guess",
                path=str(self.path),
                position=pos,
            )
        if resumed > offset and resumed > self.keep_from:
            raise QueueError(
                f"{self.path}: {bad} at byte {pos}{where}: message(s) at offset {offset} to {resumed - 1} are "
                "damaged and not committed; refusing to guess",
                path=str(self.path),
                position=pos,
            )
        lost = "" if resumed == offset else f"; lost offsets {offset}..{resumed - 1} were already committed"
        skipped = (data.size if nxt is None else nxt) - pos
        log.warning("%s: %s at byte %d%s; skipped %d byte(s)%s", self.path, bad, pos, where, skipped, lost)
        self.skipped += skipped
        return nxt, resumed


def _prefix_length(data: pa.Buffer, pos: int) -> int | None:
    """The body length of a frame at ``pos`` if its prefix is whole and in bounds."""
    if data.size - pos < _PREFIX.size:
        return None
    magic, length, _ = _PREFIX.unpack(data[pos : pos + _PREFIX.size].to_pybytes())
    if magic != MAGIC or pos + _PREFIX.size + length > data.size:
        return None
    return int(length)


def _checked_body(data: pa.Buffer, pos: int) -> tuple[pa.Buffer | None, str]:
    """The body of an intact frame at ``pos``, or None and what is wrong."""
    if data.size - pos < _PREFIX.size:
        return None, "torn frame header"
    magic, length, crc = _PREFIX.unpack(data[pos : pos + _PREFIX.size].to_pybytes())
    if magic != MAGIC:
        return None, "bad magic"
    if pos + _PREFIX.size + length > data.size:
        return None, "torn frame body"
    body = data.slice(pos + _PREFIX.size, length)
    if _crc32(body) != crc:
        return None, "checksum mismatch"
    return body, ""


def _resync(path: Path, data: pa.Buffer, start: int) -> int | None:
    """Byte position of the next intact frame at or after ``start``, if any (a rare path: plain scanning)."""
    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        pos = mm.find(MAGIC, start)
        while pos != -1:
            if _checked_body(data, pos)[0] is not None:
                return pos
            pos = mm.find(MAGIC, pos + 1)
    return None


def _read_header(body: pa.Buffer) -> dict[str, Any]:
    (n,) = _U32.unpack(body[0:4].to_pybytes())
    header: dict[str, Any] = json.loads(body[4 : 4 + n].to_pybytes())
    return header


def _note_seq(header: dict[str, Any], last_seq: dict[str, int]) -> None:
    producer, seq = header.get("producer"), header.get("seq")
    if producer is not None and seq is not None:
        last_seq[producer] = max(last_seq.get(producer, -1), int(seq))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class StateFile:
    """A small JSON document replaced atomically (write, fsync, rename)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> dict[str, Any]:
        """The stored document, or {} if there is none."""
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except json.JSONDecodeError as exc:
            raise QueueError(f"{self.path} is not valid JSON: {exc}", path=str(self.path)) from None
        return data if isinstance(data, dict) else {}

    def save(self, data: dict[str, Any], fsync: bool = True) -> None:
        """Replace the document."""
        tmp = self.path.with_suffix(".tmp")
        with tmp.open("w") as f:
            json.dump(data, f, separators=(",", ":"))
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        tmp.replace(self.path)
