-- 0002_client_lag: open-loop load. Each request keeps when it was due (scheduled_ns) next to
-- when it actually started, so the client's lag behind its schedule is data; each level keeps
-- its load mode, the rate it offered, its lag summary and the arrivals it never sent.
--
-- Columns added with ALTER TABLE land after the existing ones (DuckDB cannot place them). NOT NULL
-- columns are added with a DEFAULT (DuckDB refuses SET NOT NULL after an UPDATE in the same
-- transaction); the defaults are what every row written before this migration means: a closed
-- loop, whose requests were due exactly when they started. The requests default is then dropped,
-- so a future insert that forgets the column fails instead of storing 0.

ALTER TABLE requests ADD COLUMN scheduled_ns BIGINT NOT NULL DEFAULT 0;
UPDATE requests SET scheduled_ns = start_ns;
ALTER TABLE requests ALTER COLUMN scheduled_ns DROP DEFAULT;

ALTER TABLE results ADD COLUMN mode VARCHAR NOT NULL DEFAULT 'closed';
ALTER TABLE results ADD COLUMN offered_rps DOUBLE;
ALTER TABLE results ADD COLUMN lag_mean_ms DOUBLE NOT NULL DEFAULT 0;
ALTER TABLE results ADD COLUMN lag_p99_ms DOUBLE NOT NULL DEFAULT 0;
ALTER TABLE results ADD COLUMN lag_max_ms DOUBLE NOT NULL DEFAULT 0;
ALTER TABLE results ADD COLUMN unsent BIGINT NOT NULL DEFAULT 0;

-- The views gain the new columns (v_latest_results selects * from v_results, so it follows).
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
    res.unsent
FROM v_runs AS r
LEFT JOIN results AS res ON res.run_id = r.run_id;

CREATE OR REPLACE VIEW v_requests AS
SELECT
    q.run_id,
    r.sweep_run_id,
    r.sweep_name AS sweep,
    r.cell_id,
    r.model,
    r.engine,
    r.pool,
    r.gpu_model,
    r.chunk_size,
    r.batch_size,
    q.concurrency,
    q.seq,
    q.start_ns,
    q.latency_ns,
    q.start_ns / 1e6 AS start_ms,
    q.latency_ns / 1e6 AS latency_ms,
    q.status,
    q.status BETWEEN 200 AND 299 AS ok,
    q.prompt_tokens,
    q.expected_tokens,
    q.prompt_tokens >= 0 AND q.prompt_tokens <> q.expected_tokens AS prompt_tokens_mismatch,
    q.error,
    q.scheduled_ns,
    q.scheduled_ns / 1e6 AS scheduled_ms,
    (q.start_ns - q.scheduled_ns) / 1e6 AS lag_ms
FROM requests AS q
JOIN runs AS r ON r.run_id = q.run_id;
