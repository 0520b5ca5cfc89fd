"""``/pipeline``: the pipeline itself — rows/s in and stored, lag per partition, rejects, actors, scaling.

The queue and the supervisor are read through a ``PipelineView`` (on Ray Serve: the brokers' and
the controller's named actors, cached for a couple of seconds; absent when the gateway runs outside
the pipeline's cluster); what was stored comes from the database (``consumer_offsets``, the recent
``rejects``). Rates are differences between this replica's own snapshots, one per view of the page
(the page refreshes itself), so the first view of a replica shows the brokers' means since start.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from pipeline.gateway.pages.charts import Bar, Series, bars, line_chart
from pipeline.gateway.pages.html import Markup, Node, el, join, number, time_tag
from pipeline.queue.api import BrokerStats, lag_of
from pipeline.storage import pages as views
from pipeline.storage.reader import Reader

__all__ = ["PipelineView", "Rates", "render"]

REJECT_WINDOW = timedelta(hours=1)
REJECTS_READ = 100_000


class PipelineView(Protocol):
    """What a gateway sees of the running pipeline (``serve.py`` reads it from the named actors)."""

    namespace: str
    group: str

    def brokers(self) -> list[BrokerStats]:
        """Every broker's stats (empty when none is found)."""
        ...

    def supervisor(self) -> dict[str, Any] | None:
        """The controller's ``status()``, or None when no controller runs in the namespace."""
        ...


@dataclass(frozen=True, slots=True)
class _Snapshot:
    at: float
    wall: datetime
    appended: int | None
    stored: int


class Rates:
    """Rows/s appended to the queue and stored, from the snapshots this replica took (the last 15 minutes)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, keep_s: float = 900.0) -> None:
        self._clock = clock
        self._keep = keep_s
        self._snaps: deque[_Snapshot] = deque()

    def add(self, wall: datetime, appended: int | None, stored: int) -> None:
        """Record the counters now; a counter that went down (a restart) starts a new run."""
        now = self._clock()
        last = self._snaps[-1] if self._snaps else None
        if last is not None and (stored < last.stored or (appended or 0) < (last.appended or 0)):
            self._snaps.clear()
        if last is not None and now - last.at < 1.0 and self._snaps:
            self._snaps.pop()  # two views within a second: keep the newer, rates need a real interval
        self._snaps.append(_Snapshot(now, wall, appended, stored))
        while self._snaps and now - self._snaps[0].at > self._keep:
            self._snaps.popleft()

    def current(self) -> tuple[float | None, float | None]:
        """(rows/s in, rows/s stored) between the last two snapshots; None without two."""
        if len(self._snaps) < 2:
            return None, None
        a, b = self._snaps[-2], self._snaps[-1]
        dt = b.at - a.at
        rate_in = None if a.appended is None or b.appended is None else (b.appended - a.appended) / dt
        return rate_in, (b.stored - a.stored) / dt

    def series(self) -> tuple[list[tuple[datetime, float | None]], list[tuple[datetime, float | None]]]:
        """Rows/s in and stored at each snapshot after the first (for the chart)."""
        ins: list[tuple[datetime, float | None]] = []
        stored: list[tuple[datetime, float | None]] = []
        snaps = list(self._snaps)
        for a, b in itertools.pairwise(snaps):
            dt = b.at - a.at
            ins.append((b.wall, None if a.appended is None or b.appended is None else (b.appended - a.appended) / dt))
            stored.append((b.wall, (b.stored - a.stored) / dt))
        return ins, stored


def _table(head: list[str], rows: list[list[Node]], numeric: set[int]) -> Markup:
    th = [el("th", {"scope": "col", "class": "n" if i in numeric else None}, h) for i, h in enumerate(head)]
    body = [
        el("tr", None, [el("td", {"class": "n" if i in numeric else None}, c) for i, c in enumerate(r)]) for r in rows
    ]
    return el("table", None, el("thead", None, el("tr", None, th)), el("tbody", None, body))


def _stat(name: str, value: str) -> Markup:
    return el("div", None, el("dt", None, name), el("dd", None, value))


def render(reader: Reader, view: PipelineView | None, group: str, rates: Rates) -> Markup:
    """The page body (see the module docstring)."""
    now = datetime.now(UTC)
    brokers = view.brokers() if view is not None else []
    supervisor = view.supervisor() if view is not None else None
    stored = views.committed(reader, group)
    rejects = views.rejects_by_reason(reader, now - REJECT_WINDOW, REJECTS_READ)
    partitions: list[dict[str, Any]] = []
    appended_total = 0
    uptime_rate = 0.0
    for b in brokers:
        for p, s in b.get("partitions", {}).items():
            lag_rows, lag_batches = lag_of(s, group)
            partitions.append(
                {"partition": int(p), "broker": b.get("broker"), "lag_rows": lag_rows, "lag_batches": lag_batches, **s}
            )
            appended_total += s["rows_appended"]
            uptime_rate += s["rows_appended"] / max(float(b.get("uptime_s", 0.0)), 1.0)
    partitions.sort(key=lambda r: r["partition"])
    rows_stored = sum(c.rows for c in stored)
    rates.add(now, appended_total if brokers else None, rows_stored)
    rate_in, rate_stored = rates.current()
    in_text = (
        number(rate_in, 0)
        if rate_in is not None
        else (f"{number(uptime_rate, 0)} (mean since start)" if brokers else "—")
    )
    counts = el(
        "dl",
        {"class": "counts"},
        _stat("rows/s in", in_text),
        _stat("rows/s stored", number(rate_stored, 0) if rate_stored is not None else "—"),
        _stat("rows stored", number(rows_stored, 0)),
        _stat("rows rejected", number(sum(c.rejects for c in stored), 0)),
        _stat("queue lag (rows)", number(sum(p["lag_rows"] for p in partitions), 0) if brokers else "—"),
        _stat("partitions", str(len(partitions) or len(stored))),
        _stat("brokers", str(len(brokers)) if view is not None else "—"),
    )
    body: list[Node] = [el("h1", None, "Pipeline"), counts]
    if view is None:
        body.append(
            el(
                "p",
                {"class": "note"},
                "This gateway does not see the pipeline's actors (it runs outside "
                "their Ray cluster): the queue, actors and scaling are not shown; what was stored is.",
            )
        )
    else:
        body.append(el("p", {"class": "note"}, f"Ray namespace {view.namespace}, consumer group {group}."))
    series_in, series_stored = rates.series()
    if len(series_stored) >= 2:
        start, end = series_stored[0][0], series_stored[-1][0]
        body += [
            el("h2", None, "Rows per second"),
            line_chart(
                [Series("in", series_in, 4), Series("stored", series_stored, 5)],
                start,
                end,
                "rows/s",
                "Rows per second appended to the queue (blue) and stored (vermillion)",
            ),
        ]
    body += _lag(partitions, stored, brokers)
    body += _rejects(rejects)
    body += _actors(supervisor, view)
    body += _scaling(supervisor)
    return join(body)


def _lag(partitions: list[dict[str, Any]], stored: list[views.Committed], brokers: list[BrokerStats]) -> list[Node]:
    out: list[Node] = [el("h2", {"id": "lag"}, "Lag per partition")]
    by_partition = {c.partition: c for c in stored}
    if brokers:
        if any(p["lag_rows"] for p in partitions):
            chart = [Bar(f"partition {p['partition']}", [float(p["lag_rows"])]) for p in partitions]
            out.append(bars(chart, ["lag"], "rows", "Rows not yet stored, per partition"))
        else:
            out.append(el("p", {"class": "note"}, "Every partition is stored up to its end."))
        rows: list[list[Node]] = []
        for p in partitions:
            c = by_partition.get(p["partition"])
            rows.append(
                [
                    str(p["partition"]),
                    str(p["broker"]),
                    number(p["end_offset"], 0),
                    number(c.next_offset if c else None, 0),
                    number(p["lag_rows"], 0),
                    number(p["lag_batches"], 0),
                    number(p["bytes_held"], 0),
                    number(p["blocked_s"], 1),
                    number(c.rows if c else None, 0),
                ]
            )
        out.append(
            _table(
                [
                    "partition",
                    "broker",
                    "end offset",
                    "stored offset",
                    "lag rows",
                    "lag batches",
                    "bytes held",
                    "producers blocked s",
                    "rows stored",
                ],
                rows,
                {2, 3, 4, 5, 6, 7, 8},
            )
        )
    elif stored:
        rows = [
            [
                str(c.partition),
                number(c.next_offset, 0),
                number(c.rows, 0),
                number(c.rejects, 0),
                time_tag(c.updated_at),
            ]
            for c in stored
        ]
        out.append(_table(["partition", "stored offset", "rows stored", "rejects", "last commit"], rows, {1, 2, 3}))
    else:
        out.append(el("p", {"class": "note"}, "Nothing stored yet."))
    return out


def _rejects(rejects: list[views.RejectReason]) -> list[Node]:
    out: list[Node] = [el("h2", {"id": "rejects"}, "Rejects by reason, last hour")]
    if not rejects:
        out.append(el("p", {"class": "note"}, "No rejects in the last hour."))
        return out
    out.append(
        bars(
            [Bar(r.reason, [float(r.count)]) for r in rejects[:10]],
            ["rejects"],
            None,
            "Rejects per reason in the last hour",
        )
    )
    rows: list[list[Node]] = [
        [r.reason, number(r.count, 0), time_tag(r.newest), el("code", None, r.example[:200])] for r in rejects
    ]
    out.append(_table(["reason", "count", "newest", "example"], rows, {1}))
    out.append(
        el(
            "p",
            {"class": "note"},
            f"Counted over the newest {REJECTS_READ:,} rejects at most; quoted values "
            "are elided to group the same fault.",
        )
    )
    return out


def _actors(supervisor: dict[str, Any] | None, view: PipelineView | None) -> list[Node]:
    if view is None:
        return []
    out: list[Node] = [el("h2", {"id": "actors"}, "Actors")]
    if supervisor is None:
        out.append(el("p", {"class": "bad"}, f"No supervisor (controller) found in namespace {view.namespace}."))
        return out
    rows: list[list[Node]] = []
    for name, a in supervisor.get("actors", {}).items():
        state = str(a.get("state"))
        rows.append(
            [
                name,
                str(a.get("role")),
                el("span", {"class": None if state == "running" else "bad"}, state),
                str(a.get("pid") or "—"),
                str(a.get("restarts", 0)),
                str(a.get("recreated", 0)),
                a.get("reason") or "",
            ]
        )
    out.append(_table(["actor", "role", "state", "pid", "restarts", "re-created", "last reason"], rows, {4, 5}))
    return out


def _scaling(supervisor: dict[str, Any] | None) -> list[Node]:
    if supervisor is None:
        return []
    out: list[Node] = [el("h2", {"id": "scaling"}, "Scaling")]
    roles: list[list[Node]] = []
    for role, r in supervisor.get("roles", {}).items():
        mode = f"pinned at {r['pinned']}" if r.get("pinned") is not None else ("auto" if r.get("auto") else "fixed")
        roles.append([role, str(r.get("actual")), str(r.get("desired")), f"{r.get('min')}..{r.get('max')}", mode])
    out.append(_table(["role", "running", "target", "bounds", "mode"], roles, {1, 2}))
    decisions = list(reversed(supervisor.get("decisions", [])))
    if not decisions:
        out.append(el("p", {"class": "note"}, "No scaling decisions yet."))
        return out
    rows: list[list[Node]] = []
    for d in decisions:
        wall = d.get("wall_time")
        at = time_tag(datetime.fromtimestamp(wall, UTC)) if isinstance(wall, int | float) else "—"
        rows.append(
            [
                at,
                str(d.get("role")),
                f"{d.get('current')} → {d.get('desired')}",
                str(d.get("direction")),
                str(d.get("reason")),
            ]
        )
    out.append(_table(["when", "role", "count", "direction", "reason"], rows, set()))
    return out
