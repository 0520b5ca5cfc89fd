-- TimescaleDB, step 2 of 4: telemetry becomes a hypertable with columnstore compression and retention.
-- On plain PostgreSQL (no timescaledb in pg_extension) this file changes nothing.
--
-- Written from the TimescaleDB 2.x documentation, targeting 2.28 on PostgreSQL 15+. It cannot run on
-- the development machines (TimescaleDB is not installable there); tests/unit/test_sql_timescale.py
-- checks it statically. Every TimescaleDB call is dynamic SQL (EXECUTE) inside the extension guard.
--
-- Chunk interval: 15 minutes.
--   Rule (TimescaleDB docs): the chunk being written, indexes included, fits in ~25 % of RAM.
--   Reference load: 25,000 GPUs x 10 metrics x 1 Hz = 250,000 samples/s.
--   Uncompressed cost, measured on PostgreSQL 15 (docs/storage.md): 126 B/sample
--   (52 B heap + 74 B for the (gpu_key, ts, metric_id) btree as time-ordered ingest fills it).
--   250,000 samples/s x 126 B = 31.5 MB/s = 113 GB/hour.
--   15 minutes -> 28 GB per chunk, under 25 % of a 128 GiB server (34 GB); 1-hour chunks would need
--   ~450 GB of RAM at this rate. Each (gpu_key, metric_id) segment then holds 900 samples per chunk,
--   one compressed batch (TimescaleDB batches hold up to 1,000 rows).
--   Other fleets: interval = 0.25 x RAM / (samples/s x 126 B); set it before migrating with
--   ALTER DATABASE ... SET pipeline.chunk_interval = '1 hour', or later with set_chunk_time_interval().
-- Compression (columnstore) after 2 hours: a chunk is converted once all its rows are 2 h old, after the
--   1-minute rollup's refresh window (1 h, 005) has passed over it and late rows have arrived.
--   Override: pipeline.compress_after.
-- Retention: 7 days of raw samples (override: pipeline.retention). The rollups keep longer (005).
--
-- create_default_indexes => false: the existing (gpu_key, ts, metric_id) index serves every query the
-- gateway makes; TimescaleDB's default ts index would add ~36 B/sample and slow COPY (FACTS.md), and
-- time-only scans (rollup refresh, retention) are bounded by chunk exclusion instead.

DO $migration$
DECLARE
    chunk_interval interval := coalesce(nullif(current_setting('pipeline.chunk_interval', true), ''), '15 minutes');
    compress_after interval := coalesce(nullif(current_setting('pipeline.compress_after', true), ''), '2 hours');
    retention      interval := coalesce(nullif(current_setting('pipeline.retention', true), ''), '7 days');
    version        int[];
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb') THEN
        RETURN;
    END IF;
    SELECT string_to_array(split_part(extversion, '-', 1), '.')::int[] INTO version
      FROM pg_extension WHERE extname = 'timescaledb';
    IF version < ARRAY[2, 13] THEN
        RAISE EXCEPTION 'TimescaleDB % is too old: these migrations need 2.13 or newer (by_range)',
            array_to_string(version, '.');
    END IF;
    IF retention <= interval '1 day' THEN
        RAISE EXCEPTION 'pipeline.retention = % is too short: the rollups refresh the last hours of raw data',
            retention;
    END IF;

    -- Moves the existing rows into chunks, in this transaction (a long lock on a large table).
    EXECUTE format(
        'SELECT create_hypertable(%L, by_range(%L, %L::interval), create_default_indexes => false, '
        'if_not_exists => true, migrate_data => true)',
        'telemetry', 'ts', chunk_interval);

    -- Columnstore: one compressed batch per (GPU, metric) and chunk, ordered by time. 2.18 renamed the
    -- compression API (timescaledb.compress* -> enable_columnstore/segmentby/orderby,
    -- add_compression_policy -> add_columnstore_policy); 2.28 documents the new names and keeps the old.
    IF version >= ARRAY[2, 18] THEN
        EXECUTE 'ALTER TABLE telemetry SET (timescaledb.enable_columnstore = true, '
                'timescaledb.segmentby = ''gpu_key, metric_id'', timescaledb.orderby = ''ts'')';
        EXECUTE format('CALL add_columnstore_policy(%L, after => %L::interval, if_not_exists => true)',
                       'telemetry', compress_after);
    ELSE
        EXECUTE 'ALTER TABLE telemetry SET (timescaledb.compress, '
                'timescaledb.compress_segmentby = ''gpu_key, metric_id'', timescaledb.compress_orderby = ''ts'')';
        EXECUTE format('SELECT add_compression_policy(%L, compress_after => %L::interval, if_not_exists => true)',
                       'telemetry', compress_after);
    END IF;

    EXECUTE format('SELECT add_retention_policy(%L, drop_after => %L::interval, if_not_exists => true)',
                   'telemetry', retention);
END
$migration$;
