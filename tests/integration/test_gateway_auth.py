"""Bearer tokens with scopes over a real PostgreSQL: who may call what, and how a refusal reads."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from pipeline.config import GatewaySettings
from pipeline.gateway.app import build_app
from pipeline.storage.reader import Reader

PROBLEM = "application/problem+json"
READ, METRICS, OTHER_READ = "r" * 24, "m" * 24, "q" * 24
TOKENS = f"read:{READ},metrics:{METRICS},read:{OTHER_READ}"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def client(fresh_db: str) -> Iterator[TestClient]:
    reader = Reader(fresh_db)
    reader.open(wait=True)
    with TestClient(build_app(reader, GatewaySettings(api_tokens=TOKENS))) as c:
        yield c
    reader.close()


def test_probes_are_open_and_everything_else_needs_a_token(client: TestClient) -> None:
    assert client.get("/health").status_code == 200 and client.get("/ready").status_code == 200
    for path in ("/api/v1/gpus", "/api/v1/hosts", "/metrics", "/docs", "/openapi.json", "/api/v1/nothing"):
        r = client.get(path)
        assert r.status_code == 401 and r.headers["content-type"].startswith(PROBLEM), path
        assert r.headers["www-authenticate"].startswith("Bearer")


def test_each_scope_opens_its_own_paths(client: TestClient) -> None:
    for token in (READ, OTHER_READ):
        assert client.get("/api/v1/gpus", headers=bearer(token)).status_code == 200
        assert client.get("/openapi.json", headers=bearer(token)).status_code == 200
    assert client.get("/metrics", headers=bearer(METRICS)).status_code == 200
    wrong = client.get("/metrics", headers=bearer(READ))
    assert wrong.status_code == 403 and wrong.headers["content-type"].startswith(PROBLEM)
    assert "metrics" in wrong.json()["detail"]
    assert client.get("/api/v1/gpus", headers=bearer(METRICS)).status_code == 403


@pytest.mark.parametrize(
    "header", ["Bearer " + "x" * 24, "Bearer " + READ[:-1], "Basic " + READ, "Bearer", READ, "Bearer  "]
)
def test_a_bad_or_malformed_token_is_a_401(client: TestClient, header: str) -> None:
    r = client.get("/api/v1/gpus", headers={"Authorization": header})
    assert r.status_code == 401 and r.headers["content-type"].startswith(PROBLEM) and READ not in r.text


def test_auth_off_serves_without_tokens(fresh_db: str) -> None:
    reader = Reader(fresh_db)
    reader.open(wait=True)
    with TestClient(build_app(reader, GatewaySettings(api_tokens=TOKENS, auth="off"))) as c:
        assert c.get("/api/v1/gpus").status_code == 200 and c.get("/metrics").status_code == 200
    reader.close()


def test_the_spec_declares_the_scheme(client: TestClient) -> None:
    spec = client.get("/openapi.json", headers=bearer(READ)).json()
    assert spec["components"]["securitySchemes"]["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": spec["components"]["securitySchemes"]["bearer"]["description"],
    }
    assert spec["paths"]["/api/v1/gpus"]["get"]["security"] == [{"bearer": []}]
    assert {"401", "403"} <= set(spec["paths"]["/api/v1/gpus"]["get"]["responses"])
    assert spec["paths"]["/health"]["get"]["security"] == []
