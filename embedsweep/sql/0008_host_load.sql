-- 0008_host_load: was the host quiet during a level? results.host_other_cpu_cores is the cores
-- other processes (not the run, its load client or its server) kept busy on average, from /proc;
-- host_load_1m the load average at the level's end; host_quiet is false when others used more
-- than 0.25 cores (embedsweep.hostload): such figures are of a shared host. NULL: not measured.

ALTER TABLE results ADD COLUMN host_other_cpu_cores DOUBLE;
ALTER TABLE results ADD COLUMN host_load_1m DOUBLE;
ALTER TABLE results ADD COLUMN host_quiet BOOLEAN;

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
    r.server_id,
    res.gpu_util_mean_pct,
    res.gpu_mem_used_max_mib,
    res.gpu_power_mean_w,
    r.fidelity,
    r.fidelity = 'failed' AS fidelity_failed,
    f.min_cosine AS fidelity_min_cosine,
    f.threshold AS fidelity_threshold,
    f.max_abs_diff AS fidelity_max_abs_diff,
    f.invariance_min_cosine AS fidelity_invariance_min_cosine,
    r.usage_counting,
    r.usage_trusted,
    res.partial,
    res.stopped_reason,
    res.host_other_cpu_cores,
    res.host_load_1m,
    res.host_quiet
FROM v_runs AS r
LEFT JOIN results AS res ON res.run_id = r.run_id
LEFT JOIN fidelity_checks AS f ON f.run_id = r.run_id;


CREATE OR REPLACE VIEW v_compare AS
SELECT
    model,
    chunk_size,
    concurrency,
    engine || '@' || pool AS engine_pool,
    engine,
    pool,
    gpu_model,
    gpu_count,
    batch_size,
    mode,
    status,
    valid,
    input_tokens_per_s,
    inputs_per_s,
    throughput_rps,
    p50_ms,
    p99_ms,
    cost_per_million_tokens,
    run_id,
    started_at,
    fidelity,
    fidelity_failed,
    fidelity_min_cosine,
    usage_counting,
    host_quiet,
    host_other_cpu_cores
FROM v_latest_results
WHERE concurrency IS NOT NULL
ORDER BY model, chunk_size, concurrency, engine_pool;

