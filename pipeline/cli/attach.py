"""``status`` and ``scale``: attach to a running pipeline on a Ray cluster."""

from __future__ import annotations

import argparse
import json

from pipeline.config import Settings
from pipeline.errors import ConfigError

__all__ = ["scale", "status"]


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
