"""vLLM as an engine: ``vllm serve MODEL --runner pooling`` (0.10 and later) or ``--task embed``
(older releases), with the length the preflight computed."""

from __future__ import annotations

from embedsweep.engines.base import Launch, cuda_devices
from embedsweep.registry import _version_key

__all__ = ["VLLMAdapter"]


class VLLMAdapter:
    name = "vllm"

    def command(self, launch: Launch) -> list[str]:
        argv = [*(launch.command or ("vllm",)), "serve", str(launch.model_path)]
        old = launch.version is not None and _version_key(launch.version) < (0, 10)
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
        if launch.revision:
            argv += ["--revision", launch.revision]
        if launch.trust_remote_code:
            argv.append("--trust-remote-code")
        return argv

    def environment(self, launch: Launch) -> dict[str, str]:
        # The pool's env first: the allocator's devices and the run's key are not negotiable.
        return {**launch.env, "VLLM_API_KEY": launch.api_key, **cuda_devices(launch)}
