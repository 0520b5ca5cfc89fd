"""The collectors' writer alone: what attribution costs it (throughput and WAL per sample), on and off.

Builds wire batches of a synthetic fleet (``--gpus``, default 10,000, with workloads that come and go),
stamped 1 s apart, and writes them as 200,000-row transactions (two scrapes each) with
``TelemetryWriter`` into a fresh database ``bench_writer``, attribution off and on in turn, ``--rounds``
times (default 3): after 3 warm-up transactions (GPUs, workloads and intervals registered), rows/s and
WAL bytes per sample. No Ray, no queue: the write path itself. Prints one ``RESULT`` line.
"""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import argparse  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import psycopg  # noqa: E402
import pyarrow as pa  # noqa: E402
from psycopg.conninfo import conninfo_to_dict, make_conninfo  # noqa: E402

from pipeline.config import AttributionSettings  # noqa: E402
from pipeline.records import TS_TYPE, Envelope, pack_envelopes  # noqa: E402
from pipeline.sources import Shard  # noqa: E402
from pipeline.sources.synthetic import SyntheticFleet  # noqa: E402
from pipeline.storage.migrate import migrate  # noqa: E402
from pipeline.storage.sink import PartitionBatch  # noqa: E402
from pipeline.storage.writer import TelemetryWriter  # noqa: E402

DB = "bench_writer"
WARM_UP = 3


def fresh(admin: str) -> str:
    with psycopg.connect(admin, autocommit=True) as c:
        c.execute(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
        c.execute(f"CREATE DATABASE {DB}")
    params = conninfo_to_dict(admin)
    params["dbname"] = DB
    url = make_conninfo(**params)  # type: ignore[arg-type]
    migrate(url)
    return url


def batches(gpus: int, transactions: int) -> list[Envelope]:
    """``transactions`` envelopes of two scrapes each, stamped 1 s apart, an hour ago."""
    fleet = SyntheticFleet(hosts=max(1, gpus // 8), batch_rows=10**9)
    start = int(time.time() * 1e6) - 3_600_000_000
    scrapes = []
    for k in range(2 * transactions):
        (item,) = list(fleet.read_pass(Shard()))
        assert item.wire is not None
        ts = pa.array(np.full(item.wire.num_rows, start + k * 1_000_000, dtype=np.int64)).cast(TS_TYPE)
        scrapes.append(Envelope(item.wire.set_column(0, item.wire.schema.field(0), ts)))
    out = [pack_envelopes(scrapes[i : i + 2]) for i in range(0, len(scrapes), 2)]
    return [e for e in out if e is not None]


def run(admin: str, data: list[Envelope], enabled: bool) -> tuple[float, float]:
    """Rows/s and WAL bytes per sample after the warm-up."""
    url = fresh(admin)
    w = TelemetryWriter(url, attribution=AttributionSettings(enabled=enabled))  # type: ignore[call-arg]
    w.open()
    w.claim("g", 1, [0])
    for offset, e in enumerate(data[:WARM_UP]):
        w.write("g", 1, [PartitionBatch(0, offset, offset + 1, e.num_rows)], e)
    with psycopg.connect(url) as c:
        (lsn,) = c.execute("SELECT pg_current_wal_lsn()").fetchone() or ("0/0",)
    started = time.perf_counter()
    for offset, e in enumerate(data[WARM_UP:], WARM_UP):
        w.write("g", 1, [PartitionBatch(0, offset, offset + 1, e.num_rows)], e)
    elapsed = time.perf_counter() - started
    w.close()
    with psycopg.connect(url) as c:
        (wal,) = c.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s)", (lsn,)).fetchone() or (0,)
    rows = sum(e.num_rows for e in data[WARM_UP:])
    return rows / elapsed, float(wal) / rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--database-url", default=os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    )
    parser.add_argument("--gpus", type=int, default=10_000)
    parser.add_argument("--transactions", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    data = batches(args.gpus, args.transactions + WARM_UP)
    print(f"# bench/writer.py: {args.gpus:,} GPUs, {len(data)} transactions of {data[0].num_rows:,} rows", flush=True)
    results: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
    for _ in range(args.rounds):
        for enabled in (False, True):
            rate, wal = run(args.database_url, data, enabled)
            results[enabled].append((rate, wal))
            print(
                f"attribution {'on ' if enabled else 'off'}: {rate:>10,.0f} rows/s, WAL {wal:6.1f} B/sample", flush=True
            )
    off, on = (statistics.mean(r for r, _ in results[k]) for k in (False, True))
    wal_off, wal_on = (statistics.mean(w for _, w in results[k]) for k in (False, True))
    print(
        f"RESULT writer_rows_per_s_off={off:.0f} writer_rows_per_s_on={on:.0f} ratio_on_off={on / off:.3f} "
        f"wal_b_per_sample_off={wal_off:.1f} wal_b_per_sample_on={wal_on:.1f}"
    )
    with psycopg.connect(args.database_url, autocommit=True) as c:
        c.execute(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
