-- Least privilege for the readers: a read-only role for the gateway and a views-only role for Grafana.
--
-- Both roles are NOLOGIN groups: an operator creates the logins and makes them members, e.g.
--   CREATE ROLE gateway LOGIN PASSWORD '...' IN ROLE gpu_telemetry_gateway;
--   CREATE ROLE grafana LOGIN PASSWORD '...' IN ROLE gpu_telemetry_grafana;
--   ALTER ROLE grafana SET statement_timeout = '10s';      -- role settings apply to the login role
--   ALTER ROLE grafana SET search_path = grafana;          -- dashboards' FROM telemetry finds the views
-- (docs/api.md, "Database roles"). The settings below apply when the group role itself logs in.
--
-- gpu_telemetry_gateway: SELECT on every table and view of schema public, now and later (default
--   privileges for objects the owner creates, i.e. later migrations and partitions). Nothing else.
-- gpu_telemetry_grafana: no access to public at all. It reads schema grafana, which holds one plain
--   view per table a dashboard queries (gpus, metrics, telemetry, and the rollups where TimescaleDB made
--   them); a view runs with its owner's rights and inlines into the query, so predicates on ts still
--   reach the telemetry index. A statement timeout bounds what one panel can cost.
--
-- Idempotent (roles are per server, this file runs once per database): CREATE ROLE only when absent,
-- CREATE OR REPLACE VIEW, GRANT/ALTER DEFAULT PRIVILEGES are no-ops when already in place. Plain
-- PostgreSQL 15+ (PUBLIC has no CREATE on schema public there); migrations run as the owner.

DO $roles$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'gpu_telemetry_gateway') THEN
        CREATE ROLE gpu_telemetry_gateway NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'gpu_telemetry_grafana') THEN
        CREATE ROLE gpu_telemetry_grafana NOLOGIN;
    END IF;
END
$roles$;

-- The gateway: read everything in public, nothing more.
GRANT USAGE ON SCHEMA public TO gpu_telemetry_gateway;
GRANT SELECT ON ALL TABLES IN SCHEMA public TO gpu_telemetry_gateway;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO gpu_telemetry_gateway;

-- Grafana: views only, in their own schema.
REVOKE ALL ON SCHEMA public FROM gpu_telemetry_grafana;
CREATE SCHEMA IF NOT EXISTS grafana;
REVOKE ALL ON SCHEMA grafana FROM PUBLIC;
GRANT USAGE ON SCHEMA grafana TO gpu_telemetry_grafana;

CREATE OR REPLACE VIEW grafana.gpus AS
    SELECT gpu_key, uuid, hostname, gpu_index, device, model, first_seen, last_seen FROM public.gpus;
CREATE OR REPLACE VIEW grafana.metrics AS
    SELECT metric_id, name, unit, help FROM public.metrics;
CREATE OR REPLACE VIEW grafana.telemetry AS
    SELECT ts, gpu_key, metric_id, value FROM public.telemetry;

DO $rollups$
DECLARE
    name text;
BEGIN
    FOREACH name IN ARRAY ARRAY['telemetry_1m', 'telemetry_1h'] LOOP
        IF to_regclass('public.' || name) IS NOT NULL THEN
            EXECUTE format('CREATE OR REPLACE VIEW grafana.%I AS SELECT * FROM public.%I', name, name);
        END IF;
    END LOOP;
END
$rollups$;

GRANT SELECT ON ALL TABLES IN SCHEMA grafana TO gpu_telemetry_grafana;
ALTER DEFAULT PRIVILEGES IN SCHEMA grafana GRANT SELECT ON TABLES TO gpu_telemetry_grafana;

-- Settings for a group role that logs in itself. Changing another role needs CREATEROLE, which a
-- database owner that is not a superuser lacks (Kubernetes: the roles and their logins come from the
-- TimescaleDB init script, kuberay/base/data/init-roles.sh, which sets the same on the logins).
DO $settings$
BEGIN
    ALTER ROLE gpu_telemetry_gateway SET statement_timeout = '10s';
    ALTER ROLE gpu_telemetry_grafana SET statement_timeout = '10s';
    ALTER ROLE gpu_telemetry_grafana SET search_path = grafana;
EXCEPTION WHEN insufficient_privilege THEN
    RAISE NOTICE 'role settings left to the logins: % may not alter roles', current_user;
END
$settings$;
