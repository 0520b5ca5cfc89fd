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
