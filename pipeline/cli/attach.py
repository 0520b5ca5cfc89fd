"""``deploy``, ``stop``, ``status`` and ``scale``: a pipeline running as a service on a Ray cluster."""

from __future__ import annotations

import argparse
import json
import sys

from pipeline.config import Settings
from pipeline.errors import ConfigError

__all__ = ["deploy", "scale", "status", "stop"]


def scale(settings: Settings, args: argparse.Namespace) -> int:
    from pipeline.runtime.attach import attached, mode, pin

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
        status = pin(address, settings.ray.namespace, changes)
    if args.json:
        print(json.dumps(status, default=str))
    else:
        for role, r in status["roles"].items():
            print(f"{role}: {r['actual']} running, {mode(r)} (policy {r['min']}..{r['max']})")
    return 0


def status(settings: Settings, as_json: bool) -> int:
    from pipeline.runtime.attach import attached, collect, render

    with attached(settings.ray.address, settings.ray.namespace):
        report = collect(settings.ray.namespace, settings.queue.group)
    if as_json:
        print(json.dumps(report, default=str))
    else:
        print(render(report))
    return 0 if report["brokers"] else 1


def deploy(settings: Settings, as_json: bool) -> int:
    """Create the pipeline on a running cluster, or reconcile it to these settings, and return."""
    from pipeline.cli.run import open_database
    from pipeline.runtime.attach import attached
    from pipeline.runtime.driver import Pipeline

    db = open_database(settings)
    with attached(settings.ray.address, settings.ray.namespace):
        result = Pipeline(settings, db).deploy()
    if as_json:
        print(json.dumps(result, default=str))
    elif result["action"] == "created":
        print(f"deployed the pipeline in Ray namespace {result['namespace']} (`python -m pipeline status` to follow)")
    elif result["action"] == "unchanged":
        print(f"the pipeline in Ray namespace {result['namespace']} already runs these settings: nothing changed")
    else:
        changed = ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in result["changed"].items())
        print(f"reconciled the pipeline in Ray namespace {result['namespace']}: {changed}")
    return 0


def stop(settings: Settings, as_json: bool, timeout_s: float) -> int:
    """Stop producing, drain the queue, remove every actor; print the summary (JSON last with ``--json``)."""
    from pipeline.cli.run import report
    from pipeline.runtime.attach import attached
    from pipeline.runtime.driver import Pipeline
    from pipeline.storage.database import Database

    with attached(settings.ray.address, settings.ray.namespace):
        pipeline = Pipeline(settings)
        pipeline.attach()
        print(
            f"stopping the pipeline in Ray namespace {settings.ray.namespace}: draining the queue...", file=sys.stderr
        )
        summary = pipeline.finish(timeout_s=timeout_s).as_dict()
    url = settings.database.url
    report(summary, Database(url.get_secret_value()).describe() if url is not None else "unknown", as_json)
    return 0
