"""The OpenAPI document: committed copy up to date, and schemathesis against the generated spec."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from pipeline.config import GatewaySettings
from pipeline.gateway.app import build_app
from pipeline.gateway.openapi import generate, render
from pipeline.storage.reader import Reader
from tests.integration.test_gateway import fleet_database
from tests.integration.test_gateway_fleet import stored

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "schemathesis-token-0123456789"
TOKENS = f"read:{TOKEN},metrics:{TOKEN}"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
COMMITTED = ROOT / "docs" / "openapi.json"


def test_committed_spec_is_the_generated_one() -> None:
    assert COMMITTED.read_text() == render(), "docs/openapi.json is out of date: run `make openapi`"


def test_every_operation_parameter_and_response_is_documented() -> None:
    spec = generate()
    for path, item in spec["paths"].items():
        for method, op in item.items():
            where = f"{method.upper()} {path}"
            assert op.get("summary"), f"{where} has no summary"
            for param in op.get("parameters", []):
                assert param.get("description"), f"{where}: parameter {param['name']} has no description"
                assert param["schema"].get("examples") or param.get("examples"), f"{where}: {param['name']}"
            assert "200" in op["responses"], where
            if path.startswith("/api/"):
                assert {"400", "422", "503"} <= set(op["responses"]), f"{where} lacks problem responses"
                for code in ("400", "422", "503"):
                    content = op["responses"][code]["content"]["application/problem+json"]
                    assert content["schema"] == {"$ref": "#/components/schemas/Problem"} and content["example"]
            if "{uuid}" in path:
                assert "404" in op["responses"], f"{where} lacks its 404"
    telemetry = spec["paths"]["/api/v1/gpus/{uuid}/telemetry"]["get"]["responses"]["200"]["content"]
    assert set(telemetry) == {"application/json", "text/csv", "application/vnd.apache.arrow.stream"}


@pytest.fixture(scope="module")
def api_app(pg_server: str) -> Iterator[FastAPI]:
    with fleet_database(pg_server) as conninfo:
        stored(conninfo, xids={12: 79.0})  # allocations, usage, events and MIG devices, as the writer stores them
        reader = Reader(conninfo)
        reader.open(wait=True)
        yield build_app(reader, GatewaySettings(default_limit=50, max_limit=100, api_tokens=TOKENS))
        reader.close()


@pytest.fixture(scope="module")
def api_schema(api_app: FastAPI) -> Any:
    """The spec as the running app serves it, with its ASGI transport."""
    return schemathesis.openapi.from_asgi("/openapi.json", api_app, headers=AUTH)


OPERATIONS = [(path, method) for path, item in generate()["paths"].items() for method in item]


@pytest.mark.parametrize(("path", "method"), OPERATIONS, ids=[f"{m.upper()} {p}" for p, m in OPERATIONS])
def test_api_conforms_to_its_schema(api_schema: Any, path: str, method: str) -> None:
    """No 5xx, and every response matches the documented schema, for generated requests."""
    statuses: list[int] = []

    @given(
        case=api_schema[path][method].as_strategy(),
        real=st.sampled_from(["GPU-a", "GPU-c", "GPU-x", "GPU-parent/mig-2", None]),
        host=st.sampled_from(["h1", "node-1", None]),
    )
    @settings(
        max_examples=30,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def check(case: Any, real: str | None, host: str | None) -> None:
        if real is not None and "uuid" in (case.path_parameters or {}):
            case.path_parameters["uuid"] = real  # also reach the GPUs that exist, not only 404s
        if host is not None and "hostname" in (case.path_parameters or {}):
            case.path_parameters["hostname"] = host
        response = case.call_and_validate(headers=AUTH, checks=[not_a_server_error, response_schema_conformance])
        statuses.append(response.status_code)

    check()
    assert statuses and max(statuses) < 500
    assert 401 not in statuses and 403 not in statuses  # authentication on, and every call authorised
