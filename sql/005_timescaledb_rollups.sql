-- TimescaleDB, step 3 of 4: continuous aggregates telemetry_1m and telemetry_1h with refresh policies.
-- On plain PostgreSQL this file changes nothing, and no telemetry_1m / telemetry_1h views exist there:
-- a date_bin view cannot push "bucket BETWEEN" down to ts (no partition pruning, no index bound), so the
-- reader computes date_bin over the raw rows of its bounded window instead (docs/storage.md).
--
-- Written from the TimescaleDB 2.x documentation (target 2.28); not executable on the development
-- machines. Every TimescaleDB call is dynamic SQL inside the extension guard.
--
-- Columns are the contract the reader (pipeline/storage/reader.py) re-aggregates:
--   bucket timestamptz, gpu_key int, metric_id smallint, avg/min/max/last float8, count bigint.
-- time_bucket's default origin for timestamptz is 2000-01-03 00:00 UTC, the reader's AGGREGATE_ORIGIN,
-- so rollup buckets and raw date_bin buckets line up.
--
-- Created WITH NO DATA: "WITH DATA" (the default) materializes at once, which TimescaleDB refuses
-- inside a transaction block or a DO block. Existing rows are materialized by 006 (outside a
-- transaction). Real-time aggregation is on (materialized_only = false; 2.13+ defaults to true), so
-- the views also answer for buckets not yet materialized.
--
-- Policies (start_offset must stay below the retention of the source, else a refresh over dropped
-- chunks deletes the rollups for them):
--   telemetry_1m: from telemetry, every 5 minutes over [now - 1 hour, now - 1 minute); kept 30 days.
--   telemetry_1h: from telemetry_1m (hierarchical, 2.9+: reads 60x fewer rows than raw), every
--                 30 minutes over [now - 4 hours, now - 1 hour); kept 365 days.
--   Raw retention (003) is 7 days by default and at least 1 day: above both windows.
-- avg over the hour is weighted by count (an average of averages would be wrong); last(last, bucket)
-- is the last value of the newest minute.

DO $migration$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb') THEN
        RETURN;
    END IF;

    EXECUTE $sql$
        CREATE MATERIALIZED VIEW IF NOT EXISTS telemetry_1m
        WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
        SELECT time_bucket(INTERVAL '1 minute', ts) AS bucket,
               gpu_key,
               metric_id,
               avg(value)      AS avg,
               min(value)      AS min,
               max(value)      AS max,
               count(*)        AS count,
               last(value, ts) AS last
          FROM telemetry
         GROUP BY time_bucket(INTERVAL '1 minute', ts), gpu_key, metric_id
        WITH NO DATA
    $sql$;
    EXECUTE $sql$
        SELECT add_continuous_aggregate_policy('telemetry_1m',
            start_offset      => INTERVAL '1 hour',
            end_offset        => INTERVAL '1 minute',
            schedule_interval => INTERVAL '5 minutes',
            if_not_exists     => true)
    $sql$;
    EXECUTE $sql$
        SELECT add_retention_policy('telemetry_1m', drop_after => INTERVAL '30 days', if_not_exists => true)
    $sql$;

    EXECUTE $sql$
        CREATE MATERIALIZED VIEW IF NOT EXISTS telemetry_1h
        WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
        SELECT time_bucket(INTERVAL '1 hour', bucket)              AS bucket,
               gpu_key,
               metric_id,
               sum(avg * count) / nullif(sum(count), 0)::float8     AS avg,
               min(min)                                            AS min,
               max(max)                                            AS max,
               sum(count)::bigint                                  AS count,
               last(last, bucket)                                  AS last
          FROM telemetry_1m
         GROUP BY time_bucket(INTERVAL '1 hour', bucket), gpu_key, metric_id
        WITH NO DATA
    $sql$;
    EXECUTE $sql$
        SELECT add_continuous_aggregate_policy('telemetry_1h',
            start_offset      => INTERVAL '4 hours',
            end_offset        => INTERVAL '1 hour',
            schedule_interval => INTERVAL '30 minutes',
            if_not_exists     => true)
    $sql$;
    EXECUTE $sql$
        SELECT add_retention_policy('telemetry_1h', drop_after => INTERVAL '365 days', if_not_exists => true)
    $sql$;
END
$migration$;
