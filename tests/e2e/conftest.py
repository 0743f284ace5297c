"""A real Prefect stack for the end-to-end tests, no mocks: a local server on a free port with its
own PREFECT_HOME, the work pools, queues and concurrency limits from ``deployments/setup.py``,
``prefect --no-prompt deploy --all`` from this checkout, and process workers (the control pool's,
and one per host queue of the ``cpu`` pool: two hosts standing in for two GPU hosts).

Every process runs in its own session, so teardown can stop its whole process group and check
that nothing is left. Worker and server logs are kept under the stack's folder and printed when a
test fails (``stack.tail()``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from e2e_stack import (
    BIN,
    PREFECT,
    ROOT,
    Stack,
    free_port,
    group_alive,
    healthy,
    sweep_spec,
    wait_for,
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Everything here is end to end (and slow): `pytest -m 'not e2e'` skips it."""
    for item in items:
        if Path(str(item.fspath)).is_relative_to(Path(__file__).parent):
            item.add_marker(pytest.mark.e2e)


def _deployable() -> list[str]:
    """Names of prefect.yaml deployments whose flow file exists in this checkout."""
    config = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    names = []
    for deployment in config["deployments"]:
        path = deployment["entrypoint"].split(":", 1)[0]
        if (ROOT / path).is_file():
            names.append(deployment["name"])
    return names


@pytest.fixture(scope="session")
def prefect_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Server, pools, limits, deployments and workers; stopped (and checked gone) at the end."""
    # EMBEDSWEEP_E2E_KEEP=1: a folder pytest does not rotate away, kept for reading the logs.
    keep = bool(os.environ.get("EMBEDSWEEP_E2E_KEEP"))
    base = (
        Path(tempfile.mkdtemp(prefix="embedsweep-e2e-")) if keep else tmp_path_factory.mktemp("e2e")
    )
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(base / "prefect-home"),
        "PREFECT_API_URL": api_url,
        "PREFECT_SERVER_API_HOST": "127.0.0.1",
        "PREFECT_SERVER_API_PORT": str(port),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_UI_ENABLED": "false",
        "PREFECT_LOGGING_TO_API_ENABLED": "true",
        "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(base / "prefect-results"),
        # Workers poll every second instead of 15 (the test waits on them).
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "PREFECT_RUNNER_POLL_FREQUENCY": "1",
        "EMBEDSWEEP_NIGHTLY_TZ": "UTC",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
    }
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    stack = Stack(base=base, api_url=api_url, env=env)
    try:
        server = [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)]
        stack.spawn("server", server)
        up = f"{api_url}/health"
        wait_for("the Prefect server to be healthy", lambda: healthy(up), timeout=120)

        sweep_file = base / "hosts.yaml"
        sweep_file.write_text(yaml.safe_dump(sweep_spec(base, "e2e-hosts", [16], hosts=True)))
        setup = subprocess.run(
            [sys.executable, "deployments/setup.py", str(sweep_file)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert setup.returncode == 0, setup.stdout + setup.stderr

        names = _deployable()
        config = yaml.safe_load((ROOT / "prefect.yaml").read_text())
        every = len(names) == len(config["deployments"])
        selection = ["--all"] if every else [a for n in names for a in ("--name", n)]
        stack.cli("deploy", *selection, timeout=300)
        stack.deployed = names

        workers = subprocess.run(
            [sys.executable, "deployments/setup.py", str(sweep_file), "--workers"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        for pool, queue, limit in zip(workers[0::3], workers[1::3], workers[2::3], strict=True):
            name = "control" if queue == "-" else queue
            stack.start_worker(
                name, pool, None if queue == "-" else queue, None if limit == "-" else int(limit)
            )
        wait_for("workers to start", lambda: _workers_online(stack), timeout=90)
        yield stack
    finally:
        stubborn = stack.stop()
        # A leader may have left its group (then only it is left to check).
        left = [n for n, p in stack.procs.items() if p.poll() is None or group_alive(p.pid)]
        if stubborn:
            print(f"e2e teardown: needed SIGINT/SIGKILL for {stubborn}", file=sys.stderr)
        assert not left, f"processes left after teardown: {left}\n{stack.tail()}"
        if keep:
            print(f"e2e stack kept at {base}", file=sys.stderr)
        else:
            shutil.rmtree(base / "prefect-home", ignore_errors=True)


def _workers_online(stack: Stack) -> bool:
    """Every worker has sent a heartbeat to its pool (it is polling)."""
    expected = {f"e2e-{name}" for name in stack.state_dirs}

    async def names(client: Any) -> set[str]:
        seen: set[str] = set()
        for pool in ("embedsweep", "cpu"):
            seen |= {w.name for w in await client.read_workers_for_work_pool(pool)}
        return seen

    for name, proc in stack.procs.items():
        if proc.poll() is not None:
            raise AssertionError(f"{name} exited with {proc.returncode}\n{stack.tail()}")
    return expected <= stack.run(names)


@pytest.fixture
def stack(prefect_stack: Stack, request: pytest.FixtureRequest) -> Iterator[Stack]:
    """The session's stack; a failing test gets the logs' tails in its report."""
    yield prefect_stack
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        print(prefect_stack.tail(), file=sys.stderr)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    setattr(item, f"rep_{report.when}", report)
