"""``python -m pipeline run|deploy|stop|status|scale|serve|migrate|generate``: parse, build settings, dispatch.

Errors a user can fix (bad flags, unreachable database, unreadable CSV) print one line and exit 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pipeline.cli.parser import build_parser, configure_logging, settings_from
from pipeline.errors import ConfigError, PipelineError

__all__ = ["EXIT_USAGE", "main"]

EXIT_USAGE = 2


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose)
    try:
        settings = settings_from(args)
        if settings.ray.address or args.command in ("status", "scale", "deploy", "stop"):
            from pipeline.runtime.ray_token import use_token_auth

            use_token_auth()  # before Ray is imported: it reads the mode at import
        return _dispatch(settings, args)
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE


def _dispatch(settings: object, args: argparse.Namespace) -> int:
    from pipeline.cli import attach, run
    from pipeline.config import Settings

    assert isinstance(settings, Settings)
    if args.command == "run":
        return run.run(settings, args)
    if args.command == "serve":
        return run.serve(settings)
    if args.command == "migrate":
        run.open_database(settings, sys.stdout)
        return 0
    if args.command == "generate":
        return _generate(args)
    if args.command == "deploy":
        return attach.deploy(settings, args.json)
    if args.command == "stop":
        return attach.stop(settings, args.json, args.timeout)
    if args.command == "status":
        return attach.status(settings, args.json)
    if args.command == "scale":
        return attach.scale(settings, args)
    return EXIT_USAGE  # pragma: no cover - argparse rejects unknown commands


def _generate(args: argparse.Namespace) -> int:
    from pipeline.sources.synthetic import write_csv

    if args.out.parent and not args.out.parent.exists():
        raise ConfigError(f"--out: directory {args.out.parent} does not exist", setting="--out")
    rows = write_csv(args.out, args.hosts, args.gpus_per_host, args.scrapes, args.seed)
    print(
        f"wrote {rows} rows ({args.hosts * args.gpus_per_host} GPUs x 10 metrics x {args.scrapes} scrape(s)) "
        f"to {args.out}"
    )
    return 0
