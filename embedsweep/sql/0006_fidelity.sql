-- 0006_fidelity: are the served vectors the model's? Each measured run ends with a fidelity probe
-- (embedsweep.fidelity): served vectors against a CPU reference encode of fixed texts, and
-- against themselves in batches, shuffled orders and concurrent requests. fidelity_checks has
-- one row per probed run; runs.fidelity holds its verdict (passed | failed | error |
-- not_checked; NULL when no probe ran), and every view that shows figures (views.sql) carries
-- fidelity_failed, so a failing run keeps its numbers but is never read as a clean one.
-- runs.usage_counting says how the engine's usage.prompt_tokens counts (tokens |
-- tokens_without_special | characters) and usage_trusted whether it can reveal a truncation.

CREATE TABLE fidelity_checks (
    run_id                  VARCHAR PRIMARY KEY,
    probe_version           INTEGER NOT NULL,
    reference               VARCHAR NOT NULL,
    served_dtype            VARCHAR NOT NULL,
    threshold               DOUBLE NOT NULL,
    texts                   INTEGER NOT NULL,
    dimension               INTEGER,
    reference_dimension     INTEGER,
    min_cosine              DOUBLE,
    mean_cosine             DOUBLE,
    max_abs_diff            DOUBLE,
    norm_min                DOUBLE,
    norm_max                DOUBLE,
    normalized              BOOLEAN,
    reference_normalized    BOOLEAN,
    invariance_min_cosine   DOUBLE,
    invariance_max_abs_diff DOUBLE,
    dimensions_request      VARCHAR NOT NULL,
    overlength              VARCHAR NOT NULL,
    verdict                 VARCHAR NOT NULL
        CHECK (verdict IN ('passed', 'failed', 'error', 'not_checked')),
    findings                JSON
);

ALTER TABLE runs ADD COLUMN fidelity VARCHAR;
ALTER TABLE runs ADD COLUMN usage_counting VARCHAR;
ALTER TABLE runs ADD COLUMN usage_trusted BOOLEAN;
