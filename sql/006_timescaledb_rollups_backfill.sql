-- migrate: no-transaction
-- TimescaleDB, step 4 of 4: materialize the rollups over the rows that existed before 005.
-- On plain PostgreSQL this file changes nothing.
--
-- The refresh policies only look back 1 hour (telemetry_1m) and 4 hours (telemetry_1h); older
-- buckets of a converted database would otherwise stay unmaterialized and, once the policy moves the
-- watermark past them, invisible. refresh_continuous_aggregate() commits internally, so TimescaleDB
-- refuses it inside a transaction block or an atomic context: the first line above asks the migration
-- runner to send this file on its own, outside a transaction, and the file is a single statement (a DO
-- at top level is non-atomic, so the static CALLs below may commit). Safe to re-run: a refresh only
-- materializes invalidated ranges.
--
-- Static CALLs (not EXECUTE): PL/pgSQL runs a dynamic CALL atomically. They are parsed only when the
-- branch runs, so plain PostgreSQL never resolves them.
-- Written from the TimescaleDB 2.x documentation (target 2.28); not executable on the development machines.

DO $migration$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb') THEN
        RETURN;
    END IF;
    -- NULL start: from the oldest row. The end stops short of the buckets still being written, which
    -- the policies and real-time aggregation cover.
    CALL refresh_continuous_aggregate('telemetry_1m', NULL, now() - INTERVAL '1 minute');
    CALL refresh_continuous_aggregate('telemetry_1h', NULL, now() - INTERVAL '1 hour');
END
$migration$;
