-- TimescaleDB: the usage rollups as a hypertable and a continuous aggregate (023 made them plain tables).
-- On plain PostgreSQL this file changes nothing: there the compaction (pipeline/storage/usage.py)
-- maintains usage_1m and usage_1h itself, in the transaction that folds the collectors' usage log.
--
-- Written from the TimescaleDB 2.x documentation (target 2.28); not executable on the development
-- machines (TimescaleDB is not installable there); tests/unit/storage/test_sql_timescale.py checks it
-- statically. Every TimescaleDB call is dynamic SQL inside the extension guard.
--
-- usage_1m becomes a hypertable on bucket (1-day chunks: 25,000 GPUs x 1,440 minutes = 36 M rows a
-- day, ~4 GB with its key index, docs/storage.md), kept 7 days by a retention policy. Its primary key
-- (bucket, gpu_key, workload_id) includes the time column, as a hypertable's unique indexes must, so
-- the compaction's INSERT ... ON CONFLICT DO UPDATE works unchanged.
--
-- usage_1h (and usage_1d) become continuous aggregates: usage_1h over usage_1m (hierarchical rollup of sums: exact, every
-- column is additive), created WITH NO DATA (materializing in a DO block is refused; usage_1m is empty
-- when this runs, right after 023), real-time (materialized_only = false) so the newest hour is
-- answered from usage_1m. Refresh policy: every 30 minutes over [now - 1 day, now - 1 hour): a
-- compaction updates minutes that are at most minutes old, and an ON CONFLICT update of an older
-- minute invalidates that range like an insert; the start offset stays inside usage_1m's 7 days.
-- Kept 365 days. usage_1d is a continuous aggregate over usage_1h (a hierarchy of sums again), refreshed
-- hourly over [now - 3 days, now - 1 day) and real-time beyond, kept 5 years. The columns are usage_1m's,
-- which the reader reads from all three.

DO $migration$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb') THEN
        RETURN;
    END IF;

    EXECUTE format(
        'SELECT create_hypertable(%L, by_range(%L, %L::interval), if_not_exists => true, migrate_data => true)',
        'usage_1m', 'bucket', '1 day');
    EXECUTE $sql$
        SELECT add_retention_policy('usage_1m', drop_after => INTERVAL '7 days', if_not_exists => true)
    $sql$;

    EXECUTE 'DROP VIEW IF EXISTS grafana.usage_1h';
    EXECUTE 'DROP TABLE usage_1h';
    EXECUTE $sql$
        CREATE MATERIALIZED VIEW IF NOT EXISTS usage_1h
        WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
        SELECT time_bucket(INTERVAL '1 hour', bucket) AS bucket,
               gpu_key,
               workload_id,
               sum(seconds)    AS seconds,
               sum(active_s)   AS active_s,
               sum(mem_idle_s) AS mem_idle_s,
               sum(util_s)     AS util_s,
               sum(energy_j)   AS energy_j
          FROM usage_1m
         GROUP BY time_bucket(INTERVAL '1 hour', bucket), gpu_key, workload_id
        WITH NO DATA
    $sql$;
    EXECUTE $sql$
        SELECT add_continuous_aggregate_policy('usage_1h',
            start_offset      => INTERVAL '1 day',
            end_offset        => INTERVAL '1 hour',
            schedule_interval => INTERVAL '30 minutes',
            if_not_exists     => true)
    $sql$;
    EXECUTE $sql$
        SELECT add_retention_policy('usage_1h', drop_after => INTERVAL '365 days', if_not_exists => true)
    $sql$;
    EXECUTE 'DROP VIEW IF EXISTS grafana.usage_1d';
    EXECUTE 'DROP TABLE usage_1d';
    EXECUTE $sql$
        CREATE MATERIALIZED VIEW IF NOT EXISTS usage_1d
        WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
        SELECT time_bucket(INTERVAL '1 day', bucket) AS bucket,
               gpu_key,
               workload_id,
               sum(seconds)    AS seconds,
               sum(active_s)   AS active_s,
               sum(mem_idle_s) AS mem_idle_s,
               sum(util_s)     AS util_s,
               sum(energy_j)   AS energy_j
          FROM usage_1h
         GROUP BY time_bucket(INTERVAL '1 day', bucket), gpu_key, workload_id
        WITH NO DATA
    $sql$;
    EXECUTE $sql$
        SELECT add_continuous_aggregate_policy('usage_1d',
            start_offset      => INTERVAL '3 days',
            end_offset        => INTERVAL '1 day',
            schedule_interval => INTERVAL '1 hour',
            if_not_exists     => true)
    $sql$;
    EXECUTE $sql$
        SELECT add_retention_policy('usage_1d', drop_after => INTERVAL '1825 days', if_not_exists => true)
    $sql$;
    EXECUTE 'CREATE VIEW grafana.usage_1h AS SELECT * FROM public.usage_1h';
    EXECUTE 'CREATE VIEW grafana.usage_1d AS SELECT * FROM public.usage_1d';
    EXECUTE 'GRANT SELECT ON grafana.usage_1h, grafana.usage_1d TO gpu_telemetry_grafana';
END
$migration$;
