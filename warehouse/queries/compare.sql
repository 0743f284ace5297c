-- Input tokens per second of each model on every engine@pool, side by side, at each chunk size
-- and concurrency (latest run of each cell; levels that failed their validity checks, and runs
-- whose served vectors failed the fidelity probe, are left out). A cell that did not run shows NULL here; see blocked_and_failed.sql for why. v_compare
-- is the same data in long form, one row per engine@pool.
PIVOT (
    SELECT model, chunk_size, concurrency, engine_pool, input_tokens_per_s
    FROM v_compare
    WHERE status = 'ok' AND valid AND NOT coalesce(fidelity_failed, false)
)
ON engine_pool
USING round(max(input_tokens_per_s), 0)
GROUP BY model, chunk_size, concurrency
ORDER BY model, chunk_size, concurrency;
