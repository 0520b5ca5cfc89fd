"""Gateway latency: one GPU, one hour (10 metrics at 1 Hz = 36,000 samples), first page and full walk.

Builds a dedicated database ``bench_api`` (dropped and re-created) holding ``--rows`` samples (default
10 M; ``--rows 100000000`` for 100 M): GPUs x 10 metrics x 4 hours at 1 Hz, written in time order as a
collector would. Then, in the same run and over the same random (GPU, hour) windows, it times:

* ``sql``    the gateway's query on one psycopg connection (the floor),
* ``reader`` the same through ``Reader`` (pool, row objects),
* ``app``    the FastAPI app in-process (httpx ASGI transport: routing, validation, JSON),
* ``serve``  the app on Ray Serve over HTTP (proxy, replica, one keep-alive client).

First page = ``limit=1000`` (the default); full walk = all 36,000 samples at ``limit=10000`` with
cursors. The cache is off for those. Then, with the Redis cache on (``REDIS_URL``, default
redis://127.0.0.1:6379/0), 8 client threads ask Serve for the (cached) GPU list for a few seconds:
requests per second. Authentication is on (a bearer token), as in production.

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
                "FROM generate_series(%(lo)s::int, %(hi)s::int) s, gpus g, metrics m ORDER BY s",
                {"t0": T0, "lo": lo, "hi": min(SECONDS, lo + step) - 1},
            )
            done = (lo + step) * gpus * METRICS
            print(f"\r  inserted {done / 1e6:6.1f} M rows ({time.perf_counter() - started:5.0f} s)", end="", flush=True)
        print()
        c.execute("CREATE INDEX telemetry_gpu_ts_idx ON telemetry (gpu_key, ts, metric_id)")
        c.execute("VACUUM ANALYZE telemetry")
        ((count, size),) = c.execute(
            "SELECT count(*), pg_size_pretty(pg_total_relation_size('telemetry')) FROM telemetry"
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


def load(base: str, path: str, seconds: float, clients: int = CLIENTS) -> tuple[float, int]:
    """Requests per second of ``clients`` threads, each with its own keep-alive connection, and errors."""
    counts = [0] * clients
    errors = [0] * clients
    stop = time.perf_counter() + seconds

    def client(i: int) -> None:
        with httpx.Client(base_url=base, timeout=30, headers=AUTH) as http:
            while time.perf_counter() < stop:
                if http.get(path).status_code == 200:
                    counts[i] += 1
                else:
                    errors[i] += 1

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
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


def on_serve(url: str, firsts: list[Any], walks: list[Any], args: argparse.Namespace) -> tuple[Any, ...]:
    """Pages, the /health and bare-FastAPI floors, and cached GPU-list load, all through one Serve."""
    import ray
    from ray import serve

    from pipeline.gateway.serve import gateway_app, http_options

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
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
    base = f"http://127.0.0.1:{port}"
    with httpx.Client(base_url=base, timeout=60, headers=AUTH) as http:
        assert http.get("/ready").status_code == 200
        pages = tuple(timed(f, c) for f, c in zip(http_paths(http.get), (firsts, walks), strict=True))  # type: ignore[assignment]
        floor = timed(lambda *_: http.get("/health").status_code, firsts)
        bare = timed(lambda *_: http.get("/trivial/").status_code, firsts)
        http.get("/api/v1/gpus")
        cached = http.get("/api/v1/gpus").headers.get("x-cache")
    rps, failed = load(base, "/api/v1/gpus", args.load_seconds)
    serve.delete("gateway")
    html = pages_on_serve(settings, args, port)
    serve.shutdown()
    ray.shutdown()
    return pages, floor, bare, cached, rps, failed, html


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
    parser.add_argument("--gpus", type=int, default=25_000, help="fleet size of the pages' database")
    parser.add_argument("--page-requests", type=int, default=50, help="requests per HTML page")
    parser.add_argument("--pages-only", action="store_true", help="only the HTML pages (no telemetry database)")
    args = parser.parse_args()
    if args.quick:
        args.rows, args.iterations, args.walks, args.load_seconds = 1_000_000, 100, 5, 3.0
        args.page_requests = 20
    if args.pages_only:
        (html,) = on_serve("", [], [], args)
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

    results["serve"], floor, bare, cached, rps, failed, html = on_serve(url, firsts, walks, args)

    print(f"\n== one GPU, one hour (36,000 samples), {gpus} GPUs / {gpus * METRICS * SECONDS:,} rows")
    print(f"   first page: limit {PAGE}, {args.iterations} requests; full walk: limit {WALK_PAGE}, {args.walks} walks")
    print(f"{'path':8} {'first p50':>10} {'first p99':>10} {'walk p50':>10} {'walk p99':>10}   (ms)")
    for name, (f, w) in results.items():
        print(f"{name:8} {pct(f, 50):10.1f} {pct(f, 99):10.1f} {pct(w, 50):10.1f} {pct(w, 99):10.1f}")
    print(f"serve floor (GET /health, no database): p50 {pct(floor, 50):.1f} ms, p99 {pct(floor, 99):.1f} ms")
    print(f"bare FastAPI GET on Serve (same run):   p50 {pct(bare, 50):.1f} ms, p99 {pct(bare, 99):.1f} ms")
    print(
        f"cached GPU list via Serve (X-Cache {cached}), {CLIENTS} clients, {args.load_seconds:.0f} s: "
        f"{rps:,.0f} req/s ({failed} failed)"
    )
    sf, sw = results["serve"]
    df, dw = results["sql"]
    print(
        f"serve / sql: first page p50 {pct(sf, 50) / pct(df, 50):.2f}x, p99 {pct(sf, 99) / pct(df, 99):.2f}x; "
        f"walk p50 {pct(sw, 50) / pct(dw, 50):.2f}x"
    )
    print(
        f"RESULT serve_first_page_p50_ms={pct(sf, 50):.1f} serve_first_page_p99_ms={pct(sf, 99):.1f} "
        f"health_p50_ms={pct(floor, 50):.1f} health_p99_ms={pct(floor, 99):.1f} "
        f"gpu_list_cached_rps_{CLIENTS}_clients={rps:.0f}   (goals: first page p99 <= 15 ms, >= 1000 req/s)"
    )
    print_pages(html, args.gpus, args.page_requests)
    if not args.keep:
        with psycopg.connect(args.database_url, autocommit=True) as c:
            c.execute(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
