"""Problems: an unexpected failure is a 500 problem+json that tells the client nothing internal (no database)."""

from __future__ import annotations

from fastapi.testclient import TestClient

from pipeline.config import GatewaySettings
from pipeline.gateway.app import build_app
from pipeline.storage.reader import HostRow, Reader


class BrokenReader(Reader):
    """A reader with a bug: listing hosts raises something no handler expects."""

    def hosts(self, limit: int, after: str | None = None) -> list[HostRow]:
        raise RuntimeError("secret internal detail: password=hunter2")


def test_an_unexpected_error_is_a_generic_500_problem() -> None:
    app = build_app(BrokenReader("postgresql://problems.invalid/none"), GatewaySettings())
    with TestClient(app, raise_server_exceptions=False) as client:
        r = client.get("/api/v1/hosts")
    assert r.status_code == 500 and r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["title"] == "Internal Server Error" and "hunter2" not in r.text
