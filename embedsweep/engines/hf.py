"""The built-in server (``python -m embedsweep.hfserver``) as an engine."""

from __future__ import annotations

import sys

from embedsweep.engines.base import Launch, UsageCounting, cuda_devices

__all__ = ["HFAdapter"]


class HFAdapter:
    name = "hf"
    usage_counting: UsageCounting = "tokens"
    usage_trusted = True

    def command(self, launch: Launch) -> list[str]:
        argv = list(launch.command) or [sys.executable, "-m", "embedsweep.hfserver"]
        argv += [
            "--model", str(launch.model_path),
            "--served-model-name", launch.served_name,
            "--host", launch.host,
            "--port", str(launch.port),
            "--max-model-len", str(launch.max_input_tokens),
            "--dtype", launch.dtype,
        ]  # fmt: skip
        if launch.revision:
            argv += ["--revision", launch.revision]
        if launch.devices == ("cpu",):
            argv += ["--device", "cpu"]
        if launch.trust_remote_code:
            argv.append("--trust-remote-code")
        return argv

    def environment(self, launch: Launch) -> dict[str, str]:
        env = {**launch.env, "EMBEDSWEEP_API_KEY": launch.api_key}
        if launch.devices != ("cpu",):
            env.update(cuda_devices(launch))
        return env
