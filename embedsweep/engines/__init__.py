"""Engine adapters (vllm, sglang, infinity, the built-in hf) and server process supervision.

An adapter only builds a command line and an environment for a :class:`Launch`; starting,
health-waiting and stopping are the same for every engine (``process``). Adapters are looked up in
the plain dict :data:`ADAPTERS`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from embedsweep.engines.base import EngineAdapter, Launch
from embedsweep.engines.hf import HFAdapter
from embedsweep.engines.infinity import InfinityAdapter
from embedsweep.engines.process import ServerProcess
from embedsweep.engines.sglang import SGLangAdapter
from embedsweep.engines.vllm import VLLMAdapter

__all__ = ["ADAPTERS", "EngineAdapter", "Launch", "adapter_for", "server_for", "usage_counting"]

ADAPTERS: dict[str, EngineAdapter] = {
    "hf": HFAdapter(),
    "vllm": VLLMAdapter(),
    "sglang": SGLangAdapter(),
    "infinity": InfinityAdapter(),
}


def usage_counting(engine: str) -> tuple[str, bool]:
    """How ENGINE's ``usage.prompt_tokens`` counts (``tokens``: with special tokens, as the
    model's tokenizer does; ``tokens_without_special``; ``characters``), and whether it can
    reveal a truncated input."""
    adapter = adapter_for(engine)
    return adapter.usage_counting, adapter.usage_trusted


def adapter_for(engine: str) -> EngineAdapter:
    try:
        return ADAPTERS[engine]
    except KeyError:
        raise ValueError(f"unknown engine {engine!r} (known: {', '.join(ADAPTERS)})") from None


_SECRET_NAME = re.compile(r"(?i)token|key|secret|passw")


def _secret_values(env: dict[str, str]) -> tuple[str, ...]:
    """Values of a pool's engine env that look like credentials (HF_TOKEN, *_API_KEY, ...)."""
    return tuple(v for k, v in env.items() if _SECRET_NAME.search(k) and len(v) >= 4)


def server_for(engine: str, launch: Launch, log_path: Path, owner: str = "") -> ServerProcess:
    """A supervised (not yet started) server for ``launch`` on ``engine``; the API key and
    HF_TOKEN are redacted from what it logs; ``owner`` goes into its pid file (see pidfiles)."""
    adapter = adapter_for(engine)
    return ServerProcess(
        [*adapter.command(launch), *launch.extra_args],
        env=adapter.environment(launch),
        log_path=log_path,
        host=launch.host,
        port=launch.port,
        secrets=(launch.api_key, os.environ.get("HF_TOKEN", ""), *_secret_values(launch.env)),
        owner=owner,
    )
