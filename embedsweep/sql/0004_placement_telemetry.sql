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
