-- 0003_views: the views people asked for on top of v_results and v_blocked: a long-form engine
-- comparison, GPU-cost efficiency, each cell's trend over its runs with the regressions in it,
-- and non-ok runs counted by reason.
--
-- The duckdb CLI on PyPI (1.5.x) re-parses these bodies when it opens the file, so they stay in
-- SQL that 1.5 accepts: no syntax newer than the window, FILTER and arg_max used here.

-- Long form of the comparison: one row per latest run of a cell and load level, with the
-- engine@pool label a PIVOT spreads into columns (warehouse/queries/compare.sql does). A static
-- view cannot have one column per engine@pool, since the set of pools is data.
CREATE VIEW v_compare AS
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
    started_at
FROM v_latest_results
WHERE concurrency IS NOT NULL
ORDER BY model, chunk_size, concurrency, engine_pool;

-- Throughput against what the GPUs cost. A pool priced at 0 (a CPU box, an owned card) has no
-- cost-based figures: NULL, not a division by zero.
CREATE VIEW v_efficiency AS
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
CREATE VIEW v_nightly_trend AS
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
CREATE VIEW v_regressions AS
SELECT *
FROM v_nightly_trend
WHERE tokens_per_s_change < -0.10;

-- Runs that produced no numbers, counted per reason, engine and pool, with the newest message as
-- the example. A run without a reason code (cancelled) is counted under its status.
CREATE VIEW v_failures_by_reason AS
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
