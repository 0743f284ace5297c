-- Statements the store runs, one per "-- name:" header; store.py binds every value with "?".
-- Files named NNNN_*.sql are migrations and views.sql holds the views; this file is neither and
-- never changes the schema.

-- name: create_schema_migrations
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    INTEGER PRIMARY KEY,
    name       VARCHAR NOT NULL,
    applied_at TIMESTAMP NOT NULL
);

-- name: applied_migrations
SELECT version FROM schema_migrations ORDER BY version;

-- name: has_schema_migrations
SELECT count(*) FROM information_schema.tables WHERE table_name = 'schema_migrations';

-- name: record_migration
INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?);

-- name: view_names
SELECT view_name
FROM duckdb_views()
WHERE NOT internal AND database_name = current_database() AND schema_name = 'main';

-- name: upsert_sweep
INSERT INTO sweeps (sweep_run_id, sweep_name, started_at, finished_at, spec)
VALUES (?, ?, ?, ?, ?)
ON CONFLICT (sweep_run_id) DO UPDATE SET
    sweep_name = excluded.sweep_name,
    started_at = excluded.started_at,
    finished_at = excluded.finished_at,
    spec = excluded.spec;

-- name: run_exists
SELECT count(*) FROM runs WHERE run_id = ?;

-- name: insert_run
INSERT INTO runs (
    run_id, sweep_run_id, sweep_name, cell_id, model, model_ref, engine, planned_engine, pool,
    gpu_model, gpu_count, cost_per_gpu_hour, chunk_size, batch_size, status, reason, message,
    engine_version, max_input_tokens, time_to_healthy_s, seed, started_at, finished_at, ingested_at,
    host, devices, port_released, gpu_memory_released, server_id, fidelity, usage_counting,
    usage_trusted, dtype_requested, dtype, served_dtype, dtype_note, startup
) VALUES (
    ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?,
    ?, ?, ?, ?, ?
);

-- name: insert_fidelity
INSERT INTO fidelity_checks (
    run_id, probe_version, reference, served_dtype, threshold, texts, dimension,
    reference_dimension, min_cosine, mean_cosine, max_abs_diff, norm_min, norm_max, normalized,
    reference_normalized, invariance_min_cosine, invariance_max_abs_diff, dimensions_request,
    overlength, verdict, findings
) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?);

-- name: insert_harness
INSERT INTO harness_checks (
    run_id, chunk_size, concurrency, batch, server_inputs_per_s, direct_inputs_per_s, ratio,
    direct_threads, dtype, device, runtime, model_threads, model_threads_now, thread_changes,
    frontend, note
) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?);

-- name: insert_preflight_reason
INSERT INTO preflight_reasons (
    run_id, engine, engine_version, architecture, verdict, max_input_tokens, fallback_engine,
    code, severity, message
) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?);

-- name: insert_result
INSERT INTO results (
    run_id, concurrency, requests, ok, errors, errors_by_cause, duration_s, throughput_rps,
    inputs_per_s, input_tokens_per_s, latency_mean_ms, p50_ms, p90_ms, p95_ms, p99_ms, max_ms,
    prompt_tokens_mismatch, achieved_concurrency, valid, cost_per_million_tokens,
    mode, offered_rps, lag_mean_ms, lag_p99_ms, lag_max_ms, unsent,
    gpu_util_mean_pct, gpu_mem_used_max_mib, gpu_power_mean_w, partial, stopped_reason,
    host_other_cpu_cores, host_load_1m, host_quiet
) VALUES (
    ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?,
    ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?
);

-- name: foreign_request_rows
-- Rows of a run's requests.parquet that name another run (or none): a mixed-up artifact.
SELECT count(*) FROM incoming_requests WHERE run_id IS DISTINCT FROM ?;

-- name: insert_requests
-- store.py gives a file written before scheduled_ns existed that column (a copy of start_ns); a
-- null in it means the same thing: a closed-loop request, due when it started.
INSERT INTO requests (
    run_id, concurrency, seq, start_ns, scheduled_ns, latency_ns, status, prompt_tokens,
    expected_tokens, error
)
SELECT
    run_id, concurrency, seq, start_ns, coalesce(scheduled_ns, start_ns), latency_ns, status,
    prompt_tokens, expected_tokens, error
FROM incoming_requests;

-- name: insert_gpu_samples
INSERT INTO gpu_samples (
    run_id, concurrency, device, t_ms, gpu_util_pct, mem_util_pct, mem_used_mib, mem_total_mib,
    power_w
)
SELECT
    run_id, concurrency, device, t_ms, gpu_util_pct, mem_util_pct, mem_used_mib, mem_total_mib,
    power_w
FROM incoming_gpu_samples;

-- name: report_rows
-- Bound twice with the sweep run id: NULL gives the latest run of every cell across all sweeps,
-- a value gives the latest run of each cell within that sweep run.
SELECT
    sweep,
    sweep_run_id,
    cell_id,
    model,
    engine,
    planned_engine,
    engine_version,
    pool,
    gpu_model,
    chunk_size,
    batch_size,
    concurrency,
    status,
    reason,
    message,
    requests,
    ok,
    errors,
    throughput_rps,
    inputs_per_s,
    input_tokens_per_s,
    p50_ms,
    p90_ms,
    p95_ms,
    p99_ms,
    max_ms,
    mean_ms,
    prompt_tokens_mismatch,
    valid,
    cost_per_million_tokens,
    mode,
    offered_rps,
    lag_mean_ms,
    lag_p99_ms,
    run_id,
    strftime(started_at, '%Y-%m-%dT%H:%M:%SZ') AS started_at,
    server_id,
    (SELECT s.time_to_healthy_s FROM v_servers AS s WHERE s.server_id = v_results.server_id)
        AS server_startup_s,
    fidelity,
    coalesce(fidelity_failed, false) AS fidelity_failed,
    fidelity_min_cosine,
    fidelity_threshold,
    fidelity_max_abs_diff,
    fidelity_invariance_min_cosine,
    (SELECT f.findings FROM fidelity_checks AS f WHERE f.run_id = v_results.run_id)
        AS fidelity_findings,
    usage_counting,
    usage_trusted,
    coalesce(partial, false) AS partial,
    stopped_reason,
    host_other_cpu_cores,
    host_load_1m,
    host_quiet,
    (SELECT h.ratio FROM harness_checks AS h WHERE h.run_id = v_results.run_id)
        AS harness_ratio,
    (SELECT h.direct_inputs_per_s FROM harness_checks AS h WHERE h.run_id = v_results.run_id)
        AS harness_direct_inputs_per_s,
    (SELECT h.concurrency FROM harness_checks AS h WHERE h.run_id = v_results.run_id)
        AS harness_concurrency,
    (SELECT h.dtype FROM harness_checks AS h WHERE h.run_id = v_results.run_id)
        AS harness_dtype,
    (SELECT h.note FROM harness_checks AS h WHERE h.run_id = v_results.run_id)
        AS harness_note,
    (SELECT coalesce(r.served_dtype, r.dtype) FROM runs AS r WHERE r.run_id = v_results.run_id)
        AS dtype,
    (SELECT r.dtype_requested FROM runs AS r WHERE r.run_id = v_results.run_id)
        AS dtype_requested,
    (SELECT r.dtype FROM runs AS r WHERE r.run_id = v_results.run_id) AS dtype_started,
    (SELECT r.dtype_note FROM runs AS r WHERE r.run_id = v_results.run_id) AS dtype_note,
    (SELECT r.startup FROM runs AS r WHERE r.run_id = v_results.run_id) AS startup
FROM v_results
WHERE CASE
    WHEN CAST(? AS VARCHAR) IS NULL THEN is_latest
    ELSE sweep_run_id = CAST(? AS VARCHAR) AND is_latest_in_sweep
END
ORDER BY model, engine, pool, chunk_size, batch_size, concurrency NULLS FIRST, run_id;

-- name: sweep_regressions
SELECT cell_id, model, engine, engine_version, pool, chunk_size, concurrency,
    input_tokens_per_s, prev_input_tokens_per_s, tokens_per_s_change, prev_run_id,
    prev_engine_version
FROM v_nightly_trend
WHERE sweep_run_id = ? AND tokens_per_s_change < ?
ORDER BY tokens_per_s_change;
