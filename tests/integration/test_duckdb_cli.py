"""The warehouse as users meet it: the ``duckdb`` CLI from PyPI (duckdb-cli, an older release than
the Python library) opens a file the store wrote and runs every saved query in warehouse/queries.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from embedsweep.records import LatencyMs, LevelSummary, PreflightResult, Reason, RunManifest
from embedsweep.store import ingest_run, open_warehouse

pytestmark = pytest.mark.integration

QUERIES = Path(__file__).resolve().parents[2] / "warehouse" / "queries"
DUCKDB_CLI = Path(sys.executable).parent / "duckdb"
OK_MODEL = "e5-base-v2"
BLOCKED_MODEL = "NV-Embed-v2"
# What each saved query must show for the warehouse built below; any other query must at least
# name the model that ran.
EXPECTED = {"blocked_and_failed.sql": BLOCKED_MODEL}


def _manifest(run_id: str, model: str, **fields: object) -> RunManifest:
    base: dict[str, object] = {
        "run_id": run_id,
        "sweep_run_id": "s1",
        "sweep_name": "nightly",
        "cell_id": f"cell-{run_id}",
        "model": model,
        "model_ref": f"org/{model}",
        "engine": "vllm",
        "planned_engine": "vllm",
        "pool": "a100",
        "gpu_model": "NVIDIA A100",
        "gpu_count": 1,
        "cost_per_gpu_hour": 1.8,
        "chunk_size": 512,
        "batch_size": 1,
        "status": "ok",
        "started_at": "2025-01-02T03:00:00Z",
        "finished_at": "2025-01-02T03:05:00Z",
    }
    base.update(fields)
    return RunManifest.model_validate(base)


def _write(root: Path, m: RunManifest, requests: pa.Table | None) -> Path:
    run_dir = root / m.run_id
    run_dir.mkdir(parents=True)
    (run_dir / "run.json").write_text(m.model_dump_json(), encoding="utf-8")
    if requests is not None:
        pq.write_table(requests, run_dir / "requests.parquet")
    return run_dir


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli")
    level = LevelSummary(
        concurrency=4,
        requests=3,
        ok=2,
        errors=1,
        errors_by_cause={"context_overflow": 1},
        duration_s=1.0,
        throughput_rps=3.0,
        inputs_per_s=3.0,
        input_tokens_per_s=1536.0,
        latency_ms=LatencyMs(mean=9.0, p50=8.0, p90=10.0, p95=11.0, p99=12.0, max=12.5),
        prompt_tokens_mismatch=0,
        achieved_concurrency=3.9,
        valid=True,
    )
    ok = _manifest("ok-run", OK_MODEL, levels=[level])
    requests = pa.table(
        {
            "run_id": ["ok-run"] * 3,
            "concurrency": pa.array([4, 4, 4], pa.int32()),
            "seq": pa.array([0, 1, 2], pa.int64()),
            "start_ns": pa.array([0, 10, 20], pa.int64()),
            "latency_ns": pa.array([8_000_000, 9_000_000, 12_500_000], pa.int64()),
            "status": pa.array([200, 200, 400], pa.int16()),
            "prompt_tokens": pa.array([512, 512, -1], pa.int32()),
            "expected_tokens": pa.array([512, 512, 512], pa.int32()),
            "error": [None, None, "context_overflow"],
        }
    )
    blocked = _manifest(
        "blocked-run",
        BLOCKED_MODEL,
        status="blocked",
        reason="unsupported_architecture",
        message="NVEmbedModel is not in vLLM's registry",
        preflight=[
            PreflightResult(
                model=BLOCKED_MODEL,
                engine="vllm",
                engine_version="0.11.0",
                architecture="NVEmbedModel",
                chunk_size=512,
                max_input_tokens=32768,
                verdict="blocked",
                reasons=[
                    Reason(code="unsupported_architecture", severity="block", message="no"),
                ],
            )
        ],
    )
    path = root / "embedsweep.duckdb"
    con = open_warehouse(path)
    try:
        assert ingest_run(con, _write(root / "runs", ok, requests))
        assert ingest_run(con, _write(root / "runs", blocked, None))
    finally:
        con.close()
    return path


def _cli(path: Path, sql: str) -> list[dict[str, object]]:
    if not DUCKDB_CLI.exists():
        pytest.skip(f"no duckdb CLI at {DUCKDB_CLI}; install the dev extra (duckdb-cli)")
    done = subprocess.run(
        [str(DUCKDB_CLI), "-readonly", "-json", str(path)],
        input=sql,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    # A query that binds but warns, or a view the older CLI cannot read, shows up on stderr.
    assert done.stderr == "", done.stderr
    rows: list[dict[str, object]] = json.loads(done.stdout)
    return rows


@pytest.mark.parametrize("query_file", sorted(QUERIES.glob("*.sql")), ids=lambda p: p.name)
def test_saved_query_runs_in_the_duckdb_cli(warehouse: Path, query_file: Path) -> None:
    rows = _cli(warehouse, query_file.read_text(encoding="utf-8"))

    expected = EXPECTED.get(query_file.name, OK_MODEL)
    assert any(expected in row.values() for row in rows), rows


def test_the_saved_queries_exist() -> None:
    assert {"latest_results.sql", "compare.sql", "blocked_and_failed.sql"} <= {
        p.name for p in QUERIES.glob("*.sql")
    }


def test_cli_sees_the_compare_pivot_columns(warehouse: Path) -> None:
    rows = _cli(warehouse, (QUERIES / "compare.sql").read_text(encoding="utf-8"))

    assert rows == [{"model": OK_MODEL, "chunk_size": 512, "concurrency": 4, "vllm@a100": 1536.0}]
