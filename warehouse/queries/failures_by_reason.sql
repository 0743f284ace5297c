-- Blocked, failed and cancelled runs counted by reason code, engine and pool, with the newest
-- message as an example; cells_now counts the cells whose latest run still ends this way.
SELECT
    reason,
    status,
    engine,
    pool,
    runs,
    cells,
    cells_now,
    models,
    example_message,
    last_seen
FROM v_failures_by_reason
ORDER BY cells_now DESC, runs DESC, reason, engine, pool;
