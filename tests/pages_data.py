"""A fleet with known newest values for the pages' tests and the bench, written straight into PostgreSQL.

``load_fleet`` fills ``gpus`` and the latest-value table ``gpu_latest`` (what the collectors keep)
in a few set-based statements, so 25,000 GPUs take about a second: GPU ``h<host>-g<i>`` on host
``host-<host>``, utilisation ``(host * 8 + i) % 100`` %, temperature ``30 + (host + i) % 50`` C, power
``100 + i * 10`` W, memory ``1000 * i`` MiB, all stamped ``now``. ``mark_hot``, ``mark_missing``,
``mark_blank`` and ``hold`` then single out GPUs.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import psycopg

from pipeline.storage.usage import rebuild_groups

__all__ = ["UTIL", "hold", "load_fleet", "mark_blank", "mark_hot", "mark_missing", "use", "uuid_of"]

UTIL, TEMP, POWER, FB = "DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_GPU_TEMP", "DCGM_FI_DEV_POWER_USAGE", "DCGM_FI_DEV_FB_USED"


def uuid_of(host: int, index: int) -> str:
    return f"GPU-h{host:05d}-g{index}"


def load_fleet(conninfo: str, hosts: int, now: datetime, per_host: int = 8) -> None:
    """``hosts`` x ``per_host`` GPUs with their newest values at ``now`` (see the module docstring)."""
    with psycopg.connect(conninfo) as c:
        c.execute(
            "INSERT INTO gpus (uuid, hostname, gpu_index, device, model, first_seen, last_seen) "
            "SELECT format('GPU-h%%s-g%%s', lpad(h::text, 5, '0'), i), format('host-%%s', lpad(h::text, 5, '0')), i, "
            "'nvidia' || i, 'NVIDIA H100 80GB HBM3', %(now)s - interval '1 day', %(now)s "
            "FROM generate_series(0, %(hosts)s - 1) h, generate_series(0, %(per)s - 1) i",
            {"hosts": hosts, "per": per_host, "now": now},
        )
        ids = dict(c.execute("SELECT name, metric_id FROM metrics WHERE name = ANY(%s)", ([UTIL, TEMP, POWER, FB],)))
        c.execute(
            "INSERT INTO gpu_latest (gpu_key, ts, metric_ids, sample_ts, vals) "
            "SELECT g.gpu_key, %(now)s, ARRAY[%(u)s, %(t)s, %(p)s, %(f)s]::smallint[], "
            "ARRAY[%(now)s, %(now)s, %(now)s, %(now)s]::timestamptz[], "
            "ARRAY[((h * 8 + i) %% 100)::float8, (30 + (h + i) %% 50)::float8, (100 + i * 10)::float8, "
            "(1000 * i)::float8] "
            "FROM gpus g, LATERAL (SELECT substr(g.uuid, 6, 5)::int AS h, g.gpu_index AS i) x",
            {"now": now, "u": ids[UTIL], "t": ids[TEMP], "p": ids[POWER], "f": ids[FB]},
        )


def _set(c: psycopg.Connection, uuid: str, metric: str, value: float) -> None:
    c.execute(
        "UPDATE gpu_latest l SET vals[array_position(l.metric_ids, m.metric_id)] = %s FROM gpus g, metrics m "
        "WHERE l.gpu_key = g.gpu_key AND g.uuid = %s AND m.name = %s",
        (value, uuid, metric),
    )


def mark_hot(conninfo: str, uuid: str, temp: float = 97.0) -> None:
    """Make ``uuid`` the hottest GPU of the fleet."""
    with psycopg.connect(conninfo) as c:
        _set(c, uuid, TEMP, temp)


def mark_missing(conninfo: str, uuid: str, silent_for: timedelta, now: datetime) -> None:
    """``uuid``'s newest sample is ``silent_for`` old."""
    with psycopg.connect(conninfo) as c:
        c.execute(
            "UPDATE gpu_latest l SET ts = %(ts)s, sample_ts = array_fill(%(ts)s::timestamptz, "
            "ARRAY[cardinality(l.sample_ts)]) FROM gpus g WHERE l.gpu_key = g.gpu_key AND g.uuid = %(uuid)s",
            {"ts": now - silent_for, "uuid": uuid},
        )


def mark_blank(conninfo: str, uuid: str, metric: str, code: str, now: datetime) -> None:
    """``uuid`` reported the DCGM blank code ``code`` for ``metric`` (a reject) instead of a value."""
    with psycopg.connect(conninfo) as c:
        c.execute(
            "UPDATE gpu_latest l SET vals[array_position(l.metric_ids, m.metric_id)] = NULL FROM gpus g, metrics m "
            "WHERE l.gpu_key = g.gpu_key AND g.uuid = %s AND m.name = %s",
            (uuid, metric),
        )
        c.execute(
            "INSERT INTO rejects (ts, source, line, raw, reason, uuid, metric, blank) VALUES (%s, 'scrape', 1, "
            "'9223372036854775794', %s, %s, %s, %s)",
            (now, f"value `9223372036854775794` for {metric} is a DCGM {code} code (no value)", uuid, metric, code),
        )


def hold(conninfo: str, uuid: str, namespace: str, pod: str, started: datetime, ended: datetime | None) -> None:
    """``namespace``/``pod`` held ``uuid`` over [started, ended) (ended None: still holds it)."""
    with psycopg.connect(conninfo) as c:
        c.execute(
            "INSERT INTO workloads (namespace, pod) VALUES (%s, %s) ON CONFLICT ON CONSTRAINT workloads_key DO NOTHING",
            (namespace, pod),
        )
        c.execute(
            "INSERT INTO allocations (gpu_key, workload_id, started, ended) SELECT g.gpu_key, w.workload_id, %s, %s "
            "FROM gpus g, workloads w WHERE g.uuid = %s AND w.namespace = %s AND w.pod = %s AND w.container IS NULL "
            "AND w.job IS NULL",
            (started, ended, uuid, namespace, pod),
        )


def use(
    conninfo: str,
    uuid: str,
    namespace: str | None,
    pod: str | None,
    start: datetime,
    minutes: int,
    util: float,
    watts: float,
    mem_idle: bool = False,
) -> None:
    """Usage rollup minutes: ``pod`` held ``uuid`` for ``minutes`` whole minutes from ``start`` at ``util`` %.

    Active when ``util`` is above 5 %; ``mem_idle`` marks idle minutes that held memory. ``pod`` None:
    nobody held the GPU (workload 0).
    """
    with psycopg.connect(conninfo) as c:
        workload = 0
        if pod is not None:
            c.execute(
                "INSERT INTO workloads (namespace, pod) VALUES (%s, %s) "
                "ON CONFLICT ON CONSTRAINT workloads_key DO NOTHING",
                (namespace, pod),
            )
            row = c.execute(
                "SELECT workload_id FROM workloads WHERE namespace IS NOT DISTINCT FROM %s AND pod = %s "
                "AND container IS NULL AND job IS NULL",
                (namespace, pod),
            ).fetchone()
            assert row is not None
            workload = row[0]
        active = 60.0 if util > 5 else 0.0
        c.execute(
            "INSERT INTO usage_1m (bucket, gpu_key, workload_id, seconds, active_s, mem_idle_s, util_s, energy_j) "
            "SELECT %(start)s + make_interval(mins => m), g.gpu_key, %(w)s, 60, %(active)s, %(mem)s, 60 * %(util)s, "
            "60 * %(watts)s FROM generate_series(0, %(n)s - 1) m, gpus g WHERE g.uuid = %(uuid)s",
            {
                "start": start,
                "w": workload,
                "active": active,
                "mem": 60.0 if mem_idle and not active else 0.0,
                "util": util,
                "watts": watts,
                "n": minutes,
                "uuid": uuid,
            },
        )
        # usage_1h as the compaction keeps it on plain PostgreSQL: the sums of the hour's minutes.
        c.execute(
            "INSERT INTO usage_1h SELECT date_trunc('hour', bucket), gpu_key, workload_id, sum(seconds), "
            "sum(active_s), sum(mem_idle_s), sum(util_s), sum(energy_j) FROM usage_1m GROUP BY 1, 2, 3 "
            "ON CONFLICT (bucket, gpu_key, workload_id) DO UPDATE SET seconds = excluded.seconds, "
            "active_s = excluded.active_s, mem_idle_s = excluded.mem_idle_s, util_s = excluded.util_s, "
            "energy_j = excluded.energy_j"
        )
        rebuild_groups(c)  # and the group rollups, as the compaction keeps them
