"""The gateway on Ray Serve: a deployment whose replicas each hold a connection pool.

``build(args)`` is the application builder a Serve config's ``import_path`` names
(``pipeline.gateway.serve:build``); ``python -m pipeline serve`` and ``run`` use it too. Settings come
from the environment (``DATABASE_URL``, ``PIPELINE_GATEWAY__*``) merged with the config's ``args``.
"""

from __future__ import annotations

import hashlib
import logging
import time
from typing import Any

import ray
from fastapi import FastAPI
from ray import serve
from ray.serve import Application

from pipeline.config import GatewaySettings, Settings
from pipeline.errors import ConfigError
from pipeline.gateway.app import build_app
from pipeline.gateway.cache import RedisCache
from pipeline.storage.reader import Reader

__all__ = ["Gateway", "build", "gateway_app", "http_options"]

log = logging.getLogger(__name__)
DEPLOYMENT = "Gateway"


def http_options(host: str, port: int) -> dict[str, Any]:
    """Serve's HTTP options for ``serve.start``: the proxy's bounds on slow clients, as in serve_config.yaml."""
    return {"host": host, "port": port, "request_timeout_s": 120, "keep_alive_timeout_s": 5}


class _BrokerStats:
    """Reads broker stats through their named actors, cached for a couple of seconds."""

    def __init__(self, namespace: str, ttl_s: float = 2.0) -> None:
        self._namespace = namespace
        self._ttl = ttl_s
        self._at = 0.0
        self._value: list[dict[str, Any]] = []

    def __call__(self) -> list[dict[str, Any]]:
        if time.monotonic() - self._at < self._ttl:
            return self._value
        handles = []
        i = 0
        while True:
            try:
                handles.append(ray.get_actor(f"broker-{i}", namespace=self._namespace))
            except ValueError:
                break
            i += 1
        self._value = ray.get([h.stats.remote() for h in handles], timeout=5) if handles else []
        self._at = time.monotonic()
        return self._value


@serve.ingress()
class Gateway:
    """One replica: a pool of database connections, the optional Redis cache, and the FastAPI app over them."""

    def __init__(self, conninfo: str, gateway: dict[str, Any], namespace: str, pool_max: int = 8) -> None:
        self._settings = GatewaySettings(**gateway)
        self._reader = Reader(conninfo, min_size=1, max_size=pool_max)
        self._reader.open(wait=False)
        self._namespace = namespace
        self._cache: RedisCache | None = None
        if self._settings.redis_url is not None:
            # Keys are scoped to the Ray namespace and the database, never shared between deployments.
            database = hashlib.sha256(conninfo.encode()).hexdigest()[:12]
            prefix = f"gpu-telemetry:{namespace}:{database}:"
            self._cache = RedisCache(self._settings.redis_url.get_secret_value(), prefix=prefix)

    def __serve_build_asgi_app__(self) -> FastAPI:
        return build_app(self._reader, self._settings, cache=self._cache, queue_stats=_BrokerStats(self._namespace))

    def check_health(self) -> None:
        """Serve's health check: fails while the database is unreachable."""
        self._reader.ping()

    def __del__(self) -> None:
        reader = getattr(self, "_reader", None)
        if reader is not None:
            reader.close()
        cache = getattr(self, "_cache", None)
        if cache is not None:
            cache.close()


def gateway_app(
    settings: Settings,
    conninfo: str,
    *,
    min_replicas: int = 1,
    max_replicas: int = 2,
    target_ongoing_requests: float = 8,
    max_ongoing_requests: int = 64,
    num_cpus: float = 0.25,
) -> Application:
    """The Serve application for ``settings`` over the database at ``conninfo``."""
    deployment = serve.deployment(
        Gateway,
        name=DEPLOYMENT,
        max_ongoing_requests=max_ongoing_requests,
        autoscaling_config={
            "min_replicas": min_replicas,
            "max_replicas": max_replicas,
            "target_ongoing_requests": target_ongoing_requests,
        },
        ray_actor_options={"num_cpus": num_cpus},
        health_check_period_s=10,
        health_check_timeout_s=30,
    )
    gateway = settings.gateway.model_dump(mode="json")
    gateway.pop("redis_url", None)
    if settings.gateway.redis_url is not None:
        gateway["redis_url"] = settings.gateway.redis_url.get_secret_value()
    app: Application = deployment.bind(  # type: ignore[attr-defined]
        conninfo, gateway, settings.ray.namespace, settings.database.pool_max
    )
    return app


def build(args: dict[str, Any]) -> Application:
    """Application builder for Serve configs: ``import_path: pipeline.gateway.serve:build``.

    ``args`` may hold ``config`` (a YAML settings file), ``database_url``, and deployment sizes
    (``min_replicas``, ``max_replicas``, ``target_ongoing_requests``, ``max_ongoing_requests``).
    """
    settings = Settings.load(args.get("config"))
    url = args.get("database_url") or (settings.database.url.get_secret_value() if settings.database.url else None)
    if not url:
        raise ConfigError("the gateway needs a database: set DATABASE_URL or args.database_url")
    sizes = {
        k: args[k]
        for k in ("min_replicas", "max_replicas", "target_ongoing_requests", "max_ongoing_requests")
        if k in args
    }
    return gateway_app(settings, url, **sizes)
