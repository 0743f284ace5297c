"""Helpers for the real-engine tests (imported as ``from vllm_support import ...``; pytest puts
this folder on sys.path). The fixtures are in conftest.py."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

from embedsweep import engine_envs
from embedsweep.engine_envs import InstalledEngine
from embedsweep.engines import Launch, server_for
from embedsweep.engines.process import ServerProcess, free_port
from embedsweep.loadgen import LevelRecords, build_payloads, run_level_sync

__all__ = [
    "EAGER",
    "INFINITY_VERSION",
    "STARTUP_TIMEOUT_S",
    "VLLM_VERSION",
    "engine_processes",
    "healthy",
    "level",
    "running",
    "vllm_launch",
]

VLLM_VERSION = "0.32.0"
INFINITY_VERSION = "0.0.78"
STARTUP_TIMEOUT_S = 300.0
# vLLM without its torch.compile graphs: healthy in ~30 s instead of ~60 s on this CPU.
EAGER = "--enforce-eager"


def vllm_launch(
    engine: InstalledEngine,
    model: Path,
    *,
    name: str,
    max_len: int,
    trust_remote_code: bool = False,
    eager: bool = True,
) -> Launch:
    """A launch of the installed vLLM; EAGER (``--enforce-eager``) skips its graph compile, which
    halves the start here (~30 s against ~60 s) for tests that are not about compiling."""
    return Launch(
        model_path=model,
        served_name=name,
        port=free_port(),
        api_key=secrets.token_urlsafe(24),
        max_input_tokens=max_len,
        dtype="float32",
        trust_remote_code=trust_remote_code,
        command=tuple(engine.command),
        version=VLLM_VERSION,
        build=engine.build,
        extra_args=(EAGER,) if eager else (),
    )


def running(launch: Launch, log: Path) -> Iterator[ServerProcess]:
    """A healthy vLLM server for LAUNCH (stopped, whole, when the generator closes)."""
    server = server_for("vllm", launch, log)
    with server:
        server.wait_healthy(STARTUP_TIMEOUT_S)
        yield server


def engine_processes(group: int | None = None) -> list[tuple[int, str]]:
    """Live processes of vLLM servers: the API server (its command line names vLLM's module)
    and its children, which rename themselves ``VLLM::EngineCore`` and ``VLLM::Worker``; with
    GROUP, only those of that process group (one server: the supervisor starts each in its own)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            comm = (entry / "comm").read_text().strip()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if fields[0] == "Z" or (group is not None and int(fields[2]) != group):
            continue
        if comm.startswith("VLLM::") or engine_envs.VLLM_API_SERVER in cmdline:
            found.append((int(entry.name), comm))
    return found


def level(
    server: ServerProcess,
    name: str,
    texts: list[str],
    tokens: int,
    *,
    concurrency: int = 4,
    requests: int = 16,
    warmup: int = 0,
) -> LevelRecords:
    """One closed-loop level of TEXTS (one per request) against a running vLLM, as the runner
    drives it, expecting TOKENS prompt tokens each."""
    return run_level_sync(
        server.url,
        build_payloads(name, texts, 1),
        tokens,
        concurrency=concurrency,
        requests=requests,
        warmup=warmup,
        api_key=server.env["VLLM_API_KEY"],
    )


def healthy(port: int) -> bool:
    """Whether a server on 127.0.0.1:PORT answers /health with 200."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as response:
            return bool(response.status == 200)
    except (OSError, urllib.error.URLError):
        return False
