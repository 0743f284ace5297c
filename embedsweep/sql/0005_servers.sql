-- 0005_servers: one engine server serves every chunk size of a (model, engine, pool) in a sweep.
-- runs.server_id names the server a run was measured on (NULL: blocked, or written before
-- servers were shared); the run that started it holds its time_to_healthy_s, the others NULL.
-- v_servers (views.sql) has one row per server.

ALTER TABLE runs ADD COLUMN server_id VARCHAR;
