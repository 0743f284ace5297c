"""SGLang as an engine: ``python -m sglang.launch_server --is-embedding``. SGLang rejects an input
of ``>= context length`` tokens, so the context length is one more than the longest input."""

from __future__ import annotations

from embedsweep.engines.base import Launch, UsageCounting, cuda_devices

__all__ = ["SGLangAdapter"]


class SGLangAdapter:
    name = "sglang"
    usage_counting: UsageCounting = "tokens"
    usage_trusted = True

    def command(self, launch: Launch) -> list[str]:
        argv = [*(launch.command or ("python", "-m", "sglang.launch_server"))]
        argv += [
            "--model-path", str(launch.model_path),
            "--is-embedding",
            "--served-model-name", launch.served_name,
            "--host", launch.host,
            "--port", str(launch.port),
            "--context-length", str(launch.max_input_tokens + 1),
            "--dtype", launch.dtype,
            "--mem-fraction-static", str(launch.gpu_memory_utilization),
            "--tp-size", str(launch.tensor_parallel_size),
            "--api-key", launch.api_key,
            # Repeated texts (warm-up, then every level) would be answered from the radix
            # (prefix) cache: the figure would measure the cache, not the model.
            "--disable-radix-cache",
        ]  # fmt: skip
        if launch.revision:
            argv += ["--revision", launch.revision]
        if launch.trust_remote_code:
            argv.append("--trust-remote-code")
        return argv

    def environment(self, launch: Launch) -> dict[str, str]:
        return {**launch.env, **cuda_devices(launch)}
