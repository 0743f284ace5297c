"""The built-in server (``python -m embedsweep.hfserver``) as an engine."""

from __future__ import annotations

import sys

from embedsweep.engines.base import Launch, UsageCounting, cuda_devices
from embedsweep.engines.pidfiles import state_dir

__all__ = ["INDUCTOR_CACHE", "HFAdapter"]

# Inductor's cache folder, under embedsweep's state folder.
INDUCTOR_CACHE = "inductor-cache"


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
        # Inductor's cache (a --compile on start) under embedsweep's state folder, reused by
        # the next start, never a temporary folder that a reboot empties.
        defaults = {"TORCHINDUCTOR_CACHE_DIR": str(state_dir() / INDUCTOR_CACHE)}
        env = {**defaults, **launch.env, "EMBEDSWEEP_API_KEY": launch.api_key}
        if launch.devices != ("cpu",):
            env.update(cuda_devices(launch))
        return env
