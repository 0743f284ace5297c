-- 0004_placement_telemetry: where each server ran (host, devices), whether its stop released
-- the port and the GPU memory, per-level NVML summaries, and the NVML samples themselves.
--
-- Older rows keep NULL in every new column: nothing was known about them.

ALTER TABLE runs ADD COLUMN host VARCHAR;
ALTER TABLE runs ADD COLUMN devices VARCHAR;
ALTER TABLE runs ADD COLUMN port_released BOOLEAN;
ALTER TABLE runs ADD COLUMN gpu_memory_released BOOLEAN;

ALTER TABLE results ADD COLUMN gpu_util_mean_pct DOUBLE;
ALTER TABLE results ADD COLUMN gpu_mem_used_max_mib DOUBLE;
ALTER TABLE results ADD COLUMN gpu_power_mean_w DOUBLE;

-- One row per NVML sample: device is the CUDA index, t_ms counts from the run's first sample;
-- a metric the device does not report is NULL.
CREATE TABLE gpu_samples (
    run_id        VARCHAR NOT NULL,
    concurrency   INTEGER NOT NULL,
    device        VARCHAR NOT NULL,
    t_ms          DOUBLE NOT NULL,
    gpu_util_pct  DOUBLE,
    mem_util_pct  DOUBLE,
    mem_used_mib  DOUBLE,
    mem_total_mib DOUBLE,
    power_w       DOUBLE
);

-- v_runs selects r.*: re-created so it carries the new run columns.
CREATE OR REPLACE VIEW v_runs AS
SELECT
    r.*,
    row_number() OVER (
        PARTITION BY r.cell_id
        ORDER BY r.started_at DESC, r.ingested_at DESC, r.run_id DESC
    ) = 1 AS is_latest,
    row_number() OVER (
        PARTITION BY r.sweep_run_id, r.cell_id
        ORDER BY r.started_at DESC, r.ingested_at DESC, r.run_id DESC
    ) = 1 AS is_latest_in_sweep
FROM runs AS r;

CREATE OR REPLACE VIEW v_results AS
SELECT
    r.sweep_run_id,
    r.sweep_name AS sweep,
    r.cell_id,
    r.run_id,
    r.model,
    r.model_ref,
    r.engine,
    r.planned_engine,
    r.engine_version,
    r.pool,
    r.gpu_model,
    r.gpu_count,
    r.cost_per_gpu_hour,
    r.chunk_size,
    r.batch_size,
    r.max_input_tokens,
    res.concurrency,
    r.status,
    r.reason,
    r.message,
    res.requests,
    res.ok,
    res.errors,
    res.errors_by_cause,
    res.duration_s,
    res.throughput_rps,
    res.inputs_per_s,
    res.input_tokens_per_s,
    res.latency_mean_ms AS mean_ms,
    res.p50_ms,
    res.p90_ms,
    res.p95_ms,
    res.p99_ms,
    res.max_ms,
    res.prompt_tokens_mismatch,
    res.achieved_concurrency,
    res.valid,
    res.cost_per_million_tokens,
    r.time_to_healthy_s,
    r.seed,
    r.started_at,
    r.finished_at,
    r.is_latest,
    r.is_latest_in_sweep,
    res.mode,
    res.offered_rps,
    res.lag_mean_ms,
    res.lag_p99_ms,
    res.lag_max_ms,
    res.unsent,
    r.host,
    r.devices,
    res.gpu_util_mean_pct,
    res.gpu_mem_used_max_mib,
    res.gpu_power_mean_w
FROM v_runs AS r
LEFT JOIN results AS res ON res.run_id = r.run_id;

