"""Infinity (``infinity-emb``) as an engine: ``infinity_emb v2 --model-id MODEL``.

What it does differently from vLLM, measured with 0.0.78 (README, "Three real engines"):

- its routes take ``--url-prefix /v1`` (``/v1/embeddings``, ``/v1/models``), but ``/health``
  stays unprefixed, which is where the supervisor polls;
- ``usage.prompt_tokens`` counts tokens **without** the special tokens with
  ``--lengths-via-tokenize`` (characters without it): :data:`USAGE_COUNTING`;
- an input past the model's limit (sentence-transformers' ``max_seq_length``, 256 with the
  special tokens for all-MiniLM-L6-v2) is answered 200, its vector that of the first 256 tokens;
  ``prompt_tokens`` counts the input without specials, cut at the tokenizer's limit (a 257-token
  input reports 255, a 300- or 512-token one 256), so the count cannot reveal a truncation
  (:data:`USAGE_TRUSTED`) and the preflight blocks such cells (``preflight.OVERLENGTH``);
- no flag sets the limit, so none is passed (``max_input_tokens`` is only the preflight's);
- its request cache (``--vector-disk-cache``) would answer repeated inputs from disk: off;
- telemetry off (``DO_NOT_TRACK``, ``INFINITY_ANONYMOUS_USAGE_STATS``), its cache under
  embedsweep's state folder (``INFINITY_HOME``; else it writes ``.infinity_cache`` into the
  working directory), the API key in ``INFINITY_API_KEY`` (its ``--api-key`` reads that
  variable; never argv, so ``ps`` does not show it), its model code only when the sweep trusts
  the model (Infinity's own default is ``--trust-remote-code``);
- its log is drawn by rich at the terminal's width, 80 columns in a file: ``COLUMNS`` widens it,
  so a message stays on one line for ``embedsweep diagnose``.
"""

from __future__ import annotations

from pathlib import Path

from embedsweep.engines.base import Launch, UsageCounting, cuda_devices
from embedsweep.engines.pidfiles import state_dir

__all__ = ["USAGE_COUNTING", "USAGE_TRUSTED", "InfinityAdapter"]

USAGE_COUNTING: UsageCounting = "tokens_without_special"
USAGE_TRUSTED = False
_DTYPES = {"auto": "auto", "float32": "float32", "float16": "float16", "bfloat16": "bfloat16"}


class InfinityAdapter:
    name = "infinity"
    usage_counting: UsageCounting = USAGE_COUNTING
    usage_trusted = USAGE_TRUSTED

    def command(self, launch: Launch) -> list[str]:
        argv = list(launch.command or ("infinity_emb", "v2"))
        argv += [
            "--model-id", str(launch.model_path),
            "--served-model-name", launch.served_name,
            "--host", launch.host,
            "--port", str(launch.port),
            "--url-prefix", "/v1",
            "--lengths-via-tokenize",
            "--no-vector-disk-cache",
            "--device", "cpu" if launch.devices == ("cpu",) else "cuda",
            "--dtype", _DTYPES.get(launch.dtype, "auto"),
        ]  # fmt: skip
        if launch.revision:
            argv += ["--revision", launch.revision]
        argv.append("--trust-remote-code" if launch.trust_remote_code else "--no-trust-remote-code")
        return argv

    def environment(self, launch: Launch) -> dict[str, str]:
        defaults = {
            "DO_NOT_TRACK": "1",
            "INFINITY_ANONYMOUS_USAGE_STATS": "0",
            "INFINITY_HOME": str(state_dir() / "infinity"),
            "COLUMNS": "240",
        }
        if Path(str(launch.model_path)).is_dir():
            # A local folder: nothing to fetch, and nothing should try.
            defaults["HF_HUB_OFFLINE"] = "1"
        env = {**defaults, **launch.env, "INFINITY_API_KEY": launch.api_key}
        if launch.devices != ("cpu",):
            env.update(cuda_devices(launch))
        return env
