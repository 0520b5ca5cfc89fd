"""Joining a Ray cluster: an existing one (RAY_ADDRESS, ``ray.address``) or a local one sized for the run.

Also where actor processes get their logging: Ray runs ``worker_process_setup_hook`` in every
worker of the job, so actors do not configure logging themselves.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from typing import Any

import ray

from pipeline.config import Settings

__all__ = ["configure_worker_logging", "connect_ray", "disconnect", "local_cpus"]

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_worker_logging() -> None:
    """Logging of a pipeline worker process: INFO from the pipeline's loggers, to the worker's log file."""
    logging.basicConfig(level=logging.WARNING, format=LOG_FORMAT)
    logging.getLogger("pipeline").setLevel(logging.INFO)


def local_cpus(settings: Settings) -> int:
    """Logical CPUs for a local cluster: the machine's, or enough for every actor the run may start.

    Ray schedules by the CPUs actors *request* (0.5 each here), not by load: on a 2-core laptop two
    collectors, a streamer and a broker already ask for 2, and the gateway's replicas would wait
    forever. The actors mostly wait on I/O, so advertising more logical CPUs than cores is safe.
    """
    low_c, high_c = settings.policy_bounds("collector")
    low_s, high_s = settings.policy_bounds("streamer")
    wanted = 0.5 * (settings.queue.brokers + max(high_c, low_c) + max(high_s, low_s)) + 0.25 * 2 + 1
    return max(os.cpu_count() or 1, math.ceil(wanted))


def connect_ray(settings: Settings, quiet: bool = False) -> dict[str, Any]:
    """Connect to RAY_ADDRESS (``ray.address``) or start this run's own local Ray; returns ray.init's report."""
    if ray.is_initialized():
        return {}
    kwargs: dict[str, Any] = {
        "namespace": settings.ray.namespace,
        "runtime_env": {"worker_process_setup_hook": configure_worker_logging},
        "log_to_driver": not quiet,
        "configure_logging": not quiet,
        "include_dashboard": settings.ray.dashboard,
    }
    if settings.ray.address:
        kwargs["address"] = settings.ray.address
        kwargs.pop("include_dashboard")
    else:
        # "local", not None: ray.init(None) joins whatever cluster `ray start` last recorded on the
        # machine (even one long gone), and a local run is this process's own cluster.
        kwargs["address"] = "local"
        kwargs["num_cpus"] = settings.ray.num_cpus or local_cpus(settings)
        # Serve's proxies on this local Ray bound half-sent requests as on the Ray pods (kuberay/).
        from pipeline.gateway.proxy_guard import PROXY_CALLBACK

        os.environ.setdefault("RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH", PROXY_CALLBACK)
    context = ray.init(**kwargs)
    return {
        "dashboard_url": getattr(context, "dashboard_url", None),
        "address": getattr(context, "address_info", {}).get("address"),
    }


def disconnect(before: Callable[[], None] | None = None) -> None:
    """Leave the cluster (a local one stops with this process); ``before`` runs first while still connected."""
    if not ray.is_initialized():
        return
    if before is not None:
        before()
    ray.shutdown()
