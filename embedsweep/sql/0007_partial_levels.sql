-- 0007_partial_levels: a level the server's death (or silence) ended early keeps what it
-- measured. results.partial marks it (it is never valid) and stopped_reason says why; the run
-- itself is failed with the cause (server_crashed, ...). Levels before it are whole.

ALTER TABLE results ADD COLUMN partial BOOLEAN DEFAULT false;
ALTER TABLE results ADD COLUMN stopped_reason VARCHAR;
