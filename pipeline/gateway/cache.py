"""An optional response cache in Redis: short TTLs, and an outage only ever means a cache miss.

The gateway caches JSON bodies of the GPU list (and hosts, catalogue) for ``gpu_list_ttl_s`` and of
recent-window queries (a window ending within the last few seconds) for about a second. Keys hold
every request parameter. When Redis fails, the cache stays off for ``retry_after_s`` (so requests do
not each wait for a socket timeout) and says so in the log at most once per ``log_every_s``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from typing import Any, Protocol

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

__all__ = ["Cache", "RedisCache", "cache_key"]

log = logging.getLogger(__name__)


class Cache(Protocol):
    """What the gateway needs from a cache: bytes in, bytes out, never an exception."""

    def get(self, key: str) -> bytes | None:
        """The value under ``key``, or None (absent, expired, or the cache is unavailable)."""
        ...

    def set(self, key: str, value: bytes, ttl_s: float) -> None:
        """Store ``value`` under ``key`` for ``ttl_s`` seconds (best effort)."""
        ...


def cache_key(route: str, params: dict[str, Any]) -> str:
    """A key naming the route and every parameter of a request (values normalised by the caller)."""
    blob = json.dumps(params, sort_keys=True, default=str, separators=(",", ":"))
    return f"{route}:{hashlib.sha256(blob.encode()).hexdigest()[:32]}"


class RedisCache:
    """A ``Cache`` in Redis with short socket timeouts and a breaker for outages."""

    def __init__(
        self,
        url: str,
        prefix: str = "gpu-telemetry:gateway:",
        timeout_s: float = 0.2,
        retry_after_s: float = 5.0,
        log_every_s: float = 60.0,
    ) -> None:
        self._client = redis.Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),
            health_check_interval=0,
        )
        self._prefix = prefix
        self._retry_after = retry_after_s
        self._log_every = log_every_s
        self._down_until = 0.0
        self._logged_at = -float("inf")
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        self.errors = 0

    def get(self, key: str) -> bytes | None:
        """The cached value, or None (miss or outage)."""
        if self._is_down():
            return None
        try:
            value: bytes | None = self._client.get(self._prefix + key)  # type: ignore[assignment]
        except redis.RedisError as exc:
            self._trip(exc)
            return None
        if value is None:
            self.misses += 1
        else:
            self.hits += 1
        return value

    def set(self, key: str, value: bytes, ttl_s: float) -> None:
        """Store with a TTL (milliseconds precision); failures only trip the breaker."""
        if ttl_s <= 0 or self._is_down():
            return
        try:
            self._client.set(self._prefix + key, value, px=max(1, int(ttl_s * 1000)))
        except redis.RedisError as exc:
            self._trip(exc)

    def close(self) -> None:
        """Release the connections."""
        self._client.close()

    def _is_down(self) -> bool:
        return time.monotonic() < self._down_until

    def _trip(self, exc: redis.RedisError) -> None:
        now = time.monotonic()
        with self._lock:
            self.errors += 1
            self._down_until = now + self._retry_after
            if now - self._logged_at >= self._log_every:
                self._logged_at = now
                log.warning("redis cache unavailable, querying directly for %.0fs: %s", self._retry_after, exc)
