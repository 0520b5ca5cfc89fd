"""The same endpoints through Ray Serve over HTTP (one Serve start for the module), with the Redis cache on."""

from __future__ import annotations

import hashlib
import os
import socket
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import httpx
import pyarrow.ipc
import pytest
import redis

from pipeline.config import GatewaySettings, Settings
from pipeline.errors import DatabaseUnavailable
from pipeline.storage.reader import Reader
from tests.integration.test_gateway import POWER, UTIL, fleet_database, iso

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
TOKEN = "serve-test-token-0123456789"
TOKENS = f"read:{TOKEN},metrics:{TOKEN}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def served(pg_server: str, ray_local: None) -> Iterator[str]:
    """Base URL of the gateway deployed on the session's local Ray, over a database holding the test fleet."""
    from ray import serve

    from pipeline.gateway.serve import DEPLOYMENT, gateway_app, http_options

    with fleet_database(pg_server) as conninfo:
        port = free_port()
        gateway = GatewaySettings(redis_url=REDIS_URL, default_limit=50, max_limit=100, api_tokens=TOKENS)
        settings = Settings(gateway=gateway)
        serve.start(http_options=http_options("127.0.0.1", port))
        try:
            serve.run(gateway_app(settings, conninfo, min_replicas=1, max_replicas=1), name="gateway", route_prefix="/")
            status = serve.status().applications["gateway"]
            assert status.deployments[DEPLOYMENT].status == "HEALTHY"
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 60
            while httpx.get(f"{base}/ready", timeout=5).status_code != 200:
                assert time.monotonic() < deadline, "gateway not ready"
                time.sleep(0.5)
            yield base
        finally:
            serve.shutdown()
            # The replica's cache keys: scoped to its namespace and database.
            database = hashlib.sha256(conninfo.encode()).hexdigest()[:12]
            with redis.Redis.from_url(REDIS_URL, socket_timeout=1) as r:
                keys = list(r.scan_iter(f"gpu-telemetry:{settings.ray.namespace}:{database}:*"))
                if keys:
                    r.delete(*keys)


@pytest.fixture(scope="module")
def http(served: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=served, timeout=30, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        yield client


def test_the_replica_requires_its_token(served: str) -> None:
    assert httpx.get(f"{served}/api/v1/gpus", timeout=30).status_code == 401
    assert httpx.get(f"{served}/ready", timeout=30).status_code == 200


def test_lists_and_one_gpu(http: httpx.Client) -> None:
    gpus = http.get("/api/v1/gpus")
    assert gpus.status_code == 200 and [g["uuid"] for g in gpus.json()["items"]] == ["GPU-a", "GPU-b", "GPU-c"]
    assert gpus.json()["items"][2]["metrics"] == [POWER]
    hosts = http.get("/api/v1/hosts").json()["items"]
    assert [(h["hostname"], h["gpus"]) for h in hosts] == [("h1", 1), ("h2", 2)]
    catalog = [m["name"] for m in http.get("/api/v1/metrics/catalog").json()["items"]]
    assert len(catalog) == 11 and "DCGM_FI_DEV_XID_ERRORS" in catalog  # the ten of the CSV, and XID events'
    c = http.get("/api/v1/gpus/GPU-c").json()
    assert c["latest"] == [{"metric": POWER, "unit": "W", "ts": "2026-01-01T00:00:59Z", "value": 159.0}]


def test_the_replica_caches_in_redis(http: httpx.Client) -> None:
    params = {"hostname": "h2"}
    first, second = http.get("/api/v1/gpus", params=params), http.get("/api/v1/gpus", params=params)
    assert first.headers["x-cache"] == "miss" and second.headers["x-cache"] == "hit"
    assert first.json() == second.json()


def test_telemetry_pages_and_aggregates(http: httpx.Client) -> None:
    exact = http.get("/api/v1/gpus/GPU-a/telemetry", params={"start_time": iso(10), "end_time": iso(20)}).json()
    assert len(exact["items"]) == 22 and exact["items"][0]["ts"] == "2026-01-01T00:00:10Z"
    seen: list[tuple[str, str]] = []
    params: dict[str, Any] = {"start_time": iso(0), "end_time": iso(59), "limit": 17}
    while True:
        body = http.get("/api/v1/gpus/GPU-b/telemetry", params=params).json()
        seen += [(i["ts"], i["metric"]) for i in body["items"]]
        if body["next_cursor"] is None:
            break
        params["cursor"] = body["next_cursor"]
    assert len(seen) == len(set(seen)) == 120 and seen == sorted(seen, key=lambda k: (k[0], k[1] != UTIL))
    agg = http.get(
        "/api/v1/gpus/GPU-a/telemetry/aggregate",
        params={"bucket": "30s", "fn": "max", "metric": UTIL, "start_time": iso(0), "end_time": iso(59)},
    ).json()
    assert [(p["ts"], p["value"]) for p in agg["items"]] == [(iso(0), 29.0), (iso(30), 59.0)]


def test_exports_stream_through_serve(http: httpx.Client) -> None:
    window = {"start_time": iso(0), "end_time": iso(59)}
    with http.stream("GET", "/api/v1/gpus/GPU-a/telemetry", params=window, headers={"Accept": "text/csv"}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
        lines = [line for line in r.iter_lines() if line]
    assert lines[0] == "ts,metric,value" and len(lines) == 121
    r = http.get(
        "/api/v1/gpus/GPU-a/telemetry", params=window, headers={"Accept": "application/vnd.apache.arrow.stream"}
    )
    table = pyarrow.ipc.open_stream(r.content).read_all()
    assert table.num_rows == 120 and table.column_names == ["ts", "metric", "value"]


def test_the_health_check_fails_while_the_database_is_unreachable() -> None:
    from pipeline.gateway.serve import Gateway

    reader = Reader("postgresql://postgres@127.0.0.1:1/none", timeout_s=1)
    reader.open(wait=False)
    with pytest.raises(DatabaseUnavailable):
        Gateway.check_health(SimpleNamespace(_reader=reader))  # type: ignore[arg-type]
    reader.close()


def test_problems_and_metrics_through_serve(http: httpx.Client) -> None:
    missing = http.get("/api/v1/gpus/GPU-zzz/telemetry")
    assert missing.status_code == 404 and missing.headers["content-type"].startswith("application/problem+json")
    bad = http.get("/api/v1/gpus/GPU-a/telemetry", params={"start_time": iso(20), "end_time": iso(10)})
    assert bad.status_code == 400 and bad.json()["param"] == "start_time"
    text = http.get("/metrics").text
    assert (
        'http_request_duration_seconds_count{method="GET",route="/api/v1/gpus/{uuid}/telemetry",status="404"}' in text
    )
    assert 'pipeline_gateway_pool_connections{state="size"}' in text


def _closed_after(sock: socket.socket, limit_s: float) -> float | None:
    """Seconds until the server closes ``sock`` (reading whatever it answers first), None if not within ``limit_s``."""
    started = time.monotonic()
    sock.settimeout(0.5)
    while (elapsed := time.monotonic() - started) < limit_s:
        try:
            if sock.recv(65536) == b"":
                return elapsed
        except TimeoutError:
            continue
        except ConnectionError:
            return elapsed
    return None


HALF_SENT = {
    "nothing sent": b"",
    "request line only": b"GET /health HTTP/1.1\r\n",
    "headers never finished": b"GET /health HTTP/1.1\r\nHost: gateway\r\nAccept: application/json\r\n",
    "body never finished": b'GET /api/v1/gpus HTTP/1.1\r\nHost: gateway\r\nContent-Length: 1000\r\n\r\n{"a":',
}


@pytest.mark.parametrize("sent", list(HALF_SENT))
def test_a_half_sent_request_is_closed_within_the_proxys_timeout(served: str, sent: str) -> None:
    """Serve's proxy (keep_alive_timeout_s) or the gateway (a body on a GET) closes the socket; none is held."""
    from pipeline.gateway.serve import http_options

    bound = http_options("127.0.0.1", 1)["keep_alive_timeout_s"]
    host, port = served.removeprefix("http://").split(":")
    sockets = [socket.create_connection((host, int(port)), timeout=10) for _ in range(5)]
    try:
        for s in sockets:
            s.sendall(HALF_SENT[sent])
        closed = [_closed_after(s, bound + 10) for s in sockets]
    finally:
        for s in sockets:
            s.close()
    assert all(c is not None for c in closed), f"{sent}: held past {bound + 10} s: {closed}"
    assert httpx.get(f"{served}/health", timeout=10).status_code == 200
