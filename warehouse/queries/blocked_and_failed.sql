-- Cells whose latest run produced no numbers, with the reason code, the message, and every
-- blocking preflight code found for the cell.
SELECT
    model,
    planned_engine,
    engine,
    pool,
    chunk_size,
    status,
    reason,
    preflight_block_codes,
    message,
    sweep,
    started_at
FROM v_blocked
WHERE is_latest
ORDER BY status, reason, model, planned_engine, pool, chunk_size;
