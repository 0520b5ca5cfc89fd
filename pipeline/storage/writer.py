"""The collectors' sink: binary COPY of samples plus offsets, in one transaction.

``write`` stores every row of the given partition batches and moves each partition's offset with a
compare-and-set (the stored offset must equal the batch's first offset and the stored generation
must be the writer's). If any check fails, nothing is stored. A retry after an ambiguous failure
(the connection died during COMMIT) is therefore safe: the second attempt finds the offset moved
and refuses, instead of writing the rows twice.

Attribution rides in the same transaction (``pipeline.storage.attribution``): allocation intervals,
GPU facts, XID events, the usage log row and, every few seconds, the latest-value rows. Its state is
computed before the transaction and adopted only after it commits, and reloaded on every claim, so
the compare-and-set that keeps samples exactly-once keeps it exactly-once too.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import psycopg
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.config import AttributionSettings
from pipeline.errors import DatabaseUnavailable, FencedError, OffsetMismatch, StorageError
from pipeline.records import Envelope, make_rejects, to_wire
from pipeline.storage.attribution import Attribution, KeyedBatch, Staged
from pipeline.storage.copy_format import encode_telemetry
from pipeline.storage.database import SessionSettings, connect, session_options
from pipeline.storage.sink import PartitionBatch, WriteResult

__all__ = ["MAX_METRIC_ID", "TelemetryWriter", "record_rejects"]

log = logging.getLogger(__name__)

MAX_METRIC_ID = 32767  # metrics.metric_id is a smallint: names past it are refused, never overflowed

_CAS = """
UPDATE consumer_offsets
   SET next_offset = %(next)s, rows_committed = rows_committed + %(rows)s,
       rejects_committed = rejects_committed + %(rejects)s, updated_at = now()
 WHERE group_id = %(group)s AND partition = %(partition)s
   AND next_offset = %(first)s AND generation = %(generation)s
"""
_SEQUENCES = """
INSERT INTO producer_sequences (group_id, partition, producer, seq) VALUES (%s, %s, %s, %s)
ON CONFLICT (group_id, partition, producer) DO UPDATE SET seq = GREATEST(producer_sequences.seq, EXCLUDED.seq)
"""


_FULL = f"the metrics table is full ({MAX_METRIC_ID} names, the limit of its smallint key)"
_NEXT_METRIC = """
INSERT INTO metrics (metric_id, name)
SELECT coalesce(max(metric_id), 0) + 1, %(name)s FROM metrics
HAVING coalesce(max(metric_id), 0) < %(limit)s AND NOT bool_or(name = %(name)s) IS TRUE
"""


class TelemetryWriter:
    """Writes partition batches to ``telemetry`` and ``rejects`` with exactly-once offsets."""

    def __init__(
        self,
        conninfo: str,
        timeout_s: float = 3.0,  # per address; with heartbeats, well inside the group session timeout
        last_seen_every_s: float | None = None,
        session: SessionSettings | None = None,
        attribution: AttributionSettings | None = None,
    ) -> None:
        self._conninfo = conninfo
        self._timeout = timeout_s
        self._session = SessionSettings() if session is None else session
        self._conn: psycopg.Connection[Any] | None = None
        self._gpu_keys: dict[str, int] = {}
        self._metric_ids: dict[str, int] = {}
        settings = AttributionSettings() if attribution is None else attribution  # type: ignore[call-arg]
        self._attribution = Attribution(settings) if settings.enabled else None
        # gpus.last_seen is coarse where gpu_latest holds each GPU's newest sample (the reader takes the newer).
        every = last_seen_every_s if last_seen_every_s is not None else (60.0 if self._attribution else 2.0)
        self._last_seen_every = every
        self._last_seen_at = 0.0
        self._last_seen: dict[int, int] = {}
        self.refused_metrics: set[str] = set()  # names refused because the smallint key is exhausted

    # --- lifecycle -----------------------------------------------------------------------------

    def open(self) -> None:
        """Connect and load the metric dictionary."""
        self._conn = connect(self._conninfo, self._timeout, **_merged(self._conninfo, session_options(self._session)))
        self._conn.execute("SET synchronous_commit = on")
        self._conn.commit()
        self._metric_ids = {n: i for n, i in self._conn.execute("SELECT name, metric_id FROM metrics")}
        self._conn.commit()
        if self._attribution is not None:
            self._attribution.load(self._conn, self._metric_ids)

    def close(self) -> None:
        """Flush pending last-seen times and latest values, and close the connection."""
        if self._conn is not None and not self._conn.closed:
            self._last_seen_at = 0.0
            self._touch_last_seen()
            if self._attribution is not None:
                try:
                    self._attribution.latest.flush(self._conn)
                except psycopg.Error as exc:  # committed samples are safe; only the newest values wait
                    log.warning("latest values not flushed on close: %s", str(exc).strip())
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def session(self) -> psycopg.Connection[Any]:
        """The open connection (connecting if needed), with the session settings applied."""
        return self._db()

    def _db(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            self.open()
        assert self._conn is not None
        return self._conn

    def _lost(self, exc: psycopg.Error) -> DatabaseUnavailable:
        """Drop a broken connection; the next call reconnects."""
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None
        return DatabaseUnavailable(f"database connection lost: {str(exc).strip() or type(exc).__name__}")

    # --- offsets ------------------------------------------------------------------------------------

    def claim(self, group: str, generation: int, partitions: Sequence[int]) -> dict[int, int]:
        """Take ownership of partitions for ``generation``; returns their stored next offsets.

        Raises ``FencedError`` if a newer generation already claimed one of them.
        """
        if not partitions:
            return {}
        conn = self._db()
        try:
            with conn.transaction():
                conn.execute(
                    "INSERT INTO consumer_offsets (group_id, partition) SELECT %s, unnest(%s::int[]) "
                    "ON CONFLICT DO NOTHING",
                    (group, list(partitions)),
                )
                rows = conn.execute(
                    "SELECT partition, next_offset, generation FROM consumer_offsets "
                    "WHERE group_id = %s AND partition = ANY(%s) FOR UPDATE",
                    (group, list(partitions)),
                ).fetchall()
                newer = [(p, g) for p, _, g in rows if g > generation]
                if newer:
                    raise FencedError(
                        f"group {group}: partition {newer[0][0]} already claimed by generation {newer[0][1]} "
                        f"(> {generation})",
                        group=group,
                        generation=generation,
                        current=newer[0][1],
                    )
                conn.execute(
                    "UPDATE consumer_offsets SET generation = %s WHERE group_id = %s AND partition = ANY(%s)",
                    (generation, group, list(partitions)),
                )
        except (psycopg.errors.LockNotAvailable, psycopg.errors.QueryCanceled) as exc:
            raise StorageError(f"claim of {list(partitions)} timed out: {str(exc).strip()}") from None
        except psycopg.OperationalError as exc:
            raise self._lost(exc) from None
        if self._attribution is not None:
            self._reload_attribution(conn)
        return {int(p): int(o) for p, o, _ in rows}

    def _reload_attribution(self, conn: psycopg.Connection[Any]) -> None:
        """After a claim: partitions may have changed hands, so adopt what the database holds."""
        assert self._attribution is not None
        try:
            self._attribution.load(conn, self._metric_ids)
        except (psycopg.errors.LockNotAvailable, psycopg.errors.QueryCanceled) as exc:
            raise StorageError(f"attribution state could not be loaded: {str(exc).strip()}") from None
        except psycopg.OperationalError as exc:
            raise self._lost(exc) from None

    def reset(self, group: str, generation: int, partition: int, offset: int) -> None:
        """Move a partition's stored offset (after the broker lost data it had not persisted)."""
        conn = self._db()
        with conn.transaction():
            cur = conn.execute(
                "UPDATE consumer_offsets SET next_offset = %s WHERE group_id = %s AND partition = %s "
                "AND generation = %s",
                (offset, group, partition, generation),
            )
            if cur.rowcount != 1:
                raise FencedError(
                    f"group {group}: partition {partition} no longer held by generation {generation}",
                    group=group,
                    generation=generation,
                )

    def sequences(self, group: str, partitions: Sequence[int]) -> dict[tuple[str, int], int]:
        """The newest stored sequence per (producer, partition) of ``group`` (what a fresh broker dedupes on)."""
        conn = self._db()
        with conn.transaction():
            rows = conn.execute(
                "SELECT producer, partition, seq FROM producer_sequences WHERE group_id = %s AND partition = ANY(%s)",
                (group, list(partitions)),
            ).fetchall()
        return {(str(producer), int(p)): int(seq) for producer, p, seq in rows}

    def offsets(self, group: str) -> dict[int, dict[str, int]]:
        """Stored offsets and totals of a group, per partition."""
        conn = self._db()
        with conn.transaction():
            rows = conn.execute(
                "SELECT partition, next_offset, generation, rows_committed, rejects_committed "
                "FROM consumer_offsets WHERE group_id = %s",
                (group,),
            ).fetchall()
        return {
            int(p): {"next_offset": int(o), "generation": int(g), "rows": int(r), "rejects": int(j)}
            for p, o, g, r, j in rows
        }

    # --- rows ----------------------------------------------------------------------------------------

    def write(
        self, group: str, generation: int, batches: Sequence[PartitionBatch], data: Envelope | None
    ) -> WriteResult:
        """Store ``data`` (the batches' rows and rejects) and advance their offsets, atomically."""
        samples = [] if data is None or not data.num_rows else [data.samples]
        rejects = [] if data is None or not data.num_rejects or data.rejects is None else [data.rejects]
        try:
            table = pa.Table.from_batches([to_wire(samples[0])]) if samples else None
            payload = None
            staged: Staged | None = None
            if table is not None:
                payload, table, refused, keyed = self._encode(table)
                if refused is not None:
                    rejects.append(refused)
                if keyed is not None and self._attribution is not None:
                    staged = self._attribution.stage(self._db(), keyed, self._metric_ids)
            conn = self._db()
            with conn.transaction():
                moved = sum(r.num_rows for r in rejects) - sum(b.rejects for b in batches)  # refused rows
                for i, b in enumerate(batches):
                    shift = moved if i == 0 else 0  # totals stay exact: refused rows count as rejects
                    cur = conn.execute(
                        _CAS,
                        {
                            "next": b.next_offset,
                            "rows": b.rows - shift,
                            "rejects": b.rejects + shift,
                            "group": group,
                            "partition": b.partition,
                            "first": b.first_offset,
                            "generation": generation,
                        },
                    )
                    if cur.rowcount != 1:
                        raise self._refusal(conn, group, generation, b)
                sequences = [(group, b.partition, producer, seq) for b in batches for producer, seq in b.sequences]
                if sequences:
                    conn.cursor().executemany(_SEQUENCES, sequences)
                if payload:
                    with conn.cursor().copy(
                        "COPY telemetry (ts, gpu_key, metric_id, value) FROM STDIN (FORMAT BINARY)"
                    ) as copy:
                        copy.write(payload)
                if rejects:
                    _copy_rejects(conn, rejects)
                if staged is not None:
                    assert self._attribution is not None
                    self._attribution.write(conn, staged)
        except (psycopg.errors.LockNotAvailable, psycopg.errors.QueryCanceled) as exc:
            raise StorageError(f"write timed out: {str(exc).strip()}") from None
        except psycopg.OperationalError as exc:
            raise self._lost(exc) from None
        except psycopg.Error as exc:
            raise StorageError(f"write failed: {str(exc).strip()}") from None
        events = 0
        if staged is not None:
            assert self._attribution is not None
            self._attribution.commit(staged)
            events = len(staged.events[0])
        if table is not None:
            self._touch_last_seen()
        return WriteResult(
            rows=0 if table is None else table.num_rows,
            rejects=sum(r.num_rows for r in rejects),
            offsets={b.partition: b.next_offset for b in batches},
            events=events,
        )

    def _refusal(self, conn: psycopg.Connection[Any], group: str, generation: int, b: PartitionBatch) -> Exception:
        row = conn.execute(
            "SELECT next_offset, generation FROM consumer_offsets WHERE group_id = %s AND partition = %s",
            (group, b.partition),
        ).fetchone()
        if row is None or row[1] != generation:
            return FencedError(
                f"group {group}: partition {b.partition} is held by generation {row[1] if row else None}, "
                f"not {generation}",
                group=group,
                generation=generation,
                current=row[1] if row else None,
            )
        return OffsetMismatch(
            f"group {group}: partition {b.partition} stored offset is {row[0]}, batch starts at {b.first_offset}",
            partition=b.partition,
            stored=int(row[0]),
            first=b.first_offset,
        )

    # --- encoding ---------------------------------------------------------------------------------------

    def _encode(self, table: pa.Table) -> tuple[bytes, pa.Table, pa.RecordBatch | None, KeyedBatch | None]:
        """COPY payload, the rows it holds, rejects for rows whose metric name was refused, the keyed rows."""
        metric_ids, present = self._metric_keys(table.column("metric"))
        refused = None
        if (metric_ids < 0).any():
            keep = metric_ids >= 0
            refused = self._refusals(table.filter(pa.array(~keep)))
            table = table.filter(pa.array(keep))
            metric_ids = metric_ids[keep]
            present = present[present >= 0]
        if not table.num_rows:
            return b"", table, refused, None
        gpu_keys, keys, first_rows = self._keys(table)
        ts = table.column("ts").cast(pa.int64()).to_numpy()
        values = table.column("value").to_numpy()
        keyed = KeyedBatch(
            gpu_keys,
            metric_ids,
            present,
            ts,
            values,
            keys,
            first_rows,
            table.column("workload").combine_chunks(),
            table.column("gpu_info").combine_chunks(),
        )
        return encode_telemetry(ts, gpu_keys, metric_ids, values), table, refused, keyed

    def _refusals(self, table: pa.Table) -> pa.RecordBatch:
        names = table.column("metric").to_pylist()
        uuids = table.column("uuid").to_pylist()
        return make_rejects(
            time.time_ns() // 1000,
            "collector",
            [None] * len(names),
            [f"{u},{n},{v}" for u, n, v in zip(uuids, names, table.column("value").to_pylist(), strict=True)],
            [f"metric `{n}` refused: {_FULL}" for n in names],
        )

    def _keys(self, table: pa.Table) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.int32], npt.NDArray[np.int64]]:
        """Each row's gpu_key, the batch's distinct keys and the row where each first appears."""
        encoded = pc.dictionary_encode(table.column("uuid")).combine_chunks()
        dictionary = encoded.dictionary.to_pylist()
        indices = encoded.indices.to_numpy(zero_copy_only=False)
        # A sliced batch keeps its parent's whole dictionary: look up only the entries in use.
        used_array, first_rows = np.unique(indices, return_index=True)
        used = used_array.tolist()
        missing = [i for i in used if dictionary[i] not in self._gpu_keys]
        if missing:
            first = dict(zip(used, first_rows.tolist(), strict=True))
            self._register_gpus(table, [first[i] for i in missing], len(dictionary))
        lookup = np.full(len(dictionary), -1, dtype=np.int32)
        for i in used:
            lookup[i] = self._gpu_keys[dictionary[i]]
        newest = pc.max(table.column("ts")).cast(pa.int64()).as_py() or 0
        seen = self._last_seen
        for key in lookup[used].tolist():
            if newest > seen.get(key, 0):
                seen[key] = newest
        keys: npt.NDArray[np.int32] = lookup[indices]
        return keys, lookup[used_array], first_rows.astype(np.int64)

    def _register_gpus(self, table: pa.Table, first_rows: list[int], dictionary_size: int) -> None:
        """Give GPUs not seen before their keys (``first_rows``: a row of each)."""
        rows = pa.array(first_rows, pa.int64())
        attrs = table.select(["uuid", "hostname", "gpu_index", "device", "model", "ts"]).take(rows).to_pydict()
        conn = self._db()
        with conn.transaction():
            result = conn.execute(
                """
                INSERT INTO gpus (uuid, hostname, gpu_index, device, model, first_seen, last_seen)
                SELECT t.uuid, t.hostname, t.gpu_index, t.device, t.model, t.ts, t.ts
                  FROM unnest(%s::text[], %s::text[], %s::smallint[], %s::text[], %s::text[], %s::timestamptz[])
                       AS t(uuid, hostname, gpu_index, device, model, ts)
                ON CONFLICT (uuid) DO UPDATE SET hostname = coalesce(EXCLUDED.hostname, gpus.hostname)
                RETURNING uuid, gpu_key
                """,
                (attrs["uuid"], attrs["hostname"], attrs["gpu_index"], attrs["device"], attrs["model"], attrs["ts"]),
            ).fetchall()
        self._gpu_keys.update({u: int(k) for u, k in result})
        log.debug("registered %d new GPU(s) of %d in batch", len(result), dictionary_size)

    def _metric_keys(self, metric: pa.ChunkedArray) -> tuple[npt.NDArray[np.int16], npt.NDArray[np.int16]]:
        """Each row's metric id (-1: refused) and the distinct ids of the batch."""
        encoded = pc.dictionary_encode(metric).combine_chunks()
        dictionary = encoded.dictionary.to_pylist()
        indices = encoded.indices.to_numpy(zero_copy_only=False)
        used = np.unique(indices).tolist()
        unknown = [dictionary[i] for i in used if dictionary[i] not in self._metric_ids]
        if unknown and not set(unknown) <= self.refused_metrics:
            self._register_metrics(sorted(set(unknown) - self.refused_metrics))
        lookup = np.full(len(dictionary), -1, dtype=np.int16)
        for i in used:
            lookup[i] = self._metric_ids.get(dictionary[i], -1)
        ids: npt.NDArray[np.int16] = lookup[indices]
        return ids, np.unique(lookup[used]) if used else np.zeros(0, dtype=np.int16)

    def _register_metrics(self, names: list[str]) -> None:
        """Give new metric names ids; names past ``MAX_METRIC_ID`` are refused (and remembered)."""
        conn = self._db()
        with conn.transaction():
            try:
                with conn.transaction():
                    conn.execute(
                        "INSERT INTO metrics (name) SELECT unnest(%s::text[]) ON CONFLICT (name) DO NOTHING", (names,)
                    )
            except (psycopg.errors.SequenceGeneratorLimitExceeded, psycopg.errors.NumericValueOutOfRange):
                # The identity sequence ran out (a failed INSERT consumes values too): hand out the ids
                # left below the smallint limit explicitly, one name at a time.
                for name in names:
                    try:
                        with conn.transaction():
                            conn.execute(_NEXT_METRIC, {"name": name, "limit": MAX_METRIC_ID})
                    except psycopg.errors.UniqueViolation:
                        continue  # another writer took that id or name meanwhile; the lookup below decides
            for name, mid in conn.execute("SELECT name, metric_id FROM metrics WHERE name = ANY(%s)", (names,)):
                self._metric_ids[name] = int(mid)
        refused = [n for n in names if n not in self._metric_ids]
        if refused:
            self.refused_metrics.update(refused)
            log.error(
                "metrics table is full (%d names): refusing %d new metric name(s), e.g. %s; their rows become rejects",
                MAX_METRIC_ID,
                len(refused),
                refused[0],
            )

    def _touch_last_seen(self) -> None:
        """Advance gpus.last_seen, at most every few seconds (one small UPDATE, not per batch)."""
        now = time.monotonic()
        if now - self._last_seen_at < self._last_seen_every or not self._last_seen:
            return
        self._last_seen_at = now
        keys = list(self._last_seen)
        stamps = pa.array([self._last_seen[k] for k in keys], pa.int64()).cast(pa.timestamp("us", tz="UTC"))
        self._last_seen.clear()
        try:
            conn = self._db()
            with conn.transaction():
                conn.execute(
                    "UPDATE gpus SET last_seen = v.ts FROM unnest(%s::int[], %s::timestamptz[]) AS v(k, ts) "
                    "WHERE gpus.gpu_key = v.k AND gpus.last_seen < v.ts",
                    (keys, stamps.to_pylist()),
                )
        except psycopg.OperationalError as exc:
            log.warning("last_seen update skipped: %s", exc)
            self._lost(exc)


def _merged(conninfo: str, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` for ``connect``, keeping any ``options`` the URL already carries."""
    given = psycopg.conninfo.conninfo_to_dict(conninfo).get("options")
    if given:
        options = {**options, "options": f"{given} {options['options']}"}
    return options


def _copy_rejects(conn: psycopg.Connection[Any], rejects: Sequence[pa.RecordBatch]) -> None:
    """COPY reject rows (an older version's rejects lack the GPU columns: NULL there)."""
    with conn.cursor().copy("COPY rejects (ts, source, line, raw, reason, uuid, metric, blank) FROM STDIN") as copy:
        for rb in rejects:
            for row in rb.to_pylist():
                gpu = (row.get("uuid"), row.get("metric"), row.get("blank"))
                copy.write_row((row["ts"], row["source"], row["line"], row["raw"], row["reason"], *gpu))


def record_rejects(conninfo: str, rejects: pa.RecordBatch, timeout_s: float = 5.0) -> int:
    """Store rejects found outside the queue (e.g. a file whose header is not dcgm-exporter's)."""
    with connect(conninfo, timeout_s) as conn, conn.transaction():
        _copy_rejects(conn, [rejects])
    return int(rejects.num_rows)
