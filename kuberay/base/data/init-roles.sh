#!/bin/bash
# Runs once, when the data directory is first initialised (docker-entrypoint-initdb.d), as the superuser.
# Creates the application role and database, and Grafana's login: a member of gpu_telemetry_grafana,
# which sees only the views of schema grafana (sql/007_gateway_roles.sql grants them; the owner that
# runs the migrations may not create or alter roles, so the roles and the login's settings are made
# here), with a statement timeout on every panel's query.
set -euo pipefail
psql -v ON_ERROR_STOP=1 --username postgres --dbname postgres \
  -v pipeline_password="${PIPELINE_DB_PASSWORD}" \
  -v reader_password="${GRAFANA_READER_PASSWORD}" <<'SQL'
CREATE ROLE pipeline LOGIN PASSWORD :'pipeline_password';
CREATE ROLE gpu_telemetry_gateway NOLOGIN;
CREATE ROLE gpu_telemetry_grafana NOLOGIN;
ALTER ROLE gpu_telemetry_gateway SET statement_timeout = '10s';
ALTER ROLE gpu_telemetry_grafana SET statement_timeout = '10s';
ALTER ROLE gpu_telemetry_grafana SET search_path = grafana;
CREATE ROLE grafana_reader LOGIN PASSWORD :'reader_password' IN ROLE gpu_telemetry_grafana;
ALTER ROLE grafana_reader SET statement_timeout = '10s';
ALTER ROLE grafana_reader SET search_path = grafana;
CREATE DATABASE telemetry OWNER pipeline;
GRANT CONNECT ON DATABASE telemetry TO grafana_reader;
\connect telemetry
CREATE EXTENSION IF NOT EXISTS timescaledb;
SQL
