-- Failed requests of the latest run of each cell, grouped by HTTP status and error text: the
-- first place to look when a level reports errors.
SELECT
    q.model,
    q.engine,
    q.pool,
    q.chunk_size,
    q.concurrency,
    q.status AS http_status,
    q.error,
    count(*) AS requests
FROM v_requests AS q
JOIN v_runs AS r ON r.run_id = q.run_id AND r.is_latest
WHERE NOT q.ok
GROUP BY ALL
ORDER BY requests DESC, q.model, q.engine;
