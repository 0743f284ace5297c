-- 0001_init: the warehouse's tables and the views the report and saved queries read.
--
-- Timestamps are UTC without a zone (TIMESTAMP): the loader converts every offset to UTC before
-- binding, because DuckDB's VARCHAR -> TIMESTAMP cast silently drops an offset.
-- There are no FOREIGN KEYs: DuckDB cannot update or delete a referenced row, and a run row is
-- always written in the same transaction as its children, so they would add nothing.
-- requests has no key either: an index over millions of rows would cost more at ingest than it
-- saves; a run's rows are found by run_id through the zone maps.

CREATE TABLE sweeps (
    sweep_run_id VARCHAR PRIMARY KEY,
    sweep_name   VARCHAR NOT NULL,
    started_at   TIMESTAMP NOT NULL,
    finished_at  TIMESTAMP,
    spec         JSON
);

CREATE TABLE runs (
    run_id            VARCHAR PRIMARY KEY,
    sweep_run_id      VARCHAR NOT NULL,
    sweep_name        VARCHAR NOT NULL,
    cell_id           VARCHAR NOT NULL,
    model             VARCHAR NOT NULL,
    model_ref         VARCHAR NOT NULL,
    engine            VARCHAR NOT NULL,
    planned_engine    VARCHAR NOT NULL,
    pool              VARCHAR NOT NULL,
    gpu_model         VARCHAR NOT NULL,
    gpu_count         INTEGER NOT NULL,
    cost_per_gpu_hour DOUBLE NOT NULL,
    chunk_size        INTEGER NOT NULL,
    batch_size        INTEGER NOT NULL,
    status            VARCHAR NOT NULL CHECK (status IN ('ok', 'blocked', 'failed', 'cancelled')),
    reason            VARCHAR,
    message           VARCHAR,
    engine_version    VARCHAR,
    max_input_tokens  INTEGER,
    time_to_healthy_s DOUBLE,
    seed              BIGINT NOT NULL,
    started_at        TIMESTAMP NOT NULL,
    finished_at       TIMESTAMP NOT NULL,
    ingested_at       TIMESTAMP NOT NULL
);

CREATE TABLE preflight_reasons (
    run_id           VARCHAR NOT NULL,
    engine           VARCHAR NOT NULL,
    engine_version   VARCHAR,
    architecture     VARCHAR,
    verdict          VARCHAR NOT NULL CHECK (verdict IN ('ok', 'blocked')),
    max_input_tokens INTEGER,
    fallback_engine  VARCHAR,
    code             VARCHAR,
    severity         VARCHAR CHECK (severity IN ('block', 'warn')),
    message          VARCHAR
);

CREATE TABLE results (
    run_id                  VARCHAR NOT NULL,
    concurrency             INTEGER NOT NULL,
    requests                BIGINT NOT NULL,
    ok                      BIGINT NOT NULL,
    errors                  BIGINT NOT NULL,
    errors_by_cause         JSON NOT NULL,
    duration_s              DOUBLE NOT NULL,
    throughput_rps          DOUBLE NOT NULL,
    inputs_per_s            DOUBLE NOT NULL,
    input_tokens_per_s      DOUBLE NOT NULL,
    latency_mean_ms         DOUBLE NOT NULL,
    p50_ms                  DOUBLE NOT NULL,
    p90_ms                  DOUBLE NOT NULL,
    p95_ms                  DOUBLE NOT NULL,
    p99_ms                  DOUBLE NOT NULL,
    max_ms                  DOUBLE NOT NULL,
    prompt_tokens_mismatch  BIGINT NOT NULL,
    achieved_concurrency    DOUBLE NOT NULL,
    valid                   BOOLEAN NOT NULL,
    cost_per_million_tokens DOUBLE,
    PRIMARY KEY (run_id, concurrency)
);

CREATE TABLE requests (
    run_id          VARCHAR NOT NULL,
    concurrency     INTEGER NOT NULL,
    seq             BIGINT NOT NULL,
    start_ns        BIGINT NOT NULL,
    latency_ns      BIGINT NOT NULL,
    status          SMALLINT NOT NULL,
    prompt_tokens   INTEGER NOT NULL,
    expected_tokens INTEGER NOT NULL,
    error           VARCHAR
);

-- Every run with two flags: the latest run of its cell overall, and within its sweep run. A cell
-- is re-run by retries and by every nightly sweep; ingested_at and run_id break started_at ties so
-- exactly one run per cell is "latest".
CREATE VIEW v_runs AS
SELECT
    r.*,
    row_number() OVER (
        PARTITION BY r.cell_id
        ORDER BY r.started_at DESC, r.ingested_at DESC, r.run_id DESC
    ) = 1 AS is_latest,
    row_number() OVER (
        PARTITION BY r.sweep_run_id, r.cell_id
        ORDER BY r.started_at DESC, r.ingested_at DESC, r.run_id DESC
    ) = 1 AS is_latest_in_sweep
FROM runs AS r;

-- One row per run and load level; a run with no levels (blocked, failed before load) keeps one
-- row with concurrency NULL so it still shows up in every comparison.
CREATE VIEW v_results AS
SELECT
    r.sweep_run_id,
    r.sweep_name AS sweep,
    r.cell_id,
    r.run_id,
    r.model,
    r.model_ref,
    r.engine,
    r.planned_engine,
    r.engine_version,
    r.pool,
    r.gpu_model,
    r.gpu_count,
    r.cost_per_gpu_hour,
    r.chunk_size,
    r.batch_size,
    r.max_input_tokens,
    res.concurrency,
    r.status,
    r.reason,
    r.message,
    res.requests,
    res.ok,
    res.errors,
    res.errors_by_cause,
    res.duration_s,
    res.throughput_rps,
    res.inputs_per_s,
    res.input_tokens_per_s,
    res.latency_mean_ms AS mean_ms,
    res.p50_ms,
    res.p90_ms,
    res.p95_ms,
    res.p99_ms,
    res.max_ms,
    res.prompt_tokens_mismatch,
    res.achieved_concurrency,
    res.valid,
    res.cost_per_million_tokens,
    r.time_to_healthy_s,
    r.seed,
    r.started_at,
    r.finished_at,
    r.is_latest,
    r.is_latest_in_sweep
FROM v_runs AS r
LEFT JOIN results AS res ON res.run_id = r.run_id;

CREATE VIEW v_latest_results AS
SELECT * EXCLUDE (is_latest, is_latest_in_sweep)
FROM v_results
WHERE is_latest;

-- Per-request rows with the run's identity, latency in milliseconds, and the per-request checks
-- the summaries count (2xx, prompt_tokens reported and different from what was sent).
CREATE VIEW v_requests AS
SELECT
    q.run_id,
    r.sweep_run_id,
    r.sweep_name AS sweep,
    r.cell_id,
    r.model,
    r.engine,
    r.pool,
    r.gpu_model,
    r.chunk_size,
    r.batch_size,
    q.concurrency,
    q.seq,
    q.start_ns,
    q.latency_ns,
    q.start_ns / 1e6 AS start_ms,
    q.latency_ns / 1e6 AS latency_ms,
    q.status,
    q.status BETWEEN 200 AND 299 AS ok,
    q.prompt_tokens,
    q.expected_tokens,
    q.prompt_tokens >= 0 AND q.prompt_tokens <> q.expected_tokens AS prompt_tokens_mismatch,
    q.error
FROM requests AS q
JOIN runs AS r ON r.run_id = q.run_id;

-- Runs that produced no comparison numbers, with the run's own reason and every blocking
-- preflight code seen for the cell (a rerouted cell's planned engine may have blocked too).
CREATE VIEW v_blocked AS
SELECT
    r.sweep_run_id,
    r.sweep_name AS sweep,
    r.cell_id,
    r.run_id,
    r.model,
    r.model_ref,
    r.engine,
    r.planned_engine,
    r.engine_version,
    r.pool,
    r.gpu_model,
    r.chunk_size,
    r.batch_size,
    r.status,
    r.reason,
    r.message,
    p.preflight_block_codes,
    r.started_at,
    r.finished_at,
    r.is_latest,
    r.is_latest_in_sweep
FROM v_runs AS r
LEFT JOIN (
    SELECT run_id, string_agg(DISTINCT code, ', ' ORDER BY code) AS preflight_block_codes
    FROM preflight_reasons
    WHERE severity = 'block'
    GROUP BY run_id
) AS p ON p.run_id = r.run_id
WHERE r.status <> 'ok';
