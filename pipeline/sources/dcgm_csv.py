"""Streaming reader of dcgm-exporter CSV exports.

The header is checked when the source opens. Rows are read in blocks with pyarrow's streaming CSV
reader (memory stays constant whatever the file size), every field as text, then validated as whole
columns. Rows with the wrong number of fields become rejects carrying the raw line. Small files are
kept in memory after the first pass, so replaying them in a loop costs no parsing.
"""

from __future__ import annotations

import csv
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from pipeline.errors import SourceError
from pipeline.queue.keys import KeyHasher
from pipeline.records import empty_samples, make_rejects
from pipeline.sources.base import Shard, SourceBatch
from pipeline.sources.validate import validate

__all__ = ["HEADER", "DcgmCsvSource"]

log = logging.getLogger(__name__)

# dcgm-exporter's CSV header, and the canonical raw column each maps to.
HEADER: Final = (
    "timestamp",
    "metric_name",
    "gpu_id",
    "device",
    "uuid",
    "modelName",
    "Hostname",
    "container",
    "pod",
    "namespace",
    "value",
    "labels_raw",
)
_CANONICAL: Final = {
    "timestamp": "timestamp",
    "metric_name": "metric",
    "gpu_id": "gpu_index",
    "device": "device",
    "uuid": "uuid",
    "modelName": "model",
    "Hostname": "hostname",
    "container": "container",
    "pod": "pod",
    "namespace": "namespace",
    "value": "value",
    "labels_raw": "labels_raw",
}
_REQUIRED: Final = ("timestamp", "metric_name", "uuid", "value")


class DcgmCsvSource:
    """A dcgm-exporter CSV file, read one pass at a time.

    Positions are record numbers (the header is record 1): ``read_pass(start=k)`` resumes at
    record ``k``.
    """

    def __init__(
        self, path: str | Path, batch_rows: int = 20_000, block_bytes: int = 4 << 20, cache_bytes: int = 256 << 20
    ) -> None:
        self._path = Path(path)
        self._batch_rows = batch_rows
        self._block_bytes = block_bytes
        self._cache_bytes = cache_bytes
        self._header: list[str] = []
        self._hasher = KeyHasher()
        self._cache: dict[Shard, list[SourceBatch]] | None = None
        self._cache_complete: set[Shard] = set()

    @property
    def replayable(self) -> bool:
        """A file: the same rows at the same positions on every read."""
        return True

    @property
    def name(self) -> str:
        """The file's path."""
        return str(self._path)

    def open(self) -> None:
        """Check the file exists and has a dcgm-exporter header."""
        try:
            with self._path.open("rb") as f:
                line = f.readline()
            # Only the header is decoded here: a bad byte further down is one row's reject, not the file's.
            first = next(csv.reader([line.decode("utf-8-sig")]), None)
        except FileNotFoundError:
            raise SourceError(f"CSV file {self._path} does not exist", path=str(self._path)) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise SourceError(f"CSV file {self._path} cannot be read: {exc}", path=str(self._path)) from None
        first = [c.strip() for c in first] if first else first
        if not first:
            raise SourceError(f"CSV file {self._path} is empty: expected a dcgm-exporter header", path=str(self._path))
        missing = [c for c in _REQUIRED if c not in first]
        if missing:
            raise SourceError(
                f"CSV file {self._path} has an unknown header (line 1): missing column(s) "
                f"{', '.join(missing)}; expected {','.join(HEADER)}",
                path=str(self._path),
                line=1,
                raw=_printable(",".join(first)),
            )
        unknown = [c for c in first if c not in HEADER]
        if unknown:
            log.warning("%s: ignoring unknown column(s) %s", self._path, ", ".join(unknown))
        self._header = first
        self._cache = {}

    def close(self) -> None:
        """Drop the in-memory copy."""
        self._cache = None
        self._cache_complete.clear()

    def read_pass(self, shard: Shard, start: int = 2) -> Iterator[SourceBatch]:
        """Yield this shard's batches of one pass over the file, from record ``start`` on."""
        if not self._header:
            self.open()
        if self._cache is not None and shard in self._cache_complete:
            for batch in self._cache[shard]:
                if batch.position > start:
                    yield batch
            return
        caching = self._cache is not None and start <= 2
        kept: list[SourceBatch] = []
        kept_bytes = 0
        for batch in self._read_file(shard, max(start, 2)):
            if caching:
                kept_bytes += batch.samples.nbytes
                if kept_bytes > self._cache_bytes:
                    caching = False
                    kept = []
                else:
                    kept.append(batch)
            yield batch
        if caching and self._cache is not None:
            self._cache[shard] = kept
            self._cache_complete.add(shard)

    def _read_file(self, shard: Shard, start: int) -> Iterator[SourceBatch]:
        """Parse from record ``start``; emit batches cut at record numbers ``2 + k * batch_rows``.

        Cutting at fixed record numbers (not at parser block edges) makes the batches of a pass the
        same whatever record reading started from: a streamer resuming mid-pass re-creates exactly
        the messages it sent before, which is what sequence-number deduplication relies on.
        """
        invalid: list[tuple[int, str, str]] = []
        wrong_count = f"wrong column count: expected {len(self._header)} fields"

        def on_invalid(row: pacsv.InvalidRow) -> str:
            invalid.append((row.number or 0, _printable(row.text), wrong_count))
            return "skip"

        names = [_CANONICAL.get(c, f"_extra_{i}") for i, c in enumerate(self._header)]
        for name in ("gpu_index", "device", "model", "hostname", "labels_raw"):
            if name not in names:
                raise SourceError(f"CSV file {self._path} lacks the column for {name}; expected {','.join(HEADER)}")
        reader = pacsv.open_csv(
            self._path,
            read_options=pacsv.ReadOptions(
                column_names=names,
                skip_rows=1,
                skip_rows_after_names=start - 2,
                block_size=self._block_bytes,
                use_threads=False,
            ),
            parse_options=pacsv.ParseOptions(invalid_row_handler=on_invalid),
            convert_options=pacsv.ConvertOptions(
                # Bytes, not text: invalid UTF-8 is found per row (a reject), not per file (an error).
                column_types={n: pa.binary() for n in names},
                strings_can_be_null=False,
                include_columns=[n for n in names if not n.startswith("_extra_")],
            ),
        )
        step = self._batch_rows
        boundary = start + step - ((start - 2) % step)
        held: list[pa.RecordBatch] = []
        held_records: list[np.ndarray] = []
        held_bad: list[tuple[int, str, str]] = []
        next_record = start
        while True:
            try:
                block = reader.read_next_batch()
            except StopIteration:
                break
            except pa.ArrowInvalid as exc:
                raise SourceError(
                    f"CSV file {self._path} cannot be parsed near record {next_record}: {exc}", path=str(self._path)
                ) from None
            # pyarrow numbers invalid records by their place in the file (skipped records counted).
            bad = list(invalid)
            invalid.clear()
            records = _number_rows(next_record, block.num_rows, [n for n, _, _ in bad])
            last = max([next_record - 1] + ([int(records[-1])] if len(records) else []) + [n for n, _, _ in bad])
            next_record = last + 1
            block, records, undecodable = _decode(block, records)
            bad.extend(undecodable)
            held.append(block)
            held_records.append(records)
            held_bad.extend(bad)
            while next_record > boundary:
                yield from self._cut(held, held_records, held_bad, boundary, shard)
                boundary += step
        yield from self._cut(held, held_records, held_bad, next_record, shard, final=True)

    def _cut(
        self,
        held: list[pa.RecordBatch],
        held_records: list[np.ndarray],
        held_bad: list[tuple[int, str, str]],
        boundary: int,
        shard: Shard,
        final: bool = False,
    ) -> Iterator[SourceBatch]:
        """Emit every held row with a record number below ``boundary``; keep the rest held."""
        take_blocks: list[pa.RecordBatch] = []
        take_records: list[np.ndarray] = []
        keep_blocks: list[pa.RecordBatch] = []
        keep_records: list[np.ndarray] = []
        for block, records in zip(held, held_records, strict=True):
            n = int(np.searchsorted(records, boundary))
            if n:
                take_blocks.append(block.slice(0, n))
                take_records.append(records[:n])
            if n < len(records):
                keep_blocks.append(block.slice(n))
                keep_records.append(records[n:])
        bad = [b for b in held_bad if b[0] < boundary]
        held[:] = keep_blocks
        held_records[:] = keep_records
        held_bad[:] = [b for b in held_bad if b[0] >= boundary]
        rows = pa.Table.from_batches(take_blocks).combine_chunks() if take_blocks else None
        records = np.concatenate(take_records) if take_records else np.empty(0, dtype=np.int64)
        if rows is None and not bad and not final:
            return
        now_us = time.time_ns() // 1000
        rejects = None
        if bad and shard.index == 0:  # rows that cannot be keyed are reported by shard 0 only
            bad.sort()
            rejects = make_rejects(
                now_us, self.name, [n for n, _, _ in bad], [t for _, t, _ in bad], [r for *_, r in bad]
            )
        samples = None
        if rows is not None and rows.num_rows:
            if shard.count > 1:
                mask = self._hasher.shards(rows.column("uuid"), shard.count) == shard.index
                rows = rows.filter(pa.array(mask))
                records = records[mask]
            result = validate(rows, records, self.name, now_us)
            samples = result.samples
            rejects = _concat(rejects, result.rejects)
        if samples is None:
            samples = empty_samples()
        if samples.num_rows or rejects is not None or final:
            yield SourceBatch(samples, rejects, boundary)


def _printable(text: str) -> str:
    """Text PostgreSQL accepts: NUL bytes shown as ``\\x00``."""
    return text.replace("\x00", "\\x00")


def _decode(
    block: pa.RecordBatch, records: np.ndarray
) -> tuple[pa.RecordBatch, np.ndarray, list[tuple[int, str, str]]]:
    """Binary columns to UTF-8 text; rows with invalid UTF-8 leave the block as (record, raw, reason)."""
    try:
        return _as_text(block), records, []
    except pa.ArrowInvalid:
        pass  # rare: find the rows in Python
    reasons: dict[int, str] = {}
    for name, column in zip(block.schema.names, block.columns, strict=True):
        for i, value in enumerate(column.to_pylist()):
            try:
                value.decode("utf-8")
            except UnicodeDecodeError as exc:
                reasons.setdefault(i, f"invalid UTF-8 in field {name} at byte {exc.start}")
    bad = []
    for i, reason in sorted(reasons.items()):
        fields = [block.column(c)[i].as_py().decode("utf-8", "replace") for c in range(block.num_columns)]
        raw = ",".join('"' + f.replace('"', '""') + '"' for f in fields)
        bad.append((int(records[i]), _printable(raw), reason))
    keep = np.ones(block.num_rows, dtype=bool)
    keep[list(reasons)] = False
    return _as_text(block.filter(pa.array(keep))), records[keep], bad


def _as_text(block: pa.RecordBatch) -> pa.RecordBatch:
    return pa.RecordBatch.from_arrays([c.cast(pa.string()) for c in block.columns], names=block.schema.names)


def _number_rows(first: int, count: int, invalid: list[int]) -> np.ndarray:
    """Record numbers of ``count`` good rows starting at ``first``, skipping invalid records."""
    if not invalid:
        return np.arange(first, first + count, dtype=np.int64)
    candidates = np.arange(first, first + count + len(invalid), dtype=np.int64)
    keep = ~np.isin(candidates, np.array(invalid, dtype=np.int64))
    return candidates[keep][:count]


def _concat(a: pa.RecordBatch | None, b: pa.RecordBatch | None) -> pa.RecordBatch | None:
    if a is None:
        return b
    if b is None:
        return a
    return pa.Table.from_batches([a, b]).combine_chunks().to_batches()[0]
