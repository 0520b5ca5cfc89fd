"""The optional Redis cache: on (127.0.0.1:6379, REDIS_URL), off, and through a Redis outage."""

from __future__ import annotations

import os
import time
import uuid as uuidlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
import redis
from fastapi.testclient import TestClient

from pipeline.config import GatewaySettings
from pipeline.gateway.app import build_app
from pipeline.gateway.cache import RedisCache
from pipeline.storage.reader import Reader
from tests.integration.test_gateway import fleet, iso, uuids  # noqa: F401  (fixture)

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture
def prefix() -> Iterator[str]:
    """A key prefix of this test's own; its keys are deleted afterwards (never FLUSHDB: Redis is shared)."""
    client = redis.Redis.from_url(REDIS_URL, socket_timeout=1)
    try:
        client.ping()
    except redis.RedisError:
        pytest.skip(f"no Redis at {REDIS_URL}")
    name = f"test-gateway:{uuidlib.uuid4().hex[:8]}:"
    yield name
    keys = list(client.scan_iter(f"{name}*"))
    if keys:
        client.delete(*keys)
    client.close()


def app_client(conninfo: str, cache: RedisCache | None, ttl_s: float = 0.5) -> tuple[TestClient, Reader]:
    reader = Reader(conninfo)
    reader.open(wait=True)
    # The fleet's samples are from T0 and "recent" windows end now: a span longer than the default bound.
    settings = GatewaySettings(default_limit=50, max_limit=100, gpu_list_ttl_s=ttl_s, max_window_s=10 * 366 * 86400)
    return TestClient(build_app(reader, settings, cache=cache)), reader


def add_gpu(conninfo: str, uuid: str) -> None:
    with psycopg.connect(conninfo) as c:
        c.execute("INSERT INTO gpus (uuid, hostname, gpu_index) VALUES (%s, 'h9', 0)", (uuid,))


def test_gpu_list_is_cached_for_its_ttl(fleet: str, prefix: str) -> None:  # noqa: F811
    cache = RedisCache(REDIS_URL, prefix=prefix)
    client, reader = app_client(fleet, cache, ttl_s=0.5)
    with client:
        first = client.get("/api/v1/gpus")
        assert first.headers["x-cache"] == "miss" and uuids(first.json()) == ["GPU-a", "GPU-b", "GPU-c"]
        add_gpu(fleet, "GPU-new")
        again = client.get("/api/v1/gpus")
        assert again.headers["x-cache"] == "hit" and again.content == first.content
        assert cache.hits == 0, "the replica's own copy answers: no round trip to Redis"
        # Every parameter is part of the key.
        other = client.get("/api/v1/gpus", params={"limit": 10})
        assert other.headers["x-cache"] == "miss" and "GPU-new" in uuids(other.json())
        time.sleep(0.6)
        fresh = client.get("/api/v1/gpus")
        assert fresh.headers["x-cache"] == "miss" and "GPU-new" in uuids(fresh.json())
        assert cache.errors == 0
        exposition = client.get("/metrics").text
        assert 'pipeline_gateway_cache_requests_total{result="hit"} 1.0' in exposition
        assert 'pipeline_gateway_cache_requests_total{result="miss"} 3.0' in exposition
    reader.close()
    cache.close()


def test_replicas_share_bodies_through_redis_and_keep_a_copy_until_its_ttl(fleet: str, prefix: str) -> None:  # noqa: F811
    """Replica B is served what replica A stored; B keeps a copy, which expires when Redis' does."""
    shared_a, shared_b = RedisCache(REDIS_URL, prefix=prefix), RedisCache(REDIS_URL, prefix=prefix)
    a, reader_a = app_client(fleet, shared_a, ttl_s=1.0)
    b, reader_b = app_client(fleet, shared_b, ttl_s=1.0)
    with a, b:
        stored = time.monotonic()
        first = a.get("/api/v1/gpus")
        assert first.headers["x-cache"] == "miss"
        add_gpu(fleet, "GPU-new")
        time.sleep(0.5)
        from_redis = b.get("/api/v1/gpus")
        assert from_redis.headers["x-cache"] == "hit" and from_redis.content == first.content
        assert shared_b.hits == 1
        local = b.get("/api/v1/gpus")
        assert local.headers["x-cache"] == "hit" and local.content == first.content
        assert shared_b.hits == 1, "the second lookup is B's own copy"
        time.sleep(max(0.0, 1.1 - (time.monotonic() - stored)))
        fresh = b.get("/api/v1/gpus")
        assert fresh.headers["x-cache"] == "miss" and "GPU-new" in uuids(fresh.json()), "B's copy outlived A's TTL"
    for reader, cache in ((reader_a, shared_a), (reader_b, shared_b)):
        reader.close()
        cache.close()


def test_recent_windows_are_cached_and_old_ones_are_not(fleet: str, prefix: str) -> None:  # noqa: F811
    cache = RedisCache(REDIS_URL, prefix=prefix)
    client, reader = app_client(fleet, cache)
    with client:
        recent = {"start_time": iso(0), "end_time": (datetime.now(UTC) + timedelta(seconds=1)).isoformat()}
        for path, params in (
            ("/api/v1/gpus/GPU-a/telemetry", recent),
            ("/api/v1/gpus/GPU-a/telemetry/aggregate", {**recent, "bucket": "1h", "fn": "count"}),
            ("/api/v1/gpus/GPU-a", {}),
        ):
            miss, hit = client.get(path, params=params), client.get(path, params=params)
            assert (miss.headers["x-cache"], hit.headers["x-cache"]) == ("miss", "hit"), path
            assert miss.json() == hit.json() and miss.status_code == 200
        assert len(client.get("/api/v1/gpus/GPU-a/telemetry", params={**recent, "limit": 100}).json()["items"]) == 100
        old = {"start_time": iso(0), "end_time": iso(59)}
        r = client.get("/api/v1/gpus/GPU-a/telemetry", params=old)
        assert "x-cache" not in r.headers and len(r.json()["items"]) == 50
        # Errors are never cached.
        assert client.get("/api/v1/gpus/GPU-zzz").status_code == 404
        add_gpu(fleet, "GPU-zzz")
        assert client.get("/api/v1/gpus/GPU-zzz").status_code == 200
    reader.close()
    cache.close()


def test_a_redis_outage_degrades_to_direct_queries(fleet: str) -> None:  # noqa: F811
    cache = RedisCache("redis://127.0.0.1:1/0", timeout_s=0.2, retry_after_s=60)
    client, reader = app_client(fleet, cache)
    with client:
        for expected in ("miss", "hit", "hit"):  # the replica's own copy still serves while Redis is away
            r = client.get("/api/v1/gpus")
            assert r.status_code == 200 and uuids(r.json()) == ["GPU-a", "GPU-b", "GPU-c"]
            assert r.headers["x-cache"] == expected
        body = client.get("/api/v1/gpus/GPU-b/telemetry", params={"start_time": iso(0)}).json()
        assert len(body["items"]) == 50
        assert cache.errors == 1, "the breaker should keep requests off a dead Redis"
    reader.close()
    cache.close()


def test_without_a_cache_nothing_is_cached(fleet: str) -> None:  # noqa: F811
    client, reader = app_client(fleet, None)
    with client:
        assert "x-cache" not in client.get("/api/v1/gpus").headers
        add_gpu(fleet, "GPU-new")
        assert "GPU-new" in uuids(client.get("/api/v1/gpus").json())
    reader.close()
