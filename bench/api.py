"""Gateway latency: one GPU, one hour (10 metrics at 1 Hz = 36,000 samples), first page and full walk.

Builds a dedicated database ``bench_api`` (dropped and re-created) holding ``--rows`` samples (default
10 M; ``--rows 100000000`` for 100 M): GPUs x 10 metrics x 4 hours at 1 Hz, written in time order as a
collector would. Then, in the same run and over the same random (GPU, hour) windows, it times:

* ``sql``    the gateway's query on one psycopg connection (the floor),
* ``reader`` the same through ``Reader`` (pool, row objects),
* ``app``    the FastAPI app in-process (httpx ASGI transport: routing, validation, JSON),
* ``serve``  the app on Ray Serve over HTTP (one keep-alive client): through Serve's HTTP proxy (how the
  gateway is deployed) and through Serve's HAProxy ingress (``RAY_SERVE_ENABLE_HA_PROXY=1``: HAProxy
  in place of the Python proxy, forwarding to each replica's own HTTP port), or through Serve's direct
  ingress (``RAY_SERVE_ENABLE_DIRECT_INGRESS=1``: the replicas' ports alone); ``--ingress`` picks.

First page = ``limit=1000`` (the default); full walk = all 36,000 samples at ``limit=10000`` with
cursors. The cache is off for those. Then, with the Redis cache on (``REDIS_URL``, default
redis://127.0.0.1:6379/0), 8 client threads ask Serve for the (cached) GPU list for a few seconds:
requests per second (the replica answers from its own copy of the body); each client a raw keep-alive
socket (the figure), then each an ``httpx.Client`` (whose own Python, on the same two cores, halves it).
Authentication is on (a bearer token), as in production.

Then the fleet views (issue 16), on a second database ``bench_fleet`` holding ``--fleet-gpus`` GPUs
(default 25,000; 8 per host, 20 namespaces, pods of 4 GPUs, two allocations per GPU over the last
24 h, the latest-value table, ``usage_1h`` for 24 h, ``usage_1d`` from it, ``usage_1m`` for the last
2 h; rollup rows written in time order, as the compaction writes them), through Ray Serve with
authentication on and no cache: ``GET /api/v1/gpus?limit=1000`` (the first page),
``GET /api/v1/fleet/latest`` (top 10 and 1,000), ``GET /api/v1/usage?group_by=namespace`` over the
last whole hour, 24 whole hours, the last 60 minutes by the hour and by the minute (edges from
``usage_1m``), and by the day: p50 and p99 of each. ``--fleet-only`` runs that part alone.

Then the HTML pages at fleet scale (``--gpus``, default 25,000: 3,125 hosts of 8) in a second database,
``bench_pages``: the latest-value table filled as the collectors keep it, a workload per GPU and usage
rollups for the last day (hours) and hour (minutes). Through the same Serve deployment, signed in once
with the pages' cookie, it times the fleet page (one cell per host, and one page of 2,048 GPU cells),
a GPU's page, the usage page (a day from usage_1h, an hour from usage_1m) and the pipeline page.

Run by hand: ``python bench/api.py [--rows N] [--iterations N]``; ``--quick`` (1 M rows, 100
requests, 5 walks, 3 s of load) for a check in a minute or two; ``--pages-only`` for the pages alone.
"""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
# Sibling scripts (bench/queue.py) must not shadow the standard library; the repository root must be importable.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import argparse  # noqa: E402
import asyncio  # noqa: E402
import gc  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from datetime import UTC, datetime, timedelta  # noqa: E402
from typing import Any  # noqa: E402

import httpx  # noqa: E402
import psycopg  # noqa: E402
from psycopg.conninfo import conninfo_to_dict, make_conninfo  # noqa: E402

from pipeline.config import GatewaySettings, Settings  # noqa: E402
from pipeline.gateway.app import build_app  # noqa: E402
from pipeline.storage.migrate import migrate  # noqa: E402
from pipeline.storage.reader import Reader  # noqa: E402
from pipeline.storage.usage import rebuild_groups  # noqa: E402

DB = "bench_api"
METRICS = 10
HOURS = 4
SECONDS = HOURS * 3600
T0 = datetime(2026, 1, 1, tzinfo=UTC)
PAGE, WALK_PAGE = 1000, 10_000
TOKEN = "bench-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CLIENTS = 8
# The gateway's page query (Reader.telemetry), fetched the way it fetches it: binary rows, names mapped after.
QUERY = (
    "SELECT t.ts, t.metric_id, t.value FROM telemetry t "
    "WHERE t.gpu_key = %(gpu)s AND t.ts >= %(start)s AND t.ts <= %(end)s {after}"
    "ORDER BY t.ts, t.metric_id LIMIT %(limit)s"
)
AFTER = "AND (t.ts, t.metric_id) > (%(after_ts)s, %(after_metric)s) "


def with_db(url: str, name: str) -> str:
    params = conninfo_to_dict(url)
    params["dbname"] = name
    return make_conninfo(**params)  # type: ignore[arg-type]


def build(admin: str, rows: int) -> tuple[str, int]:
    """Create bench_api with ``rows`` samples; returns its conninfo and GPU count."""
    gpus = max(1, round(rows / (METRICS * SECONDS)))
    with psycopg.connect(admin, autocommit=True) as c:
        c.execute(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
        c.execute(f"CREATE DATABASE {DB}")
    url = with_db(admin, DB)
    migrate(url)
    started = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as c:
        c.execute(
            "INSERT INTO gpus (uuid, hostname, gpu_index, device, model, first_seen, last_seen) "
            "SELECT format('GPU-bench-%%s', lpad(i::text, 6, '0')), format('bench-%%s', lpad((i / 8)::text, 5, '0')), "
            "i %% 8, format('nvidia%%s', i %% 8), 'NVIDIA H100 80GB HBM3', %s, %s FROM generate_series(0, %s - 1) i",
            (T0, T0 + timedelta(seconds=SECONDS - 1), gpus),
        )
        c.execute("DROP INDEX telemetry_gpu_ts_idx")  # build it once at the end: much faster than row by row
        step = 900
        for lo in range(0, SECONDS, step):
            c.execute(
                "INSERT INTO telemetry (ts, value, gpu_key, metric_id) "
                "SELECT %(t0)s + make_interval(secs => s), random() * 100, g.gpu_key, m.metric_id "
                "FROM generate_series(%(lo)s::int, %(hi)s::int) s, gpus g, "
                "(SELECT metric_id FROM metrics ORDER BY metric_id LIMIT %(metrics)s) m ORDER BY s",
                {"t0": T0, "lo": lo, "hi": min(SECONDS, lo + step) - 1, "metrics": METRICS},
            )
            done = (lo + step) * gpus * METRICS
            print(f"\r  inserted {done / 1e6:6.1f} M rows ({time.perf_counter() - started:5.0f} s)", end="", flush=True)
        print()
        c.execute("CREATE INDEX telemetry_gpu_ts_idx ON telemetry (gpu_key, ts, metric_id)")
        c.execute("VACUUM ANALYZE telemetry")
        c.execute("CHECKPOINT")  # the build's writes flushed now, not by the checkpointer during the timed requests
        ((count, size),) = c.execute(
            "SELECT count(*), pg_size_pretty((SELECT coalesce(sum(pg_total_relation_size(i.inhrelid)), "
            "pg_total_relation_size('telemetry')) FROM pg_inherits i WHERE i.inhparent = 'telemetry'::regclass)) "
            "FROM telemetry"  # a partitioned table's own size is 0: its partitions hold the rows
        ).fetchall()
    print(
        f"  built {count:,} rows ({gpus} GPUs x {METRICS} metrics x {HOURS} h at 1 Hz), {size}, "
        f"in {time.perf_counter() - started:.0f} s"
    )
    return url, gpus


def windows(gpus: int, n: int, seed: int = 7) -> list[tuple[int, datetime, datetime]]:
    """Random (gpu_key, start, end) one-hour windows, both bounds inclusive: 36,000 samples each."""
    rnd = random.Random(seed)
    out = []
    for _ in range(n):
        start = T0 + timedelta(seconds=rnd.randrange(0, SECONDS - 3600))
        out.append((rnd.randrange(1, gpus + 1), start, start + timedelta(seconds=3599)))
    return out


def timed(fn: Callable[[int, datetime, datetime], int], cases: list[tuple[int, datetime, datetime]]) -> list[float]:
    for case in cases[:10]:  # warm-up
        fn(*case)
    out = []
    for case in cases:
        t = time.perf_counter()
        fn(*case)
        out.append((time.perf_counter() - t) * 1000)
    return out


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] if len(values) > 1 else values[0]


def sql_paths(url: str) -> tuple[Callable[[int, datetime, datetime], int], Callable[[int, datetime, datetime], int]]:
    conn = psycopg.connect(url, autocommit=True, options="-c TimeZone=UTC")
    cur = conn.cursor(binary=True)

    def page(gpu: int, start: datetime, end: datetime, limit: int = PAGE + 1, after: Any = None) -> list[Any]:
        params = {"gpu": gpu, "start": start, "end": end, "limit": limit}
        if after is not None:
            params.update(after_ts=after[0], after_metric=after[1])
        return cur.execute(QUERY.format(after=AFTER if after else ""), params).fetchall()

    def first(gpu: int, start: datetime, end: datetime) -> int:
        return len(page(gpu, start, end))

    def walk(gpu: int, start: datetime, end: datetime) -> int:
        n, after = 0, None
        while True:
            rows = page(gpu, start, end, WALK_PAGE + 1, after)
            n += min(len(rows), WALK_PAGE)
            if len(rows) <= WALK_PAGE:
                return n
            after = (rows[WALK_PAGE - 1][0], rows[WALK_PAGE - 1][1])

    return first, walk


def reader_paths(reader: Reader) -> tuple[Callable[[int, datetime, datetime], int], Callable[..., int]]:
    def first(gpu: int, start: datetime, end: datetime) -> int:
        return len(reader.telemetry(gpu, start, end, PAGE + 1))

    def walk(gpu: int, start: datetime, end: datetime) -> int:
        n, after = 0, None
        while True:
            rows = reader.telemetry(gpu, start, end, WALK_PAGE + 1, after=after)
            n += min(len(rows), WALK_PAGE)
            if len(rows) <= WALK_PAGE:
                return n
            after = (rows[WALK_PAGE - 1].ts, rows[WALK_PAGE - 1].metric_id)

    return first, walk


def http_paths(get: Callable[..., Any]) -> tuple[Callable[..., int], Callable[..., int]]:
    def params(start: datetime, end: datetime) -> dict[str, Any]:
        return {"start_time": start.isoformat(), "end_time": end.isoformat()}

    def first(gpu: int, start: datetime, end: datetime) -> int:
        r = get(f"/api/v1/gpus/GPU-bench-{gpu - 1:06d}/telemetry", params=params(start, end))
        return len(r.json()["items"])

    def walk(gpu: int, start: datetime, end: datetime) -> int:
        n, p = 0, {**params(start, end), "limit": WALK_PAGE}
        while True:
            body = get(f"/api/v1/gpus/GPU-bench-{gpu - 1:06d}/telemetry", params=p).json()
            n += len(body["items"])
            if body["next_cursor"] is None:
                return n
            p["cursor"] = body["next_cursor"]

    return first, walk


def load(base: str, path: str, seconds: float, clients: int = CLIENTS, lean: bool = True) -> tuple[float, int]:
    """Requests per second of ``clients`` threads, each with its own keep-alive connection, and errors.

    ``lean``: each client writes the request's bytes and reads the answer by its Content-Length on a raw
    socket (~20 us of Python a request), so on two shared cores the figure is the server's, not the
    client's; otherwise each is an ``httpx.Client`` (~0.5 ms of Python a request, under one GIL).
    """
    counts = [0] * clients
    errors = [0] * clients
    stop = time.perf_counter() + seconds
    host, port = base.removeprefix("http://").split(":")
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {TOKEN}\r\nAccept-Encoding: gzip\r\n\r\n"
    ).encode()

    def lean_client(i: int) -> None:
        with socket.create_connection((host, int(port)), timeout=30) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            buffered = b""
            while time.perf_counter() < stop:
                sock.sendall(request)
                while b"\r\n\r\n" not in buffered:
                    chunk = sock.recv(65536)
                    if not chunk:
                        raise ConnectionError("the server closed the connection")
                    buffered += chunk
                head, _, buffered = buffered.partition(b"\r\n\r\n")
                lines = head.split(b"\r\n")
                fields = dict(line.split(b":", 1) for line in lines[1:])
                length = int(fields.get(b"content-length", fields.get(b"Content-Length", b"-1")))
                if length < 0:
                    raise ValueError("a response without Content-Length")
                while len(buffered) < length:
                    buffered += sock.recv(65536)
                buffered = buffered[length:]
                if lines[0].split(b" ")[1] == b"200":
                    counts[i] += 1
                else:
                    errors[i] += 1

    def httpx_client(i: int) -> None:
        with httpx.Client(base_url=base, timeout=30, headers=AUTH) as http:
            while time.perf_counter() < stop:
                if http.get(path).status_code == 200:
                    counts[i] += 1
                else:
                    errors[i] += 1

    started = time.perf_counter()
    threads = [threading.Thread(target=lean_client if lean else httpx_client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / (time.perf_counter() - started), sum(errors)


def trivial_app() -> Any:
    """A bare FastAPI GET on Serve, deployed like the gateway: the floor Serve itself sets on this machine."""
    from fastapi import FastAPI
    from ray import serve

    api = FastAPI()

    @api.get("/")
    async def root() -> dict[str, str]:
        return {"status": "ok"}

    @serve.ingress(api)
    class Trivial:
        pass

    options = {"num_cpus": 0.25}
    return serve.deployment(
        Trivial, name="Trivial", ray_actor_options=options, logging_config={"enable_access_log": False}
    ).bind()  # type: ignore[attr-defined]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


PAGES_DB = "bench_pages"
PAGE_PATHS = (
    ("fleet, by host", "/"),
    ("fleet, GPU cells", "/?view=gpus&page=7"),
    ("fleet, one host", "/?hostname=host-01234"),
    ("GPU", "/gpus/GPU-h01234-g5"),
    ("usage, 24 h", "/usage"),
    ("usage, 1 h", "/usage?group_by=pod&window=1h"),
    ("pipeline", "/pipeline"),
)


def build_pages(admin: str, gpus: int) -> str:
    """bench_pages: ``gpus`` GPUs with newest values, one workload each, usage for the last day and hour."""
    from tests.pages_data import load_fleet

    with psycopg.connect(admin, autocommit=True) as c:
        c.execute(f"DROP DATABASE IF EXISTS {PAGES_DB} WITH (FORCE)")
        c.execute(f"CREATE DATABASE {PAGES_DB}")
    url = with_db(admin, PAGES_DB)
    migrate(url)
    now = datetime.now(UTC)
    started = time.perf_counter()
    load_fleet(url, max(1, gpus // 8), now)
    hour = now.replace(minute=0, second=0, microsecond=0)
    minute = now.replace(second=0, microsecond=0)
    with psycopg.connect(url) as c:
        c.execute(
            "INSERT INTO workloads (namespace, pod) SELECT format('team-%s', n % 40), format('job-%s', n) "
            "FROM generate_series(0, 999) n"
        )
        c.execute(
            "INSERT INTO allocations (gpu_key, workload_id, started) SELECT g.gpu_key, 1 + g.gpu_key %% 1000, "
            "%s FROM gpus g",
            (now - timedelta(hours=30),),
        )
        cell = "60 * {s}, 40 * {s}, 5 * {s}, 45 * 60 * {s}, 250 * 60 * {s}"
        c.execute(
            "INSERT INTO usage_1h SELECT %s - make_interval(hours => h), g.gpu_key, 1 + g.gpu_key %% 1000, "
            + cell.format(s=60)
            + " FROM gpus g, generate_series(1, 24) h",
            (hour,),
        )
        c.execute(
            "INSERT INTO usage_1m SELECT %s - make_interval(mins => m), g.gpu_key, 1 + g.gpu_key %% 1000, "
            + cell.format(s=1)
            + " FROM gpus g, generate_series(1, 60) m",
            (minute,),
        )
        rebuild_groups(c)  # the group rollups, as the compaction keeps them
        c.execute("ANALYZE")
    print(
        f"   {PAGES_DB}: {gpus:,} GPUs, 24 h of hourly and 1 h of minute usage in {time.perf_counter() - started:.1f} s"
    )
    return url


def time_pages(http: httpx.Client, requests: int) -> dict[str, list[float]]:
    """Each page ``requests`` times (after one warm-up), in ms; every answer must be a 200 HTML page."""
    out: dict[str, list[float]] = {}
    for name, path in PAGE_PATHS:
        r = http.get(path)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html"), (path, r.status_code)
        times = []
        for _ in range(requests):
            t = time.perf_counter()
            r = http.get(path)
            times.append((time.perf_counter() - t) * 1000)
            assert r.status_code == 200, (path, r.status_code)
        out[name] = times
    return out


# Ray Serve 2.60's direct ingress: each ingress replica serves HTTP itself on a port of its own (from
# 30000 up) besides the proxy; read by the controller and the replicas when they start.
DIRECT_INGRESS = "RAY_SERVE_ENABLE_DIRECT_INGRESS"
HA_PROXY = "RAY_SERVE_ENABLE_HA_PROXY"


def replica_base(app: str, proxy_port: int) -> str:
    """The HTTP address of ``app``'s first replica under direct ingress (this host: the replicas bind 127.0.0.1).

    Ray 2.60 publishes replica ports only through the controller's target groups (no public call); until
    a replica runs they name the proxy instead.
    """
    import ray
    from ray.serve.context import _get_global_client

    controller = _get_global_client()._controller
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for group in ray.get(controller.get_target_groups.remote(app)):
            ports = [t.port for t in group.targets if t.port != proxy_port]
            if group.protocol == "HTTP" and group.app_name == app and ports:
                return f"http://127.0.0.1:{ports[0]}"
        time.sleep(0.5)
    raise RuntimeError(f"no direct-ingress replica of {app} appeared within 30 s")


def on_serve(url: str, firsts: list[Any], walks: list[Any], args: argparse.Namespace, ingress: str) -> tuple[Any, ...]:
    """Pages, the /health and bare-FastAPI floors, and cached GPU-list load, all through one Serve.

    ``ingress`` is ``proxy`` (Serve's HTTP proxy, the default deployment) or ``direct`` (the replicas' own
    HTTP servers). Runs in a fresh process: Serve reads its ingress mode from the environment at import.
    """
    if ingress == "direct":
        os.environ[DIRECT_INGRESS] = "1"
    if ingress == "haproxy":
        os.environ[HA_PROXY] = "1"
    os.environ.setdefault("RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH", "pipeline.gateway.proxy_guard:install")
    import ray
    from ray import serve

    from pipeline.gateway.serve import gateway_app, http_options

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    port = free_port()
    serve.start(http_options=http_options("127.0.0.1", port))
    tokens = f"read:{TOKEN},metrics:{TOKEN}"
    settings = Settings(gateway=GatewaySettings(api_tokens=tokens, redis_url=args.redis_url))
    if args.pages_only:
        html = pages_on_serve(settings, args, port)
        serve.shutdown()
        ray.shutdown()
        return (html,)
    serve.run(gateway_app(settings, url, min_replicas=1, max_replicas=1), name="gateway", route_prefix="/")
    serve.run(trivial_app(), name="trivial", route_prefix="/trivial")
    base = bare_base = f"http://127.0.0.1:{port}"
    if ingress == "direct":
        base, bare_base = replica_base("gateway", port), replica_base("trivial", port)
    with httpx.Client(base_url=base, timeout=60, headers=AUTH) as http, httpx.Client(base_url=bare_base) as bare_http:
        assert http.get("/ready").status_code == 200
        pages = tuple(timed(f, c) for f, c in zip(http_paths(http.get), (firsts, walks), strict=True))
        floor = timed(lambda *_: http.get("/health").status_code, firsts)
        bare = timed(lambda *_: bare_http.get("/trivial/").status_code, firsts)
        http.get("/api/v1/gpus")
        cached = http.get("/api/v1/gpus").headers.get("x-cache")
    rps, failed = load(base, "/api/v1/gpus", args.load_seconds)
    rps_httpx, _ = load(base, "/api/v1/gpus", args.load_seconds, lean=False)
    serve.delete("gateway")
    html = pages_on_serve(settings, args, port) if ingress == "proxy" else None
    serve.shutdown()
    ray.shutdown()
    return pages, floor, bare, cached, rps, failed, html, rps_httpx


def pages_on_serve(settings: Settings, args: argparse.Namespace, port: int) -> dict[str, list[float]]:
    """The HTML pages over bench_pages on the running Serve, signed in once with the pages' cookie."""
    from ray import serve

    from pipeline.gateway.serve import gateway_app

    url = build_pages(args.database_url, args.gpus)
    serve.run(gateway_app(settings, url, min_replicas=1, max_replicas=1), name="pages", route_prefix="/")
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as http:
        deadline = time.monotonic() + 60
        while http.get("/ready").status_code != 200:
            assert time.monotonic() < deadline, "the pages' gateway is not ready"
            time.sleep(0.5)
        assert http.get("/").status_code == 401  # the token prompt
        assert http.post("/login", headers=AUTH).status_code == 204  # the cookie from here on
        times = time_pages(http, args.page_requests)
    serve.delete("pages")
    if not args.keep:
        with psycopg.connect(args.database_url, autocommit=True) as c:
            c.execute(f"DROP DATABASE IF EXISTS {PAGES_DB} WITH (FORCE)")
    return times


def print_pages(times: dict[str, list[float]], gpus: int, requests: int) -> None:
    print(f"\n== HTML pages through Serve, {gpus:,} GPUs, {requests} requests each (cookie auth)")
    print(f"{'page':18} {'p50':>8} {'p99':>8} {'max':>8}   (ms)")
    for name, t in times.items():
        print(f"{name:18} {pct(t, 50):8.1f} {pct(t, 99):8.1f} {max(t):8.1f}")
    fleet = times["fleet, by host"]
    cells = times["fleet, GPU cells"]
    print(
        f"RESULT fleet_page_{gpus}_gpus_p50_ms={pct(fleet, 50):.1f} fleet_page_{gpus}_gpus_p99_ms={pct(fleet, 99):.1f} "
        f"fleet_gpu_cells_p99_ms={pct(cells, 99):.1f}   (goal: fleet page p99 <= 1000 ms)"
    )


# --- the fleet views (issue 16) -------------------------------------------------------------------

FLEET_DB = "bench_fleet"
FLEET_SQL = (
    """INSERT INTO gpus (uuid, hostname, gpu_index, device, model, first_seen, last_seen, driver_version, instance)
    SELECT format('GPU-fleet-%%s', lpad(i::text, 6, '0')), format('node-%%s', lpad((i / 8)::text, 5, '0')), i %% 8,
           format('nvidia%%s', i %% 8), 'NVIDIA H100 80GB HBM3', now() - interval '2 days', now(), '535.129.03',
           format('node-%%s:9400', lpad((i / 8)::text, 5, '0'))
      FROM generate_series(0, %(n)s - 1) i""",
    # two pods of 4 GPUs per 8-GPU host and half-day: pod p holds GPUs 4p..4p+3 in the first 12 h, pod p + n/4 after
    """INSERT INTO workloads (namespace, pod, container)
    SELECT format('ns-%%s', p %% 20), format('pod-%%s', p), 'main' FROM generate_series(0, %(n)s / 2 - 1) p""",
    """INSERT INTO allocations (gpu_key, workload_id, started, ended)
    SELECT g.gpu_key, w.workload_id, date_trunc('hour', now()) - interval '24 hours',
           date_trunc('hour', now()) - interval '12 hours'
      FROM gpus g JOIN workloads w ON w.pod = format('pod-%%s', (g.gpu_key - 1) / 4)""",
    """INSERT INTO allocations (gpu_key, workload_id, started)
    SELECT g.gpu_key, w.workload_id, date_trunc('hour', now()) - interval '12 hours'
      FROM gpus g JOIN workloads w ON w.pod = format('pod-%%s', (g.gpu_key - 1) / 4 + %(n)s / 4)
     WHERE g.gpu_key %% 10 <> 0""",  # every tenth GPU idle now
    """INSERT INTO gpu_latest (gpu_key, ts, metric_ids, sample_ts, vals)
    SELECT g.gpu_key, now(), (SELECT array_agg(m::smallint ORDER BY m) FROM generate_series(1, 10) m),
           array_fill(now(), ARRAY[10]),
           (SELECT array_agg(random() * 100 + g.gpu_key * 0 ORDER BY m) FROM generate_series(1, 10) m)
      FROM gpus g""",
    """INSERT INTO usage_1h
    SELECT h, a.gpu_key, a.workload_id, 3600, 3600 * r, 3600 * (1 - r) * 0.5, 3600 * 100 * r, 3600 * 400 * r
      FROM allocations a
     CROSS JOIN LATERAL generate_series(a.started, coalesce(a.ended, date_trunc('hour', now())) - interval '1 hour',
                                        interval '1 hour') h
     CROSS JOIN LATERAL (SELECT random() AS r) x
     ORDER BY h""",
    """INSERT INTO usage_1d
    SELECT date_bin(interval '1 day', bucket, timestamptz '2000-01-03'), gpu_key, workload_id, sum(seconds),
           sum(active_s), sum(mem_idle_s), sum(util_s), sum(energy_j)
      FROM usage_1h GROUP BY 1, 2, 3 ORDER BY 1""",
    """INSERT INTO usage_1m
    SELECT m, a.gpu_key, a.workload_id, 60, 60 * r, 30 * (1 - r), 6000 * r, 24000 * r
      FROM allocations a
     CROSS JOIN LATERAL generate_series(date_trunc('hour', now()) - interval '2 hours', date_trunc('minute', now()),
                                        interval '1 minute') m
     CROSS JOIN LATERAL (SELECT random() AS r) x
     WHERE a.ended IS NULL
     ORDER BY m""",
)


def build_fleet(admin: str, gpus: int) -> str:
    """Create bench_fleet: ``gpus`` GPUs with latest values, allocations and usage rollups (no samples)."""
    with psycopg.connect(admin, autocommit=True) as c:
        c.execute(f"DROP DATABASE IF EXISTS {FLEET_DB} WITH (FORCE)")
        c.execute(f"CREATE DATABASE {FLEET_DB}")
    url = with_db(admin, FLEET_DB)
    migrate(url)
    started = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as c:
        for statement in FLEET_SQL:
            c.execute(statement, {"n": gpus})
        rebuild_groups(c)  # the group rollups, as the compaction keeps them
        c.execute("VACUUM ANALYZE")
        c.execute("CHECKPOINT")  # as above: the timed requests do not share the disk with the build's flush
        counts = c.execute(
            "SELECT (SELECT count(*) FROM gpus), (SELECT count(*) FROM allocations), "
            "(SELECT count(*) FROM usage_1h), (SELECT count(*) FROM usage_1m)"
        ).fetchone()
    print(
        f"  built {FLEET_DB}: gpus, allocations, usage_1h, usage_1m = {counts} in {time.perf_counter() - started:.0f} s"
    )
    with psycopg.connect(url) as c:
        for table in ("gpu_latest", "allocations", "workloads", "usage_1d", "usage_1h", "usage_1m", "usage_groups_1m"):
            row = c.execute(f"SELECT pg_total_relation_size('{table}'), count(*) FROM {table}").fetchone()
            size, rows = (int(row[0]), int(row[1])) if row else (0, 0)
            print(f"  {table:12} {rows:>10,} rows {size / 2**20:9.1f} MiB  {size / max(rows, 1):6.1f} B/row")
    return url


def fleet_cases(now: datetime) -> dict[str, tuple[str, dict[str, Any]]]:
    hour = now.replace(minute=0, second=0, microsecond=0)
    z = "%Y-%m-%dT%H:%M:%SZ"
    return {
        "gpus limit=1000, first page": ("/api/v1/gpus", {"limit": 1000}),
        "fleet/latest top 10": ("/api/v1/fleet/latest", {"metric": "DCGM_FI_DEV_GPU_TEMP", "limit": 10}),
        "fleet/latest limit=1000": ("/api/v1/fleet/latest", {"metric": "DCGM_FI_DEV_GPU_UTIL", "limit": 1000}),
        "usage namespace, last whole hour": (
            "/api/v1/usage",
            {
                "group_by": "namespace",
                "start_time": (hour - timedelta(hours=1)).strftime(z),
                "end_time": (hour - timedelta(seconds=1)).strftime(z),
            },
        ),
        "usage namespace, 24 whole hours": (
            "/api/v1/usage",
            {
                "group_by": "namespace",
                "start_time": (hour - timedelta(hours=24)).strftime(z),
                "end_time": (hour - timedelta(seconds=1)).strftime(z),
            },
        ),
        "usage namespace, last 60 min (hours)": (
            "/api/v1/usage",
            {
                "group_by": "namespace",
                "start_time": (now - timedelta(minutes=60)).strftime(z),
                "end_time": now.strftime(z),
            },
        ),
        "usage namespace, last 60 min by minute": (
            "/api/v1/usage",
            {
                "group_by": "namespace",
                "start_time": (now - timedelta(minutes=60)).strftime(z),
                "end_time": now.strftime(z),
                "resolution": "minute",
            },
        ),
        "usage namespace, last 2 days by day": (
            "/api/v1/usage",
            {
                "group_by": "namespace",
                "start_time": (now - timedelta(days=1)).strftime(z),
                "end_time": now.strftime(z),
                "resolution": "day",
            },
        ),
        "usage hostname, last whole hour": (
            "/api/v1/usage",
            {
                "group_by": "hostname",
                "start_time": (hour - timedelta(hours=1)).strftime(z),
                "end_time": (hour - timedelta(seconds=1)).strftime(z),
                "limit": 1000,
            },
        ),
    }


def fleet_phase(args: argparse.Namespace) -> list[tuple[str, float, float, float, float]]:
    """p50/p99 of the fleet views in-process and through Serve (no cache, authentication on)."""
    import ray
    from ray import serve

    from pipeline.gateway.serve import gateway_app, http_options

    url = build_fleet(args.database_url, args.fleet_gpus)
    cases = fleet_cases(datetime.now(UTC))
    n = args.fleet_iterations
    tokens = f"read:{TOKEN},metrics:{TOKEN}"
    gateway = GatewaySettings(api_tokens=tokens)
    reader = Reader(url, max_size=4, ranking_ttl_s=gateway.recent_ttl_s)  # as a Serve replica makes it
    reader.open(wait=True)
    app = build_app(reader, gateway)
    gc.freeze()  # as a Serve replica does once its app is built (pipeline/gateway/serve.py)
    loop = asyncio.new_event_loop()
    asgi = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bench", headers=AUTH)

    def timed_get(get: Callable[..., Any], path: str, params: dict[str, Any]) -> list[float]:
        for _ in range(5):
            r = get(path, params=params)
            assert r.status_code == 200, r.text
        out = []
        for _ in range(n):
            t = time.perf_counter()
            get(path, params=params)
            out.append((time.perf_counter() - t) * 1000)
        return out

    in_app = {
        name: timed_get(lambda p, params: loop.run_until_complete(asgi.get(p, params=params)), path, params)
        for name, (path, params) in cases.items()
    }
    loop.run_until_complete(asgi.aclose())
    reader.close()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    port = free_port()
    serve.start(http_options=http_options("127.0.0.1", port))
    settings = Settings(gateway=GatewaySettings(api_tokens=tokens))
    serve.run(gateway_app(settings, url, min_replicas=1, max_replicas=1), name="gateway", route_prefix="/")
    rows = []
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60, headers=AUTH) as http:
        for name, (path, params) in cases.items():
            served = timed_get(http.get, path, params)
            rows.append((name, pct(in_app[name], 50), pct(in_app[name], 99), pct(served, 50), pct(served, 99)))
    serve.shutdown()
    ray.shutdown()
    if not args.keep:
        with psycopg.connect(args.database_url, autocommit=True) as c:
            c.execute(f"DROP DATABASE IF EXISTS {FLEET_DB} WITH (FORCE)")
    return rows


def print_fleet(rows: list[tuple[str, float, float, float, float]], gpus: int, n: int) -> None:
    print(f"\n== fleet views at {gpus:,} GPUs, {n} requests each, no cache, authentication on")
    print(f"{'request':42} {'app p50':>8} {'app p99':>8} {'serve p50':>10} {'serve p99':>10}   (ms)")
    for name, a50, a99, s50, s99 in rows:
        print(f"{name:42} {a50:8.1f} {a99:8.1f} {s50:10.1f} {s99:10.1f}")
    worst = max(r[4] for r in rows)
    print(f"RESULT fleet_views_serve_p99_max_ms={worst:.1f} (goal <= 50 ms at 25,000 GPUs)")


def _serve_child(conn: Any, *call: Any) -> None:
    conn.send(on_serve(*call))
    conn.close()


def serve_in_child(*call: Any) -> tuple[Any, ...]:
    """``on_serve`` in a spawned process (its own Ray, its own Serve environment)."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_serve_child, args=(child, *call))
    proc.start()
    child.close()
    result: tuple[Any, ...] = parent.recv()
    proc.join()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=10_000_000, help="table size (default 10 M; try 100000000)")
    parser.add_argument("--iterations", type=int, default=300, help="first-page requests per path")
    parser.add_argument("--walks", type=int, default=30, help="full walks per path")
    parser.add_argument(
        "--database-url", default=os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1/postgres")
    )
    parser.add_argument("--reuse", action="store_true", help="reuse an existing bench_api database")
    parser.add_argument("--keep", action="store_true", help="keep bench_api afterwards")
    parser.add_argument("--quick", action="store_true", help="1 M rows, 100 requests, 5 walks, 3 s of load")
    parser.add_argument("--load-seconds", type=float, default=10.0, help="seconds of cached GPU-list load")
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    parser.add_argument("--fleet-gpus", type=int, default=25_000, help="GPUs of the fleet-view database")
    parser.add_argument("--fleet-iterations", type=int, default=200, help="requests per fleet view")
    parser.add_argument("--fleet-only", action="store_true", help="only the fleet views")
    parser.add_argument("--no-fleet", action="store_true", help="skip the fleet views")
    parser.add_argument(
        "--ingress",
        choices=("proxy", "direct", "haproxy", "both"),
        default="both",
        help="through Serve's HTTP proxy (the deployed default), Serve's direct ingress (replicas serve HTTP), "
        "Serve's HAProxy ingress (RAY_SERVE_ENABLE_HA_PROXY=1), or both proxy and haproxy",
    )
    parser.add_argument("--gpus", type=int, default=25_000, help="fleet size of the pages' database")
    parser.add_argument("--page-requests", type=int, default=50, help="requests per HTML page")
    parser.add_argument("--pages-only", action="store_true", help="only the HTML pages (no telemetry database)")
    args = parser.parse_args()
    if args.fleet_only:
        print_fleet(fleet_phase(args), args.fleet_gpus, args.fleet_iterations)
        return 0
    if args.quick:
        args.rows, args.iterations, args.walks, args.load_seconds = 1_000_000, 100, 5, 3.0
        args.page_requests = 20
    if args.pages_only:
        (html,) = serve_in_child("", [], [], args, "proxy")
        print_pages(html, args.gpus, args.page_requests)
        return 0

    print(f"== building {DB} ({args.rows:,} rows)" if not args.reuse else f"== reusing {DB}")
    if args.reuse:
        url = with_db(args.database_url, DB)
        with psycopg.connect(url) as c:
            gpus = int(c.execute("SELECT count(*) FROM gpus").fetchone()[0])  # type: ignore[index]
    else:
        url, gpus = build(args.database_url, args.rows)
    firsts, walks = windows(gpus, args.iterations), windows(gpus, args.walks, seed=11)
    results: dict[str, tuple[list[float], list[float]]] = {}

    first, walk = sql_paths(url)
    assert first(*firsts[0]) == PAGE + 1 and walk(*walks[0]) == 36_000, "unexpected window size"
    results["sql"] = (timed(first, firsts), timed(walk, walks))

    reader = Reader(url, max_size=4)
    reader.open(wait=True)
    results["reader"] = tuple(timed(f, c) for f, c in zip(reader_paths(reader), (firsts, walks), strict=True))  # type: ignore[assignment]

    app = build_app(reader, GatewaySettings())
    loop = asyncio.new_event_loop()
    asgi = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bench")

    def app_get(path: str, params: dict[str, Any]) -> httpx.Response:
        return loop.run_until_complete(asgi.get(path, params=params))

    results["app"] = tuple(timed(f, c) for f, c in zip(http_paths(app_get), (firsts, walks), strict=True))  # type: ignore[assignment]
    loop.run_until_complete(asgi.aclose())
    reader.close()

    ingresses = ("proxy", "haproxy") if args.ingress == "both" else (args.ingress,)
    served = {ingress: serve_in_child(url, firsts, walks, args, ingress) for ingress in ingresses}
    for ingress, (pages, *_) in served.items():
        results[f"serve ({ingress})" if len(served) > 1 else "serve"] = pages

    print(f"\n== one GPU, one hour (36,000 samples), {gpus} GPUs / {gpus * METRICS * SECONDS:,} rows")
    print(f"   first page: limit {PAGE}, {args.iterations} requests; full walk: limit {WALK_PAGE}, {args.walks} walks")
    print(f"{'path':14} {'first p50':>10} {'first p99':>10} {'walk p50':>10} {'walk p99':>10}   (ms)")
    for name, (f, w) in results.items():
        print(f"{name:14} {pct(f, 50):10.1f} {pct(f, 99):10.1f} {pct(w, 50):10.1f} {pct(w, 99):10.1f}")
    df, dw = results["sql"]
    for ingress, ((sf, sw), floor, bare, cached, rps, failed, _, rps_httpx) in served.items():
        print(f"-- Serve, {ingress} ingress")
        print(f"   serve floor (GET /health, no database): p50 {pct(floor, 50):.1f} ms, p99 {pct(floor, 99):.1f} ms")
        print(f"   bare FastAPI GET on Serve (same run):   p50 {pct(bare, 50):.1f} ms, p99 {pct(bare, 99):.1f} ms")
        print(
            f"   cached GPU list (X-Cache {cached}), {CLIENTS} clients, {args.load_seconds:.0f} s: "
            f"{rps:,.0f} req/s ({failed} failed); with httpx clients (their Python on the same cores) "
            f"{rps_httpx:,.0f} req/s"
        )
        print(
            f"   serve / sql: first page p50 {pct(sf, 50) / pct(df, 50):.2f}x, p99 {pct(sf, 99) / pct(df, 99):.2f}x; "
            f"walk p50 {pct(sw, 50) / pct(dw, 50):.2f}x"
        )
        print(
            f"RESULT ingress={ingress} serve_first_page_p50_ms={pct(sf, 50):.1f} "
            f"serve_first_page_p99_ms={pct(sf, 99):.1f} health_p50_ms={pct(floor, 50):.1f} "
            f"health_p99_ms={pct(floor, 99):.1f} gpu_list_cached_rps_{CLIENTS}_clients={rps:.0f}   "
            "(goals: first page p99 <= 15 ms, >= 1000 req/s)"
        )
    if "proxy" in served:
        print_pages(served["proxy"][6], args.gpus, args.page_requests)
    if not args.keep:
        with psycopg.connect(args.database_url, autocommit=True) as c:
            c.execute(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
    if not args.no_fleet:
        print_fleet(fleet_phase(args), args.fleet_gpus, args.fleet_iterations)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
