-- 0009_harness: is the built-in server as fast as its model? harness_checks has one row per
-- built-in (hf) run: its inputs/s at the run's highest concurrency against direct
-- SentenceTransformer.encode of the same texts in the same dtype and batch on the same host
-- (embedsweep.harness), with how the server placed its work (model threads, front end, runtime).
-- ratio is server / direct; NULL with a note when direct encode was not compared (a GPU server).

CREATE TABLE harness_checks (
    run_id              VARCHAR PRIMARY KEY,
    chunk_size          INTEGER NOT NULL,
    concurrency         INTEGER NOT NULL,
    batch               INTEGER NOT NULL,
    server_inputs_per_s DOUBLE NOT NULL,
    direct_inputs_per_s DOUBLE,
    ratio               DOUBLE,
    direct_threads      INTEGER,
    dtype               VARCHAR,
    device              VARCHAR,
    runtime             VARCHAR,
    model_threads       INTEGER,
    model_threads_now   INTEGER,
    thread_changes      INTEGER,
    frontend            VARCHAR,
    note                VARCHAR
);
