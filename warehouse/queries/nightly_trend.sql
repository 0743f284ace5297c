-- Each nightly sweep's input tokens/s per cell and load level next to the previous night's run of
-- the same cell and level, with the relative change (-0.12 = 12 % slower), newest first.
SELECT
    started_at,
    model,
    engine,
    engine_version,
    pool,
    chunk_size,
    concurrency,
    round(input_tokens_per_s, 0) AS tok_s,
    round(prev_input_tokens_per_s, 0) AS prev_tok_s,
    round(tokens_per_s_change, 3) AS change,
    prev_engine_version,
    round(p99_ms, 2) AS p99_ms,
    round(p99_change, 3) AS p99_change,
    sweep,
    run_id
FROM v_nightly_trend
WHERE nightly
ORDER BY model, engine, pool, chunk_size, concurrency, started_at DESC;
