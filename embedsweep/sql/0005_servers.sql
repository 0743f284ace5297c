-- 0005_servers: one engine server serves every chunk size of a (model, engine, pool) in a sweep.
-- runs.server_id names the server a run was measured on (NULL: blocked, or written before
-- servers were shared); the run that started it holds its time_to_healthy_s, the others NULL.
-- v_servers has one row per server.

ALTER TABLE runs ADD COLUMN server_id VARCHAR;

-- v_runs selects r.*: re-created so it carries the new column; v_results adds server_id.
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
    r.server_id,
    res.gpu_util_mean_pct,
    res.gpu_mem_used_max_mib,
    res.gpu_power_mean_w
FROM v_runs AS r
LEFT JOIN results AS res ON res.run_id = r.run_id;


CREATE OR REPLACE VIEW v_servers AS
SELECT
    r.server_id,
    any_value(r.sweep_run_id) AS sweep_run_id,
    any_value(r.sweep_name) AS sweep,
    any_value(r.model) AS model,
    any_value(r.engine) AS engine,
    any_value(r.engine_version) AS engine_version,
    any_value(r.pool) AS pool,
    any_value(r.host) AS host,
    max(r.time_to_healthy_s) AS time_to_healthy_s,
    count(*) AS runs,
    list(r.chunk_size ORDER BY r.chunk_size) AS chunk_sizes,
    count(*) FILTER (WHERE r.status = 'ok') AS runs_ok,
    min(r.started_at) AS started_at,
    max(r.finished_at) AS finished_at
FROM runs AS r
WHERE r.server_id IS NOT NULL
GROUP BY r.server_id;
