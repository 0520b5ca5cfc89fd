"""The CLI as a user runs it: a bounded run, then the gateway on Ray Serve over HTTP."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import psycopg
import pytest

from pipeline.sources.synthetic import write_csv
from tests.conftest import REAL_CSV

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]


def cli(*args: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int, int]:
    """The real CSV when ../shared is there (2,470 rows, 247 GPUs), else a generated fleet."""
    if REAL_CSV.exists():
        return REAL_CSV, 2470, 247
    path = tmp_path_factory.mktemp("data") / "fleet.csv"
    rows = write_csv(path, hosts=4)
    return path, rows, 32


@pytest.fixture
def user_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIPELINE_", "RAY_ADDRESS"))}
    env["XDG_DATA_HOME"] = str(tmp_path / "data-home")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def test_bad_arguments_and_unreachable_database_give_one_line(user_env: dict[str, str], tmp_path: Path) -> None:
    r = cli("run", "--csv", str(tmp_path / "missing.csv"), "--passes", "1", env=user_env)
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith("error: CSV file")
    r = cli("run", "--interval", "-1", env=user_env)
    assert r.returncode == 2 and "must not be negative" in r.stderr
    env = {**user_env, "DATABASE_URL": "postgresql://postgres@127.0.0.1:1/nothing"}
    r = cli("migrate", env=env)
    assert r.returncode == 2 and r.stderr.strip().startswith("error: cannot connect to PostgreSQL")
    r = cli("run", "--collectors", "4", "--partitions", "2", "--passes", "1", env=user_env)
    assert (
        r.returncode == 2 and "queue.partitions (2) must be at least the largest number of collectors (4)" in r.stderr
    )


def test_run_then_serve(dataset: tuple[Path, int, int], fresh_db: str, user_env: dict[str, str]) -> None:
    csv, rows, gpus = dataset
    env = {**user_env, "DATABASE_URL": fresh_db}
    r = cli("run", "--csv", str(csv), "--passes", "3", "--no-serve", "--json", env=env)
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["produced"] == summary["stored"] == 3 * rows and summary["rejected"] == 0
    with psycopg.connect(fresh_db) as c:
        assert c.execute("SELECT count(*), count(DISTINCT (gpu_key, metric_id, ts)) FROM telemetry").fetchone() == (
            3 * rows,
            3 * rows,
        )

    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "serve", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, server.stdout.read() if server.stdout else ""
            try:
                if httpx.get(f"{base}/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "gateway did not become ready"
            time.sleep(0.5)
        listed = httpx.get(f"{base}/api/v1/gpus").json()
        assert len(listed["items"]) == gpus and listed["next_cursor"] is None
        uuid = listed["items"][0]["uuid"]
        window = {
            "start_time": (datetime.now().astimezone() - timedelta(hours=1)).isoformat(),
            "end_time": (datetime.now().astimezone() + timedelta(minutes=1)).isoformat(),
        }
        items = httpx.get(f"{base}/api/v1/gpus/{uuid}/telemetry", params=window).json()["items"]
        assert len(items) == 30 and [i["ts"] for i in items] == sorted(i["ts"] for i in items)
        first, last = items[0]["ts"], items[-1]["ts"]
        exact = httpx.get(
            f"{base}/api/v1/gpus/{uuid}/telemetry", params={"start_time": first, "end_time": last}
        ).json()["items"]
        assert len(exact) == 30  # both bounds inclusive
        later = (datetime.fromisoformat(first.replace("Z", "+00:00")) + timedelta(microseconds=1)).isoformat()
        assert (
            len(
                httpx.get(
                    f"{base}/api/v1/gpus/{uuid}/telemetry", params={"start_time": later, "end_time": last}
                ).json()["items"]
            )
            == 20
        )
        missing = httpx.get(f"{base}/api/v1/gpus/GPU-00000000-0000-0000-0000-000000000000/telemetry")
        assert missing.status_code == 404 and missing.headers["content-type"].startswith("application/problem+json")
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()


def test_embedded_default(user_env: dict[str, str]) -> None:
    """No DATABASE_URL: the path a fresh user takes (embedded PostgreSQL under XDG_DATA_HOME)."""
    env = {k: v for k, v in user_env.items() if k != "DATABASE_URL"}
    r = cli("run", "--hosts", "2", "--passes", "2", "--interval", "0", "--no-serve", "--json", env=env)
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["stored"] == summary["produced"] == 2 * 2 * 8 * 10
    assert "embedded PostgreSQL" in summary["database"]
    assert (Path(env["XDG_DATA_HOME"]) / "gpu-telemetry" / "postgres" / "PG_VERSION").exists()


def test_run_starts_its_own_ray_whatever_cluster_the_machine_recorded(fresh_db: str, user_env: dict[str, str]) -> None:
    """Without ``ray.address`` a run is local: a cluster ``ray start`` recorded on the machine (here one
    that is gone, as a killed head leaves it) is neither joined nor a reason to fail."""
    ray_tmp = Path(tempfile.mkdtemp(prefix="r", dir="/tmp"))  # short: Ray's socket paths live under it
    try:
        (ray_tmp / "ray").mkdir()
        (ray_tmp / "ray" / "ray_current_cluster").write_text("127.0.0.1:1\n")
        env = {**user_env, "DATABASE_URL": fresh_db, "RAY_TMPDIR": str(ray_tmp)}
        r = cli("run", "--hosts", "2", "--passes", "2", "--interval", "0", "--no-serve", "--json", env=env)
        assert r.returncode == 0, r.stderr
        summary = json.loads(r.stdout.strip().splitlines()[-1])
        assert summary["produced"] == summary["stored"] == 2 * 8 * 10 * 2 and summary["rejected"] == 0
        assert (ray_tmp / "ray" / "ray_current_cluster").read_text() == "127.0.0.1:1\n"  # not ours to change
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


def test_status_and_scale_of_a_running_pipeline_with_its_gateway(fresh_db: str, user_env: dict[str, str]) -> None:
    """`run` with the gateway (the README's `make run`), then `status` and `scale` against it.

    In a non-default Ray namespace: every command and the gateway's lag metric must look there.
    """
    import threading

    env = {**user_env, "DATABASE_URL": fresh_db, "PIPELINE_RAY__NAMESPACE": "telemetry-other"}
    port = free_port()
    run = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pipeline",
            "run",
            "--hosts",
            "2",
            "--interval",
            "0.2",
            "--duration",
            "60",
            "--partitions",
            "4",
            "--port",
            str(port),
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(run.stderr.readline, "")), daemon=True)  # type: ignore[union-attr]
    reader.start()
    try:
        deadline = time.monotonic() + 120
        address = None
        while address is None:
            assert run.poll() is None and time.monotonic() < deadline, "".join(lines)
            address = next((ln.split()[1] for ln in list(lines) if ln.startswith("ray: ")), None)
            time.sleep(0.2)
        deadline = time.monotonic() + 120
        while True:  # the actors start in the background: wait until samples flow (bounded)
            r = cli("status", "--json", env={**env, "RAY_ADDRESS": address}, timeout=120)
            assert r.returncode == 0, r.stderr
            report = json.loads(r.stdout.strip().splitlines()[-1])
            if sum(p["rows_appended"] for p in report["partitions"]) > 0 or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert [p["partition"] for p in report["partitions"]] == [0, 1, 2, 3]
        assert sum(p["rows_appended"] for p in report["partitions"]) > 0
        assert {"lag_rows", "lag_batches", "committed", "bytes_held", "append_rows_per_s", "blocked_s"} <= set(
            report["partitions"][0]
        )
        assert report["streamers"][0]["produced"] > 0 and report["collectors"][0]["partitions"]
        text = cli("status", env={**env, "RAY_ADDRESS": address}, timeout=120).stdout
        assert "consumer group telemetry-collectors" in text and "append/s" in text
        elsewhere = {k: v for k, v in env.items() if k != "PIPELINE_RAY__NAMESPACE"}
        empty = cli("status", env={**elsewhere, "RAY_ADDRESS": address}, timeout=120)
        assert empty.returncode == 1 and "no pipeline actors found in namespace 'gpu-telemetry'" in empty.stdout
        scaled = cli("scale", "--collectors", "3", "--json", env={**env, "RAY_ADDRESS": address}, timeout=300)
        assert scaled.returncode == 0, scaled.stderr
        roles = json.loads(scaled.stdout.strip().splitlines()[-1])["roles"]
        assert roles["collector"]["actual"] == 3 and roles["collector"]["pinned"] == 3
        again = cli("status", env={**env, "RAY_ADDRESS": address}, timeout=180)
        assert again.returncode == 0, again.stderr[-3000:]
        assert "collectors: 3 running, target 3, pinned at 3" in again.stdout
        deadline = time.monotonic() + 180
        token = None
        while token is None:  # printed once the gateway is up (Serve may take a while under load)
            assert run.poll() is None and time.monotonic() < deadline, "".join(lines)
            token = next((ln.split(": ", 1)[1].strip() for ln in list(lines) if ln.startswith("api token")), None)
            time.sleep(0.5)
        auth = {"Authorization": f"Bearer {token}"}  # run made a token for this run and printed how to use it
        assert httpx.get(f"http://127.0.0.1:{port}/api/v1/gpus", timeout=30).status_code == 401
        deadline = time.monotonic() + 120
        while True:  # the gateway of the same run answers
            try:
                listed = httpx.get(f"http://127.0.0.1:{port}/api/v1/gpus", timeout=5, headers=auth)
                if listed.status_code == 200 and len(listed.json()["items"]) == 16:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "".join(lines)
            time.sleep(0.5)
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10, headers=auth).text
        lag = [ln for ln in metrics.splitlines() if ln.startswith("message_queue_consumer_lag{")]
        assert len(lag) == 4, metrics[-2000:]  # one series per partition, read from the brokers in that namespace
    finally:
        run.send_signal(signal.SIGINT)
        try:
            run.wait(60)
        except subprocess.TimeoutExpired:
            run.kill()


def test_unknown_header_is_stored_as_a_reject_and_stops_the_run(
    fresh_db: str, user_env: dict[str, str], tmp_path: Path
) -> None:
    bad = tmp_path / "not-dcgm.csv"
    bad.write_text("time,name,reading\n1,2,3\n")
    r = cli("run", "--csv", str(bad), "--passes", "1", "--no-serve", env={**user_env, "DATABASE_URL": fresh_db})
    assert r.returncode == 2
    assert "unknown header (line 1): missing column(s) timestamp, metric_name, uuid, value" in r.stderr
    with psycopg.connect(fresh_db) as c:
        row = c.execute("SELECT source, line, raw, reason FROM rejects").fetchone()
    assert row is not None and row[0] == str(bad) and row[1] == 1 and row[2] == "time,name,reading"
    assert "unknown header" in row[3]
