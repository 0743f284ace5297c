-- 0001_init: the warehouse's tables. The views the report and saved queries read are in
-- views.sql (every migration changes tables only).
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
