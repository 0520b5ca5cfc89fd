-- Usage per group: the rollups of 023 summed per namespace, job, host and model, so that a usage query
-- grouped by one of them reads one row per group and bucket instead of one per GPU and workload.
--
-- At 25,000 GPUs "usage per namespace over the last 24 hours" read 570,000 usage_1h rows (~0.5 s); from
-- here it reads the namespaces' 24 rows each. (Per pod there is nothing to gain: a pod holds a GPU or a
-- few, so the per-GPU rollups already have about a row per pod; those queries keep reading them.)
--
-- The compaction (pipeline/storage/usage.py) maintains all three tiers in the transaction that folds the
-- usage log, on plain PostgreSQL and on TimescaleDB alike (plain tables on both: at 25,000 GPUs the
-- minute tier adds ~3,360 rows a minute, mostly hosts), and expires them like usage_1m/1h/1d. A cell
-- counts for the namespace and job of its workload and the host and model its GPU has when it is folded.
-- dim names the grouping; grp is NULL for "none" (no holder, or a holder without that field).

CREATE TABLE usage_groups_1m (
    bucket     timestamptz NOT NULL,
    dim        text        NOT NULL CHECK (dim IN ('namespace', 'job', 'hostname', 'model')),
    grp        text,
    seconds    float8      NOT NULL,
    alloc_s    float8      NOT NULL,  -- the seconds some workload held the GPUs
    active_s   float8      NOT NULL,
    mem_idle_s float8      NOT NULL,
    util_s     float8      NOT NULL,
    energy_j   float8      NOT NULL
);
CREATE UNIQUE INDEX usage_groups_1m_key ON usage_groups_1m (dim, bucket, grp) NULLS NOT DISTINCT;
-- The compaction's expiry deletes by bucket alone: without this it would read the whole table each time.
CREATE INDEX usage_groups_1m_bucket ON usage_groups_1m (bucket);
CREATE TABLE usage_groups_1h (LIKE usage_groups_1m INCLUDING ALL);
CREATE TABLE usage_groups_1d (LIKE usage_groups_1m INCLUDING ALL);

-- What was folded before this migration, from the rollups it was folded into (TimescaleDB: its
-- continuous aggregates, real-time, so their newest buckets too), under the compaction's advisory lock
-- (pipeline/storage/usage.py LOCK_KEY): a compaction of a version still running waits until this
-- commits, so nothing it folds is missed by both. Hosts are the GPUs' hosts now (the per-GPU rollups
-- keep no history of them); from here on each fold files a cell under its GPU's host of that moment.
SELECT pg_advisory_xact_lock(113732704629601);
DO $backfill$
DECLARE
    tier text;
BEGIN
    FOREACH tier IN ARRAY ARRAY['1m', '1h', '1d'] LOOP
        EXECUTE format($sql$
            INSERT INTO usage_groups_%1$s
            SELECT u.bucket, d.dim, d.grp, sum(u.seconds),
                   coalesce(sum(u.seconds) FILTER (WHERE u.workload_id <> 0), 0),
                   sum(u.active_s), sum(u.mem_idle_s), sum(u.util_s), sum(u.energy_j)
              FROM usage_%1$s u
              LEFT JOIN workloads w ON w.workload_id = u.workload_id
              LEFT JOIN gpus g ON g.gpu_key = u.gpu_key
             CROSS JOIN LATERAL (VALUES ('namespace', w.namespace), ('job', w.job), ('hostname', g.hostname),
                                        ('model', g.model)) AS d(dim, grp)
             GROUP BY 1, 2, 3
        $sql$, tier);
    END LOOP;
END
$backfill$;

CREATE OR REPLACE VIEW grafana.usage_groups_1m AS SELECT * FROM public.usage_groups_1m;
CREATE OR REPLACE VIEW grafana.usage_groups_1h AS SELECT * FROM public.usage_groups_1h;
CREATE OR REPLACE VIEW grafana.usage_groups_1d AS SELECT * FROM public.usage_groups_1d;
GRANT SELECT ON grafana.usage_groups_1m, grafana.usage_groups_1h, grafana.usage_groups_1d TO gpu_telemetry_grafana;
