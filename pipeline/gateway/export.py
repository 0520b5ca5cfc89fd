"""Bulk export of telemetry as CSV or an Arrow IPC stream, written chunk by chunk as rows arrive.

The rows come in keyset chunks (``Reader.stream_telemetry``), each its own short query, so an export
holds no database connection while it waits on its client. The export itself is bounded three ways:
at most ``export_concurrency`` run at once per replica (more get 503 with ``Retry-After``), a client
that does not accept a chunk within ``export_write_timeout_s`` is cut off, and so is an export still
running after ``export_deadline_s``. A failure after the first byte cannot become a problem response
any more: it is logged and the response is aborted, so the client sees a broken transfer rather than
a short file that looks complete.
"""

from __future__ import annotations

import asyncio
import csv
import io
import logging
import threading
from collections.abc import Iterator
from datetime import datetime
from typing import Literal

import pyarrow as pa
import pyarrow.ipc
from fastapi.responses import StreamingResponse
from starlette.exceptions import HTTPException
from starlette.types import Message, Receive, Scope, Send

from pipeline.config import GatewaySettings
from pipeline.gateway.params import MEDIA_ARROW, MEDIA_CSV

__all__ = ["ARROW_SCHEMA", "CSV_HEADER", "ExportSlots", "export_response"]

log = logging.getLogger(__name__)

Chunks = Iterator[list[tuple[datetime, str, float]]]
CSV_HEADER = ("ts", "metric", "value")
ARROW_SCHEMA = pa.schema(
    [
        pa.field("ts", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("metric", pa.string(), nullable=False),
        pa.field("value", pa.float64(), nullable=False),
    ]
)


class ExportSlots:
    """At most ``n`` exports at once: ``acquire`` answers 503 (retry in a second) when all are taken."""

    def __init__(self, n: int) -> None:
        self._slots = threading.BoundedSemaphore(n)
        self._n = n

    def acquire(self) -> None:
        """Take a slot or raise a 503."""
        if not self._slots.acquire(blocking=False):
            raise HTTPException(
                503, f"{self._n} exports are already running: retry shortly", headers={"Retry-After": "1"}
            )

    def release(self) -> None:
        """Give a slot back."""
        self._slots.release()


def _iso(ts: datetime) -> str:
    return ts.isoformat().replace("+00:00", "Z")


def _csv(chunks: Chunks) -> Iterator[bytes]:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_HEADER)
    yield buf.getvalue().encode()
    for rows in chunks:
        buf.seek(0)
        buf.truncate()
        writer.writerows((_iso(ts), metric, value) for ts, metric, value in rows)
        yield buf.getvalue().encode()


def _arrow(chunks: Chunks) -> Iterator[bytes]:
    sink = io.BytesIO()
    with pyarrow.ipc.new_stream(sink, ARROW_SCHEMA) as writer:
        yield _drain(sink)
        for rows in chunks:
            ts, metric, value = zip(*rows, strict=True)
            writer.write_batch(
                pa.RecordBatch.from_arrays(
                    [pa.array(ts, ARROW_SCHEMA.field("ts").type), pa.array(metric, pa.string()), pa.array(value)],
                    schema=ARROW_SCHEMA,
                )
            )
            yield _drain(sink)
    yield _drain(sink)  # the end-of-stream marker


def _drain(sink: io.BytesIO) -> bytes:
    data = sink.getvalue()
    sink.seek(0)
    sink.truncate()
    return data


def _guarded(body: Iterator[bytes], what: str) -> Iterator[bytes]:
    try:
        yield from body
    except Exception:
        log.exception("export of %s failed mid-stream; aborting the response", what)
        raise


class ExportCutOff(Exception):
    """A client too slow for the export's write timeout or deadline (aborts the response)."""


class _BoundedStream(StreamingResponse):
    """A streaming response that holds an export slot and cuts off clients that stall or take too long."""

    def __init__(
        self, body: Iterator[bytes], slots: ExportSlots, write_timeout_s: float, deadline_s: float, **kw: object
    ) -> None:
        super().__init__(body, **kw)  # type: ignore[arg-type]
        self._slots = slots
        self._write_timeout = write_timeout_s
        self._deadline_s = deadline_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._deadline_s

        async def bounded(message: Message) -> None:
            left = deadline - loop.time()
            if left <= 0:
                raise ExportCutOff(f"export ran past its {self._deadline_s:.0f}s deadline")
            try:
                await asyncio.wait_for(send(message), min(self._write_timeout, left))
            except TimeoutError:
                raise ExportCutOff("the client did not accept a chunk in time") from None

        try:
            await super().__call__(scope, receive, bounded)
        except ExportCutOff as exc:
            log.warning("export cut off: %s", exc)
            raise
        finally:
            self._slots.release()


def export_response(
    chunks: Chunks, media: Literal["csv", "arrow"], name: str, slots: ExportSlots, settings: GatewaySettings
) -> StreamingResponse:
    """A streaming response of ``chunks`` as CSV (header ts,metric,value) or an Arrow IPC stream.

    Takes one of ``slots`` (503 when none is free) and gives it back when the response ends.
    """
    if media == "csv":
        body, media_type, suffix = _csv(chunks), f"{MEDIA_CSV}; charset=utf-8", "csv"
    else:
        body, media_type, suffix = _arrow(chunks), MEDIA_ARROW, "arrows"
    slots.acquire()
    return _BoundedStream(
        _guarded(body, name),
        slots,
        settings.export_write_timeout_s,
        settings.export_deadline_s,
        media_type=media_type,
        headers={"Content-Disposition": f'attachment; filename="{name}.{suffix}"'},
    )
