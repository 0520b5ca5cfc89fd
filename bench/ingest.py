"""Ingest: raw binary COPY vs the whole pipeline, ingest-to-queryable latency, bytes per sample.

In ONE run, against one database (``bench_ingest``, dropped and re-created on the server named by
``--database-url`` / DATABASE_URL, default the local PostgreSQL on 127.0.0.1:5432):

a. raw COPY: pre-built wire batches of a synthetic fleet, encoded the way the collector encodes
   them, COPYed into the production schema, one transaction per batch (the machine's limit);
   ``--encoders`` also compares the NumPy encoder with pgpq and psycopg's ``write_row``;
b. the pipeline at steady state on a synthetic fleet (default 10,000 GPUs x 10 metrics at 1 Hz =
   100,000 rows/s offered), then flat out (``--interval 0``), on a local Ray cluster;
c. ingest-to-queryable latency: a probe polls the newest visible timestamp of a few GPUs through
   the gateway's ``Reader`` and records (time it became visible - its processing timestamp);
d. storage bytes per sample (heap + indexes of every telemetry partition / rows).

``--attribution off`` runs the collectors without deriving allocations, latest values, usage and events
(the cost of attribution is the ratio with it on against the ratio with it off); ``--attribution-cost
PAIRS`` measures that cost directly: PAIRS adjacent flat-out runs off and on, each pair after its own raw
COPY, and the median of the pairs' costs (two separate runs minutes apart differ by more than 5 % here).
``--quick`` finishes in under 5 minutes here; ``--minutes N`` runs the steady state for N minutes and
prints lag and Ray worker memory every 30 s, to show that neither grows. The last line is::

    RESULT e2e_rows_per_s=<n> raw_copy_rows_per_s=<n> ratio=<e2e/raw> latency_p99_s=<n> bytes_per_sample=<n>
"""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
# Sibling scripts (bench/queue.py) must not shadow the standard library; the repository root must be importable.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import argparse  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from datetime import UTC, datetime  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import psutil  # noqa: E402
import psycopg  # noqa: E402
import pyarrow as pa  # noqa: E402
from psycopg.conninfo import conninfo_to_dict, make_conninfo  # noqa: E402

from pipeline.config import Settings  # noqa: E402
from pipeline.records import TS_TYPE, to_wire  # noqa: E402
from pipeline.sources import Shard  # noqa: E402
from pipeline.sources.synthetic import SyntheticFleet  # noqa: E402
from pipeline.storage.copy_format import encode_telemetry  # noqa: E402
from pipeline.storage.migrate import migrate  # noqa: E402

DB = "bench_ingest"


def with_db(url: str, name: str) -> str:
    params = conninfo_to_dict(url)
    params["dbname"] = name
    return make_conninfo(**params)  # type: ignore[arg-type]


def fresh_database(admin: str) -> str:
    with psycopg.connect(admin, autocommit=True) as c:
        c.execute(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
        c.execute(f"CREATE DATABASE {DB}")
    url = with_db(admin, DB)
    migrate(url)
    return url


def fleet_batches(gpus: int, rows: int, batch_rows: int) -> list[pa.RecordBatch]:
    """Wire batches (as collectors receive them) of ``rows`` samples, stamped at 1 Hz from now."""
    fleet = SyntheticFleet(hosts=max(1, gpus // 8), batch_rows=batch_rows)
    out: list[pa.RecordBatch] = []
    start = int(time.time() * 1_000_000)
    scrape = 0
    while sum(b.num_rows for b in out) < rows:
        for item in fleet.read_pass(Shard()):
            wire = to_wire(item.samples)
            ts = pa.array(np.full(wire.num_rows, start + scrape * 1_000_000, dtype=np.int64)).cast(TS_TYPE)
            out.append(wire.set_column(0, wire.schema.field(0), ts))
        scrape += 1
    return out


def encode_numpy(batch: pa.RecordBatch, keys: dict[str, int], metric_ids: dict[str, int]) -> bytes:
    uuids = batch.column("uuid")
    lookup = np.array([keys[u] for u in uuids.dictionary.to_pylist()], dtype=np.int32)
    mlookup = np.array([metric_ids[m] for m in batch.column("metric").dictionary.to_pylist()], dtype=np.int16)
    return encode_telemetry(
        batch.column("ts").cast(pa.int64()).to_numpy(),
        lookup[uuids.indices.to_numpy()],
        mlookup[batch.column("metric").indices.to_numpy()],
        batch.column("value").to_numpy(),
    )


def prepare_keys(url: str, batches: list[pa.RecordBatch]) -> tuple[dict[str, int], dict[str, int]]:
    uuids = sorted({u for b in batches for u in b.column("uuid").dictionary.to_pylist()})
    with psycopg.connect(url) as c:
        c.execute("INSERT INTO gpus (uuid) SELECT unnest(%s::text[]) ON CONFLICT DO NOTHING", (uuids,))
        keys = dict(c.execute("SELECT uuid, gpu_key FROM gpus").fetchall())
        metric_ids = dict(c.execute("SELECT name, metric_id FROM metrics").fetchall())
    return keys, metric_ids


def raw_copy(url: str, payloads: list[bytes], rows: int) -> float:
    """Rows/s of binary COPY of pre-encoded payloads, one transaction per payload."""
    with psycopg.connect(url) as c:
        started = time.perf_counter()
        for payload in payloads:
            with (
                c.transaction(),
                c.cursor().copy("COPY telemetry (ts, gpu_key, metric_id, value) FROM STDIN (FORMAT BINARY)") as copy,
            ):
                copy.write(payload)
        elapsed = time.perf_counter() - started
        c.execute("TRUNCATE telemetry")
        c.commit()
    return rows / elapsed


def encoders(url: str, batches: list[pa.RecordBatch], keys: dict[str, int], metric_ids: dict[str, int]) -> None:
    """NumPy encoder vs pgpq vs psycopg write_row (binary), encode + COPY, same rows."""
    sample = batches[: max(1, 200_000 // batches[0].num_rows)]
    rows = sum(b.num_rows for b in sample)
    results = {}
    with psycopg.connect(url) as c:
        started = time.perf_counter()
        for b in sample:
            with (
                c.transaction(),
                c.cursor().copy("COPY telemetry (ts, gpu_key, metric_id, value) FROM STDIN (FORMAT BINARY)") as copy,
            ):
                copy.write(encode_numpy(b, keys, metric_ids))
        results["numpy (the collector's)"] = rows / (time.perf_counter() - started)
        try:
            import pgpq

            started = time.perf_counter()
            for b in sample:
                table = _keyed(b, keys, metric_ids)
                encoder = pgpq.ArrowToPostgresBinaryEncoder(table.schema)
                parts = [
                    encoder.write_header(),
                    *[encoder.write_batch(x) for x in table.to_batches()],
                    encoder.finish(),
                ]
                with (
                    c.transaction(),
                    c.cursor().copy(
                        "COPY telemetry (ts, gpu_key, metric_id, value) FROM STDIN (FORMAT BINARY)"
                    ) as copy,
                ):
                    for part in parts:
                        copy.write(part)
            results["pgpq"] = rows / (time.perf_counter() - started)
        except ImportError:
            results["pgpq"] = float("nan")
        small = sample[:1]
        n = sum(b.num_rows for b in small)
        started = time.perf_counter()
        for b in small:
            table = _keyed(b, keys, metric_ids).to_pydict()
            with (
                c.transaction(),
                c.cursor().copy("COPY telemetry (ts, gpu_key, metric_id, value) FROM STDIN (FORMAT BINARY)") as copy,
            ):
                copy.set_types(["timestamptz", "int4", "int2", "float8"])
                for row in zip(table["ts"], table["gpu_key"], table["metric_id"], table["value"], strict=True):
                    copy.write_row(row)
        results["psycopg write_row"] = n / (time.perf_counter() - started)
        c.execute("TRUNCATE telemetry")
        c.commit()
    for name, rate in results.items():
        print(f"encoder {name:<24} {rate:>12,.0f} rows/s (encode + COPY)")


def _keyed(b: pa.RecordBatch, keys: dict[str, int], metric_ids: dict[str, int]) -> pa.Table:
    uuids = b.column("uuid")
    lookup = np.array([keys[u] for u in uuids.dictionary.to_pylist()], dtype=np.int32)
    mlookup = np.array([metric_ids[m] for m in b.column("metric").dictionary.to_pylist()], dtype=np.int16)
    return pa.table(
        {
            "ts": b.column("ts"),
            "gpu_key": pa.array(lookup[uuids.indices.to_numpy()]),
            "metric_id": pa.array(mlookup[b.column("metric").indices.to_numpy()]),
            "value": b.column("value"),
        }
    )


class LatencyProbe:
    """Polls the newest visible timestamp of a few GPUs; each change gives one latency sample."""

    def __init__(self, url: str, every_s: float = 0.05) -> None:
        self._url = url
        self._every = every_s
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        from pipeline.storage.reader import Reader

        reader = Reader(self._url, min_size=1, max_size=1)
        reader.open(wait=True)
        keys: list[int] = []
        newest: dict[int, datetime] = {}
        while not self._stop.wait(self._every):
            if len(keys) < 4:
                keys = [g.gpu_key for g in reader.gpus(64)][::16][:4]
                continue
            for key in keys:
                rows = reader._fetch(  # the gateway's pool and connection path, newest sample of one GPU
                    "SELECT max(ts) FROM telemetry WHERE gpu_key = %s AND ts > now() - interval '1 minute'", (key,)
                )
                ts = rows[0][0] if rows else None
                if ts is not None and ts != newest.get(key):
                    if key in newest:
                        self.samples.append((datetime.now(UTC) - ts).total_seconds())
                    newest[key] = ts
        reader.close()


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return float(np.percentile(np.array(values), q))


def stored(url: str, group: str) -> int:
    with psycopg.connect(url) as c:
        row = c.execute(
            "SELECT coalesce(sum(rows_committed), 0) FROM consumer_offsets WHERE group_id = %s", (group,)
        ).fetchone()
    return int(row[0]) if row else 0


def ray_rss_mb() -> float:
    total = 0
    for p in psutil.process_iter(["cmdline"]):
        try:
            cmd = p.info["cmdline"] or []
            if cmd and cmd[0].startswith("ray::"):
                total += p.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return total / 2**20


def run_pipeline(
    url: str,
    gpus: int,
    interval: float,
    seconds: float,
    warmup: float,
    collectors: int,
    streamers: int,
    report_every: float | None = None,
    attribution: bool = True,
) -> dict[str, Any]:
    """Run the pipeline for ``seconds`` after ``warmup``; returns its steady-state figures."""
    from pipeline.runtime.driver import Pipeline
    from pipeline.storage.database import Database

    group = f"bench-{int(time.time())}"
    settings = Settings.load(
        overrides={
            "streamer": {
                "count": streamers,
                "hosts": max(1, gpus // 8),
                "interval_s": interval,
                "batch_rows": 100_000,
                "synthetic_events": False,  # the ten fields of the seed only (no XID field)
            },
            "attribution": {"enabled": attribution},
            "collector": {"count": collectors, "max_rows": 200_000},
            "queue": {"partitions": 16, "group": group},
            "ray": {"namespace": group},
        },
        environ={},
    )
    p = Pipeline(settings, Database(url))
    p.deploy(fresh=True)
    probe = LatencyProbe(url)
    try:
        time.sleep(warmup)
        probe.start()
        first, t0, cpu0 = stored(url, group), time.monotonic(), psutil.cpu_times()
        lags, rss = [], []
        next_report = t0 + (report_every or 1e18)
        while time.monotonic() - t0 < seconds:
            time.sleep(1.0)
            progress = p.progress()
            lags.append(progress.lag_rows)
            rss.append(ray_rss_mb())
            if time.monotonic() >= next_report:
                next_report += report_every or 1e18
                print(
                    f"  t={time.monotonic() - t0:6.0f}s stored={stored(url, group) - first:>12,} "
                    f"lag={progress.lag_rows:>10,} rows  ray RSS={rss[-1]:8.0f} MiB",
                    flush=True,
                )
        last, t1, cpu1 = stored(url, group), time.monotonic(), psutil.cpu_times()
        probe.stop()
    finally:
        p.stop()
    third = max(1, len(lags) // 3)
    busy = sum(getattr(cpu1, f) - getattr(cpu0, f) for f in ("user", "nice", "system", "irq", "softirq", "steal"))
    return {
        "rows_per_s": (last - first) / (t1 - t0),
        # CPU seconds of the whole machine (every process) per million rows stored: the work a row costs,
        # which a stall on the disk (idle and iowait time) does not move the way it moves rows/s
        "cpu_s_per_m_rows": busy / max(last - first, 1) * 1e6,
        "iowait_s": getattr(cpu1, "iowait", 0.0) - getattr(cpu0, "iowait", 0.0),
        "latency": probe.samples,
        "lag_first": lags[:third],
        "lag_last": lags[-third:],
        "rss_first": rss[:third],
        "rss_last": rss[-third:],
    }


def bytes_per_sample(url: str) -> tuple[float, int]:
    with psycopg.connect(url, autocommit=True) as c:
        c.execute("VACUUM ANALYZE telemetry")
        size = c.execute(
            "SELECT coalesce(sum(pg_total_relation_size(i.inhrelid)), pg_total_relation_size('telemetry')) "
            "FROM pg_inherits i WHERE i.inhparent = 'telemetry'::regclass"
        ).fetchone()
        rows = c.execute("SELECT count(*) FROM telemetry").fetchone()
    n = int(rows[0]) if rows else 0
    return (float(size[0]) / n if size and n else float("nan")), n


def reset(url: str) -> None:
    """Empty every table the pipeline writes (the GPU and metric keys stay), and flush it: a run's clean start."""
    kept = ("gpus", "metrics", "xid_codes", "schema_migrations")
    with psycopg.connect(url, autocommit=True) as c:
        tables = [
            t
            for (t,) in c.execute(
                "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND NOT c.relispartition"
            )
            if t not in kept
        ]
        c.execute("TRUNCATE " + ", ".join(f'"{t}"' for t in tables))
        c.execute("CHECKPOINT")


def attribution_cost(url: str, args: argparse.Namespace, seconds: float, raw_rows: int) -> int:
    """Pairs of flat-out runs, attribution off and on, each pair after a raw COPY of its own: the ratio of each.

    A discarded run warms the Ray cluster first. Every run starts from the same database: what earlier
    runs wrote is truncated and checkpointed first (without that, the second run of every pair measured
    ~15 % slower than the first, whichever it was). A pair's two runs are adjacent, so they share the
    machine's other load; the order alternates between pairs (off-on, on-off, ...), so over an even
    number of pairs what is left of an order effect cancels out. The cost is 1 - (ratio on / ratio off),
    per pair, with its mean and median over the pairs; and the extra CPU time (the whole machine's) per
    row stored.
    """
    batches = fleet_batches(args.gpus, raw_rows, 100_000)
    rows = sum(b.num_rows for b in batches)
    keys, metric_ids = prepare_keys(url, batches)
    payloads = [encode_numpy(b, keys, metric_ids) for b in batches]
    costs: list[float] = []
    cpu_costs: list[float] = []
    # The first run on a new Ray cluster starts its worker processes cold (imports, first calls): not a pair's.
    run_pipeline(url, args.gpus, 0.0, 15.0, 8.0, args.collectors, args.streamers)
    for pair in range(args.attribution_cost):
        raw = raw_copy(url, payloads, rows)
        ratios, cpu = {}, {}
        for on in (False, True) if pair % 2 == 0 else (True, False):
            reset(url)
            run = run_pipeline(url, args.gpus, 0.0, seconds, 8.0, args.collectors, args.streamers, attribution=on)
            ratios[on], cpu[on] = run["rows_per_s"] / raw, run["cpu_s_per_m_rows"]
            print(
                f"  pair {pair + 1} attribution {'on ' if on else 'off'}: {run['rows_per_s']:,.0f} rows/s, "
                f"raw COPY {raw:,.0f} rows/s, ratio {ratios[on]:.3f}; {cpu[on]:.2f} CPU s per M rows, "
                f"iowait {run['iowait_s']:.1f} s",
                flush=True,
            )
        costs.append(1 - ratios[True] / ratios[False])
        cpu_costs.append(cpu[True] / cpu[False] - 1)
        print(
            f"  pair {pair + 1}: attribution costs {costs[-1]:+.1%} of the ratio, {cpu_costs[-1]:+.1%} CPU per row",
            flush=True,
        )
    print(
        f"RESULT attribution_cost_mean={statistics.mean(costs):.3f} attribution_cost_median="
        f"{statistics.median(costs):.3f} cpu_per_row_cost_mean={statistics.mean(cpu_costs):.3f} pairs={len(costs)} "
        f"costs={','.join(f'{c:.3f}' for c in costs)} cpu_costs={','.join(f'{c:.3f}' for c in cpu_costs)}"
        "   (goal: <= 0.05)"
    )
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--database-url", default=os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    )
    parser.add_argument("--gpus", type=int, default=10_000, help="synthetic fleet size (x10 metrics at 1 Hz)")
    parser.add_argument("--quick", action="store_true", help="short phases: under 5 minutes in all")
    parser.add_argument("--minutes", type=float, help="steady-state minutes (shows lag and memory stay flat)")
    parser.add_argument("--collectors", type=int, default=2)
    parser.add_argument("--streamers", type=int, default=1)
    parser.add_argument("--encoders", action="store_true", help="also compare COPY encoders")
    parser.add_argument(
        "--attribution", choices=("on", "off"), default="on", help="collectors derive attribution (default on)"
    )
    parser.add_argument(
        "--attribution-cost",
        type=int,
        metavar="PAIRS",
        help="instead of (b)-(d): PAIRS back-to-back flat-out runs with attribution off and on (order alternating),"
        " each after its own raw COPY: the cost of attribution as pairs under the same machine conditions",
    )
    args = parser.parse_args()

    steady_s = 45.0 if args.quick else 120.0
    fast_s = 40.0 if args.quick else 90.0
    if args.minutes:
        steady_s = args.minutes * 60
    raw_rows = 2_000_000 if args.quick else 5_000_000
    print(
        f"# bench/ingest.py on {os.cpu_count()} CPUs; fleet {args.gpus:,} GPUs x 10 metrics; "
        f"{args.collectors} collector(s), {args.streamers} streamer(s), attribution {args.attribution}",
        flush=True,
    )

    url = fresh_database(args.database_url)
    batches = fleet_batches(args.gpus, raw_rows, 100_000)
    rows = sum(b.num_rows for b in batches)
    keys, metric_ids = prepare_keys(url, batches)
    payloads = [encode_numpy(b, keys, metric_ids) for b in batches]
    raw = raw_copy(url, payloads, rows)
    print(f"(a) raw binary COPY: {rows:,} rows in 100k-row transactions: {raw:,.0f} rows/s", flush=True)
    if args.encoders:
        encoders(url, batches, keys, metric_ids)
    del payloads, batches

    import ray

    ray.init(address="local", num_cpus=8, include_dashboard=False, log_to_driver=False, configure_logging=False)
    if args.attribution_cost:
        try:
            return attribution_cost(url, args, fast_s, raw_rows)
        finally:
            ray.shutdown()
    try:
        steady = run_pipeline(
            url,
            args.gpus,
            1.0,
            steady_s,
            10.0,
            args.collectors,
            args.streamers,
            report_every=30.0 if args.minutes else None,
            attribution=args.attribution == "on",
        )
        offered = args.gpus * 10
        print(
            f"(b) steady state, {offered:,} rows/s offered: stored {steady['rows_per_s']:,.0f} rows/s; "
            f"lag {statistics.mean(steady['lag_first']):,.0f} -> {statistics.mean(steady['lag_last']):,.0f} rows; "
            f"ray RSS {statistics.mean(steady['rss_first']):,.0f} -> {statistics.mean(steady['rss_last']):,.0f} MiB",
            flush=True,
        )
        lat = steady["latency"]
        print(
            f"(c) ingest-to-queryable latency over {len(lat)} samples: p50 {pct(lat, 50):.3f} s, "
            f"p99 {pct(lat, 99):.3f} s",
            flush=True,
        )
        fast = run_pipeline(
            url, args.gpus, 0.0, fast_s, 8.0, args.collectors, args.streamers, attribution=args.attribution == "on"
        )
        print(f"(b) as fast as possible: stored {fast['rows_per_s']:,.0f} rows/s", flush=True)
    finally:
        ray.shutdown()
    per_sample, n = bytes_per_sample(url)
    print(f"(d) storage: {per_sample:.1f} bytes per sample (heap + indexes) over {n:,} rows", flush=True)
    e2e = fast["rows_per_s"]
    print(
        f"RESULT e2e_rows_per_s={e2e:.0f} raw_copy_rows_per_s={raw:.0f} ratio={e2e / raw:.3f} "
        f"latency_p99_s={pct(lat, 99):.3f} bytes_per_sample={per_sample:.1f} attribution={args.attribution}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
