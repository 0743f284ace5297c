-- 0008_host_load: was the host quiet during a level? results.host_other_cpu_cores is the cores
-- other processes (not the run, its load client or its server) kept busy on average, from /proc;
-- host_load_1m the load average at the level's end; host_quiet is false when others used more
-- than 0.25 cores (embedsweep.hostload): such figures are of a shared host. NULL: not measured.

ALTER TABLE results ADD COLUMN host_other_cpu_cores DOUBLE;
ALTER TABLE results ADD COLUMN host_load_1m DOUBLE;
ALTER TABLE results ADD COLUMN host_quiet BOOLEAN;
