-- The latest run of every cell, one row per load level (blocked and failed cells have one row
-- with an empty concurrency). Same rows as `embedsweep report`.
SELECT
    model,
    engine,
    pool,
    chunk_size,
    batch_size,
    concurrency,
    status,
    reason,
    round(throughput_rps, 1) AS rps,
    round(input_tokens_per_s, 0) AS tok_s,
    round(p50_ms, 2) AS p50_ms,
    round(p99_ms, 2) AS p99_ms,
    valid,
    round(cost_per_million_tokens, 4) AS usd_per_mtok,
    started_at
FROM v_latest_results
ORDER BY model, engine, pool, chunk_size, batch_size, concurrency NULLS FIRST;
