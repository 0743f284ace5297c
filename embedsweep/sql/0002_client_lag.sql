-- 0002_client_lag: open-loop load. Each request keeps when it was due (scheduled_ns) next to
-- when it actually started, so the client's lag behind its schedule is data; each level keeps
-- its load mode, the rate it offered, its lag summary and the arrivals it never sent.
--
-- Columns added with ALTER TABLE land after the existing ones (DuckDB cannot place them). NOT NULL
-- columns are added with a DEFAULT (DuckDB refuses SET NOT NULL after an UPDATE in the same
-- transaction); the defaults are what every row written before this migration means: a closed
-- loop, whose requests were due exactly when they started. The requests default is then dropped,
-- so a future insert that forgets the column fails instead of storing 0.

ALTER TABLE requests ADD COLUMN scheduled_ns BIGINT NOT NULL DEFAULT 0;
UPDATE requests SET scheduled_ns = start_ns;
ALTER TABLE requests ALTER COLUMN scheduled_ns DROP DEFAULT;

ALTER TABLE results ADD COLUMN mode VARCHAR NOT NULL DEFAULT 'closed';
ALTER TABLE results ADD COLUMN offered_rps DOUBLE;
ALTER TABLE results ADD COLUMN lag_mean_ms DOUBLE NOT NULL DEFAULT 0;
ALTER TABLE results ADD COLUMN lag_p99_ms DOUBLE NOT NULL DEFAULT 0;
ALTER TABLE results ADD COLUMN lag_max_ms DOUBLE NOT NULL DEFAULT 0;
ALTER TABLE results ADD COLUMN unsent BIGINT NOT NULL DEFAULT 0;
