"""The fleet views over a real PostgreSQL, on data the real writer stored: known answers from attribution_data.

GPU X: pod A (ml) 30 s, pod B (research) 90 s, nobody 30 s; MIG device Y held by HPC job slurm-7 (see there).
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient

from pipeline.config import AttributionSettings, GatewaySettings
from pipeline.gateway.app import build_app
from pipeline.storage.reader import Reader
from pipeline.storage.setup import compact_usage
from pipeline.storage.writer import TelemetryWriter
from tests.integration.attribution_data import GPU_X, GPU_Y, POWER, at, scenario
from tests.integration.test_attribution import feed
from tests.integration.test_gateway import walk

MIG = "GPU-parent%2Fmig-2"  # Y's uuid as a URL path sends it


def stored(conninfo: str, seconds: int = 150, xids: dict[int, float] | None = None) -> None:
    """The scenario's first ``seconds`` written by the real writer, and the usage log folded."""
    w = TelemetryWriter(conninfo, attribution=AttributionSettings(latest_every_s=0))  # type: ignore[call-arg]
    w.open()
    w.claim("g", 1, [0])
    feed(w, list(scenario(step=10, xids=xids))[: seconds // 10])
    w.close()
    compact_usage(conninfo)


@contextlib.contextmanager
def client_of(conninfo: str, ranking_ttl_s: float = 0.0) -> Iterator[TestClient]:
    reader = Reader(conninfo, ranking_ttl_s=ranking_ttl_s)
    reader.open(wait=True)
    with TestClient(build_app(reader, GatewaySettings(default_limit=50, max_limit=100, auth="off"))) as c:
        yield c
    reader.close()


@pytest.fixture
def api(fresh_db: str) -> Iterator[TestClient]:
    stored(fresh_db, xids={s: 79.0 for s in range(10, 15)} | {50: 13.0})
    with client_of(fresh_db) as c:
        yield c


def iso(second: float) -> str:
    return at(second).isoformat().replace("+00:00", "Z")


def ok(client: TestClient, path: str, **params: Any) -> Any:
    r = client.get(path, params=params)
    assert r.status_code == 200, r.text
    return r.json()


# --- GPUs: facts, holders, filters ------------------------------------------------------------------


def test_gpus_carry_facts_holder_and_mig_parent(api: TestClient) -> None:
    items = {g["uuid"]: g for g in ok(api, "/api/v1/gpus")["items"]}
    x, y = items[GPU_X], items[GPU_Y]
    assert (x["driver_version"], x["instance"], x["parent_uuid"], x["allocation"]) == (
        "535.129.03",
        "node-1:9400",
        None,
        None,  # nobody holds X after second 120
    )
    assert (y["parent_uuid"], y["mig_instance"], y["mig_profile"]) == ("GPU-parent", 2, "3g.40gb")
    assert y["allocation"] == {"namespace": None, "pod": None, "container": None, "job": "slurm-7", "since": iso(0)}
    assert y["last_seen"] == iso(149) and sorted(y["metrics"]) == sorted(
        ["DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_GPU_UTIL", POWER]
    )
    assert [g["uuid"] for g in ok(api, "/api/v1/gpus", parent_uuid="GPU-parent")["items"]] == [GPU_Y]
    detail = ok(api, f"/api/v1/gpus/{MIG}")
    assert (
        detail["mig_profile"] == "3g.40gb"
        and {"metric": POWER, "unit": "W", "ts": iso(149), "value": 200.0} in (detail["latest"])
    )


def test_gpus_filter_by_who_holds_them_now(fresh_db: str) -> None:
    stored(fresh_db, seconds=60)  # X is held by pod B (research) at the end
    with client_of(fresh_db) as c:
        assert [g["uuid"] for g in ok(c, "/api/v1/gpus", namespace="research")["items"]] == [GPU_X]
        assert [g["uuid"] for g in ok(c, "/api/v1/gpus", pod="notebook-b")["items"]] == [GPU_X]
        assert ok(c, "/api/v1/gpus", namespace="research", pod="train-a")["items"] == []
        assert ok(c, "/api/v1/gpus", namespace="ml")["items"] == []  # A held it before, not now
        x = ok(c, f"/api/v1/gpus/{GPU_X}")
        assert x["allocation"]["pod"] == "notebook-b" and x["allocation"]["since"] == iso(30)


# --- allocations and events -------------------------------------------------------------------------


def test_allocations_say_who_held_a_gpu_when(api: TestClient) -> None:
    window = {"start_time": iso(0), "end_time": iso(600)}
    body = ok(api, f"/api/v1/gpus/{GPU_X}/allocations", **window)
    assert [(i["namespace"], i["pod"], i["start"], i["end"]) for i in body["items"]] == [
        ("ml", "train-a", iso(0), iso(30)),
        ("research", "notebook-b", iso(30), iso(120)),
    ]
    later = ok(api, f"/api/v1/gpus/{GPU_X}/allocations", start_time=iso(40), end_time=iso(600))
    assert [i["pod"] for i in later["items"]] == ["notebook-b"]  # only the intervals overlapping the window
    assert [i["pod"] for i in walk(api, f"/api/v1/gpus/{GPU_X}/allocations", {**window, "limit": 1})] == [
        "train-a",
        "notebook-b",
    ]
    held = ok(api, f"/api/v1/gpus/{MIG}/allocations", **window)["items"]
    assert held == [{"namespace": None, "pod": None, "container": None, "job": "slurm-7", "start": iso(0), "end": None}]


def test_events_are_xid_codes_with_their_meaning(api: TestClient) -> None:
    body = ok(api, f"/api/v1/gpus/{GPU_X}/events", start_time=iso(0), end_time=iso(600))
    assert body["items"] == [
        {"ts": iso(10), "kind": "xid", "code": 79, "meaning": "GPU has fallen off the bus"},
        {"ts": iso(50), "kind": "xid", "code": 13, "meaning": "Graphics Engine Exception"},
    ]
    assert [i["code"] for i in walk(api, f"/api/v1/gpus/{GPU_X}/events", {"start_time": iso(0), "limit": 1})] == [
        79,
        13,
    ]
    assert ok(api, f"/api/v1/gpus/{MIG}/events", start_time=iso(0))["items"] == []
    assert api.get("/api/v1/gpus/GPU-nope/events").status_code == 404


# --- fleet views ---------------------------------------------------------------------------------------


def test_fleet_latest_sorts_every_gpu_by_its_newest_value(api: TestClient) -> None:
    hottest = ok(api, "/api/v1/fleet/latest", metric=POWER)
    assert [(i["uuid"], i["value"]) for i in hottest["items"]] == [(GPU_Y, 200.0), (GPU_X, 50.0)]
    assert hottest["items"][0]["allocation"]["job"] == "slurm-7" and hottest["items"][1]["allocation"] is None
    assert hottest["items"][0]["ts"] == iso(149) and hottest["items"][0]["hostname"] == "node-1"
    coolest = ok(api, "/api/v1/fleet/latest", metric=POWER, sort="asc", limit=1)
    assert [i["uuid"] for i in coolest["items"]] == [GPU_X] and coolest["next_cursor"]
    rest = ok(api, "/api/v1/fleet/latest", metric=POWER, sort="asc", limit=1, cursor=coolest["next_cursor"])
    assert [i["uuid"] for i in rest["items"]] == [GPU_Y] and rest["next_cursor"] is None
    assert ok(api, "/api/v1/fleet/latest", metric=POWER, hostname="elsewhere")["items"] == []
    assert ok(api, "/api/v1/fleet/latest", metric=POWER, namespace="ml")["items"] == []
    bad = api.get("/api/v1/fleet/latest", params={"metric": "NOPE"})
    assert bad.status_code == 400 and bad.json()["param"] == "metric"
    replayed = api.get("/api/v1/fleet/latest", params={"metric": POWER, "cursor": coolest["next_cursor"]})
    assert replayed.status_code == 400 and replayed.json()["param"] == "cursor"  # bound to sort=asc


def test_host_aggregates_cover_all_its_gpus(api: TestClient) -> None:
    window = {"bucket": "1m", "start_time": iso(0), "end_time": iso(149), "metric": POWER}
    peak = ok(api, "/api/v1/hosts/node-1/telemetry/aggregate", fn="max", **window)
    assert peak["gpus"] == 2 and peak["source"] == "raw"
    assert [(i["ts"], i["value"]) for i in peak["items"]] == [(iso(0), 300.0), (iso(60), 200.0), (iso(120), 200.0)]
    mean = ok(api, "/api/v1/hosts/node-1/telemetry/aggregate", fn="avg", **window)
    # minute 0: X 300 W x 30 s and 100 W x 30 s, Y 200 W x 60 s -> 200 W
    assert mean["items"][0]["value"] == pytest.approx(200.0)
    assert api.get("/api/v1/hosts/nowhere/telemetry/aggregate", params={"bucket": "1m"}).status_code == 404


# --- usage -------------------------------------------------------------------------------------------------


def by_group(body: dict[str, Any]) -> dict[str | None, dict[str, Any]]:
    return {i["group"]: i for i in body["items"]}


def test_usage_per_namespace_pod_and_job_is_the_hand_computed_answer(api: TestClient) -> None:
    window = {"start_time": iso(0), "end_time": iso(600)}
    ns = by_group(ok(api, "/api/v1/usage", group_by="namespace", **window))
    assert set(ns) == {None, "ml", "research"}
    ml, research = ns["ml"], ns["research"]
    assert ml["gpu_hours"] * 3600 == pytest.approx(30.0) and ml["gpu_hours_allocated"] * 3600 == pytest.approx(30.0)
    assert ml["gpu_hours_active"] * 3600 == pytest.approx(30.0) and ml["gpu_hours_idle"] == pytest.approx(0.0)
    assert ml["mean_utilization"] == pytest.approx(80.0) and ml["energy_kwh"] == pytest.approx(30 * 300 / 3.6e6)
    assert research["gpu_hours"] * 3600 == pytest.approx(90.0)
    assert research["gpu_hours_idle"] * 3600 == pytest.approx(90.0)
    assert research["memory_idle_hours"] * 3600 == pytest.approx(90.0)  # idle, holding 20 GiB
    assert research["energy_kwh"] == pytest.approx(90 * 100 / 3.6e6)
    assert research["mean_gpus"] == pytest.approx(90 / 3600)  # 90 GPU-seconds over the hour counted
    # no namespace: X while nobody held it (29 s: its last sample's hold is not known yet) and job J's 149 s
    assert ns[None]["gpu_hours"] * 3600 == pytest.approx(178.0)
    assert ns[None]["gpu_hours_allocated"] * 3600 == pytest.approx(149.0)
    pods = by_group(ok(api, "/api/v1/usage", group_by="pod", **window))
    assert {k: round(v["gpu_hours"] * 3600, 6) for k, v in pods.items()} == {
        None: 178.0,
        "ml/train-a": 30.0,
        "research/notebook-b": 90.0,
    }
    jobs = by_group(ok(api, "/api/v1/usage", group_by="job", **window))
    assert jobs["slurm-7"]["gpu_hours"] * 3600 == pytest.approx(149.0)
    assert jobs["slurm-7"]["energy_kwh"] == pytest.approx(149 * 200 / 3.6e6)


def test_usage_per_host_and_model_and_by_window(api: TestClient) -> None:
    host = ok(api, "/api/v1/usage", group_by="hostname", start_time=iso(0), end_time=iso(600))
    assert [(i["group"], round(i["gpu_hours"] * 3600, 6)) for i in host["items"]] == [("node-1", 298.0)]
    model = ok(api, "/api/v1/usage", group_by="model", start_time=iso(0), end_time=iso(600))
    assert [(i["group"], round(i["gpu_hours"] * 3600, 6)) for i in model["items"]] == [("H100", 298.0)]
    # The minute from 1:00 to 2:00 only: pod B's 60 s on X and job J's 60 s on Y.
    window = {"start_time": iso(60), "end_time": iso(119.5), "resolution": "minute"}
    minute = by_group(ok(api, "/api/v1/usage", group_by="namespace", **window))
    assert minute["research"]["gpu_hours"] * 3600 == pytest.approx(60.0) and "ml" not in minute
    body = ok(api, "/api/v1/usage", group_by="namespace", **window)
    assert (body["start_time"], body["end_time"], body["resolution"]) == (iso(60), iso(120), "minute")
    # By the hour (the default), the hour holding that minute counts whole: every hold of the scenario.
    hourly = ok(api, "/api/v1/usage", group_by="namespace", start_time=iso(60), end_time=iso(119.5))
    assert (hourly["start_time"], hourly["end_time"]) == (iso(0), iso(3600))
    assert by_group(hourly)["ml"]["gpu_hours"] * 3600 == pytest.approx(30.0)
    pages = walk(api, "/api/v1/usage", {"group_by": "pod", "start_time": iso(0), "end_time": iso(600), "limit": 1})
    assert [p["group"] for p in pages] == [None, "ml/train-a", "research/notebook-b"]


def test_usage_spanning_hours_reads_both_rollups(fresh_db: str) -> None:
    stored(fresh_db)
    with client_of(fresh_db) as c:
        for resolution in ("hour", "minute"):  # minutes: whole hours from usage_1h, the edges from usage_1m
            window = {"start_time": iso(-7170), "end_time": iso(3 * 3600 + 30), "resolution": resolution}
            long = by_group(ok(c, "/api/v1/usage", group_by="namespace", **window))
            assert long["ml"]["gpu_hours"] * 3600 == pytest.approx(30.0), resolution
        daily = ok(c, "/api/v1/usage", group_by="namespace", start_time=iso(0), resolution="day", end_time=iso(10))
        assert by_group(daily)["research"]["gpu_hours"] * 3600 == pytest.approx(90.0)
        assert daily["start_time"].endswith("T00:00:00Z") and daily["resolution"] == "day"
        late = {"start_time": iso(100), "end_time": iso(3700), "resolution": "minute"}
        edge = by_group(ok(c, "/api/v1/usage", group_by="pod", **late))
        assert edge["research/notebook-b"]["gpu_hours"] * 3600 == pytest.approx(60.0)  # minute 1:00-2:00 counts whole
        bad = c.get("/api/v1/usage", params={"group_by": "color"})
        assert bad.status_code in (400, 422)


# --- health ------------------------------------------------------------------------------------------------


def test_fleet_health_names_missing_gpus_silent_hosts_blank_codes_and_xids(api: TestClient, fresh_db: str) -> None:
    with psycopg.connect(fresh_db) as c:
        c.execute(
            "INSERT INTO rejects (ts, source, line, raw, reason, uuid, metric, blank) "
            "SELECT now(), 'http://node-1:9400/metrics', n, 'raw', 'blank', %s, 'DCGM_FI_DEV_ENC_UTIL', "
            "'int64 not supported' FROM generate_series(1, 3) n",
            (GPU_X,),
        )
    since = iso(0)
    body = ok(api, "/api/v1/fleet/health", start_time=since)
    assert body["gpus"] == 2 and body["threshold_s"] == 13.0  # 3 intervals x 1 s + 10 s of grace
    assert body["missing_gpus"]["count"] == 2 and {m["uuid"] for m in body["missing_gpus"]["items"]} == {GPU_X, GPU_Y}
    assert body["silent_hosts"] == {"count": 1, "items": [{"hostname": "node-1", "gpus": 2, "last_seen": iso(149)}]}
    assert body["blank_codes"]["count"] == 1
    assert body["blank_codes"]["items"][0] | {"last_seen": None} == {
        "uuid": GPU_X,
        "metric": "DCGM_FI_DEV_ENC_UTIL",
        "code": "int64 not supported",
        "count": 3,
        "last_seen": None,
    }
    assert body["xid_events"] == 2
    with psycopg.connect(fresh_db) as c:  # Y reports again
        c.execute(
            "UPDATE gpu_latest l SET ts = now() FROM gpus g WHERE g.gpu_key = l.gpu_key AND g.uuid = %s", (GPU_Y,)
        )
    again = ok(api, "/api/v1/fleet/health", start_time=since, intervals=100)
    assert again["missing_gpus"]["count"] == 1 and again["silent_hosts"]["count"] == 0
    metrics = api.get("/metrics").text
    assert "pipeline_gpus_missing 1.0" in metrics and "pipeline_hosts_silent 0.0" in metrics


@pytest.mark.parametrize("ranking_ttl_s", [0.0, 60.0], ids=["by query", "from the ranking"])
def test_fleet_latest_pages_the_whole_fleet_in_value_order(fresh_db: str, ranking_ttl_s: float) -> None:
    """Every GPU with the metric exactly once, in (value, key) order both ways, across pages; GPUs without it never.

    Values repeat (ties are broken by key), arrays list metrics in differing orders, a fifth of the GPUs lack
    the metric (and sort nowhere), and pages are smaller than the fleet. The same answers whether the reader
    keeps fleet rankings (as a Serve replica does) or asks the table for each page; a host's GPUs by query.
    """
    rng = random.Random(16)
    t0 = at(0)
    expected: dict[str, tuple[float, str]] = {}  # uuid -> (value, ts) of metric 2
    with psycopg.connect(fresh_db, autocommit=True) as c:
        for n in range(60):
            uuid, host = f"GPU-order-{n:02d}", f"host-{n % 4}"
            (key,) = c.execute(
                "INSERT INTO gpus (uuid, hostname, gpu_index) VALUES (%s, %s, %s) RETURNING gpu_key", (uuid, host, n)
            ).fetchone()  # type: ignore[misc]
            ids = [1, 3] if n % 5 == 0 else rng.sample([1, 2, 3], 3)
            vals = [float(rng.choice([10, 20, 30, 40, 55.5])) for _ in ids]
            stamps = [t0 + timedelta(seconds=rng.randrange(100)) for _ in ids]
            c.execute(
                "INSERT INTO gpu_latest (gpu_key, ts, metric_ids, sample_ts, vals) VALUES (%s, %s, %s, %s, %s)",
                (key, max(stamps), ids, stamps, vals),
            )
            if 2 in ids:
                expected[uuid] = (vals[ids.index(2)], stamps[ids.index(2)].isoformat().replace("+00:00", "Z"))
        keys = dict(c.execute("SELECT uuid, gpu_key FROM gpus").fetchall())
        name = c.execute("SELECT name FROM metrics WHERE metric_id = 2").fetchone()[0]  # type: ignore[index]
    with client_of(fresh_db, ranking_ttl_s) as api:
        for sort in ("asc", "desc"):
            seen, cursor = [], None
            while True:
                page = ok(
                    api,
                    "/api/v1/fleet/latest",
                    metric=name,
                    sort=sort,
                    limit=7,
                    **({"cursor": cursor} if cursor else {}),
                )
                seen += [(i["uuid"], i["value"], i["ts"]) for i in page["items"]]
                if (cursor := page["next_cursor"]) is None:
                    break
            order = sorted(expected, key=lambda u: (expected[u][0], keys[u]), reverse=sort == "desc")
            assert seen == [(u, *expected[u]) for u in order]
        one_host = ok(api, "/api/v1/fleet/latest", metric=name, hostname="host-1", limit=100)["items"]
        assert [i["uuid"] for i in one_host] == [
            u for u in sorted(expected, key=lambda u: (-expected[u][0], -keys[u])) if int(u[-2:]) % 4 == 1
        ]


def test_a_ranking_is_as_old_as_its_ttl_and_leaves_out_what_the_query_leaves_out(fresh_db: str) -> None:
    """Within ranking_ttl_s the fleet-wide page is the ranking's (a host's page is always the table's); a NULL
    element in gpu_latest, which no writer produces, is left out of the ranking as the query leaves it out."""
    with psycopg.connect(fresh_db, autocommit=True) as c:
        keys = [
            c.execute("INSERT INTO gpus (uuid, hostname) VALUES (%s, 'h') RETURNING gpu_key", (u,)).fetchone()[0]  # type: ignore[index]
            for u in ("GPU-r1", "GPU-r2")
        ]
        for key, value in zip(keys, (10.0, 20.0), strict=True):
            c.execute(
                "INSERT INTO gpu_latest VALUES (%s, %s, '{2}', ARRAY[%s::timestamptz], ARRAY[%s::float8])",
                (key, at(0), at(0), value),
            )
        name = c.execute("SELECT name FROM metrics WHERE metric_id = 2").fetchone()[0]  # type: ignore[index]
    values = lambda body: [(i["uuid"], i["value"]) for i in body["items"]]  # noqa: E731
    with client_of(fresh_db, ranking_ttl_s=60.0) as api:
        assert values(ok(api, "/api/v1/fleet/latest", metric=name)) == [("GPU-r2", 20.0), ("GPU-r1", 10.0)]
        with psycopg.connect(fresh_db, autocommit=True) as c:
            c.execute("UPDATE gpu_latest SET vals = ARRAY[30.0] WHERE gpu_key = %s", (keys[0],))
        assert values(ok(api, "/api/v1/fleet/latest", metric=name)) == [("GPU-r2", 20.0), ("GPU-r1", 10.0)]
        assert values(ok(api, "/api/v1/fleet/latest", metric=name, hostname="h")) == [
            ("GPU-r1", 30.0),
            ("GPU-r2", 20.0),
        ]
    with client_of(fresh_db, ranking_ttl_s=60.0) as api:  # a new replica ranks afresh
        assert values(ok(api, "/api/v1/fleet/latest", metric=name)) == [("GPU-r1", 30.0), ("GPU-r2", 20.0)]
        with psycopg.connect(fresh_db, autocommit=True) as c:
            c.execute("UPDATE gpu_latest SET vals = ARRAY[NULL::float8] WHERE gpu_key = %s", (keys[1],))
    with client_of(fresh_db, ranking_ttl_s=60.0) as api:
        assert values(ok(api, "/api/v1/fleet/latest", metric=name)) == [("GPU-r1", 30.0)]
