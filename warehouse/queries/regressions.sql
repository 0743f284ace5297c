-- Load levels whose input tokens/s dropped more than 10 % against the previous run of the same
-- cell and level (any sweep), newest first; a changed engine_version is the first suspect.
SELECT
    started_at,
    sweep,
    model,
    engine,
    pool,
    chunk_size,
    concurrency,
    round(prev_input_tokens_per_s, 0) AS prev_tok_s,
    round(input_tokens_per_s, 0) AS tok_s,
    round(tokens_per_s_change, 3) AS change,
    prev_engine_version,
    engine_version,
    prev_run_id,
    run_id
FROM v_regressions
ORDER BY started_at DESC, tokens_per_s_change, model, engine, pool;
