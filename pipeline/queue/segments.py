"""Persistence of a partition log: segment files of framed Arrow IPC messages.

Layout: ``<dir>/partition-<p>/<base offset, 20 digits>.seg``. Each message is one frame::

    magic b"GTQ1" | body length u32 | CRC-32 of body u32 | body
    body = header length u32 | header JSON | samples IPC stream | rejects IPC stream (may be empty)

Each IPC stream is self-contained (schema, dictionaries, one batch), so a message reads back on its
own, zero-copy from a memory map. A frame is written with one ``write`` and (by default) an
``fsync`` before the append is acknowledged. Recovery scans the segments; a torn or corrupt frame at
the end of the newest segment (a crash mid-write) is cut off, and the log resumes after the last
whole message. Segments roll at ``segment_bytes``; retention deletes whole segments that every
consumer group has committed, once they are older than ``retention_s`` or the partition is over
its disk budget.
"""

from __future__ import annotations

import json
import logging
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

__all__ = ["Frame", "SegmentStore", "StateFile", "decode_envelope", "encode_envelope"]

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
    head = json.dumps(header, separators=(",", ":")).encode()
    samples = _ipc(envelope.samples)
    rejects = _ipc(envelope.rejects)
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

    def recover(self, keep_from: int) -> tuple[list[Frame], int | None, dict[str, int]]:
        """Read back messages with offsets >= ``keep_from``.

        Returns them, the next offset (None if there is no data) and the newest sequence per
        producer found in any frame (to keep deduplicating after a restart).

        A torn frame at the end of the newest segment is truncated away; damage anywhere else raises
        ``QueueError`` (the data needs an operator, not a silent cut).
        """
        frames: list[Frame] = []
        next_offset: int | None = None
        last_seq: dict[str, int] = {}
        segments = self.segments()
        for i, (base, path) in enumerate(segments):
            newest = i == len(segments) - 1
            offset = base
            with pa.memory_map(str(path), "r") as mm:
                data = mm.read_buffer()
            size = data.size
            pos = 0
            while pos < size:
                bad = None
                if size - pos < _PREFIX.size:
                    bad = "torn frame header"
                else:
                    magic, length, crc = _PREFIX.unpack(data[pos : pos + _PREFIX.size].to_pybytes())
                    if magic != MAGIC:
                        bad = "bad magic"
                    elif pos + _PREFIX.size + length > size:
                        bad = "torn frame body"
                    else:
                        body = data.slice(pos + _PREFIX.size, length)
                        if zlib.crc32(body.to_pybytes()) != crc:
                            bad = "checksum mismatch"
                if bad is not None:
                    if not newest:
                        raise QueueError(
                            f"{path}: {bad} at byte {pos} in a sealed segment; refusing to guess",
                            path=str(path),
                            position=pos,
                        )
                    log.warning(
                        "%s: %s at byte %d (crash mid-write); truncating %d byte(s)", path, bad, pos, size - pos
                    )
                    self.truncated_bytes += size - pos
                    with path.open("r+b") as f:
                        f.truncate(pos)
                    break
                header, envelope = decode_envelope(body)
                if header.get("producer") is not None and header.get("seq") is not None:
                    last_seq[header["producer"]] = max(last_seq.get(header["producer"], -1), int(header["seq"]))
                if int(header["offset"]) != offset:
                    raise QueueError(
                        f"{path}: frame at byte {pos} has offset {header['offset']}, expected {offset}", path=str(path)
                    )
                if offset >= keep_from:
                    frames.append(Frame(offset, header, envelope, int(header.get("nbytes", length))))
                pos += _PREFIX.size + length
                offset += 1
            next_offset = offset
            if newest and pos == 0 and base == offset and len(segments) > 1:
                path.unlink()  # an empty newest segment (rolled, then nothing written)
        return frames, next_offset, last_seq

    def append(self, offset: int, header: dict[str, Any], envelope: Envelope) -> int:
        """Write one message (offset must follow the previous); returns bytes written."""
        if self._file is None or self._file_size >= self._segment_bytes:
            self._roll(offset)
        # A slice keeps its parent's whole dictionary; only the entries it uses are written.
        compact = Envelope(compact_dictionaries(envelope.samples), envelope.rejects)
        frame = encode_envelope({**header, "offset": offset}, compact)
        self._file.write(frame)
        self._file.flush()
        if self._fsync:
            os.fsync(self._file.fileno())
        self._file_size += len(frame)
        return len(frame)

    def _roll(self, base: int) -> None:
        if self._file is not None:
            self._file.close()
        path = self.directory / f"{base:020d}{SUFFIX}"
        existing = self.segments()
        if existing and existing[-1][1].stat().st_size < self._segment_bytes and self._active_base is None:
            # Reopen the newest segment after a restart instead of starting a tiny new one.
            path = existing[-1][1]
        self._file = path.open("ab")
        self._file_size = path.stat().st_size
        self._active_base = int(path.stem)
        if self._fsync:
            _fsync_dir(self.directory)

    def apply_retention(
        self, committed: int, retention_s: float, max_bytes: int | None, now: float | None = None
    ) -> int:
        """Delete whole segments below ``committed`` that are too old or over the byte budget; returns bytes freed."""
        now = time.time() if now is None else now
        segments = self.segments()
        sizes = [p.stat().st_size for _, p in segments]
        total = sum(sizes)
        freed = 0
        for i, (_, path) in enumerate(segments[:-1]):  # never the active (newest) segment
            next_base = segments[i + 1][0]
            if next_base > committed:
                break  # holds messages some group has not committed
            too_old = now - path.stat().st_mtime > retention_s
            too_big = max_bytes is not None and total - freed > max_bytes
            if not (too_old or too_big):
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
