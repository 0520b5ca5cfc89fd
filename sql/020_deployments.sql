-- A deployed pipeline's desired state, where a restarted supervisor finds it again (issue: service).
-- One row per Ray namespace: the settings that define the pipeline (never secrets), the operator's
-- pins, the shard layout the fleet runs, and what was committed before this deployment began (so
-- `stop` can say what this deployment stored). Written by the supervisor, read on every start.
CREATE TABLE IF NOT EXISTS pipeline_deployments (
    namespace   text        PRIMARY KEY,
    spec        jsonb       NOT NULL,
    pins        jsonb       NOT NULL DEFAULT '{}'::jsonb,
    layout      jsonb,
    baseline    jsonb       NOT NULL DEFAULT '{}'::jsonb,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
