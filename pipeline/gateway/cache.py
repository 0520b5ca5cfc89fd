"""An optional response cache: in the replica's memory, then in Redis; short TTLs, and an outage only
ever means a cache miss.

The gateway caches JSON bodies of the GPU list (and hosts, catalogue) for ``gpu_list_ttl_s`` and of
recent-window queries (a window ending within the last few seconds) for about a second. Keys hold
every request parameter. ``ResponseCache`` looks in the replica first (a dictionary look-up: a hit
costs no round trip and no thread) and then in the shared ``Cache`` (Redis), which replicas fill for
each other. A body in Redis carries the time it expires, so a copy taken from there expires in the
replica when it does in Redis: no body is served older than its TTL. When Redis
fails, the cache stays off for ``retry_after_s`` (so requests do not each wait for a socket timeout)
and says so in the log at most once per ``log_every_s``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import struct
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

__all__ = ["Cache", "RedisCache", "ResponseCache", "cache_key"]

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


_STAMP = struct.Struct("!d")  # the wall-clock time a body was produced, ahead of it in the shared cache


class ResponseCache:
    """Response bodies in this replica's memory in front of an optional shared ``Cache``.

    ``lookup`` only reads memory (safe on the event loop); ``get`` goes on to the shared cache and
    ``set`` stores in both. ``hits``, ``misses`` and ``errors`` count lookups of either layer (the
    gateway's cache metric), ``local_hits`` those the replica answered itself.
    """

    def __init__(
        self,
        shared: Cache | None = None,
        max_entries: int = 4096,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._shared = shared
        self._max = max_entries
        self._clock = clock
        self._local: dict[str, tuple[float, bytes]] = {}
        self.hits = 0
        self.local_hits = 0
        self.misses = 0

    @property
    def errors(self) -> int:
        """Failed lookups of the shared cache."""
        return int(getattr(self._shared, "errors", 0))

    def lookup(self, key: str) -> bytes | None:
        """The body under ``key`` if this replica holds it unexpired (no I/O)."""
        entry = self._local.get(key)
        if entry is None:
            return None
        if entry[0] <= self._clock():
            self._local.pop(key, None)
            return None
        self.hits += 1
        self.local_hits += 1
        return entry[1]

    def get(self, key: str) -> bytes | None:
        """The body under ``key``: from this replica, else from the shared cache (kept here until it expires)."""
        body = self.lookup(key)
        if body is not None:
            return body
        stamped = self._shared.get(key) if self._shared is not None else None
        if stamped is not None and len(stamped) >= _STAMP.size:
            expires = _STAMP.unpack_from(stamped)[0]
            if expires > self._clock():
                body = stamped[_STAMP.size :]
                self._keep(key, expires, body)
                self.hits += 1
                return body
        self.misses += 1
        return None

    def set(self, key: str, body: bytes, ttl_s: float) -> None:
        """Store ``body`` for ``ttl_s`` seconds here and in the shared cache."""
        if ttl_s <= 0:
            return
        expires = self._clock() + ttl_s
        self._keep(key, expires, body)
        if self._shared is not None:
            self._shared.set(key, _STAMP.pack(expires) + body, ttl_s)

    def _keep(self, key: str, expires: float, body: bytes) -> None:
        if len(self._local) >= self._max:
            now = self._clock()
            self._local = {k: v for k, v in self._local.items() if v[0] > now}
            if len(self._local) >= self._max:
                self._local.clear()  # every entry lives seconds: starting over costs one miss each
        self._local[key] = (expires, body)
