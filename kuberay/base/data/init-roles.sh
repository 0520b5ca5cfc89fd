#!/bin/bash
# Runs once, when the data directory is first initialised (docker-entrypoint-initdb.d), as the superuser.
# Creates the application role (the owner: the pipeline migrates and writes as it) and database, and
# the two reader logins (sql/007_gateway_roles.sql grants their group roles; the owner that runs the
# migrations may not create or alter roles, so the roles and the logins' settings are made here):
# - gateway_reader, the gateway's login (Secret gpu-telemetry-gateway-db): a member of
#   gpu_telemetry_gateway, SELECT on the tables and views of public and nothing else;
# - grafana_reader, Grafana's: a member of gpu_telemetry_grafana, which sees only the views of
#   schema grafana.
# Both with a statement timeout on every query.
set -euo pipefail
psql -v ON_ERROR_STOP=1 --username postgres --dbname postgres \
  -v pipeline_password="${PIPELINE_DB_PASSWORD}" \
  -v gateway_password="${GATEWAY_DB_PASSWORD}" \
  -v reader_password="${GRAFANA_READER_PASSWORD}" <<'SQL'
CREATE ROLE pipeline LOGIN PASSWORD :'pipeline_password';
CREATE ROLE gpu_telemetry_gateway NOLOGIN;
CREATE ROLE gpu_telemetry_grafana NOLOGIN;
ALTER ROLE gpu_telemetry_gateway SET statement_timeout = '10s';
ALTER ROLE gpu_telemetry_grafana SET statement_timeout = '10s';
ALTER ROLE gpu_telemetry_grafana SET search_path = grafana;
CREATE ROLE gateway_reader LOGIN PASSWORD :'gateway_password' IN ROLE gpu_telemetry_gateway;
ALTER ROLE gateway_reader SET statement_timeout = '10s';
CREATE ROLE grafana_reader LOGIN PASSWORD :'reader_password' IN ROLE gpu_telemetry_grafana;
ALTER ROLE grafana_reader SET statement_timeout = '10s';
ALTER ROLE grafana_reader SET search_path = grafana;
CREATE DATABASE telemetry OWNER pipeline;
GRANT CONNECT ON DATABASE telemetry TO gateway_reader;
GRANT CONNECT ON DATABASE telemetry TO grafana_reader;
\connect telemetry
CREATE EXTENSION IF NOT EXISTS timescaledb;
SQL
