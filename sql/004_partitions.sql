-- Plain PostgreSQL: telemetry becomes a table partitioned by range on ts, converted in place.
-- On TimescaleDB (timescaledb in pg_extension, see 002) this file changes nothing: 003 made it a hypertable.
--
-- Same columns in the same order as 001 and the same (gpu_key, ts, metric_id) index, now a partitioned
-- index: the writer keeps COPYing into "telemetry" and the reader keeps querying it; neither does DDL.
--
-- Partitions (pipeline/storage/partitions.py, PartitionManager.ensure at start-up and periodically):
--   * created ahead on a fixed grid (default one per UTC day, origin 2000-01-03 like time_bucket), so
--     each index stays one interval big and queries bounded in time touch only their partitions;
--   * dropped whole (DETACH + DROP) once entirely older than the retention (default 7 days).
-- telemetry_default (DEFAULT partition) catches rows no partition covers, so a late manager never makes
-- ingest fail. A default partition holding rows in a range blocks attaching a partition for it, so the
-- manager moves such rows into the partition it creates; kept empty, it costs nothing.
--
-- Existing rows are kept without copying: the old table is attached as one partition,
-- telemetry_legacy, covering (MINVALUE, the first midnight UTC after its newest row). ATTACH scans it
-- once to check that bound; its index becomes the partition's index. The manager drops it like any
-- other partition once that upper bound is older than the retention.

DO $migration$
DECLARE
    newest timestamptz;
    upper  timestamptz;
BEGIN
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb') THEN
        RETURN;
    END IF;
    IF (SELECT relkind FROM pg_class WHERE oid = 'telemetry'::regclass) = 'p' THEN
        RETURN;  -- already partitioned (created by hand, or by a later schema)
    END IF;

    ALTER TABLE telemetry RENAME TO telemetry_legacy;
    ALTER INDEX telemetry_gpu_ts_idx RENAME TO telemetry_legacy_gpu_ts_idx;

    CREATE TABLE telemetry (
        ts          timestamptz      NOT NULL,
        value       double precision NOT NULL,
        gpu_key     integer          NOT NULL,
        metric_id   smallint         NOT NULL
    ) PARTITION BY RANGE (ts);
    CREATE INDEX telemetry_gpu_ts_idx ON telemetry (gpu_key, ts, metric_id);
    CREATE TABLE telemetry_default PARTITION OF telemetry DEFAULT;

    -- Newest row: one backward probe of the (gpu_key, ts, metric_id) index per known GPU, not a scan.
    -- (A row of a GPU missing from gpus and newer than this fails the ATTACH below: nothing is lost,
    -- the migration rolls back and says which bound was violated.)
    SELECT max(n.ts) INTO newest
      FROM gpus g
      CROSS JOIN LATERAL (SELECT max(t.ts) AS ts FROM telemetry_legacy t WHERE t.gpu_key = g.gpu_key) n;

    IF newest IS NULL AND NOT EXISTS (SELECT 1 FROM telemetry_legacy) THEN
        DROP TABLE telemetry_legacy;
        RETURN;
    END IF;
    IF newest IS NULL THEN
        SELECT max(ts) INTO newest FROM telemetry_legacy;  -- rows, but none of a known GPU: scan
    END IF;
    upper := date_bin(interval '1 day', newest, timestamptz '2000-01-03 00:00:00+00') + interval '1 day';
    EXECUTE format('ALTER TABLE telemetry ATTACH PARTITION telemetry_legacy FOR VALUES FROM (MINVALUE) TO (%L)',
                   upper);
END
$migration$;
