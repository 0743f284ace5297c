"""The warehouse as users meet it: the ``duckdb`` CLI from PyPI (duckdb-cli, an older release than
the Python library) and ``embedsweep sql -f`` each open a file the store wrote and run every saved
query in warehouse/queries, from a folder laid out as a sweep leaves it (warehouse/embedsweep.duckdb
next to warehouse/runs/SWEEP_RUN_ID/RUN_ID/), so the query that reads the parquet files directly
finds them.
"""

from __future__ import annotations

import json
import os
import shutil
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
EMBEDSWEEP = Path(sys.executable).parent / "embedsweep"
OK_MODEL = "e5-base-v2"
BLOCKED_MODEL = "NV-Embed-v2"
# What each saved query must show for the warehouse built below; any other query must at least
# name the model that ran.
EXPECTED = {
    "blocked_and_failed.sql": BLOCKED_MODEL,
    "failures_by_reason.sql": BLOCKED_MODEL,
    "raw_requests_from_parquet.sql": "ok-run",
}


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
    run_dir = root / m.sweep_run_id / m.run_id
    run_dir.mkdir(parents=True)
    (run_dir / "run.json").write_text(m.model_dump_json(), encoding="utf-8")
    if requests is not None:
        pq.write_table(requests, run_dir / "requests.parquet")
    return run_dir


def _level(input_tokens_per_s: float) -> LevelSummary:
    return LevelSummary(
        concurrency=4,
        requests=3,
        ok=2,
        errors=1,
        errors_by_cause={"context_overflow": 1},
        duration_s=1.0,
        throughput_rps=3.0,
        inputs_per_s=3.0,
        input_tokens_per_s=input_tokens_per_s,
        latency_ms=LatencyMs(mean=9.0, p50=8.0, p90=10.0, p95=11.0, p99=12.0, max=12.5),
        prompt_tokens_mismatch=0,
        achieved_concurrency=3.9,
        valid=True,
    )


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The warehouse file; its folder's parent is where the saved queries run from."""
    root = tmp_path_factory.mktemp("cli")
    # The previous night's run of the same cell was faster: 2048 -> 1536 tok/s is a 25 % drop.
    previous = _manifest(
        "prev-run",
        OK_MODEL,
        sweep_run_id="s0",
        cell_id="cell-ok-run",
        started_at="2025-01-01T03:00:00Z",
        finished_at="2025-01-01T03:05:00Z",
        levels=[_level(2048.0)],
    )
    ok = _manifest("ok-run", OK_MODEL, levels=[_level(1536.0)])
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
    path = root / "warehouse" / "embedsweep.duckdb"
    runs = root / "warehouse" / "runs"
    prev_requests = requests.set_column(
        0, "run_id", pa.array(["prev-run"] * requests.num_rows, pa.string())
    )
    con = open_warehouse(path)
    try:
        assert ingest_run(con, _write(runs, previous, prev_requests))
        assert ingest_run(con, _write(runs, ok, requests))
        assert ingest_run(con, _write(runs, blocked, None))
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
        cwd=path.parent.parent,
    )
    assert done.returncode == 0, done.stderr
    # A query that binds but warns, or a view the older CLI cannot read, shows up on stderr.
    assert done.stderr == "", done.stderr
    rows: list[dict[str, object]] = json.loads(done.stdout)
    return rows


def _embedsweep_sql(path: Path, query_file: Path) -> str:
    # The table output, not --json: `embedsweep sql --json` cannot yet encode TIMESTAMP columns
    # (cli._echo_json), which most saved queries show. A wide terminal keeps rich from eliding.
    done = subprocess.run(
        [str(EMBEDSWEEP), "sql", "-f", str(query_file), "--warehouse", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=path.parent.parent,
        env={**os.environ, "COLUMNS": "400"},
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


SAVED = sorted(QUERIES.glob("*.sql"))


@pytest.mark.parametrize("query_file", SAVED, ids=lambda p: p.name)
def test_saved_query_runs_in_the_duckdb_cli(warehouse: Path, query_file: Path) -> None:
    rows = _cli(warehouse, query_file.read_text(encoding="utf-8"))

    expected = EXPECTED.get(query_file.name, OK_MODEL)
    assert any(expected in row.values() for row in rows), rows


@pytest.mark.parametrize("query_file", SAVED, ids=lambda p: p.name)
def test_saved_query_runs_in_embedsweep_sql(warehouse: Path, query_file: Path) -> None:
    table = _embedsweep_sql(warehouse, query_file)

    assert EXPECTED.get(query_file.name, OK_MODEL) in table, table


def test_the_saved_queries_exist() -> None:
    assert {
        "latest_results.sql",
        "compare.sql",
        "blocked_and_failed.sql",
        "efficiency.sql",
        "nightly_trend.sql",
        "regressions.sql",
        "failures_by_reason.sql",
        "raw_requests_from_parquet.sql",
    } <= {p.name for p in SAVED}


def test_cli_finds_the_regression_against_the_previous_run(warehouse: Path) -> None:
    rows = _cli(warehouse, (QUERIES / "regressions.sql").read_text(encoding="utf-8"))

    assert [(r["prev_run_id"], r["run_id"], r["change"]) for r in rows] == [
        ("prev-run", "ok-run", -0.25)
    ]


def test_cli_reads_the_efficiency_figures(warehouse: Path) -> None:
    rows = _cli(warehouse, (QUERIES / "efficiency.sql").read_text(encoding="utf-8"))

    # 1536 tok/s on one GPU at $1.8/h: 853 tok/s per dollar-hour, $0.3255 per million tokens.
    assert [(r["tok_s_per_usd_hour"], r["usd_per_mtok"], r["inputs_s_per_gpu"]) for r in rows] == [
        (853.0, 0.3255, 3.0)
    ]


def test_cli_counts_failures_by_reason(warehouse: Path) -> None:
    rows = _cli(warehouse, (QUERIES / "failures_by_reason.sql").read_text(encoding="utf-8"))

    assert [
        (r["reason"], r["engine"], r["pool"], r["runs"], r["cells_now"], r["example_message"])
        for r in rows
    ] == [
        (
            "unsupported_architecture",
            "vllm",
            "a100",
            1,
            1,
            "NVEmbedModel is not in vLLM's registry",
        )
    ]


def test_cli_reads_the_run_parquet_files_directly(warehouse: Path) -> None:
    rows = _cli(warehouse, (QUERIES / "raw_requests_from_parquet.sql").read_text(encoding="utf-8"))

    assert [(r["run_id"], r["concurrency"], r["requests"], r["ok"]) for r in rows] == [
        ("ok-run", 4, 3, 2),
        ("prev-run", 4, 3, 2),
    ]


def test_cli_sees_the_compare_pivot_columns(warehouse: Path) -> None:
    rows = _cli(warehouse, (QUERIES / "compare.sql").read_text(encoding="utf-8"))

    assert rows == [{"model": OK_MODEL, "chunk_size": 512, "concurrency": 4, "vllm@a100": 1536.0}]


def _sql_cli(path: Path, sql: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(EMBEDSWEEP), "sql", sql, "--warehouse", str(path), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=path.parent.parent,
    )


def _refused(
    path: Path, outside: Path
) -> list[str]:  # the statements an audit found that a read-only open still allowed
    runs = path.parent / "runs"
    return [
        f"COPY (SELECT 1) TO '{outside / 'copied.csv'}'",
        f"COPY (SELECT 1) TO '{runs / 'copied.csv'}'",  # a write, even inside the run folders
        f"EXPORT DATABASE '{outside / 'exported'}'",
        "SELECT * FROM read_csv('/etc/passwd')",
        "SELECT * FROM read_text('/etc/hostname')",
        "SELECT * FROM glob('/root/*')",
        f"SELECT * FROM read_text('{runs}/../beside.txt')",  # out of the run folder by ..
        "INSTALL httpfs",
        "LOAD httpfs",
        "SELECT * FROM read_csv('https://example.com/x.csv')",
        f"ATTACH '{outside / 'other.duckdb'}' AS other",
        "SET enable_external_access = true",
        "SELECT 1; SET lock_configuration = false",
        "DELETE FROM runs",
        "CREATE TABLE t AS SELECT 1",
        "PRAGMA enable_profiling",
        "CALL pragma_version()",
    ]


def test_sql_refuses_writes_and_every_access_outside_the_warehouse(
    warehouse: Path, tmp_path: Path
) -> None:
    beside = warehouse.parent / "beside.txt"
    beside.write_text("not for queries")
    for statement in _refused(warehouse, tmp_path):
        done = _sql_cli(warehouse, statement)
        assert done.returncode == 2, (statement, done.stdout, done.stderr)
        assert done.stderr.startswith("error: refused"), (statement, done.stderr)
        assert done.stderr.count("\n") == 1, done.stderr  # one line
        assert done.stdout == ""
    beside.unlink()
    assert list(tmp_path.iterdir()) == []
    assert not (warehouse.parent / "runs" / "copied.csv").exists()


def test_sql_reads_the_run_folders_it_is_given(warehouse: Path, tmp_path: Path) -> None:
    inside = _sql_cli(
        warehouse,
        "SELECT count(*) AS n FROM read_parquet('warehouse/runs/*/*/requests.parquet')",
    )
    assert inside.returncode == 0, inside.stderr
    assert json.loads(inside.stdout) == [{"n": 6}]
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(warehouse.parent / "runs", elsewhere)
    query = f"SELECT count(*) AS n FROM read_parquet('{elsewhere}/*/*/requests.parquet')"
    assert _sql_cli(warehouse, query).returncode == 2
    allowed = subprocess.run(
        [str(EMBEDSWEEP), "sql", query, "--warehouse", str(warehouse), "--runs", str(elsewhere),
         "--json"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert allowed.returncode == 0, allowed.stderr
    assert json.loads(allowed.stdout) == [{"n": 6}]
