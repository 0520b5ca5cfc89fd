"""What the gateway's HTML pages read beyond the API's own queries, each bounded like them.

Functions over a ``Reader`` (its pool, its error translation): the queue's committed offsets per
partition (one row each), and the rejects of a recent window grouped by their reason with the
values taken out (at most ``at_most`` newest rejects are read, through ``rejects_ts_idx``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from pipeline.storage.reader import Reader

__all__ = ["Committed", "RejectReason", "committed", "rejects_by_reason"]


@dataclass(frozen=True, slots=True)
class Committed:
    """Where a consumer group stands in one partition, and what it stored there."""

    partition: int
    next_offset: int
    generation: int
    rows: int
    rejects: int
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class RejectReason:
    """Rejects of one kind: the reason with its quoted values elided, how many, the newest, one example."""

    reason: str
    count: int
    newest: datetime
    example: str


def committed(reader: Reader, group: str) -> list[Committed]:
    """The group's row of ``consumer_offsets`` per partition, by partition."""
    rows = reader._fetch(
        "SELECT partition, next_offset, generation, rows_committed, rejects_committed, updated_at "
        "FROM consumer_offsets WHERE group_id = %s ORDER BY partition",
        (group,),
    )
    return [Committed(*r) for r in rows]


def rejects_by_reason(reader: Reader, since: datetime, at_most: int = 100_000, limit: int = 20) -> list[RejectReason]:
    """The newest ``at_most`` rejects since ``since``, grouped by reason (values in backquotes elided).

    Reasons name the offending value (``value `abc` for DCGM_FI_DEV_GPU_TEMP is not a number``);
    grouping on the text with the quoted parts replaced counts kinds of fault, not distinct values.
    """
    rows = reader._fetch(
        "SELECT regexp_replace(r.reason, '`[^`]*`', '`…`', 'g') AS kind, count(*)::bigint, max(r.ts), "
        "(array_agg(r.reason ORDER BY r.ts DESC))[1] "
        "FROM (SELECT ts, reason FROM rejects WHERE ts >= %(since)s ORDER BY ts DESC LIMIT %(at_most)s) r "
        "GROUP BY kind ORDER BY count(*) DESC, kind LIMIT %(limit)s",
        {"since": since, "at_most": at_most, "limit": limit},
    )
    return [RejectReason(kind, int(n), newest, example) for kind, n, newest, example in rows]
