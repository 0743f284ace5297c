-- The current definition of every view, in dependency order (a view after those it reads).
-- Migrations change tables only; embedsweep.store_schema runs this file after the migrations that
-- bring a warehouse up to date (and when a view is missing). So a change here ships with a
-- migration, perhaps one holding only a comment on what changed: that is what re-creates the
-- views of an existing warehouse. Views bind by name when they are queried: a view that selects
-- r.* follows the columns a migration adds to its table.
--
-- The duckdb CLI on PyPI (1.5.x) re-parses these bodies when it opens the file, so they stay in
-- SQL that 1.5 accepts: no syntax newer than the window, FILTER and arg_max used here.

-- Every run with two flags: the latest run of its cell overall, and within its sweep run. A cell
-- is re-run by retries and by every nightly sweep; ingested_at and run_id break started_at ties so
-- exactly one run per cell is "latest".
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

-- One row per run and load level; a run with no levels (blocked, failed before load) keeps one
-- row with concurrency NULL so it still shows up in every comparison. Columns added after the
-- first release come after the first ones, in the order they were added, so positional readers
-- of the older columns are unaffected.
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

-- v_results restricted to the latest run of each cell, without the two flag columns.
CREATE OR REPLACE VIEW v_latest_results AS
SELECT * EXCLUDE (is_latest, is_latest_in_sweep)
FROM v_results
WHERE is_latest;

-- Per-request rows with the run's identity, latency in milliseconds, and the per-request checks
-- the summaries count (2xx, prompt_tokens reported and different from what was sent), and the
-- client's lag behind its schedule.
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

-- Runs that produced no comparison numbers, with the run's own reason and every blocking
-- preflight code seen for the cell (a rerouted cell's planned engine may have blocked too).
CREATE OR REPLACE VIEW v_blocked AS
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
    r.chunk_size,
    r.batch_size,
    r.status,
    r.reason,
    r.message,
    p.preflight_block_codes,
    r.started_at,
    r.finished_at,
    r.is_latest,
    r.is_latest_in_sweep
FROM v_runs AS r
LEFT JOIN (
    SELECT run_id, string_agg(DISTINCT code, ', ' ORDER BY code) AS preflight_block_codes
    FROM preflight_reasons
    WHERE severity = 'block'
    GROUP BY run_id
) AS p ON p.run_id = r.run_id
WHERE r.status <> 'ok';

-- Long form of the comparison: one row per latest run of a cell and load level, with the
-- engine@pool label a PIVOT spreads into columns (warehouse/queries/compare.sql does). A static
-- view cannot have one column per engine@pool, since the set of pools is data. The dtype is the
-- one the engine computed in, else the one it was started with.
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

-- Throughput against what the GPUs cost. A pool priced at 0 (a CPU box, an owned card) has no
-- cost-based figures: NULL, not a division by zero.
CREATE OR REPLACE VIEW v_efficiency AS
SELECT
    sweep_run_id,
    sweep,
    cell_id,
    run_id,
    model,
    engine,
    pool,
    gpu_model,
    gpu_count,
    cost_per_gpu_hour,
    chunk_size,
    batch_size,
    concurrency,
    mode,
    status,
    valid,
    input_tokens_per_s,
    inputs_per_s,
    cost_per_gpu_hour * gpu_count AS usd_per_hour,
    input_tokens_per_s / nullif(cost_per_gpu_hour * gpu_count, 0) AS tokens_per_s_per_usd_hour,
    -- Same formula and the same NULL for an unpriced pool as embedsweep.metrics, so it agrees
    -- with results.cost_per_million_tokens.
    nullif(cost_per_gpu_hour * gpu_count, 0) / 3600 / nullif(input_tokens_per_s, 0) * 1e6
        AS usd_per_million_tokens,
    inputs_per_s / nullif(gpu_count, 0) AS inputs_per_s_per_gpu,
    input_tokens_per_s / nullif(gpu_count, 0) AS input_tokens_per_s_per_gpu,
    started_at,
    is_latest,
    is_latest_in_sweep
FROM v_results
WHERE concurrency IS NOT NULL;

-- Each valid load level of each run next to the same level of the cell's previous run. cell_id
-- already includes the sweep name, so a nightly cell is compared with earlier nightly runs only.
-- An invalid level (no successful request, or token counts the server disagreed with) measured
-- something else, so it is left out rather than reported as a drop. Mode is part of the key: an
-- open loop's throughput follows its offered rate, not the server's ceiling.
CREATE OR REPLACE VIEW v_nightly_trend AS
SELECT
    t.*,
    (t.input_tokens_per_s - t.prev_input_tokens_per_s) / nullif(t.prev_input_tokens_per_s, 0)
        AS tokens_per_s_change,
    (t.p99_ms - t.prev_p99_ms) / nullif(t.prev_p99_ms, 0) AS p99_change
FROM (
    SELECT
        sweep_run_id,
        sweep,
        sweep LIKE 'nightly%' AS nightly,
        cell_id,
        run_id,
        model,
        engine,
        engine_version,
        pool,
        gpu_model,
        chunk_size,
        batch_size,
        concurrency,
        mode,
        started_at,
        input_tokens_per_s,
        throughput_rps,
        p99_ms,
        is_latest,
        lag(run_id) OVER w AS prev_run_id,
        lag(started_at) OVER w AS prev_started_at,
        lag(engine_version) OVER w AS prev_engine_version,
        lag(input_tokens_per_s) OVER w AS prev_input_tokens_per_s,
        lag(p99_ms) OVER w AS prev_p99_ms
    FROM v_results
    WHERE status = 'ok' AND concurrency IS NOT NULL AND valid
    WINDOW w AS (
        PARTITION BY cell_id, concurrency, mode
        ORDER BY started_at, run_id
    )
) AS t;

-- Levels whose input tokens/s fell by more than 10 % against the previous run of the same cell
-- and level. 10 % is above the run-to-run spread seen on one card (a few percent), so what shows
-- here is worth a look; change the threshold by querying v_nightly_trend directly.
CREATE OR REPLACE VIEW v_regressions AS
SELECT *
FROM v_nightly_trend
WHERE tokens_per_s_change < -0.10;

-- Runs that produced no numbers, counted per reason, engine and pool, with the newest message as
-- the example. A run without a reason code (cancelled) is counted under its status.
CREATE OR REPLACE VIEW v_failures_by_reason AS
SELECT
    coalesce(reason, status) AS reason,
    status,
    engine,
    pool,
    count(*) AS runs,
    count(DISTINCT cell_id) AS cells,
    count(DISTINCT cell_id) FILTER (WHERE is_latest) AS cells_now,
    string_agg(DISTINCT model, ', ' ORDER BY model) AS models,
    arg_max(message, started_at) AS example_message,
    min(started_at) AS first_seen,
    max(started_at) AS last_seen
FROM v_blocked
GROUP BY coalesce(reason, status), status, engine, pool;

-- One row per engine server: a server serves every chunk size of a (model, engine, pool) in a
-- sweep, and the run that started it holds its time_to_healthy_s.
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

-- One row per probed run, with what it was measured on.
CREATE OR REPLACE VIEW v_fidelity AS
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
