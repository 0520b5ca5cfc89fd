#!/bin/bash
# Runs once, when the data directory is first initialised (docker-entrypoint-initdb.d).
# Creates the application role and database, and a read-only role for Grafana's panels.
set -euo pipefail
psql -v ON_ERROR_STOP=1 --username postgres --dbname postgres \
  -v pipeline_password="${PIPELINE_DB_PASSWORD}" \
  -v reader_password="${GRAFANA_READER_PASSWORD}" <<'SQL'
CREATE ROLE pipeline LOGIN PASSWORD :'pipeline_password';
CREATE ROLE grafana_reader LOGIN PASSWORD :'reader_password';
CREATE DATABASE telemetry OWNER pipeline;
\connect telemetry
CREATE EXTENSION IF NOT EXISTS timescaledb;
GRANT CONNECT ON DATABASE telemetry TO grafana_reader;
GRANT USAGE ON SCHEMA public TO grafana_reader;
ALTER DEFAULT PRIVILEGES FOR ROLE pipeline IN SCHEMA public GRANT SELECT ON TABLES TO grafana_reader;
SQL
