"""Engine adapters (vllm, sglang, the built-in hf) and server process supervision.

An adapter only builds a command line and an environment for a :class:`Launch`; starting,
health-waiting and stopping are the same for every engine (``process``). Adapters are looked up in
the plain dict :data:`ADAPTERS`.
"""

from __future__ import annotations

from embedsweep.engines.base import EngineAdapter, Launch
from embedsweep.engines.hf import HFAdapter
from embedsweep.engines.sglang import SGLangAdapter
from embedsweep.engines.vllm import VLLMAdapter

__all__ = ["ADAPTERS", "EngineAdapter", "Launch", "adapter_for"]

ADAPTERS: dict[str, EngineAdapter] = {
    "hf": HFAdapter(),
    "vllm": VLLMAdapter(),
    "sglang": SGLangAdapter(),
}


def adapter_for(engine: str) -> EngineAdapter:
    try:
        return ADAPTERS[engine]
    except KeyError:
        raise ValueError(f"unknown engine {engine!r} (known: {', '.join(ADAPTERS)})") from None
