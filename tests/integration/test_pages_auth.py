"""The pages over a real PostgreSQL: the token prompt and its cookie, security headers, /pipeline."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient

from pipeline.config import GatewaySettings
from pipeline.gateway.app import build_app
from pipeline.gateway.auth import COOKIE
from pipeline.gateway.pages.layout import CSP
from pipeline.storage.reader import Reader

READ, METRICS = "r" * 12 + "-read;token", "m" * 24
TOKENS = f"read:{READ},metrics:{METRICS}"
EVIL = "<img src=x onerror=alert(1)>"
HTML = "text/html; charset=utf-8"


@pytest.fixture
def reader(fresh_db: str) -> Iterator[Reader]:
    r = Reader(fresh_db)
    r.open(wait=True)
    yield r
    r.close()


@pytest.fixture
def client(reader: Reader) -> Iterator[TestClient]:
    with TestClient(build_app(reader, GatewaySettings(api_tokens=TOKENS))) as c:
        yield c


def login(client: TestClient, token: str = READ, **headers: str) -> Any:
    return client.post("/login", headers={"Authorization": f"Bearer {token}", **headers})


def test_a_page_without_a_token_is_the_prompt_and_never_a_json_problem(client: TestClient) -> None:
    for path in ("/pipeline", "/logout"):
        r = client.get(path) if path != "/logout" else client.post(path)
        assert r.status_code == 401 and r.headers["content-type"] == HTML, path
        assert r.headers["content-security-policy"] == CSP and r.headers["www-authenticate"].startswith("Bearer")
        assert 'id="login"' in r.text and 'type="password"' in r.text and 'method="post"' in r.text
    assert client.get("/api/v1/gpus").headers["content-type"].startswith("application/problem+json")


def test_the_prompt_stores_the_token_in_an_httponly_strict_cookie_that_opens_pages_only(client: TestClient) -> None:
    r = login(client)
    assert r.status_code == 204
    cookie = r.headers["set-cookie"]
    parts = [p.strip().lower() for p in cookie.split(";")]
    assert "httponly" in parts and "samesite=strict" in parts and "path=/" in parts and "secure" not in parts
    assert READ not in cookie  # encoded: the token holds a ';' a cookie cannot carry
    page = client.get("/pipeline")
    assert page.status_code == 200 and page.headers["content-type"] == HTML and "<h1>Pipeline</h1>" in page.text
    assert client.cookies.get(COOKIE)
    for path in ("/api/v1/gpus", "/metrics", "/openapi.json", "/docs"):
        assert client.get(path).status_code == 401, f"the cookie must not open {path}"
    assert client.get("/api/v1/gpus", headers={"Authorization": f"Bearer {READ}"}).status_code == 200


def test_sign_in_refuses_wrong_tokens_and_other_origins(client: TestClient) -> None:
    assert client.post("/login").status_code == 401
    assert login(client, "x" * 24).status_code == 401
    assert login(client, METRICS).status_code == 403
    other = login(client, Origin="https://evil.example")
    assert other.status_code == 403 and "set-cookie" not in other.headers
    assert login(client, Origin="http://testserver").status_code == 204
    assert "secure" in login(client, **{"X-Forwarded-Proto": "https"}).headers["set-cookie"].lower()


def test_a_stale_cookie_gets_the_prompt_and_is_cleared_and_sign_out_clears_it(client: TestClient) -> None:
    client.cookies.set(COOKIE, "c3RhbGUtdG9rZW4tMDEyMzQ1Njc4OQ")
    r = client.get("/pipeline")
    assert r.status_code == 401 and "no longer accepted" in r.text
    assert f'{COOKIE}=""' in r.headers["set-cookie"] and "max-age=0" in r.headers["set-cookie"].lower()
    client.cookies.clear()
    assert login(client).status_code == 204
    out = client.post("/logout", follow_redirects=False)
    assert (
        out.status_code == 303 and out.headers["location"] == "/" and "max-age=0" in out.headers["set-cookie"].lower()
    )


def test_no_token_reaches_a_log_or_a_url(client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    login(client)
    page = client.get("/pipeline")
    client.get("/pipeline?token=nothing")
    assert READ not in caplog.text and READ not in page.text
    prompt = TestClient(client.app).get("/pipeline").text  # a new browser: the prompt
    assert '<form id="login" class="prompt" method="post" action="/login">' in prompt  # never a GET (a URL)


def test_security_headers_and_auth_off(reader: Reader) -> None:
    with TestClient(build_app(reader, GatewaySettings(auth="off"))) as c:
        r = c.get("/pipeline")
        assert r.status_code == 200 and "Sign out" not in r.text
        for name, value in (
            ("x-content-type-options", "nosniff"),
            ("x-frame-options", "DENY"),
            ("referrer-policy", "no-referrer"),
            ("cache-control", "no-store"),
        ):
            assert r.headers[name] == value
        assert c.post("/login").status_code == 204 and "set-cookie" not in c.post("/login").headers


def test_page_errors_are_pages_and_pages_stay_out_of_the_spec(client: TestClient) -> None:
    login(client)
    r = client.get("/pipeline?nosuch=1")
    assert r.status_code == 400 and r.headers["content-type"] == HTML and "nosuch" in r.text
    spec = client.get("/openapi.json", headers={"Authorization": f"Bearer {READ}"}).json()
    assert not [p for p in spec["paths"] if not p.startswith(("/api/", "/health", "/ready", "/metrics"))]


# --- /pipeline ----------------------------------------------------------------------------------------


def _rejects_and_offsets(conninfo: str) -> None:
    now = datetime.now(UTC)
    with psycopg.connect(conninfo) as c:
        for i, value in enumerate(("abc", "x<y", "9223372036854775794")):
            reason = f"value `{value}` for DCGM_FI_DEV_GPU_TEMP is not a number"
            c.execute(
                "INSERT INTO rejects (ts, source, line, raw, reason) VALUES (%s, 'fleet.csv', %s, %s, %s)",
                (now - timedelta(seconds=i), i, EVIL, reason),
            )
        c.execute("INSERT INTO rejects (ts, source, line, raw, reason) VALUES (%s, 's', 1, 'r', %s)", (now, EVIL))
        c.execute(
            "INSERT INTO rejects (ts, source, line, raw, reason) VALUES (%s, 's', 1, 'r', 'too old')",
            (now - timedelta(hours=2),),
        )
        c.execute(
            "INSERT INTO consumer_offsets (group_id, partition, next_offset, rows_committed, rejects_committed) "
            "VALUES ('telemetry-collectors', 0, 7, 700, 3), ('telemetry-collectors', 1, 2, 200, 1), "
            "('other-group', 0, 9, 999, 0)"
        )


class View:
    """A pipeline as the gateway's view reports it (plain data: what the brokers and supervisor return)."""

    namespace = "gpu-telemetry"
    group = "telemetry-collectors"

    def brokers(self) -> list[Any]:
        part = {
            "start_offset": 0,
            "end_offset": 9,
            "bytes_held": 4096,
            "rows_held": 120,
            "rows_appended": 1000,
            "rows_fetched": 900,
            "appends": 9,
            "duplicates": 0,
            "blocked_s": 0.5,
            "disk_bytes": 0,
            "disk_full": None,
            "groups": {"telemetry-collectors": {"committed": 7, "lag_batches": 2, "lag_rows": 300}},
        }
        other = {
            **part,
            "end_offset": 2,
            "groups": {"telemetry-collectors": {"committed": 2, "lag_batches": 0, "lag_rows": 0}},
        }
        return [{"broker": 0, "partitions": {0: part, 1: other}, "uptime_s": 100.0}]

    def supervisor(self) -> dict[str, Any]:
        return {
            "roles": {
                "collector": {"actual": 2, "desired": 3, "pinned": None, "auto": True, "min": 1, "max": 4},
                "streamer": {"actual": 1, "desired": 1, "pinned": 1, "auto": False, "min": 1, "max": 1},
            },
            "decisions": [
                {
                    "role": "collector",
                    "current": 1,
                    "desired": 2,
                    "direction": "up",
                    "reason": "lag 900 > 500",
                    "wall_time": 1767225600.0,
                },
                {
                    "role": "collector",
                    "current": 2,
                    "desired": 3,
                    "direction": "up",
                    "reason": EVIL,
                    "wall_time": 1767225660.0,
                },
            ],
            "actors": {
                "collector-0": {
                    "role": "collector",
                    "state": "running",
                    "pid": 11,
                    "restarts": 0,
                    "recreated": 0,
                    "reason": None,
                },
                "collector-1": {
                    "role": "collector",
                    "state": "gone",
                    "pid": None,
                    "restarts": 2,
                    "recreated": 1,
                    "reason": "node lost",
                },
            },
        }


def test_the_pipeline_page_from_the_database_alone(fresh_db: str, reader: Reader) -> None:
    _rejects_and_offsets(fresh_db)
    with TestClient(build_app(reader, GatewaySettings(auth="off"))) as c:
        text = c.get("/pipeline").text
    assert "does not see the pipeline" in text
    assert "<dd>900</dd>" in text and "<dd>4</dd>" in text  # stored and rejected in the group, not the other
    assert 'value `…` for DCGM_FI_DEV_GPU_TEMP is not a number</td><td class="n">3</td>' in text
    assert EVIL not in text and "&lt;img src=x onerror=alert(1)&gt;" in text
    assert "too old" not in text  # rejects older than the hour are not counted


def test_the_pipeline_page_with_the_queue_and_the_supervisor(fresh_db: str, reader: Reader) -> None:
    _rejects_and_offsets(fresh_db)
    with TestClient(build_app(reader, GatewaySettings(auth="off"), pipeline=View())) as c:
        text = c.get("/pipeline").text
    assert "20 (mean since start)" in text and "<dd>300</dd>" in text  # 2 x 1000 rows over 100 s; lag of both
    lag_rows = text.split('id="lag"')[1].split("</table>")[0]
    assert '<td>0</td><td>0</td><td class="n">9</td><td class="n">7</td><td class="n">300</td>' in lag_rows
    assert '<span class="bad">gone</span>' in text and "node lost" in text
    scaling = text.split('id="scaling"')[1]
    assert scaling.index("2 → 3") < scaling.index("1 → 2")  # newest decision first
    assert "pinned at 1" in scaling and "1..4" in scaling
    assert EVIL not in text
