-- What a GPU hour buys on each engine@pool: input tokens/s per dollar-hour, dollars per million
-- input tokens, and inputs/s per GPU, for the latest run of every cell (valid levels only), the
-- best value first. Pools priced at 0 have no cost figures and sort last.
SELECT
    model,
    engine,
    pool,
    gpu_model,
    gpu_count,
    chunk_size,
    concurrency,
    round(input_tokens_per_s, 0) AS tok_s,
    round(tokens_per_s_per_usd_hour, 0) AS tok_s_per_usd_hour,
    round(usd_per_million_tokens, 4) AS usd_per_mtok,
    round(inputs_per_s_per_gpu, 1) AS inputs_s_per_gpu,
    started_at
FROM v_efficiency
WHERE is_latest AND status = 'ok' AND valid
ORDER BY model, chunk_size, tokens_per_s_per_usd_hour DESC NULLS LAST, engine, pool, concurrency;
