-- 0010_precision: one precision per comparison. runs.dtype_requested is the sweep's (auto or a
-- pinned name), runs.dtype what the engine was started with (auto resolved once per model and
-- pool, the same for every engine), runs.served_dtype what the engine says it computed in
-- (NULL: it does not say), runs.dtype_note a mismatch between the two; runs.startup how the
-- built-in server started its model (compiled, cached, eager). v_compare and v_servers carry
-- them; the report's rows read them from runs.

ALTER TABLE runs ADD COLUMN dtype_requested VARCHAR;
ALTER TABLE runs ADD COLUMN dtype VARCHAR;
ALTER TABLE runs ADD COLUMN served_dtype VARCHAR;
ALTER TABLE runs ADD COLUMN dtype_note VARCHAR;
ALTER TABLE runs ADD COLUMN startup VARCHAR;

CREATE OR REPLACE VIEW v_compare AS
SELECT
    l.model,
    l.chunk_size,
    l.concurrency,
    l.engine || '@' || l.pool AS engine_pool,
    l.engine,
    l.pool,
    coalesce(r.served_dtype, r.dtype) AS dtype,
    l.gpu_model,
    l.gpu_count,
    l.batch_size,
    l.mode,
    l.status,
    l.valid,
    l.input_tokens_per_s,
    l.inputs_per_s,
    l.throughput_rps,
    l.p50_ms,
    l.p99_ms,
    l.cost_per_million_tokens,
    l.run_id,
    l.started_at,
    l.fidelity,
    l.fidelity_failed,
    l.fidelity_min_cosine,
    l.usage_counting,
    l.host_quiet,
    l.host_other_cpu_cores
FROM v_latest_results AS l
LEFT JOIN runs AS r ON r.run_id = l.run_id
WHERE l.concurrency IS NOT NULL
ORDER BY l.model, l.chunk_size, l.concurrency, engine_pool;

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
    max(r.finished_at) AS finished_at,
    any_value(coalesce(r.served_dtype, r.dtype)) AS dtype,
    any_value(r.startup) AS startup
FROM runs AS r
WHERE r.server_id IS NOT NULL
GROUP BY r.server_id;
