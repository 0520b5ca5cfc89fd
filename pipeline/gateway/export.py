"""Bulk export of telemetry as CSV or an Arrow IPC stream, written chunk by chunk as rows arrive.

The rows come from a server-side cursor (``Reader.stream_telemetry``); neither this module nor the
database holds more than one chunk at a time. A failure after the first byte cannot become a problem
response any more: it is logged and the response is aborted, so the client sees a broken transfer
rather than a short file that looks complete.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Iterator
from datetime import datetime
from typing import Literal

import pyarrow as pa
import pyarrow.ipc
from fastapi.responses import StreamingResponse

from pipeline.gateway.params import MEDIA_ARROW, MEDIA_CSV

__all__ = ["ARROW_SCHEMA", "CSV_HEADER", "export_response"]

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


def export_response(chunks: Chunks, media: Literal["csv", "arrow"], name: str) -> StreamingResponse:
    """A streaming response of ``chunks`` as CSV (header ts,metric,value) or an Arrow IPC stream."""
    if media == "csv":
        body, media_type, suffix = _csv(chunks), f"{MEDIA_CSV}; charset=utf-8", "csv"
    else:
        body, media_type, suffix = _arrow(chunks), MEDIA_ARROW, "arrows"
    return StreamingResponse(
        _guarded(body, name),
        media_type=media_type,
        headers={"Content-Disposition": f'attachment; filename="{name}.{suffix}"'},
    )
