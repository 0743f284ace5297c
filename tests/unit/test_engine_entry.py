"""How a pool starts a pinned engine: its own entry, the installed one, or the installed one with
the entry's extra arguments (an entry that names no command)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from embedsweep.config import PoolSpec
from embedsweep.engine_envs import REGISTRY_FILE, ROOT_ENV
from embedsweep.runner.preflight import engine_command

RECORD = {
    "engine": "vllm", "version": "0.32.0", "prefix": "/envs/v", "python": "/envs/v/bin/python",
    "command": ["/envs/v/bin/python", "-m", "vllm.entrypoints.openai.api_server"],
    "installed_at": "2026-12-01T00:00:00+00:00", "build": "cpu",
}  # fmt: skip


@pytest.fixture
def installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / REGISTRY_FILE).write_text(json.dumps({"vllm@0.32.0": RECORD}))
    monkeypatch.setenv(ROOT_ENV, str(tmp_path))


def _pool(engines: dict[str, object]) -> PoolSpec:
    return PoolSpec.model_validate(
        {
            "name": "cpu",
            "gpu_model": "cpu",
            "gpu_memory_gb": 0,
            "devices": ["cpu"],
            "engines": engines,
        }
    )


@pytest.mark.usefixtures("installed")
def test_an_entry_with_only_args_starts_the_installed_engine_with_them() -> None:
    entry = {"args": ["--enforce-eager"], "env": {"VLLM_CPU_OMP_THREADS_BIND": "auto"}}
    command = engine_command(_pool({"vllm@0.32.0": entry}), "vllm@0.32.0")
    assert command is not None
    assert command.command == RECORD["command"]
    assert (command.version, command.build, command.python) == ("0.32.0", "cpu", RECORD["python"])
    assert command.args == ["--enforce-eager"]
    assert command.env == {"VLLM_CPU_OMP_THREADS_BIND": "auto"}


@pytest.mark.usefixtures("installed")
def test_no_entry_is_the_installed_engine_and_a_full_entry_wins() -> None:
    plain = engine_command(_pool({}), "vllm@0.32.0")
    assert plain is not None
    assert (plain.command, plain.args) == (RECORD["command"], [])
    own = {"command": ["/opt/vllm/bin/vllm"], "args": ["--enforce-eager"]}
    mine = engine_command(_pool({"vllm@0.32.0": own}), "vllm@0.32.0")
    assert mine is not None
    assert (mine.command, mine.version, mine.python) == (["/opt/vllm/bin/vllm"], "0.32.0", None)


def test_args_only_for_an_engine_not_installed_keep_the_entry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ROOT_ENV, str(tmp_path))
    command = engine_command(_pool({"vllm@0.32.0": {"args": ["--enforce-eager"]}}), "vllm@0.32.0")
    assert command is not None
    assert (command.command, command.version, command.args) == ([], "0.32.0", ["--enforce-eager"])
