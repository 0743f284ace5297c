-- Per-request rows straight from the run artifacts, without the warehouse: every
-- requests.parquet under warehouse/runs/SWEEP_RUN_ID/RUN_ID/ (run from the repository root, or
-- change the path). union_by_name lets files written before scheduled_ns existed read alongside
-- newer ones (their scheduled_ns is NULL, meaning "due when it started"); this query leaves that
-- column out so it also runs where no file has it yet. Each row carries its run_id; join it to
-- runs for the model, engine and pool when the warehouse is at hand.
SELECT
    run_id,
    concurrency,
    count(*) AS requests,
    count(*) FILTER (WHERE status BETWEEN 200 AND 299) AS ok,
    round(quantile_cont(latency_ns, 0.5) / 1e6, 2) AS p50_ms,
    round(quantile_cont(latency_ns, 0.99) / 1e6, 2) AS p99_ms
FROM read_parquet('warehouse/runs/*/*/requests.parquet', union_by_name = true)
GROUP BY run_id, concurrency
ORDER BY run_id, concurrency;
