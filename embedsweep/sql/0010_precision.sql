-- 0010_precision: one precision per comparison. runs.dtype_requested is the sweep's (auto or a
-- pinned name), runs.dtype what the engine was started with (auto resolved once per model and
-- pool, the same for every engine), runs.served_dtype what the engine says it computed in
-- (NULL: it does not say), runs.dtype_note a mismatch between the two; runs.startup how the
-- built-in server started its model (compiled, cached, eager). v_compare and v_servers
-- (views.sql) carry them; the report's rows read them from runs.

ALTER TABLE runs ADD COLUMN dtype_requested VARCHAR;
ALTER TABLE runs ADD COLUMN dtype VARCHAR;
ALTER TABLE runs ADD COLUMN served_dtype VARCHAR;
ALTER TABLE runs ADD COLUMN dtype_note VARCHAR;
ALTER TABLE runs ADD COLUMN startup VARCHAR;
