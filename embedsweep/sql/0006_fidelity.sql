-- 0006_fidelity: are the served vectors the model's? Each measured run ends with a fidelity probe
-- (embedsweep.fidelity): served vectors against a CPU reference encode of fixed texts, and
-- against themselves in batches, shuffled orders and concurrent requests. fidelity_checks has
-- one row per probed run; runs.fidelity holds its verdict (passed | failed | error |
-- not_checked; NULL when no probe ran), and every view that shows figures carries
-- fidelity_failed, so a failing run keeps its numbers but is never read as a clean one.
-- runs.usage_counting says how the engine's usage.prompt_tokens counts (tokens |
-- tokens_without_special | characters) and usage_trusted whether it can reveal a truncation.

CREATE TABLE fidelity_checks (
    run_id                  VARCHAR PRIMARY KEY,
    probe_version           INTEGER NOT NULL,
    reference               VARCHAR NOT NULL,
    served_dtype            VARCHAR NOT NULL,
    threshold               DOUBLE NOT NULL,
    texts                   INTEGER NOT NULL,
    dimension               INTEGER,
    reference_dimension     INTEGER,
    min_cosine              DOUBLE,
    mean_cosine             DOUBLE,
    max_abs_diff            DOUBLE,
    norm_min                DOUBLE,
    norm_max                DOUBLE,
    normalized              BOOLEAN,
    reference_normalized    BOOLEAN,
    invariance_min_cosine   DOUBLE,
    invariance_max_abs_diff DOUBLE,
    dimensions_request      VARCHAR NOT NULL,
    overlength              VARCHAR NOT NULL,
    verdict                 VARCHAR NOT NULL
        CHECK (verdict IN ('passed', 'failed', 'error', 'not_checked')),
    findings                JSON
);

ALTER TABLE runs ADD COLUMN fidelity VARCHAR;
ALTER TABLE runs ADD COLUMN usage_counting VARCHAR;
ALTER TABLE runs ADD COLUMN usage_trusted BOOLEAN;

-- v_runs selects r.*: re-created so it carries the new columns.
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
    res.gpu_power_mean_w,
    r.fidelity,
    r.fidelity = 'failed' AS fidelity_failed,
    f.min_cosine AS fidelity_min_cosine,
    f.threshold AS fidelity_threshold,
    f.max_abs_diff AS fidelity_max_abs_diff,
    f.invariance_min_cosine AS fidelity_invariance_min_cosine,
    r.usage_counting,
    r.usage_trusted
FROM v_runs AS r
LEFT JOIN results AS res ON res.run_id = r.run_id
LEFT JOIN fidelity_checks AS f ON f.run_id = r.run_id;

-- v_compare (0003) with the fidelity verdict next to the figures.
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
    usage_counting
FROM v_latest_results
WHERE concurrency IS NOT NULL
ORDER BY model, chunk_size, concurrency, engine_pool;

-- One row per probed run, with what it was measured on.
CREATE VIEW v_fidelity AS
SELECT
    r.sweep_run_id,
    r.sweep_name AS sweep,
    r.run_id,
    r.model,
    r.engine,
    r.engine_version,
    r.pool,
    r.chunk_size,
    r.status,
    r.is_latest,
    r.usage_counting,
    r.usage_trusted,
    f.* EXCLUDE (run_id)
FROM v_runs AS r
JOIN fidelity_checks AS f ON f.run_id = r.run_id;
