"""A loader killed with SIGKILL while ingesting leaves the run wholly in the warehouse or wholly
out of it, never part of it, and the next loader's retry lands it.

The child ingests a run with a few million request rows (about a second of work), and the test
kills it at points spread over that second: after fixed delays, as soon as the database file
grows (DuckDB writes a large insert's row groups into the file before the commit, so the
transaction is open), and as soon as the write-ahead log appears (the commit is under way).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from embedsweep.records import LatencyMs, LevelSummary, RunManifest
from embedsweep.store import ingest_run, open_warehouse, query

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX"),
]

REPO = Path(__file__).resolve().parents[2]
ROWS = 4_000_000
LEVELS = (1, 8, 32, 64)
BIG = "big-run"

_INGEST = """
import sys
from pathlib import Path
from embedsweep.store import ingest_run, open_warehouse
con = open_warehouse(Path(sys.argv[1]), lock_timeout_s=60)
print("ready", flush=True)
print(ingest_run(con, Path(sys.argv[2])), flush=True)
con.close()
"""


def _manifest(run_id: str, per_level: int) -> RunManifest:
    latency = LatencyMs(mean=10.0, p50=9.0, p90=14.0, p95=16.0, p99=30.0, max=50.0)
    return RunManifest(
        run_id=run_id,
        sweep_run_id="crash",
        sweep_name="nightly",
        cell_id=f"cell-{run_id}",
        model="e5-base-v2",
        model_ref="intfloat/e5-base-v2",
        engine="vllm",
        planned_engine="vllm",
        pool="a100",
        gpu_model="NVIDIA A100",
        gpu_count=1,
        cost_per_gpu_hour=1.8,
        chunk_size=512,
        batch_size=1,
        status="ok",
        started_at="2025-01-02T03:00:00Z",
        finished_at="2025-01-02T03:10:00Z",
        levels=[
            LevelSummary(
                concurrency=c,
                requests=per_level,
                ok=per_level,
                errors=0,
                duration_s=60.0,
                throughput_rps=per_level / 60.0,
                inputs_per_s=per_level / 60.0,
                input_tokens_per_s=per_level / 60.0 * 512,
                latency_ms=latency,
                prompt_tokens_mismatch=0,
                achieved_concurrency=float(c),
                valid=True,
            )
            for c in LEVELS
        ],
    )


def _write_run(root: Path, run_id: str, rows: int) -> Path:
    per_level = rows // len(LEVELS)
    n = per_level * len(LEVELS)
    rng = np.random.default_rng(0)
    start = np.cumsum(rng.integers(1_000, 100_000, n)).astype(np.int64)
    table = pa.table(
        {
            "run_id": pa.array([run_id] * n, pa.string()),
            "concurrency": np.repeat(np.array(LEVELS, dtype=np.int32), per_level),
            "seq": np.tile(np.arange(per_level, dtype=np.int64), len(LEVELS)),
            "start_ns": start,
            "scheduled_ns": start,
            "latency_ns": rng.integers(2_000_000, 50_000_000, n).astype(np.int64),
            "status": np.full(n, 200, dtype=np.int16),
            "prompt_tokens": np.full(n, 512, dtype=np.int32),
            "expected_tokens": np.full(n, 512, dtype=np.int32),
            "error": pa.nulls(n, pa.string()),
        }
    )
    run_dir = root / run_id
    run_dir.mkdir(parents=True)
    (run_dir / "run.json").write_text(_manifest(run_id, per_level).model_dump_json(), "utf-8")
    pq.write_table(table, run_dir / "requests.parquet")
    return run_dir


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A warehouse template holding one small run, and the big run's directory."""
    root = tmp_path_factory.mktemp("crash")
    template = root / "template.duckdb"
    con = open_warehouse(template)
    try:
        assert ingest_run(con, _write_run(root / "runs", "small-run", 400))
    finally:
        # Closing checkpoints: the template is one file with no write-ahead log to copy.
        con.close()
    return template, _write_run(root / "runs", BIG, ROWS)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return -1


Trigger = Callable[[Path, float, int], bool]


def _after(seconds: float) -> Trigger:
    return lambda _db, since_ready, _initial: since_ready >= seconds


def _file_grew(db: Path, _since_ready: float, initial: int) -> bool:
    return _size(db) > initial


def _wal_appeared(db: Path, _since_ready: float, _initial: int) -> bool:
    return _size(db.with_name(db.name + ".wal")) > 0


# Fixed delays land before, inside or after the transaction depending on the machine's speed; the
# file-growth trigger always fires inside it, the WAL trigger while committing.
TRIGGERS: dict[str, Trigger] = {
    **{f"after_{d:.1f}s": _after(d) for d in (0.2, 0.5, 0.8, 1.2)},
    "file_grew": _file_grew,
    "wal_appeared": _wal_appeared,
}


def _run_counts(con: duckdb.DuckDBPyConnection, run_id: str) -> tuple[int, int, int]:
    _, rows = query(
        con,
        "SELECT (SELECT count(*) FROM runs WHERE run_id = $1), "
        "(SELECT count(*) FROM results WHERE run_id = $1), "
        "(SELECT count(*) FROM requests WHERE run_id = $1)",
        [run_id],
    )
    runs, results, requests = rows[0]
    return int(runs), int(results), int(requests)


@pytest.mark.parametrize("trigger", list(TRIGGERS), ids=list(TRIGGERS))
def test_a_loader_killed_mid_ingest_leaves_all_or_nothing(
    setup: tuple[Path, Path], tmp_path: Path, trigger: str
) -> None:
    template, big = setup
    db = tmp_path / "embedsweep.duckdb"
    shutil.copy(template, db)
    initial = _size(db)
    fire = TRIGGERS[trigger]
    child = subprocess.Popen(
        [sys.executable, "-c", _INGEST, str(db), str(big)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        ready = time.monotonic()
        # Poll tightly: the window between the file growing and the commit is a fraction of a
        # second. A child that finished first was not killed mid-ingest; that outcome is allowed
        # (its run must then be whole), and the other triggers cover the kill.
        while child.poll() is None and not fire(db, time.monotonic() - ready, initial):
            time.sleep(0.001)
        killed = child.poll() is None
        if killed:
            os.kill(child.pid, signal.SIGKILL)
        child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()

    whole = (1, len(LEVELS), ROWS)
    # The next loader opens read-write, which replays (or discards) what the killed one left.
    con = open_warehouse(db, lock_timeout_s=30)
    try:
        after_crash = _run_counts(con, BIG)
        small = _run_counts(con, "small-run")
        retried = ingest_run(con, big)
        after_retry = _run_counts(con, BIG)
    finally:
        con.close()

    if trigger == "file_grew":
        # The file grows about half a second before the commit (measured: 0.37 s after "ready",
        # commit after 0.7 s): this kill must have landed inside the open transaction.
        assert killed, "the loader committed before the file-growth kill"
    assert after_crash in {(0, 0, 0), whole}, after_crash
    assert small == (1, len(LEVELS), 400)
    assert retried is (after_crash == (0, 0, 0))
    assert after_retry == whole
