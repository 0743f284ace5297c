-- Every run of every cell over time (nightly trend): input tokens per second and p99 per load
-- level, newest first.
SELECT
    started_at,
    sweep,
    model,
    engine,
    engine_version,
    pool,
    chunk_size,
    concurrency,
    status,
    round(input_tokens_per_s, 0) AS tok_s,
    round(p99_ms, 2) AS p99_ms
FROM v_results
ORDER BY model, engine, pool, chunk_size, concurrency NULLS FIRST, started_at DESC;
