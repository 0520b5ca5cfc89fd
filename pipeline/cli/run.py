"""``run`` and ``serve``: the one-command local experience (start, follow progress, drain, summarise)."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import time
from typing import Any, TextIO

from pipeline.config import Settings
from pipeline.errors import PipelineError, SourceError

__all__ = ["open_database", "report", "run", "serve"]

log = logging.getLogger("pipeline")


def open_database(settings: Settings, out: TextIO = sys.stderr) -> Any:
    """Find or start the database, migrate it, and say where it is."""
    from pipeline.storage.setup import prepare

    prepared = prepare(settings.database, settings.storage)
    applied = f" ({len(prepared.applied)} migration(s) applied)" if prepared.applied else ""
    print(f"database: {prepared.database.describe()}{applied}", file=out)
    return prepared.database


class _Stop:
    """Turns SIGINT/SIGTERM into a flag so the run loop can drain cleanly."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _Stop:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, _frame: Any) -> None:
        if self.requested:  # a second Ctrl-C: stop waiting
            raise KeyboardInterrupt
        self.requested = True
        print("\nstopping: draining the queue (Ctrl-C again to abort)...", file=sys.stderr)

    def __exit__(self, *_: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def run(settings: Settings, args: argparse.Namespace) -> int:
    """Deploy the pipeline, follow its progress, and on Ctrl-C or at its bound drain, stop and summarise."""
    local = not settings.ray.address
    if local and not args.no_serve:
        _announce_pages(settings, token_follows=settings.gateway.auth == "on" and settings.gateway.api_tokens is None)
    if local:
        _check_source(settings)  # locally the driver sees the same files as the streamers: fail fast
    db = open_database(settings)

    from pipeline.runtime import local_gateway
    from pipeline.runtime.cluster import connect_ray, disconnect
    from pipeline.runtime.driver import Pipeline

    info = connect_ray(settings, quiet=not args.verbose)
    pipeline = Pipeline(settings, db)
    serving = local and not args.no_serve  # on a cluster the gateway is its own Serve application
    started = time.monotonic()
    display = _Display(sys.stderr.isatty())
    try:
        with _Stop() as stop:
            pipeline.deploy(fresh=True)
            _announce(settings, info)
            if serving:
                _serve_locally(settings, db.conninfo)
            _follow(
                pipeline,
                stop,
                display,
                started,
                bounded=settings.streamer.passes is not None or settings.streamer.duration_s is not None,
            )
            summary = pipeline.finish(on_tick=lambda p: display.show(p, time.monotonic() - started))
            display.end()
    finally:
        disconnect(before=local_gateway.remove if serving else None)
    report(summary.as_dict(), db.describe(), args.json, elapsed=time.monotonic() - started)
    return 0


def _announce_pages(settings: Settings, token_follows: bool) -> None:
    """The first line a person reads: where to look (the gateway's pages), before anything starts."""
    g = settings.gateway
    signin = "; sign in with the api token printed below" if token_follows else ""
    print(
        f"pages: http://{g.host}:{g.port}/ (fleet, GPUs, usage, pipeline, once the gateway is up{signin})",
        file=sys.stderr,
    )


def _serve_locally(settings: Settings, conninfo: str) -> None:
    """Deploy the gateway on the local cluster, with a token made for this run when none is configured."""
    from pipeline.gateway.auth import local_token
    from pipeline.runtime import local_gateway

    made = local_token(settings)
    if made is not None:
        settings = made.settings
    local_gateway.deploy(settings, conninfo)
    print(f"api: http://{settings.gateway.host}:{settings.gateway.port}/api/v1/gpus (docs at /docs)", file=sys.stderr)
    if made is not None:
        print(made.hint(), file=sys.stderr)


def _check_source(settings: Settings) -> None:
    """Open the source once: a missing file or an unknown header fails here, before anything starts."""
    from pipeline.sources import source_for

    source = source_for(settings.streamer)
    try:
        source.open()
    except SourceError as exc:
        if exc.line is not None:
            # A file that is not dcgm-exporter CSV is bad input too: keep it as a reject, then stop.
            _record_reject(settings, exc)
        raise
    source.close()


def _announce(settings: Settings, info: dict[str, Any]) -> None:
    from pipeline.sources import source_for

    s = settings.streamer
    print(
        f"source: {source_for(s).name}; {s.count} streamer(s), "
        f"{settings.collector.count} collector(s), {settings.queue.partitions} partitions, "
        f"Ray namespace {settings.ray.namespace}",
        file=sys.stderr,
    )
    if info.get("dashboard_url"):
        print(f"ray dashboard: http://{info['dashboard_url']} (token in ~/.ray/auth_token)", file=sys.stderr)
    if info.get("address"):
        print(f"ray: {info['address']} (RAY_ADDRESS={info['address']} python -m pipeline status)", file=sys.stderr)


def _follow(pipeline: Any, stop: _Stop, display: _Display, started: float, bounded: bool) -> None:
    """Show progress until Ctrl-C, or until the streamers are done when the run is bounded."""
    while not stop.requested:
        p = pipeline.progress()
        display.show(p, time.monotonic() - started)
        for err in p.errors:
            print(f"\nerror: {err}", file=sys.stderr)
        if p.errors and bounded:
            raise PipelineError("; ".join(p.errors))
        if bounded and p.streamers_done:
            return
        time.sleep(1.0 if display.tty else 0.5)


def report(summary: dict[str, Any], database: str, as_json: bool, elapsed: float | None = None) -> None:
    """The closing line of ``run`` and ``stop`` (and, with ``--json``, the summary as the last line)."""
    if elapsed is not None:
        summary = {**summary, "seconds": round(elapsed, 2)}
        summary["rows_per_s"] = round(summary["stored"] / elapsed, 1) if elapsed > 0 else 0.0
    summary = {**summary, "database": database}
    print(
        f"done: produced {summary['produced']}, stored {summary['stored']}, rejected {summary['rejected']} "
        f"in {summary['seconds']:.1f}s ({summary['rows_per_s']:.0f} rows/s)",
        file=sys.stderr,
    )
    if as_json:
        print(json.dumps(summary))


def _record_reject(settings: Settings, exc: SourceError) -> None:
    from pipeline.records import make_rejects
    from pipeline.storage.writer import record_rejects

    db = open_database(settings)
    batch = make_rejects(
        time.time_ns() // 1000,
        exc.path,
        [exc.line],
        [exc.raw],
        [str(exc)],
    )
    record_rejects(db.conninfo, batch)


def serve(settings: Settings) -> int:
    _announce_pages(settings, token_follows=False)
    db = open_database(settings)
    from pipeline.runtime import local_gateway
    from pipeline.runtime.cluster import connect_ray, disconnect

    connect_ray(settings, quiet=True)
    local_gateway.deploy(settings, db.conninfo)
    print(f"api: http://{settings.gateway.host}:{settings.gateway.port}/api/v1/gpus (Ctrl-C to stop)", file=sys.stderr)
    try:
        with _Stop() as stop:
            while not stop.requested:
                time.sleep(0.5)
    finally:
        disconnect(before=local_gateway.remove)
    return 0


class _Display:
    """A one-line live status on a terminal; a log line every few seconds otherwise."""

    def __init__(self, tty: bool) -> None:
        self.tty = tty
        self._tty = tty
        self._last_print = 0.0
        self._last: tuple[float, int] | None = None

    def show(self, p: Any, elapsed: float) -> None:
        if not self._tty and elapsed - self._last_print < 5.0:
            return
        rate = 0.0  # over the interval since the last line shown
        if self._last is not None and elapsed > self._last[0]:
            rate = (p.stored - self._last[1]) / (elapsed - self._last[0])
        self._last = (elapsed, p.stored)
        line = (
            f"[{elapsed:6.1f}s] produced {p.produced:,}  stored {p.stored:,}  ({rate:,.0f} rows/s)  "
            f"lag {p.lag_rows:,} rows  rejects {p.rejected:,}"
        )
        if self._tty:
            sys.stderr.write("\r" + line.ljust(100))
            sys.stderr.flush()
        else:
            self._last_print = elapsed
            print(line, file=sys.stderr)

    def end(self) -> None:
        if self._tty:
            sys.stderr.write("\n")
