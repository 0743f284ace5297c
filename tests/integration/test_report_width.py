"""``embedsweep report`` and ``embedsweep sql`` as a person runs them in a terminal 100 columns
wide (``COLUMNS=100``), on a real warehouse of two sweeps: no line is longer than the terminal,
no header or cell is cut short with "…", what is left out is said, floats are rounded in the text
and whole in ``--json``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest
from two_sweeps import CPU_SWEEP, SMALL_SWEEP, SWEEPS, build_warehouse

pytestmark = pytest.mark.integration
EMBEDSWEEP = str(Path(sys.executable).parent / "embedsweep")
FIGURES = (
    "model, sweep, chunk_size, concurrency, throughput_rps, p99_ms, time_to_healthy_s, "
    "fidelity_min_cosine, started_at"
)
QUERY = f"SELECT {FIGURES} FROM v_latest_results ORDER BY sweep, chunk_size, concurrency"


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_warehouse(tmp_path_factory.mktemp("width"))


def _cli(*args: str, columns: int | None) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    if columns is not None:
        env["COLUMNS"] = str(columns)
    result = subprocess.run(
        [EMBEDSWEEP, *args], capture_output=True, text=True, timeout=120, check=False, env=env
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def _widest(text: str) -> int:
    return max(len(line) for line in text.splitlines())


@pytest.mark.parametrize("columns", [100, 80, 60])
def test_report_fits_the_terminal_and_cuts_nothing(warehouse: Path, columns: int) -> None:
    text = _cli("report", "--warehouse", str(warehouse), columns=columns)

    assert _widest(text) <= columns, text
    assert "…" not in text
    # Every level is there with its tokens/s, and the blocked cell with its reason.
    rows = json.loads(_cli("report", "--warehouse", str(warehouse), "-f", "json", columns=None))
    for row in rows:
        if row["status"] == "ok":
            assert f"{row['input_tokens_per_s']:,.0f}" in text
    assert "exceeds_context" in text
    # What every row shares is said once; what did not fit is named (the notes wrap).
    prose = " ".join(text.split())
    shared = "The same in every row: model all-MiniLM-L6-v2 · engine hf (built-in) · pool cpu."
    assert shared in prose
    assert f"Left out to fit {columns} columns: " in prose


def test_report_in_a_pipe_keeps_every_comparison_column(warehouse: Path) -> None:
    text = _cli("report", "--warehouse", str(warehouse), columns=None)

    assert _widest(text) <= 160
    header = next(line for line in text.splitlines() if " model " in line and " rps " in line)
    assert header.split() == [
        "sweep", "model", "engine", "dtype", "pool", "chunk", "conc", "status", "reason",
        "rps", "tok/s", "p50", "ms", "p99", "ms", "fidelity",
    ]  # fmt: skip
    assert "Left out" not in text
    assert {CPU_SWEEP, SMALL_SWEEP} <= set(text.split())


def test_sql_fits_the_terminal_with_whole_headers_and_rounded_floats(warehouse: Path) -> None:
    text = _cli("sql", QUERY, "--warehouse", str(warehouse), columns=100)
    exact = json.loads(_cli("sql", QUERY, "--warehouse", str(warehouse), "--json", columns=100))

    assert _widest(text) <= 100, text
    assert "…" not in text
    words = text.split()
    for name in [f.strip() for f in FIGURES.split(",")]:
        assert name in words, name
    assert text.rstrip().endswith(f"({len(exact)} rows)")
    first = next(r for r in exact if r["sweep"] == CPU_SWEEP and r["concurrency"] == 16)
    # Full precision in --json: the figures the warehouse holds, to the last digit.
    con = duckdb.connect(str(warehouse), read_only=True)
    try:
        stored = con.execute(
            "SELECT p99_ms, throughput_rps FROM v_latest_results WHERE run_id = ? AND "
            "concurrency = 16",
            [f"{SWEEPS[0].sweep_run_id[:8]}-run-{first['chunk_size']}"],
        ).fetchone()
    finally:
        con.close()
    assert stored is not None
    assert (first["p99_ms"], first["throughput_rps"]) == stored
    assert len(repr(first["p99_ms"])) > 8
    # Four significant figures in the text, never the float's repr.
    assert f"{first['p99_ms']:#.4g}" in words
    assert f"{first['throughput_rps']:#.4g}" in words
    assert repr(first["p99_ms"]) not in text
    assert "1.000" in words  # fidelity_min_cosine 0.99999994
    assert "0.99999994" not in text
    assert "2025-03-01 09:00:00" in text


def test_sql_of_every_column_splits_into_groups_that_fit(warehouse: Path) -> None:
    text = _cli("sql", "SELECT * FROM v_latest_results", "--warehouse", str(warehouse), columns=100)
    con = duckdb.connect(str(warehouse), read_only=True)
    try:
        names = [d[0] for d in con.execute("SELECT * FROM v_latest_results LIMIT 0").description]
    finally:
        con.close()

    assert _widest(text) <= 100
    assert "…" not in text
    words = set(text.split())
    missing = [name for name in names if name not in words]
    assert not missing, missing
    assert "columns 1-" in text
    assert f"of {len(names)}" in text
