"""Request metrics: every label comes from a closed set, whatever the request holds (no database)."""

from __future__ import annotations

from fastapi.testclient import TestClient

from pipeline.config import GatewaySettings
from pipeline.gateway.app import build_app
from pipeline.storage.reader import Reader


def series(text: str) -> set[str]:
    return {line.split(" ")[0] for line in text.splitlines() if line.startswith("http_request")}


def test_invented_methods_and_paths_add_no_series() -> None:
    app = build_app(Reader("postgresql://metrics.invalid/none"), GatewaySettings())
    with TestClient(app) as client:
        client.request("BREW", "/health")
        client.request("BREW", "/no/such/path")
        client.get("/no/such/path")
        client.get("/metrics")
        before = series(client.get("/metrics").text)
        for i in range(50):
            client.request(f"M{i}", "/health")
            client.request(f"X{i}", f"/no/such/{i}")
            client.get(f"/other/{i}")
        after = series(client.get("/metrics").text)
    assert after == before
    assert any('method="other"' in s for s in after)
    assert not any('method="BREW"' in s for s in after)


def replica(role: str, epoch: int, in_sync: list[int], lag: dict[int, int]) -> dict[str, object]:
    return {"role": role, "epoch": epoch, "replicas": [0, 1, 2], "in_sync": in_sync, "lag": lag}


def test_under_replicated_partitions_and_replica_lag_come_from_the_leaders() -> None:
    brokers = [
        {
            "partitions": {},
            "replication": {0: replica("leader", 3, [0, 1, 2], {1: 0, 2: 0}), 1: replica("follower", 2, [], {})},
        },
        {"partitions": {}, "replication": {1: replica("leader", 2, [1, 2], {2: 1, 0: 40})}},
        {"partitions": {}, "replication": {2: replica("follower", 1, [], {})}},  # 2's leader is away
    ]
    app = build_app(Reader("postgresql://metrics.invalid/none"), GatewaySettings(), queue_stats=lambda: brokers)
    with TestClient(app) as client:
        text = client.get("/metrics").text
    assert "message_queue_under_replicated_partitions 2.0" in text  # 1 lacks a replica, 2 has no leader
    assert 'message_queue_replica_lag{partition="1",replica="0"} 40.0' in text
    assert 'message_queue_replica_lag{partition="0",replica="2"} 0.0' in text


def test_one_copy_queues_export_no_replication_series() -> None:
    app = build_app(
        Reader("postgresql://metrics.invalid/none"), GatewaySettings(), queue_stats=lambda: [{"partitions": {}}]
    )
    with TestClient(app) as client:
        text = client.get("/metrics").text
    assert "message_queue_under_replicated_partitions" not in text
