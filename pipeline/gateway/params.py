"""Request parameters: their OpenAPI declarations, opaque cursors, time windows, buckets, media types.

FastAPI resolves parameter annotations at import time, so the ``Annotated`` aliases live here at
module level (``from __future__ import annotations`` would otherwise hide them).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal

from fastapi import Path, Query

from pipeline.errors import InvalidParameter
from pipeline.gateway.http import weighted
from pipeline.storage.reader import AGGREGATE_ORIGIN

__all__ = [
    "API",
    "DEFAULT_WINDOW",
    "MEDIA_ARROW",
    "MEDIA_CSV",
    "MEDIA_JSON",
    "exact_times",
    "floor_to",
    "from_us",
    "negotiate",
    "parse_bucket",
    "reject_nul",
    "shown",
    "ts_us",
    "utc",
    "window",
]

API = "/api/v1"  # the prefix of every resource route
DEFAULT_WINDOW = timedelta(hours=1)
MEDIA_JSON = "application/json"
MEDIA_CSV = "text/csv"
MEDIA_ARROW = "application/vnd.apache.arrow.stream"
Media = Literal["json", "csv", "arrow"]
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
BUCKET_PATTERN = r"^[1-9][0-9]{0,5}[smhd]$"

# --- declarations --------------------------------------------------------------------------------------

UuidParam = Annotated[
    str,
    Path(
        description="The GPU's UUID as listed; a MIG instance's is `<GPU UUID>/mig-<id>`, sent as is or with its "
        "slash as `%2F` (not double-encoded).",
        examples=["GPU-5fd4f087-86f3-7a43-b711-4771313afc50"],
    ),
]
_LIMIT = (
    "Page size: default 1000, at most 10000 (the gateway's default_limit / max_limit); a larger value is refused "
    "with 400, never clamped."
)
LimitParam = Annotated[int | None, Query(ge=1, description=_LIMIT, examples=[1000])]
TelemetryLimitParam = Annotated[
    int | None,
    Query(
        ge=1,
        description=_LIMIT + " JSON pages only: CSV and Arrow exports ignore it (they are capped at 1000000 samples).",
        examples=[1000],
    ),
]
CursorParam = Annotated[
    str | None,
    Query(description="`next_cursor` of the previous page (opaque).", examples=["WyJncHVzIiwiaDEiLDAsIkdQVS1hIl0"]),
]
HostnameParam = Annotated[str | None, Query(description="Only GPUs of this host.", examples=["mtv5-dgx1-hgpu-031"])]
ModelParam = Annotated[str | None, Query(description="Only GPUs of this model.", examples=["NVIDIA H100 80GB HBM3"])]
HasMetricParam = Annotated[
    str | None,
    Query(
        description="Only GPUs that report this metric (a sample within 15 minutes of their newest one).",
        examples=["DCGM_FI_DEV_GPU_TEMP"],
    ),
]
NamespaceParam = Annotated[
    str | None, Query(description="Only GPUs a workload of this namespace holds now.", examples=["ml-train"])
]
PodParam = Annotated[str | None, Query(description="Only GPUs this pod holds now.", examples=["train-llm-0"])]
ParentParam = Annotated[
    str | None,
    Query(description="Only the MIG devices of this GPU.", examples=["GPU-5fd4f087-86f3-7a43-b711-4771313afc50"]),
]
MetricParam = Annotated[
    str, Query(description="The metric (a name of the catalogue).", examples=["DCGM_FI_DEV_GPU_TEMP"])
]
SortParam = Annotated[
    Literal["asc", "desc"],
    Query(
        description="Order by value: `desc` puts the highest first (the hottest), `asc` the lowest.", examples=["desc"]
    ),
]
GroupByParam = Annotated[
    Literal["namespace", "pod", "job", "hostname", "model"],
    Query(description="What to group usage by (`job`: the HPC job label).", examples=["namespace"]),
]
ResolutionParam = Annotated[
    Literal["day", "hour", "minute"],
    Query(
        description="The unit the window is rounded out to: whole days, hours (default) or minutes that hold an "
        "instant of it count. Finer costs more (more rollup rows to read at the edges).",
        examples=["hour"],
    ),
]
IntervalsParam = Annotated[
    int | None,
    Query(
        ge=1,
        le=10_000,
        description="A GPU is missing after this many scrape intervals without a sample (default: the gateway's "
        "missing_intervals, 3).",
        examples=[3],
    ),
]
HostnamePath = Annotated[str, Path(description="The host's name, as /hosts lists it.", examples=["mtv5-dgx1-hgpu-031"])]
StartParam = Annotated[
    datetime | None,
    Query(
        description="Inclusive start (RFC 3339; no offset means UTC); default end_time minus one hour. A window "
        "spans at most 31 days (366 for aggregates, whole buckets included); a longer one is refused with 400.",
        examples=["2025-07-18T19:42:34Z"],
    ),
]
EndParam = Annotated[
    datetime | None,
    Query(description="Inclusive end (RFC 3339; no offset means UTC); default now.", examples=["2025-07-18T20:42:34Z"]),
]
MetricsParam = Annotated[
    list[str] | None,
    Query(description="Only these metrics (repeatable); default all.", examples=[["DCGM_FI_DEV_GPU_UTIL"]]),
]
OrderParam = Annotated[Literal["asc", "desc"], Query(description="Time order of (ts, metric).", examples=["asc"])]
BucketParam = Annotated[
    str,
    Query(
        pattern=BUCKET_PATTERN,
        description="Bucket width: a positive integer and a unit, s, m, h or d (e.g. 10s, 1m, 1h). Buckets are "
        "aligned to multiples of the width since 2000-01-03T00:00:00Z; at most 10000 buckets per request.",
        examples=["1m"],
    ),
]
FnParam = Annotated[
    Literal["avg", "min", "max", "count", "last", "p95"],
    Query(description="Aggregate of each bucket: avg, min, max, count, last (newest value) or p95.", examples=["avg"]),
]

# --- times -------------------------------------------------------------------------------------------


def ts_us(dt: datetime) -> int:
    """Microseconds since the Unix epoch."""
    return (dt - _EPOCH) // timedelta(microseconds=1)


def from_us(us: int, param: str = "cursor") -> datetime:
    """The instant ``us`` microseconds after the Unix epoch; 400 naming ``param`` when out of range."""
    try:
        return _EPOCH + timedelta(microseconds=us)
    except OverflowError:
        raise InvalidParameter(f"{param} holds an out-of-range time", param=param) from None


# --- values --------------------------------------------------------------------------------------------


def utc(dt: datetime) -> datetime:
    """``dt`` in UTC; a time without an offset is taken as UTC."""
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def window(
    start_time: datetime | None, end_time: datetime | None, now: datetime | None = None
) -> tuple[datetime, datetime]:
    """The inclusive window a request names: defaults filled in, ``start <= end`` enforced."""
    try:
        end = utc(end_time) if end_time is not None else (now or datetime.now(UTC))
    except OverflowError:
        raise InvalidParameter(f"end_time {end_time} is out of range", param="end_time") from None
    try:
        start = utc(start_time) if start_time is not None else end - DEFAULT_WINDOW
    except OverflowError:
        raise InvalidParameter(
            f"start_time {start_time} is out of range" if start_time is not None else f"end_time {end} is too early",
            param="start_time" if start_time is not None else "end_time",
        ) from None
    if start > end:
        raise InvalidParameter(
            f"start_time {start.isoformat()} is after end_time {end.isoformat()}", param="start_time"
        )
    return start, end


_RFC3339_DATE = re.compile(r"\s*\d{4}-\d{2}-\d{2}")
_FRACTION = re.compile(r"[T t]\d{2}:\d{2}:\d{2}[.,](\d+)")


def exact_times(
    raw_start: str | None, raw_end: str | None, start_time: datetime | None, end_time: datetime | None
) -> tuple[datetime | None, datetime | None]:
    """The window's bounds as sent: numbers refused, a start finer than a microsecond rounded up.

    Times are RFC 3339 only (a number could be seconds or milliseconds: the API does not guess).
    Samples have microsecond precision and parsing truncates: ``10.0000001`` would become ``10.000000``
    and let in a sample before the requested start, so a start with non-zero digits past the sixth
    moves up one microsecond (an end is right truncated: the bound stays inclusive).
    """
    for name, raw in (("start_time", raw_start), ("end_time", raw_end)):
        if raw is not None and not _RFC3339_DATE.match(raw):
            raise InvalidParameter(
                f"{name} `{raw[:40]}` is not an RFC 3339 time (like 2025-07-18T20:42:34Z); numbers are not accepted",
                param=name,
            )
    if start_time is not None and raw_start is not None:
        fraction = _FRACTION.search(raw_start)
        if fraction and fraction.group(1)[6:].strip("0"):
            start_time += timedelta(microseconds=1)
    return start_time, end_time


def parse_bucket(text: str) -> timedelta:
    """``10s``, ``1m``, ``1h``, ``7d`` as a timedelta."""
    if not re.fullmatch(BUCKET_PATTERN, text):
        raise InvalidParameter(f"bucket `{text[:32]}` is not a width like 10s, 1m, 1h or 1d", param="bucket")
    return timedelta(seconds=int(text[:-1]) * _UNITS[text[-1]])


def floor_to(dt: datetime, bucket: timedelta) -> datetime:
    """The start of the bucket holding ``dt`` (buckets are aligned to the aggregate origin)."""
    return AGGREGATE_ORIGIN + ((dt - AGGREGATE_ORIGIN) // bucket) * bucket


def shown(value: str, at_most: int = 128) -> str:
    """``value`` as a message may quote it: cut to ``at_most`` characters."""
    return value if len(value) <= at_most else value[:at_most] + "..."


def reject_nul(**values: str | list[str] | None) -> None:
    """400 naming the first parameter that holds a NUL character (PostgreSQL text cannot)."""
    for name, value in values.items():
        items = value if isinstance(value, list) else [value]
        if any(v is not None and "\x00" in v for v in items):
            raise InvalidParameter(f"{name} must not contain a NUL character", param=name)


def negotiate(accept: str | None) -> Media | None:
    """The representation an ``Accept`` header asks for (JSON by default); None when none is offered."""
    if not accept:
        return "json"
    ranges: list[tuple[float, int, str]] = []
    for i, part in enumerate(accept.split(",")):
        media, q = weighted(part)
        if q > 0:
            ranges.append((-q, i, media))
    offered: dict[str, Media] = {
        MEDIA_JSON: "json",
        "application/*": "json",
        "*/*": "json",
        MEDIA_CSV: "csv",
        "text/*": "csv",
        MEDIA_ARROW: "arrow",
    }
    for _, _, media in sorted(ranges):
        if media in offered:
            return offered[media]
    return None
