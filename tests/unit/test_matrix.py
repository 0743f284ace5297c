"""The dry-run matrix of the seed sweep, offline, from the metadata fixtures."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from embedsweep.config import load_sweep
from embedsweep.matrix import preflight_sweep
from embedsweep.runner import preflight_cell

ROOT = Path(__file__).resolve().parents[2]


def test_seed_sweep_matrix_offline(fixture_models: Path) -> None:
    spec = load_sweep(ROOT / "sweeps" / "seed.yaml")
    rows = preflight_sweep(spec, metadata_dir=fixture_models)
    assert len(rows) == 4 * 2 * 2 * 4
    by_model = {
        name: Counter(r.outcome for r in rows if r.cell.model.display_name == name)
        for name in ("NV-Embed-v2", "e5-base-v2", "bge-m3", "Qwen3-Embedding-8B")
    }
    # NV-Embed-v2: served by neither engine, rerouted to hf everywhere (trusted by name).
    assert by_model["NV-Embed-v2"] == Counter({"rerouted": 16})
    # e5-base-v2: 256 everywhere and 512 on vLLM only; longer chunks blocked.
    assert by_model["e5-base-v2"] == Counter({"ok": 6, "blocked": 10})
    assert by_model["bge-m3"] == Counter({"ok": 16})
    assert by_model["Qwen3-Embedding-8B"] == Counter({"ok": 16})
    nv = next(r for r in rows if r.cell.model.display_name == "NV-Embed-v2")
    assert nv.codes == ["unsupported_architecture", "non_commercial_license"]
    assert nv.final.engine == "hf"
    # The runner's answer for that cell: both engines' results, the fallback's deciding.
    answer = preflight_cell(
        nv.cell, fallback_engine=spec.fallback_engine, metadata_dir=fixture_models
    )
    checks, meta = answer
    assert [c.engine for c in checks] == [nv.cell.engine_name, "hf"]
    assert answer.final is checks[-1]
    assert answer.final.verdict == "ok"
    assert meta is not None
    e5 = next(
        r for r in rows if r.cell.model.display_name == "e5-base-v2" and r.cell.chunk_size == 2048
    )
    assert e5.codes == ["exceeds_context"]


def test_without_the_mirror_hub_models_are_not_found_offline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    rows = preflight_sweep(load_sweep(ROOT / "sweeps" / "seed.yaml"))
    assert {r.outcome for r in rows} == {"blocked"}
    assert {r.codes[0] for r in rows} == {"model_not_found"}
