-- TimescaleDB, step 1 of 4: create the extension where the server can load it.
--
-- Decides which storage path this database takes, once:
--   * timescaledb already installed                      -> TimescaleDB path (003, 005, 006)
--   * available and in shared_preload_libraries          -> CREATE EXTENSION, TimescaleDB path
--   * available but not preloaded                        -> WARNING, plain PostgreSQL path (004):
--     CREATE EXTENSION would fail ("extension must be preloaded"); add timescaledb to
--     shared_preload_libraries and restart *before* the first migration to get the TimescaleDB path.
--   * not available                                      -> plain PostgreSQL path (004)
-- Later files branch only on pg_extension, so the choice made here is the one they all follow.
--
-- Kept apart from 003 so the extension is committed before the first TimescaleDB call.
-- Creating the extension needs a role allowed to (usually a superuser); if the migrating role is not,
-- a DBA runs CREATE EXTENSION timescaledb first and this file then finds it installed.
-- Not executable on the development machines (no TimescaleDB there): reviewed against the 2.x docs.

DO $migration$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb') THEN
        RETURN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb') THEN
        RAISE NOTICE 'timescaledb is not available: telemetry uses native range partitions (004_partitions.sql)';
        RETURN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM regexp_split_to_table(current_setting('shared_preload_libraries'), ',') AS lib
                    WHERE trim(both ' "' FROM lib) ~ '(^|/)timescaledb$') THEN
        RAISE WARNING 'timescaledb is available but not in shared_preload_libraries: telemetry uses native '
                      'range partitions; preload it and migrate a new database to use TimescaleDB';
        RETURN;
    END IF;
    EXECUTE 'CREATE EXTENSION IF NOT EXISTS timescaledb';
END
$migration$;
