"""The command line: ``python -m pipeline run|serve|migrate|generate|status``.

Errors a user can fix (bad flags, unreachable database, unreadable CSV) print one line and exit 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from pipeline.auth import use_token_auth
from pipeline.config import Settings
from pipeline.errors import ConfigError, PipelineError, SourceError

__all__ = ["main"]

log = logging.getLogger("pipeline")
EXIT_USAGE = 2


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"`{text}` is not a number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"`{text}` must not be negative")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"`{text}` is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"`{text}` must be at least 1")
    return value


def _targets(text: str) -> list[str]:
    from pipeline.errors import ConfigError
    from pipeline.sources.targets import parse_targets

    try:
        targets = parse_targets(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if not targets:
        raise argparse.ArgumentTypeError("no scrape target given")
    return targets


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pipeline", description="GPU telemetry pipeline on Ray.")
    p.add_argument("--config", help="YAML settings file (env PIPELINE_* and flags override it)")
    p.add_argument("-v", "--verbose", action="store_true", help="log more, and show actor logs")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="stream telemetry into the database and serve the API")
    what = run.add_mutually_exclusive_group()
    what.add_argument("--csv", type=Path, help="dcgm-exporter CSV to replay (default: a generated fleet)")
    what.add_argument(
        "--scrape",
        type=_targets,
        metavar="URL[,URL...]",
        help="scrape these dcgm-exporter endpoints (host[:port] means http://host:9400/metrics)",
    )
    what.add_argument("--nvml", action="store_true", help="read this node's GPUs through NVML")
    run.add_argument(
        "--scrape-file", type=Path, help="file of dcgm-exporter endpoints, one per line (re-read when it changes)"
    )
    run.add_argument("--hosts", type=_positive_int, help="hosts of the generated fleet (default 32)")
    run.add_argument("--streamers", type=int, help="streamer actors (default 1)")
    run.add_argument("--collectors", type=int, help="collector actors (default 2)")
    run.add_argument("--partitions", type=_positive_int, help="queue partitions (default 16)")
    run.add_argument("--brokers", type=_positive_int, help="broker actors (default 1)")
    run.add_argument(
        "--interval",
        "--scrape-interval",
        type=_positive_float,
        help="seconds between passes (scrape rounds); 0 = as fast as possible",
    )
    run.add_argument("--batch-rows", type=_positive_int, help="rows per published batch (default 100000)")
    bound = run.add_mutually_exclusive_group()
    bound.add_argument("--passes", type=_positive_int, help="stop after K passes over the source")
    bound.add_argument("--duration", type=_positive_float, help="stop after S seconds")
    run.add_argument("--queue-dir", type=Path, help="persist the queue under DIR")
    run.add_argument("--no-serve", action="store_true", help="do not start the REST gateway")
    run.add_argument("--port", type=_positive_int, help="gateway port (default 8000)")
    run.add_argument("--json", action="store_true", help="end with a JSON summary line")
    scaling = run.add_argument_group("elastic scaling (the seed's HPA behaviour; on when a min < max is given)")
    scaling.add_argument("--collectors-min", type=int, help="fewest collectors (default --collectors)")
    scaling.add_argument("--collectors-max", type=int, help="most collectors (<= --partitions)")
    scaling.add_argument("--streamers-min", type=int, help="fewest streamers")
    scaling.add_argument("--streamers-max", type=int, help="most streamers")
    scaling.add_argument("--target-lag", type=_positive_float, help="rows of lag per collector (default 1000)")
    scaling.add_argument("--scale-period", type=_positive_float, help="seconds between decisions (default 5)")
    scaling.add_argument("--scale-up-window", type=_positive_float, help="up stabilisation, s (default 60)")
    scaling.add_argument("--scale-down-window", type=_positive_float, help="down stabilisation, s (default 300)")
    scaling.add_argument("--scale-rate-period", type=_positive_float, help="rate-limit period, s (default 60)")

    serve = sub.add_parser("serve", help="serve the REST API over an existing database")
    serve.add_argument("--port", type=_positive_int, help="gateway port (default 8000)")
    serve.add_argument("--host", help="bind address (default 127.0.0.1)")

    sub.add_parser("migrate", help="apply pending SQL migrations")

    gen = sub.add_parser("generate", help="write a synthetic fleet as dcgm-exporter CSV")
    gen.add_argument("--hosts", type=_positive_int, default=32)
    gen.add_argument("--gpus-per-host", type=_positive_int, default=8)
    gen.add_argument("--scrapes", type=_positive_int, default=1, help="scrapes of the fleet to write")
    gen.add_argument("--seed", type=int, default=7)
    gen.add_argument("--out", type=Path, required=True)

    status = sub.add_parser("status", help="show a running pipeline's actors, queue and scaling decisions")
    status.add_argument("--json", action="store_true")

    scale = sub.add_parser("scale", help="pin the number of collectors or streamers of a running pipeline")
    target = scale.add_mutually_exclusive_group(required=True)
    target.add_argument("--collectors", type=int, help="run exactly N collectors")
    target.add_argument("--streamers", type=int, help="run exactly N streamers (re-splits the source)")
    target.add_argument("--auto", action="store_true", help="hand both roles back to the controller")
    scale.add_argument("--json", action="store_true")
    return p


def _settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, dict[str, Any]] = {"streamer": {}, "collector": {}, "queue": {}, "gateway": {}}
    if args.command == "run":
        overrides["streamer"] = {
            "csv": args.csv,
            "source": "scrape"
            if args.scrape or args.scrape_file
            else "nvml"
            if args.nvml
            else "csv"
            if args.csv
            else None,
            "scrape": args.scrape,
            "scrape_file": args.scrape_file,
            "hosts": args.hosts,
            "count": args.streamers,
            "interval_s": args.interval,
            "batch_rows": args.batch_rows,
            "passes": args.passes,
            "duration_s": args.duration,
        }
        overrides["collector"] = {"count": args.collectors}
        overrides["queue"] = {"partitions": args.partitions, "brokers": args.brokers, "dir": args.queue_dir}
        overrides["gateway"] = {"port": args.port}
        overrides["scaling"] = {
            "collectors_min": args.collectors_min,
            "collectors_max": args.collectors_max,
            "streamers_min": args.streamers_min,
            "streamers_max": args.streamers_max,
            "target_lag": args.target_lag,
            "period_s": args.scale_period,
            "up_window_s": args.scale_up_window,
            "down_window_s": args.scale_down_window,
            "rate_period_s": args.scale_rate_period,
        }
    elif args.command == "serve":
        overrides["gateway"] = {"port": args.port, "host": args.host}
    return Settings.load(args.config, overrides)


def _logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("pipeline").setLevel(logging.INFO)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    args = _parser().parse_args(argv)
    _logging(args.verbose)
    try:
        settings = _settings(args)
        if settings.ray.address or args.command in ("status", "scale"):
            use_token_auth()  # before Ray is imported: it reads the mode at import
        if args.command == "run":
            return _run(settings, args)
        if args.command == "serve":
            return _serve(settings)
        if args.command == "migrate":
            return _migrate(settings)
        if args.command == "generate":
            return _generate(args)
        if args.command == "status":
            return _status(settings, args.json)
        if args.command == "scale":
            return _scale(settings, args)
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_USAGE  # pragma: no cover - argparse rejects unknown commands


def _database(settings: Settings, out: TextIO = sys.stderr) -> Any:
    from pipeline.storage.database import check, resolve
    from pipeline.storage.migrate import migrate

    url = settings.database.url.get_secret_value() if settings.database.url else None
    db = resolve(url, settings.database.embedded_dir)
    check(db.conninfo, settings.database.connect_timeout_s)
    applied = migrate(db.conninfo)
    print(f"database: {db.describe()}" + (f" ({len(applied)} migration(s) applied)" if applied else ""), file=out)
    from pipeline.storage.partitions import PartitionManager

    report = PartitionManager.for_settings(db.conninfo, settings.storage).ensure()
    if report.created or report.dropped:
        log.info("partitions: created %s, dropped %s", list(report.created), list(report.dropped))
    return db


def _migrate(settings: Settings) -> int:
    _database(settings, sys.stdout)
    return 0


def _generate(args: argparse.Namespace) -> int:
    from pipeline.sources.synthetic import write_csv

    if args.out.parent and not args.out.parent.exists():
        raise ConfigError(f"--out: directory {args.out.parent} does not exist")
    rows = write_csv(args.out, args.hosts, args.gpus_per_host, args.scrapes, args.seed)
    print(
        f"wrote {rows} rows ({args.hosts * args.gpus_per_host} GPUs x 10 metrics x {args.scrapes} scrape(s)) "
        f"to {args.out}"
    )
    return 0


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


def _run(settings: Settings, args: argparse.Namespace) -> int:
    from pipeline.sources import source_for

    s = settings.streamer
    source = source_for(s)
    try:
        source.open()  # a missing file or unknown header fails here, before anything starts
    except SourceError as exc:
        if exc.line is not None:
            # A file that is not dcgm-exporter CSV is bad input too: keep it as a reject, then stop.
            _record_reject(settings, exc)
        raise
    source.close()
    if settings.queue.partitions < settings.collector.count:
        raise ConfigError(
            f"--partitions ({settings.queue.partitions}) must be at least --collectors ({settings.collector.count})"
        )
    db = _database(settings)

    import ray

    from pipeline.driver import Pipeline, connect_ray

    info = connect_ray(settings, quiet=not args.verbose)
    pipeline = Pipeline(settings, db)
    tty = sys.stderr.isatty()
    started = time.monotonic()
    try:
        with _Stop() as stop:
            pipeline.start()
            print(
                f"source: {source.name}; {s.count} streamer(s), {settings.collector.count} collector(s), "
                f"{settings.queue.partitions} partitions",
                file=sys.stderr,
            )
            if info.get("dashboard_url"):
                print(f"ray dashboard: http://{info['dashboard_url']} (token in ~/.ray/auth_token)", file=sys.stderr)
            if info.get("address"):
                print(
                    f"ray: {info['address']} (RAY_ADDRESS={info['address']} python -m pipeline status)", file=sys.stderr
                )
            if not args.no_serve:
                _start_gateway(settings, db.conninfo)
                print(
                    f"api: http://{settings.gateway.host}:{settings.gateway.port}/api/v1/gpus (docs at /docs)",
                    file=sys.stderr,
                )
            bounded = s.passes is not None or s.duration_s is not None
            display = _Display(tty)
            while not stop.requested:
                p = pipeline.progress()
                display.show(p, time.monotonic() - started)
                for err in p.errors:
                    print(f"\nerror: {err}", file=sys.stderr)
                if p.errors and bounded:
                    raise PipelineError("; ".join(p.errors))
                if bounded and p.streamers_done:
                    break
                time.sleep(1.0 if tty else 0.5)
            pipeline.stop_streamers()
            final = pipeline.drain(on_tick=lambda p: display.show(p, time.monotonic() - started))
            stored, stored_rejects = pipeline.stored_totals()
            display.end()
            pipeline.stop()
    finally:
        if ray.is_initialized():
            if not args.no_serve:
                _stop_gateway()
            ray.shutdown()
    elapsed = time.monotonic() - started
    summary = {
        "produced": final.produced,
        "stored": stored,
        "rejected": final.rejected,
        "rejects_stored": stored_rejects,
        "seconds": round(elapsed, 2),
        "rows_per_s": round(stored / elapsed, 1) if elapsed > 0 else 0.0,
        "database": db.describe(),
        "source": source.name,
    }
    print(
        f"done: produced {summary['produced']}, stored {stored}, rejected {summary['rejected']} "
        f"in {elapsed:.1f}s ({summary['rows_per_s']:.0f} rows/s)",
        file=sys.stderr,
    )
    if args.json:
        print(json.dumps(summary))
    return 0


def _record_reject(settings: Settings, exc: SourceError) -> None:
    from pipeline.records import make_rejects
    from pipeline.storage.writer import record_rejects

    db = _database(settings)
    batch = make_rejects(
        time.time_ns() // 1000,
        exc.path,
        [exc.line],
        [exc.raw],
        [str(exc)],
    )
    record_rejects(db.conninfo, batch)


def _start_gateway(settings: Settings, conninfo: str) -> None:
    from ray import serve

    from pipeline.gateway.serve import gateway_app

    serve.start(http_options={"host": settings.gateway.host, "port": settings.gateway.port})
    serve.run(gateway_app(settings, conninfo, min_replicas=1, max_replicas=2), name="gateway", route_prefix="/")


def _stop_gateway() -> None:
    from ray import serve

    try:
        serve.shutdown()  # type: ignore[no-untyped-call]
    except Exception as exc:  # shutting down anyway; report and go on
        log.warning("serve shutdown: %s", exc)


def _serve(settings: Settings) -> int:
    db = _database(settings)
    from pipeline.driver import connect_ray

    connect_ray(settings, quiet=True)
    _start_gateway(settings, db.conninfo)
    print(f"api: http://{settings.gateway.host}:{settings.gateway.port}/api/v1/gpus (Ctrl-C to stop)", file=sys.stderr)
    try:
        with _Stop() as stop:
            while not stop.requested:
                time.sleep(0.5)
    finally:
        import ray

        _stop_gateway()
        ray.shutdown()
    return 0


class _Display:
    """A one-line live status on a terminal; a log line every few seconds otherwise."""

    def __init__(self, tty: bool) -> None:
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


def _scale(settings: Settings, args: argparse.Namespace) -> int:
    from pipeline.status import attached, mode, pin

    for flag in ("collectors", "streamers"):
        value = getattr(args, flag)
        if value is not None and value < (1 if flag == "collectors" else 0):
            raise ConfigError(f"--{flag} {value} is out of range")
    if args.auto:
        changes: list[tuple[str, int | None]] = [("collector", None), ("streamer", None)]
    elif args.collectors is not None:
        changes = [("collector", args.collectors)]
    else:
        changes = [("streamer", args.streamers)]
    with attached(settings.ray.address, settings.ray.namespace) as address:
        status = pin(address, changes)
    if args.json:
        print(json.dumps(status, default=str))
    else:
        for role, r in status["roles"].items():
            print(f"{role}: {r['actual']} running, {mode(r)} (policy {r['min']}..{r['max']})")
    return 0


def _status(settings: Settings, as_json: bool) -> int:
    from pipeline.status import attached, collect, render

    with attached(settings.ray.address, settings.ray.namespace):
        report = collect(settings.ray.namespace, settings.queue.group)
    if as_json:
        print(json.dumps(report, default=str))
    else:
        print(render(report))
    return 0 if report["brokers"] else 1
