"""The gateway's contract with TestClient over a real PostgreSQL (no cache; see test_gateway_cache.py)."""

from __future__ import annotations

import contextlib
import uuid as uuidlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pyarrow as pa
import pyarrow.ipc
import pytest
from fastapi.testclient import TestClient

from pipeline.config import GatewaySettings
from pipeline.gateway.app import build_app
from pipeline.gateway.params import negotiate
from pipeline.storage.migrate import migrate
from pipeline.storage.reader import Reader
from tests.conftest import _with_dbname

PROBLEM = "application/problem+json"
T0 = datetime(2026, 1, 1, tzinfo=UTC)
UTIL, TEMP, POWER = "DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_GPU_TEMP", "DCGM_FI_DEV_POWER_USAGE"
# uuid, host, index, model, metrics, value offset: one sample per metric per second for 60 s from T0.
FLEET = (
    ("GPU-a", "h1", 0, "H100", (TEMP, UTIL), 0.0),
    ("GPU-b", "h2", 0, "H100", (TEMP, UTIL), 0.0),
    ("GPU-c", "h2", 1, "A100", (POWER,), 100.0),
)


def iso(seconds: float) -> str:
    return (T0 + timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")


def insert_samples(conninfo: str, uuid: str, metric: str, seconds: range, offset: float = 0.0) -> None:
    """Samples of one series at T0 + each second, valued offset + second."""
    with psycopg.connect(conninfo) as c:
        c.execute(
            "INSERT INTO telemetry (ts, value, gpu_key, metric_id) "
            "SELECT %(t0)s + make_interval(secs => s), %(offset)s + s, g.gpu_key, m.metric_id "
            "FROM generate_series(%(lo)s::int, %(hi)s::int) s, gpus g, metrics m WHERE g.uuid = %(uuid)s "
            "AND m.name = %(metric)s",
            {"t0": T0, "offset": offset, "lo": seconds.start, "hi": seconds.stop - 1, "uuid": uuid, "metric": metric},
        )
        c.execute(LATEST, (uuid,))


# What the collectors keep in gpu_latest, recomputed here for data inserted by hand: each metric's newest sample.
LATEST = """
INSERT INTO gpu_latest (gpu_key, ts, metric_ids, sample_ts, vals)
SELECT gpu_key, max(ts), array_agg(metric_id ORDER BY metric_id), array_agg(ts ORDER BY metric_id),
       array_agg(value ORDER BY metric_id)
  FROM (SELECT DISTINCT ON (t.metric_id) t.gpu_key, t.metric_id, t.ts, t.value FROM telemetry t
          JOIN gpus g USING (gpu_key) WHERE g.uuid = %s ORDER BY t.metric_id, t.ts DESC) x
 GROUP BY gpu_key
ON CONFLICT (gpu_key) DO UPDATE SET ts = EXCLUDED.ts, metric_ids = EXCLUDED.metric_ids,
    sample_ts = EXCLUDED.sample_ts, vals = EXCLUDED.vals
"""


def load_fleet(conninfo: str) -> None:
    """Three GPUs on two hosts (see FLEET)."""
    with psycopg.connect(conninfo) as c:
        for uuid, host, index, model, _, _ in FLEET:
            c.execute(
                "INSERT INTO gpus (uuid, hostname, gpu_index, device, model, first_seen, last_seen) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s)",
                (uuid, host, index, f"nvidia{index}", model, T0, T0 + timedelta(seconds=59)),
            )
    for uuid, _, _, _, metrics, offset in FLEET:
        for metric in metrics:
            insert_samples(conninfo, uuid, metric, range(60), offset)


@contextlib.contextmanager
def fleet_database(pg_server: str) -> Iterator[str]:
    """A new migrated database holding FLEET, dropped afterwards (for module-scoped fixtures)."""
    name = f"t_{uuidlib.uuid4().hex[:12]}"
    with psycopg.connect(pg_server, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    conninfo = _with_dbname(pg_server, name)
    try:
        migrate(conninfo)
        load_fleet(conninfo)
        yield conninfo
    finally:
        with psycopg.connect(pg_server, autocommit=True) as admin, contextlib.suppress(psycopg.Error):
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def fleet(fresh_db: str) -> str:
    load_fleet(fresh_db)
    return fresh_db


@contextlib.contextmanager
def make_client(conninfo: str, **settings: Any) -> Iterator[TestClient]:
    reader = Reader(conninfo)
    reader.open(wait=True)
    app = build_app(reader, GatewaySettings(default_limit=50, max_limit=100, **settings))
    with TestClient(app) as c:
        yield c
    reader.close()


@pytest.fixture
def client(fleet: str) -> Iterator[TestClient]:
    with make_client(fleet) as c:
        yield c


def uuids(body: dict[str, Any]) -> list[str]:
    return [g["uuid"] for g in body["items"]]


def walk(client: TestClient, path: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        r = client.get(path, params={**params, **({"cursor": cursor} if cursor else {})})
        assert r.status_code == 200, r.text
        items += r.json()["items"]
        cursor = r.json()["next_cursor"]
        if cursor is None:
            return items


# --- GPUs, hosts, catalogue ----------------------------------------------------------------------------


def test_list_gpus_with_every_filter(client: TestClient) -> None:
    body = client.get("/api/v1/gpus").json()
    assert uuids(body) == ["GPU-a", "GPU-b", "GPU-c"] and body["next_cursor"] is None
    assert body["items"][0] == {
        "uuid": "GPU-a",
        "hostname": "h1",
        "gpu_index": 0,
        "device": "nvidia0",
        "model": "H100",
        "first_seen": "2026-01-01T00:00:00Z",
        "last_seen": "2026-01-01T00:00:59Z",
        "metrics": [TEMP, UTIL],
        "driver_version": None,
        "instance": None,
        "parent_uuid": None,
        "mig_instance": None,
        "mig_profile": None,
        "allocation": None,
    }
    assert body["items"][2]["metrics"] == [POWER]
    assert uuids(client.get("/api/v1/gpus", params={"hostname": "h2"}).json()) == ["GPU-b", "GPU-c"]
    assert uuids(client.get("/api/v1/gpus", params={"model": "A100"}).json()) == ["GPU-c"]
    assert uuids(client.get("/api/v1/gpus", params={"metric": POWER}).json()) == ["GPU-c"]
    assert uuids(client.get("/api/v1/gpus", params={"metric": TEMP, "hostname": "h2"}).json()) == ["GPU-b"]
    assert uuids(client.get("/api/v1/gpus", params={"hostname": "nope"}).json()) == []
    assert [g["uuid"] for g in walk(client, "/api/v1/gpus", {"limit": 1})] == ["GPU-a", "GPU-b", "GPU-c"]
    assert [g["uuid"] for g in walk(client, "/api/v1/gpus", {"limit": 1, "hostname": "h2"})] == ["GPU-b", "GPU-c"]


def test_gpu_metrics_are_those_of_the_recent_window(fleet: str, client: TestClient) -> None:
    # GPU-a reports only UTIL an hour later: TEMP falls out of its 15-minute window.
    insert_samples(fleet, "GPU-a", UTIL, range(3600, 3601), offset=1000.0)
    a = client.get("/api/v1/gpus/GPU-a").json()
    assert a["metrics"] == [UTIL]
    assert a["latest"] == [{"metric": UTIL, "unit": "%", "ts": "2026-01-01T01:00:00Z", "value": 4600.0}]
    assert uuids(client.get("/api/v1/gpus", params={"metric": TEMP}).json()) == ["GPU-b"]


def test_one_gpu_with_its_latest_values(client: TestClient) -> None:
    b = client.get("/api/v1/gpus/GPU-b").json()
    assert b["uuid"] == "GPU-b" and b["hostname"] == "h2" and b["metrics"] == [TEMP, UTIL]
    assert b["latest"] == [
        {"metric": TEMP, "unit": "C", "ts": "2026-01-01T00:00:59Z", "value": 59.0},
        {"metric": UTIL, "unit": "%", "ts": "2026-01-01T00:00:59Z", "value": 59.0},
    ]
    c = client.get("/api/v1/gpus/GPU-c").json()
    assert c["latest"] == [{"metric": POWER, "unit": "W", "ts": "2026-01-01T00:00:59Z", "value": 159.0}]


def test_the_latest_value_table_answers_not_the_samples(fleet: str) -> None:
    """GPU list and detail read gpu_latest (what the collectors keep), never the samples."""
    with psycopg.connect(fleet) as c:
        # A series the table knows and telemetry does not: proves where the answers come from.
        c.execute(
            "UPDATE gpu_latest l SET metric_ids = l.metric_ids || m.metric_id, sample_ts = l.sample_ts || %s, "
            "vals = l.vals || 7.5::float8 FROM gpus g, metrics m WHERE g.gpu_key = l.gpu_key AND g.uuid = 'GPU-a' "
            "AND m.name = %s",
            (T0 + timedelta(seconds=30), POWER),
        )
    with make_client(fleet) as client:
        a = client.get("/api/v1/gpus/GPU-a").json()
        assert a["metrics"] == [TEMP, UTIL, POWER] or a["metrics"] == sorted([TEMP, UTIL, POWER])
        assert {"metric": POWER, "unit": "W", "ts": "2026-01-01T00:00:30Z", "value": 7.5} in a["latest"]
        assert {"metric": TEMP, "unit": "C", "ts": "2026-01-01T00:00:59Z", "value": 59.0} in a["latest"]
        assert uuids(client.get("/api/v1/gpus", params={"metric": POWER}).json()) == ["GPU-a", "GPU-c"]


def test_hosts_with_gpu_counts(client: TestClient) -> None:
    items = client.get("/api/v1/hosts").json()["items"]
    assert [(h["hostname"], h["gpus"], h["models"]) for h in items] == [
        ("h1", 1, ["H100"]),
        ("h2", 2, ["A100", "H100"]),
    ]
    assert items[1]["first_seen"] == "2026-01-01T00:00:00Z" and items[1]["last_seen"] == "2026-01-01T00:00:59Z"
    assert [h["hostname"] for h in walk(client, "/api/v1/hosts", {"limit": 1})] == ["h1", "h2"]


def test_metric_catalogue(client: TestClient) -> None:
    items = walk(client, "/api/v1/metrics/catalog", {"limit": 3})
    assert len(items) == 11 and [m["name"] for m in items] == sorted(m["name"] for m in items)
    assert {"name": TEMP, "unit": "C", "help": "GPU temperature"} in items


# --- telemetry -----------------------------------------------------------------------------------------


def test_telemetry_window_is_inclusive_and_ordered(client: TestClient) -> None:
    r = client.get("/api/v1/gpus/GPU-a/telemetry", params={"start_time": iso(10), "end_time": iso(20)})
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    body = r.json()
    assert body["start_time"] == "2026-01-01T00:00:10Z" and body["end_time"] == "2026-01-01T00:00:20Z"
    keys = [(i["ts"], i["metric"]) for i in body["items"]]
    assert len(keys) == 22 and keys[0] == ("2026-01-01T00:00:10Z", UTIL) and keys[-1][0] == "2026-01-01T00:00:20Z"
    assert keys == sorted(keys, key=lambda k: (k[0], k[1] != UTIL))  # (ts, metric_id): UTIL is id 1, TEMP 5
    one = client.get(
        "/api/v1/gpus/GPU-a/telemetry", params={"start_time": iso(10), "end_time": iso(10), "metric": UTIL}
    ).json()["items"]
    assert one == [{"ts": "2026-01-01T00:00:10Z", "metric": UTIL, "value": 10.0}]
    # One microsecond inside either bound drops that bound's samples.
    inner = client.get(
        "/api/v1/gpus/GPU-a/telemetry", params={"start_time": iso(10.000001), "end_time": iso(19.999999)}
    ).json()["items"]
    assert len(inner) == 18


def test_telemetry_descending_and_metric_filters(client: TestClient) -> None:
    window = {"start_time": iso(0), "end_time": iso(59)}
    asc = walk(client, "/api/v1/gpus/GPU-b/telemetry", window)
    desc = walk(client, "/api/v1/gpus/GPU-b/telemetry", {**window, "order": "desc"})
    assert len(asc) == 120 and desc == asc[::-1]
    assert desc[0] == {"ts": "2026-01-01T00:00:59Z", "metric": TEMP, "value": 59.0}
    both = client.get("/api/v1/gpus/GPU-b/telemetry", params={**window, "metric": [UTIL, TEMP]}).json()["items"]
    assert {i["metric"] for i in both} == {UTIL, TEMP}
    temp = walk(client, "/api/v1/gpus/GPU-b/telemetry", {**window, "metric": TEMP, "order": "desc"})
    assert [i["value"] for i in temp] == [float(s) for s in range(59, -1, -1)]
    assert client.get("/api/v1/gpus/GPU-c/telemetry", params={**window, "metric": UTIL}).json()["items"] == []
    # Default window: the hour up to now, where this fleet has no samples.
    assert client.get("/api/v1/gpus/GPU-a/telemetry").json()["items"] == []


@pytest.mark.parametrize("order", ["asc", "desc"])
def test_pages_walk_every_sample_once_while_samples_arrive(fleet: str, client: TestClient, order: str) -> None:
    params: dict[str, Any] = {"start_time": iso(0), "end_time": iso(119), "limit": 7, "order": order}
    before = {(i["ts"], i["metric"]) for i in walk(client, "/api/v1/gpus/GPU-b/telemetry", {**params, "limit": 100})}
    assert len(before) == 120
    seen: list[tuple[str, str]] = []
    cursor, second = None, 60
    while True:
        r = client.get("/api/v1/gpus/GPU-b/telemetry", params={**params, **({"cursor": cursor} if cursor else {})})
        seen += [(i["ts"], i["metric"]) for i in r.json()["items"]]
        cursor = r.json()["next_cursor"]
        if cursor is None:
            break
        # Between two pages, the collector commits the next second of both series.
        for metric in (UTIL, TEMP):
            insert_samples(fleet, "GPU-b", metric, range(second, second + 1))
        second += 1
    after = {(i["ts"], i["metric"]) for i in walk(client, "/api/v1/gpus/GPU-b/telemetry", {**params, "limit": 100})}
    assert len(seen) == len(set(seen)), "a sample was returned twice"
    assert before <= set(seen) <= after, "a sample present from the start was skipped"
    if order == "asc":
        assert set(seen) == after  # samples arriving ahead of the cursor are picked up too


def test_limit_default_maximum_and_over(client: TestClient) -> None:
    window = {"start_time": iso(0), "end_time": iso(59)}
    default = client.get("/api/v1/gpus/GPU-a/telemetry", params=window).json()
    assert len(default["items"]) == 50 and default["next_cursor"]
    full = client.get("/api/v1/gpus/GPU-a/telemetry", params={**window, "limit": 100}).json()
    assert len(full["items"]) == 100 and full["next_cursor"]
    over = client.get("/api/v1/gpus/GPU-a/telemetry", params={**window, "limit": 101})
    assert over.status_code == 400 and over.json()["param"] == "limit"
    for path in ("/api/v1/gpus", "/api/v1/hosts", "/api/v1/metrics/catalog"):
        assert client.get(path, params={"limit": 101}).json()["detail"] == "limit 101 exceeds the maximum 100"


# --- aggregates ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fn", "first"), [("avg", 4.5), ("min", 0.0), ("max", 9.0), ("count", 10.0), ("last", 9.0), ("p95", 8.55)]
)
def test_aggregate_functions(client: TestClient, fn: str, first: float) -> None:
    r = client.get(
        "/api/v1/gpus/GPU-a/telemetry/aggregate",
        params={"bucket": "10s", "fn": fn, "start_time": iso(0), "end_time": iso(59), "metric": UTIL},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["source"] == "raw" and body["bucket"] == "10s" and body["fn"] == fn
    assert [p["ts"] for p in body["items"]] == [iso(s) for s in range(0, 60, 10)]
    assert body["items"][0]["value"] == pytest.approx(first)
    assert {p["metric"] for p in body["items"]} == {UTIL}


def test_aggregate_buckets_are_whole_and_cover_the_window(client: TestClient) -> None:
    body = client.get(
        "/api/v1/gpus/GPU-a/telemetry/aggregate",
        params={"bucket": "10s", "fn": "avg", "start_time": iso(15), "end_time": iso(25)},
    ).json()
    assert body["start_time"] == iso(10) and body["end_time"] == iso(30)
    assert [(p["ts"], p["metric"], p["value"]) for p in body["items"]] == [
        (iso(10), UTIL, 14.5),
        (iso(10), TEMP, 14.5),
        (iso(20), UTIL, 24.5),
        (iso(20), TEMP, 24.5),
    ]
    minute = client.get(
        "/api/v1/gpus/GPU-c/telemetry/aggregate",
        params={"bucket": "1m", "fn": "count", "start_time": iso(0), "end_time": iso(59)},
    ).json()
    assert minute["items"] == [{"ts": iso(0), "metric": POWER, "value": 60.0}]


def test_aggregate_reads_a_rollup_view_when_the_bucket_is_a_multiple(fleet: str) -> None:
    params = {"start_time": iso(0), "end_time": iso(59)}
    with make_client(fleet) as client:
        raw = {
            fn: client.get("/api/v1/gpus/GPU-b/telemetry/aggregate", params={**params, "bucket": "2m", "fn": fn}).json()
            for fn in ("avg", "min", "max", "count", "last")
        }
    with psycopg.connect(fleet) as c:
        # What TimescaleDB's continuous aggregate offers, as a plain view.
        c.execute(
            "CREATE VIEW telemetry_1m AS SELECT date_bin('1 minute', ts, '2000-01-03') AS bucket, gpu_key, metric_id, "
            'avg(value) AS "avg", min(value) AS "min", max(value) AS "max", count(*) AS "count", '
            '(array_agg(value ORDER BY ts DESC))[1] AS "last" FROM telemetry GROUP BY 1, 2, 3'
        )
    with make_client(fleet) as client:
        for fn, expected in raw.items():
            body = client.get(
                "/api/v1/gpus/GPU-b/telemetry/aggregate", params={**params, "bucket": "2m", "fn": fn}
            ).json()
            assert body["source"] == "telemetry_1m" and body["items"] == expected["items"] and body["items"]
        p95 = client.get("/api/v1/gpus/GPU-b/telemetry/aggregate", params={**params, "bucket": "2m", "fn": "p95"})
        assert p95.json()["source"] == "raw"
        odd = client.get("/api/v1/gpus/GPU-b/telemetry/aggregate", params={**params, "bucket": "90s"})
        assert odd.json()["source"] == "raw"


# --- exports -------------------------------------------------------------------------------------------


def test_csv_and_arrow_exports_stream_the_same_query(fleet: str) -> None:
    window = {"start_time": iso(0), "end_time": iso(9), "order": "desc"}
    with make_client(fleet, export_chunk_rows=3) as client:
        expected = client.get("/api/v1/gpus/GPU-a/telemetry", params=window).json()["items"]
        assert len(expected) == 20
        r = client.get("/api/v1/gpus/GPU-a/telemetry", params=window, headers={"Accept": "text/csv"})
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
        assert 'filename="GPU-a.csv"' in r.headers["content-disposition"]
        lines = r.text.splitlines()
        assert lines[0] == "ts,metric,value"
        assert lines[1:] == [f"{i['ts']},{i['metric']},{i['value']}" for i in expected]
        r = client.get(
            "/api/v1/gpus/GPU-a/telemetry",
            params=window,
            headers={"Accept": "application/vnd.apache.arrow.stream, application/json;q=0.5"},
        )
        assert r.headers["content-type"] == "application/vnd.apache.arrow.stream"
        reader = pyarrow.ipc.open_stream(r.content)
        batches = list(reader)
        assert [b.num_rows for b in batches] == [3, 3, 3, 3, 3, 3, 2]  # written chunk by chunk
        assert reader.schema.names == ["ts", "metric", "value"]
        table = pa.Table.from_batches(batches).to_pylist()
        assert [(t["ts"], t["metric"], t["value"]) for t in table] == [
            (datetime.fromisoformat(i["ts"]), i["metric"], i["value"]) for i in expected
        ]


def test_exports_are_bounded(fleet: str) -> None:
    window = {"start_time": iso(0), "end_time": iso(9)}
    with make_client(fleet, export_max_rows=10) as client:
        r = client.get("/api/v1/gpus/GPU-a/telemetry", params=window, headers={"Accept": "text/csv"})
        assert r.status_code == 400 and r.headers["content-type"].startswith(PROBLEM)
        assert r.json()["param"] == "end_time" and "more than 10 samples" in r.json()["detail"]
        one = client.get(
            "/api/v1/gpus/GPU-a/telemetry", params={**window, "metric": UTIL}, headers={"Accept": "text/csv"}
        )
        assert one.status_code == 200 and len(one.text.splitlines()) == 11


def test_negotiation() -> None:
    assert negotiate(None) == "json" and negotiate("*/*") == "json"
    assert negotiate("text/csv;q=0.5, application/vnd.apache.arrow.stream") == "arrow"
    assert negotiate("application/json;q=0, text/*") == "csv"
    assert negotiate("application/xml") is None


# --- problems ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "params", "status", "detail", "param"),
    [
        ("/api/v1/gpus/GPU-zzz/telemetry", {}, 404, "GPU GPU-zzz not found", None),
        ("/api/v1/gpus/GPU-zzz", {}, 404, "GPU GPU-zzz not found", None),
        ("/api/v1/gpus/GPU-zzz/telemetry/aggregate", {"bucket": "1m"}, 404, "GPU GPU-zzz not found", None),
        (
            "/api/v1/gpus/GPU-a/telemetry",
            {"start_time": iso(20), "end_time": iso(10)},
            400,
            "start_time 2026-01-01T00:00:20+00:00 is after end_time 2026-01-01T00:00:10+00:00",
            "start_time",
        ),
        ("/api/v1/gpus/GPU-a/telemetry", {"start_time": "yesterday"}, 422, "start_time", None),
        ("/api/v1/gpus/GPU-a/telemetry", {"end_time": "0001-01-01T00:00:00Z"}, 400, "too early", "end_time"),
        ("/api/v1/gpus/GPU-a/telemetry", {"order": "sideways"}, 422, "order", None),
        ("/api/v1/gpus/GPU-a/telemetry", {"limit": 101}, 400, "limit 101 exceeds the maximum 100", "limit"),
        ("/api/v1/gpus/GPU-a/telemetry", {"limit": 0}, 422, "limit", None),
        ("/api/v1/gpus/GPU-a/telemetry", {"metric": "NOPE"}, 400, "metric `NOPE` is not a known metric", "metric"),
        ("/api/v1/gpus", {"metric": "NOPE"}, 400, "metric `NOPE` is not a known metric", "metric"),
        ("/api/v1/gpus", {"hostname": "h\x001"}, 400, "hostname must not contain a NUL", "hostname"),
        ("/api/v1/gpus", {"cursor": "garbage"}, 400, "cursor `garbage` is not a valid gpus cursor", "cursor"),
        ("/api/v1/hosts", {"cursor": "WyJncHVzIiwiaDEiLDAsIkdQVS1hIl0"}, 400, "not a valid hosts cursor", "cursor"),
        ("/api/v1/gpus/GPU-a/telemetry/aggregate", {}, 422, "bucket: Field required", None),
        ("/api/v1/gpus/GPU-a/telemetry/aggregate", {"bucket": "5 minutes"}, 422, "bucket: String should match", None),
        ("/api/v1/gpus/GPU-a/telemetry/aggregate", {"bucket": "1m", "fn": "median"}, 422, "fn: Input should be", None),
        (
            "/api/v1/gpus/GPU-a/telemetry/aggregate",
            {"bucket": "1s", "start_time": iso(0), "end_time": iso(3 * 3600)},
            400,
            "bucket 1s makes 10801 buckets",
            "bucket",
        ),
        ("/api/v1/nothing", {}, 404, "Not Found", None),
    ],
)
def test_problems(
    client: TestClient, path: str, params: dict[str, object], status: int, detail: str, param: str | None
) -> None:
    r = client.get(path, params=params)
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith(PROBLEM)
    body = r.json()
    assert body["status"] == status and detail in body["detail"] and body["title"]
    assert body.get("param") == param


def test_cursor_of_the_other_order_and_unacceptable_media(client: TestClient) -> None:
    window = {"start_time": iso(0), "end_time": iso(59), "limit": 5}
    desc = client.get("/api/v1/gpus/GPU-a/telemetry", params={**window, "order": "desc"}).json()["next_cursor"]
    r = client.get("/api/v1/gpus/GPU-a/telemetry", params={**window, "cursor": desc})
    assert r.status_code == 400 and "not a valid asc cursor" in r.json()["detail"]
    r = client.get("/api/v1/gpus/GPU-a/telemetry", headers={"Accept": "application/xml"})
    assert r.status_code == 406 and r.headers["content-type"].startswith(PROBLEM)
    assert "text/csv" in r.json()["detail"]


# --- operations ----------------------------------------------------------------------------------------


def test_health_ready_and_metrics(client: TestClient) -> None:
    assert client.get("/health").json() == {"status": "ok", "detail": None}
    assert client.get("/ready").json()["status"] == "ok"
    client.get("/api/v1/gpus")
    client.get("/api/v1/gpus/GPU-zzz")
    text = client.get("/metrics").text
    assert 'http_request_duration_seconds_bucket{le="0.005",method="GET",route="/api/v1/gpus",status="200"}' in text
    assert 'http_requests_total{method="GET",route="/api/v1/gpus/{uuid}",status="404"} 1.0' in text
    assert 'pipeline_gateway_pool_connections{state="size"}' in text


def test_ready_fails_when_the_database_is_unreachable() -> None:
    reader = Reader("postgresql://postgres@127.0.0.1:1/none", timeout_s=1)
    reader.open(wait=False)
    with TestClient(build_app(reader)) as c:
        r = c.get("/ready")
        assert r.status_code == 503 and r.json()["status"] == "unavailable"
        r = c.get("/api/v1/gpus")
        assert r.status_code == 503 and r.headers["content-type"].startswith(PROBLEM)
        assert "127.0.0.1" not in r.text and "refused" not in r.text  # database text stays in the log
    reader.close()


def test_database_error_text_never_reaches_a_client(fleet: str) -> None:
    with make_client(fleet) as client:
        with psycopg.connect(fleet, autocommit=True) as c:
            c.execute("ALTER TABLE metrics RENAME TO metrics_gone")
        try:
            r = client.get("/api/v1/metrics/catalog")
        finally:
            with psycopg.connect(fleet, autocommit=True) as c:
                c.execute("ALTER TABLE metrics_gone RENAME TO metrics")
    assert r.status_code == 503 and r.headers["content-type"].startswith(PROBLEM)
    assert "metrics" not in r.json()["detail"] and "relation" not in r.text


# --- bounds on the work of one request -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "params", "headers", "param"),
    [
        (
            "/api/v1/gpus/GPU-a/telemetry",
            {"start_time": "0001-01-02T00:00:00Z", "end_time": "9999-12-31T00:00:00Z", "metric": POWER},
            {},
            "start_time",
        ),
        (
            "/api/v1/gpus/GPU-a/telemetry",
            {"start_time": "2025-01-01T00:00:00Z", "end_time": "2026-02-01T00:00:00Z"},
            {"Accept": "text/csv"},
            "start_time",
        ),
        (
            "/api/v1/gpus/GPU-a/telemetry/aggregate",
            {"bucket": "999999d", "fn": "last", "start_time": iso(0), "end_time": iso(0)},
            {},
            "bucket",
        ),
        (
            "/api/v1/gpus/GPU-a/telemetry/aggregate",
            {"bucket": "1d", "start_time": "2020-01-01T00:00:00Z", "end_time": "2026-01-01T00:00:00Z"},
            {},
            "start_time",
        ),
    ],
)
def test_one_request_reads_a_bounded_time_span(
    client: TestClient, path: str, params: dict[str, str], headers: dict[str, str], param: str
) -> None:
    r = client.get(path, params=params, headers=headers)
    assert r.status_code == 400 and r.headers["content-type"].startswith(PROBLEM), r.text
    assert r.json()["param"] == param and "at most" in r.json()["detail"]


# --- no 5xx for bad input, and every 5xx a problem ----------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "cursor"),
    [
        ("/api/v1/hosts", "WyJob3N0cyIsIlx1ZDgwMCJd"),  # ["hosts", "\ud800"]: a lone surrogate
        ("/api/v1/gpus", "WyJncHVzIiwgIlx1ZDgwMCIsIDAsICJ4Il0"),
        ("/api/v1/metrics/catalog", "WyJtZXRyaWNzIiwgIlx1ZDgwMCJd"),
    ],
)
def test_a_cursor_holding_a_lone_surrogate_is_a_400(client: TestClient, path: str, cursor: str) -> None:
    r = client.get(path, params={"cursor": cursor})
    assert r.status_code == 400 and r.headers["content-type"].startswith(PROBLEM), r.text
    assert r.json()["param"] == "cursor"


# --- cursors are bound to their query -----------------------------------------------------------------------


def test_a_cursor_only_pages_the_query_that_made_it(client: TestClient) -> None:
    params: dict[str, Any] = {"start_time": iso(0), "end_time": iso(59), "limit": 5, "metric": UTIL}
    cursor = client.get("/api/v1/gpus/GPU-a/telemetry", params=params).json()["next_cursor"]
    assert client.get("/api/v1/gpus/GPU-a/telemetry", params={**params, "cursor": cursor}).status_code == 200
    foreign = [
        ("/api/v1/gpus/GPU-b/telemetry", params),
        ("/api/v1/gpus/GPU-a/telemetry", {**params, "start_time": iso(1)}),
        ("/api/v1/gpus/GPU-a/telemetry", {**params, "end_time": iso(58)}),
        ("/api/v1/gpus/GPU-a/telemetry", {**params, "metric": [UTIL, TEMP]}),
    ]
    for path, other in foreign:
        r = client.get(path, params={**other, "cursor": cursor})
        assert r.status_code == 400 and r.json()["param"] == "cursor", (path, other, r.text)
    gpus = client.get("/api/v1/gpus", params={"hostname": "h2", "limit": 1}).json()["next_cursor"]
    assert client.get("/api/v1/gpus", params={"hostname": "h2", "limit": 1, "cursor": gpus}).status_code == 200
    r = client.get("/api/v1/gpus", params={"hostname": "h1", "limit": 1, "cursor": gpus})
    assert r.status_code == 400 and r.json()["param"] == "cursor"


def test_a_forged_cursor_is_refused(client: TestClient) -> None:
    import base64
    import json

    cursor = client.get("/api/v1/hosts", params={"limit": 1}).json()["next_cursor"]
    data = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    data[1] = "h0"  # move the position, keep the rest
    forged = base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")
    r = client.get("/api/v1/hosts", params={"limit": 1, "cursor": forged})
    assert r.status_code == 400 and r.json()["param"] == "cursor"


# --- unknown and repeated parameters ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "query", "param", "detail"),
    [
        ("/api/v1/gpus/GPU-a/telemetry", f"start={iso(0)}&end={iso(9)}", "start", "unknown parameters start, end"),
        ("/api/v1/gpus", "host=h1", "host", "unknown parameter host"),
        ("/api/v1/hosts", "limit=1&page=2", "page", "unknown parameter page"),
        ("/api/v1/gpus", "hostname=h1&hostname=h2", "hostname", "hostname is given 2 times"),
        ("/api/v1/gpus/GPU-a/telemetry/aggregate", "bucket=1m&bucket=1h", "bucket", "bucket is given 2 times"),
        ("/api/v1/gpus/GPU-a/telemetry", "order=asc&order=desc", "order", "order is given 2 times"),
    ],
)
def test_unknown_and_repeated_parameters_are_refused(
    client: TestClient, path: str, query: str, param: str, detail: str
) -> None:
    r = client.get(f"{path}?{query}")
    assert r.status_code == 400 and r.headers["content-type"].startswith(PROBLEM), r.text
    assert r.json()["param"] == param and detail in r.json()["detail"]


def test_metric_is_the_one_repeatable_parameter(client: TestClient) -> None:
    r = client.get(f"/api/v1/gpus/GPU-a/telemetry?start_time={iso(0)}&end_time={iso(0)}&metric={UTIL}&metric={TEMP}")
    assert r.status_code == 200 and {i["metric"] for i in r.json()["items"]} == {UTIL, TEMP}


# --- HTTP details ----------------------------------------------------------------------------------------------


def test_pooled_connections_that_died_fail_no_request(fleet: str) -> None:
    reader = Reader(fleet, min_size=2, max_size=2)
    reader.open(wait=True)
    with TestClient(build_app(reader, GatewaySettings())) as client:
        assert client.get("/api/v1/hosts").status_code == 200
        with psycopg.connect(fleet, autocommit=True) as c:  # what a database restart does to the pool
            c.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid()"
            )
        statuses = [client.get("/api/v1/hosts", params={"limit": n}).status_code for n in (1, 2, 3, 4)]
    reader.close()
    assert statuses == [200, 200, 200, 200]


def test_a_sub_microsecond_start_never_returns_an_earlier_sample(client: TestClient) -> None:
    params = {"start_time": "2026-01-01T00:00:10.0000001Z", "end_time": iso(11), "metric": UTIL}
    items = client.get("/api/v1/gpus/GPU-a/telemetry", params=params).json()["items"]
    assert [i["ts"] for i in items] == [iso(11)]
    end = {"start_time": iso(10), "end_time": "2026-01-01T00:00:10.9999999Z", "metric": UTIL}
    assert [i["ts"] for i in client.get("/api/v1/gpus/GPU-a/telemetry", params=end).json()["items"]] == [iso(10)]


@pytest.mark.parametrize("value", ["1767225600", "1767225600000", "1767225600.5"])
def test_numeric_times_are_refused(client: TestClient, value: str) -> None:
    r = client.get("/api/v1/gpus/GPU-a/telemetry", params={"start_time": value})
    assert r.status_code == 400 and r.json()["param"] == "start_time" and "RFC 3339" in r.json()["detail"]


def test_pages_keep_samples_that_share_ts_and_metric(fleet: str, client: TestClient) -> None:
    # Nothing forbids two samples of one series at one instant (a replayed batch); paging must return both.
    for _ in range(3):
        insert_samples(fleet, "GPU-c", POWER, range(5, 6), offset=1000.0)
    window = {"start_time": iso(0), "end_time": iso(9)}
    for limit in range(1, 8):
        items = walk(client, "/api/v1/gpus/GPU-c/telemetry", {**window, "limit": limit})
        assert len(items) == 13 and [i["value"] for i in items].count(1005.0) == 3, limit


def test_exports_ignore_limit_and_other_small_details(client: TestClient) -> None:
    window = {"start_time": iso(0), "end_time": iso(9)}
    csv = client.get("/api/v1/gpus/GPU-a/telemetry", params={**window, "limit": 20000}, headers={"Accept": "text/csv"})
    assert csv.status_code == 200 and len(csv.text.splitlines()) == 21
    long = client.get("/api/v1/gpus/GPU-" + "x" * 5000)
    assert long.status_code == 404 and len(long.json()["detail"]) < 300
    r = client.get("/api/v1/gpus", params={"limit": "1_000"})
    assert r.status_code in (400, 422) and r.headers["content-type"].startswith(PROBLEM)
