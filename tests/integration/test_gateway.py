"""The gateway's contract with TestClient over a real PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient

from pipeline.config import GatewaySettings
from pipeline.gateway.app import build_app
from pipeline.storage.reader import Reader
from tests.integration.test_storage import T0, loaded  # noqa: F401  (fixture)

PROBLEM = "application/problem+json"


@pytest.fixture
def client(loaded: str) -> Iterator[TestClient]:  # noqa: F811
    reader = Reader(loaded)
    reader.open(wait=True)
    with TestClient(build_app(reader, GatewaySettings(default_limit=50, max_limit=100))) as c:
        yield c
    reader.close()


def iso(seconds: int) -> str:
    return (T0 + timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")


def test_list_gpus_and_filters(client: TestClient) -> None:
    body = client.get("/api/v1/gpus").json()
    assert [g["uuid"] for g in body["items"]] == ["GPU-a", "GPU-b"] and body["next_cursor"] is None
    assert [g["uuid"] for g in client.get("/api/v1/gpus", params={"hostname": "h2"}).json()["items"]] == ["GPU-b"]
    page = client.get("/api/v1/gpus", params={"limit": 1}).json()
    rest = client.get("/api/v1/gpus", params={"limit": 1, "cursor": page["next_cursor"]}).json()
    assert [g["uuid"] for g in page["items"] + rest["items"]] == ["GPU-a", "GPU-b"]
    assert rest["next_cursor"] is None


def test_telemetry_window_is_inclusive_and_ordered(client: TestClient) -> None:
    r = client.get("/api/v1/gpus/GPU-a/telemetry", params={"start_time": iso(10), "end_time": iso(20)})
    assert r.status_code == 200
    items = r.json()["items"]
    assert len(items) == 22
    assert items[0]["ts"].startswith("2026-01-01T00:00:10") and items[-1]["ts"].startswith("2026-01-01T00:00:20")
    assert [i["ts"] for i in items] == sorted(i["ts"] for i in items)
    one = client.get(
        "/api/v1/gpus/GPU-a/telemetry",
        params={"start_time": iso(10), "end_time": iso(10), "metric": "DCGM_FI_DEV_GPU_UTIL"},
    ).json()["items"]
    assert one == [{"ts": "2026-01-01T00:00:10Z", "metric": "DCGM_FI_DEV_GPU_UTIL", "value": 10.0}]


def test_pages_walk_every_sample_once(client: TestClient) -> None:
    seen: list[tuple[str, str]] = []
    params = {"start_time": iso(0), "end_time": iso(59), "limit": 7}
    cursor = None
    while True:
        body = client.get("/api/v1/gpus/GPU-b/telemetry", params={**params, **({"cursor": cursor} if cursor else {})})
        data = body.json()
        seen += [(i["ts"], i["metric"]) for i in data["items"]]
        cursor = data["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == len(set(seen)) == 120


@pytest.mark.parametrize(
    ("path", "params", "status", "detail"),
    [
        ("/api/v1/gpus/GPU-zzz/telemetry", {}, 404, "GPU GPU-zzz not found"),
        (
            "/api/v1/gpus/GPU-a/telemetry",
            {"start_time": iso(20), "end_time": iso(10)},
            400,
            "start_time 2026-01-01T00:00:20+00:00 is after end_time",
        ),
        ("/api/v1/gpus/GPU-a/telemetry", {"start_time": "yesterday"}, 422, "start_time"),
        ("/api/v1/gpus/GPU-a/telemetry", {"order": "sideways"}, 422, "order"),
        ("/api/v1/gpus/GPU-a/telemetry", {"limit": 101}, 400, "limit 101 exceeds the maximum 100"),
        ("/api/v1/gpus/GPU-a/telemetry", {"limit": 0}, 422, "limit"),
        ("/api/v1/gpus/GPU-a/telemetry", {"metric": "NOPE"}, 400, "metric `NOPE` is not a known metric"),
        ("/api/v1/gpus", {"cursor": "garbage"}, 400, "cursor `garbage` is not a valid gpus cursor"),
        ("/api/v1/nothing", {}, 404, "Not Found"),
    ],
)
def test_problems(client: TestClient, path: str, params: dict[str, object], status: int, detail: str) -> None:
    r = client.get(path, params=params)
    assert r.status_code == status
    assert r.headers["content-type"].startswith(PROBLEM)
    body = r.json()
    assert body["status"] == status and detail in body["detail"] and body["title"]


def test_health_ready_and_metrics(client: TestClient) -> None:
    assert client.get("/health").json() == {"status": "ok", "detail": None}
    assert client.get("/ready").json()["status"] == "ok"
    client.get("/api/v1/gpus")
    text = client.get("/metrics").text
    assert 'http_request_duration_seconds_bucket{le="0.005",method="GET",route="/api/v1/gpus",status="200"}' in text
    assert "pipeline_gateway_pool_connections" in text


def test_ready_fails_when_the_database_is_unreachable() -> None:
    reader = Reader("postgresql://postgres@127.0.0.1:1/none", timeout_s=1)
    reader.open(wait=False)
    with TestClient(build_app(reader)) as c:
        r = c.get("/ready")
        assert r.status_code == 503 and r.json()["status"] == "unavailable"
        assert c.get("/api/v1/gpus").status_code == 503
    reader.close()
