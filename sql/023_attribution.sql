-- Who used the GPU: attribution as intervals, the latest value per (GPU, metric), health events, usage.
--
-- Everything here is written by the collectors in the transaction that stores the samples it comes
-- from (docs/storage.md, "Attribution, latest values and usage"), so the consumer-offset
-- compare-and-set that makes samples exactly-once covers it too. Plain PostgreSQL; 024 turns the usage
-- rollups into a hypertable and a continuous aggregate where TimescaleDB is installed.

-- Static facts of a GPU (from dcgm-exporter's labels), on its row. A MIG device is a GPU of its own
-- (uuid `<parent>/mig-<instance>`) that keeps its parent's uuid, its GPU instance id and profile.
ALTER TABLE gpus
    ADD COLUMN driver_version text,
    ADD COLUMN instance       text,
    ADD COLUMN parent_uuid    text,
    ADD COLUMN mig_instance   smallint,
    ADD COLUMN mig_profile    text;
CREATE INDEX gpus_parent_idx ON gpus (parent_uuid) WHERE parent_uuid IS NOT NULL;
-- The GPU list's order (the reader's GPU_ORDER): a page of 1,000 of 25,000 GPUs is an index range, not a sort.
CREATE INDEX gpus_order_idx ON gpus ((coalesce(hostname, '')), (coalesce(gpu_index, -1)), uuid);

-- One row per distinct (namespace, pod, container, job): what an allocation interval names.
-- workload_id 0 is reserved for "nobody" (usage of unallocated time); it has no row here.
CREATE TABLE workloads (
    workload_id integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    namespace   text,
    pod         text,
    container   text,
    job         text,
    CONSTRAINT workloads_key UNIQUE NULLS NOT DISTINCT (namespace, pod, container, job)
);
CREATE INDEX workloads_pod_idx ON workloads (pod);
CREATE INDEX workloads_job_idx ON workloads (job) WHERE job IS NOT NULL;

-- Allocation history: workload W held GPU G over [started, ended). An interval opens at the first
-- sample carrying W and closes at the first sample carrying anything else (another workload, or
-- none); ended IS NULL while it is still held (as of the GPU's newest sample).
CREATE TABLE allocations (
    allocation_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    gpu_key       integer     NOT NULL,
    workload_id   integer     NOT NULL,
    started       timestamptz NOT NULL,
    ended         timestamptz,
    CONSTRAINT allocations_order CHECK (ended IS NULL OR ended > started)
);
CREATE UNIQUE INDEX allocations_open_idx ON allocations (gpu_key) WHERE ended IS NULL;  -- one open per GPU
CREATE INDEX allocations_gpu_idx ON allocations (gpu_key, started);
CREATE INDEX allocations_workload_idx ON allocations (workload_id, started);

-- The newest sample of every (GPU, metric), one row per GPU: rewriting one row per GPU costs about a
-- third of rewriting one row per (GPU, metric) (measured, docs/storage.md). Room on every page for a
-- new version of each row keeps the collectors' rewrites HOT (no index update).
CREATE TABLE gpu_latest (
    gpu_key    integer       NOT NULL PRIMARY KEY,
    ts         timestamptz   NOT NULL,  -- the GPU's newest sample, any metric
    metric_ids smallint[]    NOT NULL,
    sample_ts  timestamptz[] NOT NULL,  -- per metric, aligned with metric_ids
    vals       float8[]      NOT NULL
) WITH (fillfactor = 50);

-- The same, one row per (GPU, metric): what the reader's gpu_metrics branch reads.
CREATE VIEW gpu_metrics AS
    SELECT l.gpu_key, u.metric_id, u.last_ts, u.last_value
      FROM gpu_latest l
      CROSS JOIN LATERAL unnest(l.metric_ids, l.sample_ts, l.vals) AS u(metric_id, last_ts, last_value);

-- Health events of a GPU: an XID error is recorded when DCGM_FI_DEV_XID_ERRORS changes to a non-zero
-- code. The key makes a replayed sample a no-op.
CREATE TABLE gpu_events (
    gpu_key integer     NOT NULL,
    ts      timestamptz NOT NULL,
    kind    text        NOT NULL,
    code    integer     NOT NULL,
    PRIMARY KEY (gpu_key, ts, kind)
);
CREATE INDEX gpu_events_ts_idx ON gpu_events (ts);

-- What an XID code means (NVIDIA's Xid catalog, short descriptions); unknown codes show no meaning.
CREATE TABLE xid_codes (
    code    integer PRIMARY KEY,
    meaning text    NOT NULL
);
INSERT INTO xid_codes (code, meaning) VALUES
    (8,   'GPU stopped processing (channel idle timeout)'),
    (11,  'Invalid or corrupted push buffer stream'),
    (13,  'Graphics Engine Exception'),
    (31,  'GPU memory page fault'),
    (32,  'Invalid or corrupted push buffer stream'),
    (38,  'Driver firmware error'),
    (43,  'GPU stopped processing'),
    (45,  'Preemptive cleanup, due to previous errors'),
    (48,  'Double Bit ECC Error'),
    (56,  'Display Engine error'),
    (57,  'Error programming video memory interface'),
    (61,  'Internal micro-controller breakpoint/warning'),
    (62,  'Internal micro-controller halt'),
    (63,  'ECC page retirement or row remapping recording event'),
    (64,  'ECC page retirement or row remapper recording failure'),
    (68,  'NVDEC0 Exception'),
    (69,  'Graphics Engine class error'),
    (74,  'NVLINK Error'),
    (79,  'GPU has fallen off the bus'),
    (92,  'High single-bit ECC error rate'),
    (94,  'Contained ECC error'),
    (95,  'Uncontained ECC error'),
    (109, 'Context Switch Timeout Error'),
    (119, 'GSP RPC Timeout'),
    (120, 'GSP Error'),
    (121, 'C2C Link corrected error'),
    (140, 'Unrecovered ECC Error'),
    (154, 'GPU recovery action changed');

INSERT INTO metrics (name, unit, help) VALUES
    ('DCGM_FI_DEV_XID_ERRORS', '', 'Value of the last XID error encountered')
ON CONFLICT (name) DO NOTHING;

-- Rejects that are data about a GPU (DCGM blank codes: "not supported", "no permission", ...) keep
-- the GPU, the metric and the code as columns, so health views count them without parsing text.
ALTER TABLE rejects
    ADD COLUMN uuid   text,
    ADD COLUMN metric text,
    ADD COLUMN blank  text;
CREATE INDEX rejects_blank_idx ON rejects (ts) WHERE blank IS NOT NULL;

-- Usage accounting. Each sample of DCGM_FI_DEV_GPU_UTIL holds until the GPU's next one (a gap longer
-- than the collectors' usage max_gap holds nothing); its hold is counted for the workload that held
-- the GPU at the sample, in the minute of the sample: seconds, active seconds (utilisation above the
-- threshold), memory-held-but-idle seconds, utilisation x seconds, joules (power x seconds).
--
-- usage_log: what each collector transaction adds, as one row of arrays (one small COPY per
-- transaction instead of one row per GPU), plus each GPU's last sample, whose hold the next sample
-- decides (a collector that takes a partition over resumes from it). Folded into usage_1m / usage_1h
-- and usage_state, and deleted, by pipeline.storage.usage.compact in one transaction.
CREATE TABLE usage_log (
    log_id      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    bucket      timestamptz[] NOT NULL,
    gpu_key     integer[]     NOT NULL,
    workload_id integer[]     NOT NULL,
    seconds     float8[]      NOT NULL,
    active_s    float8[]      NOT NULL,
    mem_idle_s  float8[]      NOT NULL,
    util_s      float8[]      NOT NULL,
    energy_j    float8[]      NOT NULL,
    last_gpu    integer[]     NOT NULL,
    last_ts     timestamptz[] NOT NULL,
    last_util   float8[]      NOT NULL,
    last_power  float8[]      NOT NULL,  -- NaN: none at that instant
    last_fb     float8[]      NOT NULL,
    last_wl     integer[]     NOT NULL
);
-- The arrays are written once and read once: compressing them would cost the write path CPU.
ALTER TABLE usage_log
    ALTER bucket SET STORAGE EXTERNAL, ALTER gpu_key SET STORAGE EXTERNAL,
    ALTER workload_id SET STORAGE EXTERNAL, ALTER seconds SET STORAGE EXTERNAL,
    ALTER active_s SET STORAGE EXTERNAL, ALTER mem_idle_s SET STORAGE EXTERNAL,
    ALTER util_s SET STORAGE EXTERNAL, ALTER energy_j SET STORAGE EXTERNAL,
    ALTER last_gpu SET STORAGE EXTERNAL, ALTER last_ts SET STORAGE EXTERNAL,
    ALTER last_util SET STORAGE EXTERNAL, ALTER last_power SET STORAGE EXTERNAL,
    ALTER last_fb SET STORAGE EXTERNAL, ALTER last_wl SET STORAGE EXTERNAL;

-- Each GPU's last sample as of the compacted log (the log rows not yet compacted hold newer ones).
CREATE TABLE usage_state (
    gpu_key     integer     PRIMARY KEY,
    ts          timestamptz NOT NULL,
    util        float8      NOT NULL,
    power       float8      NOT NULL,
    fb          float8      NOT NULL,
    workload_id integer     NOT NULL
);

-- Per minute, GPU and workload (workload_id 0: nobody held the GPU). Kept 7 days.
CREATE TABLE usage_1m (
    bucket      timestamptz NOT NULL,
    gpu_key     integer     NOT NULL,
    workload_id integer     NOT NULL,
    seconds     float8      NOT NULL,
    active_s    float8      NOT NULL,
    mem_idle_s  float8      NOT NULL,
    util_s      float8      NOT NULL,
    energy_j    float8      NOT NULL,
    PRIMARY KEY (bucket, gpu_key, workload_id)
);

-- Per hour: on plain PostgreSQL a table the compaction maintains with usage_1m, kept 365 days; on
-- TimescaleDB 024 replaces it with a continuous aggregate over usage_1m (same columns).
CREATE TABLE usage_1h (
    bucket      timestamptz NOT NULL,
    gpu_key     integer     NOT NULL,
    workload_id integer     NOT NULL,
    seconds     float8      NOT NULL,
    active_s    float8      NOT NULL,
    mem_idle_s  float8      NOT NULL,
    util_s      float8      NOT NULL,
    energy_j    float8      NOT NULL,
    PRIMARY KEY (bucket, gpu_key, workload_id)
);

-- Per day: the same, for accounting over weeks and months; kept 5 years (TimescaleDB: a continuous
-- aggregate over usage_1h, 024).
CREATE TABLE usage_1d (
    bucket      timestamptz NOT NULL,
    gpu_key     integer     NOT NULL,
    workload_id integer     NOT NULL,
    seconds     float8      NOT NULL,
    active_s    float8      NOT NULL,
    mem_idle_s  float8      NOT NULL,
    util_s      float8      NOT NULL,
    energy_j    float8      NOT NULL,
    PRIMARY KEY (bucket, gpu_key, workload_id)
);

-- Grafana reads views in its own schema (007): the new tables its panels use. (024 swaps
-- grafana.usage_1h for one over the continuous aggregate on TimescaleDB.)
-- (grafana.gpus keeps 007's columns, so 007 stays re-runnable; the new facts are a view of their own.)
CREATE OR REPLACE VIEW grafana.gpu_facts AS
    SELECT gpu_key, uuid, driver_version, instance, parent_uuid, mig_instance, mig_profile FROM public.gpus;
CREATE OR REPLACE VIEW grafana.gpu_latest AS SELECT * FROM public.gpu_latest;
CREATE OR REPLACE VIEW grafana.gpu_metrics AS SELECT * FROM public.gpu_metrics;
CREATE OR REPLACE VIEW grafana.workloads AS SELECT * FROM public.workloads;
CREATE OR REPLACE VIEW grafana.allocations AS SELECT * FROM public.allocations;
CREATE OR REPLACE VIEW grafana.gpu_events AS SELECT * FROM public.gpu_events;
CREATE OR REPLACE VIEW grafana.xid_codes AS SELECT * FROM public.xid_codes;
CREATE OR REPLACE VIEW grafana.usage_1m AS SELECT * FROM public.usage_1m;
CREATE OR REPLACE VIEW grafana.usage_1h AS SELECT * FROM public.usage_1h;
CREATE OR REPLACE VIEW grafana.usage_1d AS SELECT * FROM public.usage_1d;
GRANT SELECT ON ALL TABLES IN SCHEMA grafana TO gpu_telemetry_grafana;
