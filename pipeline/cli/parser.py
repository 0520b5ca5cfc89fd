"""The command line's parser and how its flags become ``Settings`` (flags override env and file)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from pipeline.config import Settings
from pipeline.errors import ConfigError

__all__ = ["build_parser", "configure_logging", "settings_from"]


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
    from pipeline.sources.targets import parse_targets

    try:
        targets = parse_targets(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if not targets:
        raise argparse.ArgumentTypeError("no scrape target given")
    return targets


def _pipeline_flags(run: argparse.ArgumentParser) -> None:
    """The flags that define a pipeline: its source, counts, queue and scaling (``run`` and ``deploy``)."""
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
    run.add_argument(
        "--events",
        action="store_const",
        const=True,
        help="the generated fleet also has MIG devices, XID errors and a GPU that goes silent",
    )
    run.add_argument("--streamers", type=int, help="streamer actors (default 1)")
    run.add_argument("--collectors", type=int, help="collector actors (default 2)")
    run.add_argument("--partitions", type=_positive_int, help="queue partitions (default 16)")
    run.add_argument("--brokers", type=_positive_int, help="broker actors (default 1)")
    run.add_argument(
        "--replication-factor", type=_positive_int, help="copies of each partition, on different brokers (default 1)"
    )
    run.add_argument("--min-insync", type=_positive_int, help="copies holding a flush before its ack (default 1)")
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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pipeline", description="GPU telemetry pipeline on Ray.")
    p.add_argument("--config", help="YAML settings file (env PIPELINE_* and flags override it)")
    p.add_argument("-v", "--verbose", action="store_true", help="log more, and show actor logs")
    # The same two options after the command too (`deploy --config F`, as the RayJob entrypoint has it);
    # SUPPRESS keeps a value given before the command when none is given after it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", default=argparse.SUPPRESS, help="YAML settings file")
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="log more")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser(
        "run", help="stream telemetry into the database and serve the API (deploy, follow, stop)", parents=[common]
    )
    _pipeline_flags(run)
    run.add_argument("--no-serve", action="store_true", help="do not start the REST gateway")
    run.add_argument("--port", type=_positive_int, help="gateway port (default 8000)")
    run.add_argument("--json", action="store_true", help="end with a JSON summary line")

    deploy = sub.add_parser(
        "deploy",
        help="create the pipeline on a running Ray cluster, or reconcile it to these settings, and return",
        parents=[common],
    )
    _pipeline_flags(deploy)
    deploy.add_argument("--json", action="store_true")

    stop = sub.add_parser(
        "stop", help="stop producing, drain the queue, remove the pipeline; print its summary", parents=[common]
    )
    stop.add_argument("--json", action="store_true", help="end with a JSON summary line")
    stop.add_argument("--timeout", type=_positive_float, default=600.0, help="seconds the drain may take")

    serve = sub.add_parser("serve", help="serve the REST API over an existing database", parents=[common])
    serve.add_argument("--port", type=_positive_int, help="gateway port (default 8000)")
    serve.add_argument("--host", help="bind address (default 127.0.0.1)")

    sub.add_parser("migrate", help="apply pending SQL migrations", parents=[common])

    gen = sub.add_parser("generate", help="write a synthetic fleet as dcgm-exporter CSV", parents=[common])
    gen.add_argument("--hosts", type=_positive_int, default=32)
    gen.add_argument("--gpus-per-host", type=_positive_int, default=8)
    gen.add_argument("--scrapes", type=_positive_int, default=1, help="scrapes of the fleet to write")
    gen.add_argument("--seed", type=int, default=7)
    gen.add_argument("--out", type=Path, required=True)

    status = sub.add_parser(
        "status", help="show a running pipeline's actors, queue and scaling decisions", parents=[common]
    )
    status.add_argument("--json", action="store_true")

    scale = sub.add_parser(
        "scale", help="pin the number of collectors or streamers of a running pipeline", parents=[common]
    )
    target = scale.add_mutually_exclusive_group(required=True)
    target.add_argument("--collectors", type=int, help="run exactly N collectors")
    target.add_argument("--streamers", type=int, help="run exactly N streamers (re-splits the source)")
    target.add_argument("--auto", action="store_true", help="hand both roles back to the controller")
    scale.add_argument("--json", action="store_true")
    return p


def settings_from(args: argparse.Namespace) -> Settings:
    overrides: dict[str, dict[str, Any]] = {"streamer": {}, "collector": {}, "queue": {}, "gateway": {}}
    if args.command in ("run", "deploy"):
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
            "synthetic_events": getattr(args, "events", None),
            "count": args.streamers,
            "interval_s": args.interval,
            "batch_rows": args.batch_rows,
            "passes": args.passes,
            "duration_s": args.duration,
        }
        overrides["collector"] = {"count": args.collectors}
        overrides["queue"] = {
            "partitions": args.partitions,
            "brokers": args.brokers,
            "dir": args.queue_dir,
            "replication_factor": args.replication_factor,
            "min_insync": args.min_insync,
        }
        overrides["gateway"] = {"port": getattr(args, "port", None)}
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


def configure_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("pipeline").setLevel(logging.INFO)
