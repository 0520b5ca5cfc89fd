"""The gateway over real HTTP (uvicorn on 127.0.0.1) against PostgreSQL: slow and hostile clients."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest
import uvicorn

from pipeline.config import GatewaySettings
from pipeline.gateway.app import build_app
from pipeline.storage.reader import Reader
from tests.integration.test_gateway import T0, fleet_database, iso

PROBLEM = "application/problem+json"
BIG = "GPU-big"
BIG_SECONDS = 60_000  # 5 metrics each: 300,000 samples, about 14 MB of CSV


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def big_db(pg_server: str) -> Iterator[str]:
    """The test fleet plus one GPU with 300,000 samples (large enough to fill socket buffers)."""
    with fleet_database(pg_server) as conninfo:
        with psycopg.connect(conninfo) as c:
            c.execute(
                "INSERT INTO gpus (uuid, hostname, gpu_index, first_seen, last_seen) VALUES (%s, 'h9', 0, %s, %s)",
                (BIG, T0, T0),
            )
            c.execute(
                "INSERT INTO telemetry (ts, value, gpu_key, metric_id) "
                "SELECT %(t0)s + make_interval(secs => s), s, g.gpu_key, m.metric_id "
                "FROM generate_series(0, %(n)s - 1) s, gpus g, (SELECT metric_id FROM metrics ORDER BY 1 LIMIT 5) m "
                "WHERE g.uuid = %(uuid)s",
                {"t0": T0, "n": BIG_SECONDS, "uuid": BIG},
            )
        yield conninfo


@contextlib.contextmanager
def serving(conninfo: str, pool_max: int = 2, **settings: Any) -> Iterator[str]:
    """The app under uvicorn on a free local port (its own pool of ``pool_max``); yields the base URL."""
    reader = Reader(conninfo, min_size=1, max_size=pool_max, timeout_s=2)
    reader.open(wait=True)
    app = build_app(reader, GatewaySettings(default_limit=50, max_limit=100, **settings))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        reader.close()


def stalled_export(base: str, uuid: str = BIG) -> socket.socket:
    """A client that asks for a large CSV export and never reads it."""
    port = int(base.rsplit(":", 1)[1])
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", port))
    path = f"/api/v1/gpus/{uuid}/telemetry?start_time={iso(0)}&end_time={iso(BIG_SECONDS)}"
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nAccept: text/csv\r\n\r\n".encode())
    return s


def sessions_in_transaction(conninfo: str) -> int:
    with psycopg.connect(conninfo, autocommit=True) as c:
        row = c.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND state LIKE 'idle in transaction%%' AND pid <> pg_backend_pid()"
        ).fetchone()
        return int(row[0]) if row else 0


# --- 1: slow export readers --------------------------------------------------------------------------------


def test_exports_that_nobody_reads_hold_no_database_connection(big_db: str) -> None:
    with serving(big_db, pool_max=2, export_chunk_rows=1000) as base:
        stalled = [stalled_export(base), stalled_export(base)]
        try:
            time.sleep(1.0)  # both exports are now blocked on their clients
            assert sessions_in_transaction(big_db) == 0
            r = httpx.get(f"{base}/api/v1/gpus", timeout=30)
            assert r.status_code == 200, r.text
            assert httpx.get(f"{base}/ready", timeout=30).status_code == 200
        finally:
            for s in stalled:
                s.close()


def test_exports_are_limited_and_a_stalled_one_is_cut_off(big_db: str) -> None:
    settings = {"export_concurrency": 1, "export_write_timeout_s": 0.5, "export_chunk_rows": 1000}
    window = {"start_time": iso(0), "end_time": iso(9)}
    with serving(big_db, **settings) as base:
        stalled = stalled_export(base)
        try:
            time.sleep(0.2)
            busy = httpx.get(f"{base}/api/v1/gpus/GPU-a/telemetry", params=window, headers={"Accept": "text/csv"})
            assert busy.status_code == 503 and busy.headers["content-type"].startswith(PROBLEM)
            assert busy.headers["retry-after"] == "1"
            deadline = time.monotonic() + 20  # the stalled export is cut off after its write timeout
            while True:
                r = httpx.get(f"{base}/api/v1/gpus/GPU-a/telemetry", params=window, headers={"Accept": "text/csv"})
                if r.status_code == 200:
                    break
                assert time.monotonic() < deadline, "the stalled export kept its slot"
                time.sleep(0.2)
            assert len(r.text.splitlines()) == 21
        finally:
            stalled.close()


# --- 2: MIG instances ----------------------------------------------------------------------------------------

MIG = "GPU-big/mig-1"


@pytest.fixture(scope="module")
def mig_db(big_db: str) -> str:
    with psycopg.connect(big_db) as c:
        c.execute(
            "INSERT INTO gpus (uuid, hostname, gpu_index, first_seen, last_seen) VALUES (%s, 'h9', 0, %s, %s) "
            "ON CONFLICT DO NOTHING",
            (MIG, T0, T0),
        )
        c.execute(
            "INSERT INTO telemetry (ts, value, gpu_key, metric_id) SELECT %s, 7.0, g.gpu_key, 1 FROM gpus g "
            "WHERE g.uuid = %s AND NOT EXISTS (SELECT 1 FROM telemetry t WHERE t.gpu_key = g.gpu_key)",
            (T0, MIG),
        )
    return big_db


@pytest.mark.parametrize("spelling", [MIG, MIG.replace("/", "%2F")])
def test_mig_instances_are_reachable_under_the_identity_they_are_listed_with(mig_db: str, spelling: str) -> None:
    with serving(mig_db) as base, httpx.Client(base_url=base) as http:
        listed = [g["uuid"] for g in http.get("/api/v1/gpus", params={"hostname": "h9"}).json()["items"]]
        assert MIG in listed
        one = http.get(f"/api/v1/gpus/{spelling}")
        assert one.status_code == 200 and one.json()["uuid"] == MIG, one.text
        window = {"start_time": iso(0), "end_time": iso(0)}
        samples = http.get(f"/api/v1/gpus/{spelling}/telemetry", params=window)
        assert samples.status_code == 200 and samples.json()["uuid"] == MIG
        assert [i["value"] for i in samples.json()["items"]] == [7.0]
        agg = http.get(f"/api/v1/gpus/{spelling}/telemetry/aggregate", params={**window, "bucket": "1m"})
        assert agg.status_code == 200 and [p["value"] for p in agg.json()["items"]] == [7.0]
        csv = http.get(f"/api/v1/gpus/{spelling}/telemetry", params=window, headers={"Accept": "text/csv"})
        assert csv.status_code == 200 and 'filename="GPU-big_mig-1.csv"' in csv.headers["content-disposition"]


# --- 8: HTTP details ------------------------------------------------------------------------------------------


def test_head_options_and_allow(mig_db: str) -> None:
    with serving(mig_db) as base, httpx.Client(base_url=base) as http:
        get = http.get("/api/v1/gpus")
        head = http.head("/api/v1/gpus")
        assert head.status_code == 200 and head.content == b""
        assert head.headers["content-type"] == get.headers["content-type"]
        assert http.head("/health").status_code == 200
        window = {"start_time": iso(0), "end_time": iso(BIG_SECONDS)}
        export = http.head(f"/api/v1/gpus/{BIG}/telemetry", params=window, headers={"Accept": "text/csv"})
        assert (
            export.status_code == 200
            and export.content == b""
            and "attachment" in export.headers["content-disposition"]
        )
        assert http.get("/api/v1/gpus").status_code == 200  # the export's slot is free again
        options = http.options("/api/v1/gpus")
        assert options.status_code == 405 and options.headers["content-type"].startswith(PROBLEM)
        assert set(options.headers["allow"].replace(" ", "").split(",")) == {"GET", "HEAD"}
        post = http.post("/api/v1/gpus")
        assert post.status_code == 405 and "GET" in post.headers["allow"]


def test_cors_is_off_by_default_and_configurable(mig_db: str) -> None:
    preflight = {"Origin": "https://grafana.example", "Access-Control-Request-Method": "GET"}
    with serving(mig_db) as base:
        r = httpx.get(f"{base}/api/v1/gpus", headers={"Origin": "https://grafana.example"})
        assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
    with serving(mig_db, cors_origins=["https://grafana.example"]) as base:
        r = httpx.options(f"{base}/api/v1/gpus", headers=preflight)
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://grafana.example"
        r = httpx.get(f"{base}/api/v1/gpus", headers={"Origin": "https://grafana.example"})
        assert r.headers["access-control-allow-origin"] == "https://grafana.example"
        other = httpx.options(f"{base}/api/v1/gpus", headers={**preflight, "Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers


# --- 9: oversized requests -------------------------------------------------------------------------------------


def raw_request(base: str, head: bytes, body: bytes = b"") -> bytes:
    """Send ``head`` (and ``body``) on a fresh socket; the start of the answer."""
    port = int(base.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(head + body)
        return s.recv(4096)


def test_a_huge_url_and_a_body_on_a_get_are_refused(mig_db: str) -> None:
    with serving(mig_db) as base:
        r = httpx.get(f"{base}/api/v1/gpus", params={"hostname": "h" * 60_000})
        assert r.status_code == 414 and r.headers["content-type"].startswith(PROBLEM)
        # 50 MB announced, 1 MB sent: the answer comes without the rest being read.
        answer = raw_request(
            base,
            b"GET /api/v1/gpus HTTP/1.1\r\nHost: x\r\nContent-Length: 52428800\r\n\r\n",
            b"x" * 1_000_000,
        )
        assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
        chunked = raw_request(
            base, b"GET /health HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n", b"5\r\nhello\r\n"
        )
        assert chunked.startswith(b"HTTP/1.1 413"), chunked[:200]


def test_the_proxy_protocol_answers_408_to_a_request_that_never_arrives_whole() -> None:
    """uvicorn with the proxy guard's protocol (as Serve's proxy runs it): half-sent requests get 408, then close."""
    from pipeline.gateway.proxy_guard import TimedHttpProtocol

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})

    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, http=TimedHttpProtocol, timeout_keep_alive=1, log_level="error"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        half = [b"", b"GET / HTTP/1.1\r\nHost: x\r\n", b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\n"]
        for sent in half:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.sendall(sent)
                started, answer = time.monotonic(), b""
                while chunk := s.recv(65536):
                    answer += chunk
                assert time.monotonic() - started < 4, sent
                assert answer.count(b"HTTP/1.1 ") == sent.count(b"\r\n\r\n") + 1 and b"408 Request Timeout" in answer, (
                    sent
                )
        # A whole request on a kept-alive connection is answered as before.
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
            assert [client.get("/").text for _ in range(3)] == ["ok"] * 3
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_large_json_is_gzipped_for_clients_that_accept_it(mig_db: str) -> None:
    """A page big enough is sent gzip-compressed (once, whole) to a client that accepts gzip; streamed
    exports, small bodies and clients that do not accept it get the bytes as they are."""
    page = f"/api/v1/gpus/{BIG}/telemetry?start_time={iso(0)}&end_time={iso(BIG_SECONDS)}&limit=100"
    with serving(mig_db, gzip_min_bytes=2048) as base, httpx.Client(base_url=base) as http:
        plain = http.get(page, headers={"Accept-Encoding": "identity"})
        assert plain.status_code == 200 and "content-encoding" not in plain.headers
        assert int(plain.headers["content-length"]) == len(plain.content) > 2048
        for accept in ("gzip", "br, gzip;q=0.5", "*"):
            packed = http.get(page, headers={"Accept-Encoding": accept})
            assert packed.headers["content-encoding"] == "gzip", accept
            assert "accept-encoding" in packed.headers["vary"].lower()
            assert packed.json() == plain.json()  # httpx decodes it
            assert int(packed.headers["content-length"]) == packed.num_bytes_downloaded < len(plain.content) / 3
        refused = http.get(page, headers={"Accept-Encoding": "gzip;q=0, deflate"})
        assert "content-encoding" not in refused.headers and refused.json() == plain.json()
        head = http.head(page, headers={"Accept-Encoding": "gzip"})
        assert head.content == b"" and head.headers["content-encoding"] == "gzip"
        assert head.headers["content-length"] == packed.headers["content-length"]
        small = http.get("/api/v1/hosts", headers={"Accept-Encoding": "gzip"})
        assert small.status_code == 200 and "content-encoding" not in small.headers
        window = {"start_time": iso(0), "end_time": iso(600)}
        csv = http.get(f"/api/v1/gpus/{BIG}/telemetry", params=window, headers={"Accept": "text/csv"})
        assert "content-encoding" not in csv.headers and len(csv.text.splitlines()) == 1 + 5 * 601
    with serving(mig_db, gzip_min_bytes=0) as base:
        off = httpx.get(f"{base}{page}", headers={"Accept-Encoding": "gzip"})
        assert off.status_code == 200 and "content-encoding" not in off.headers
