"""Is the built-in server as fast as its model? Once a built-in (``hf``) run's levels are measured,
the same texts are encoded directly (``SentenceTransformer.encode``, one process, no HTTP) in the
dtype the server computed in and in batches of the highest level's concurrency, while the server
sits idle; the server's inputs/s at that level over the direct figure is stored with the run
(:class:`~embedsweep.records.HarnessCheck`) and shown next to every ``hf`` figure, so a slow
harness is never read as a slow model. Direct encode runs the model eager; a server that ran it
compiled (torch.compile on a CPU, its ``runtime``) can read above 1, and then the ratio no longer
shows what its front end costs (``model_busy_s`` on ``/metrics/batches`` does).

Direct encode runs with torch's default threads and with one, the faster counting (on a shared
host one thread can win), each for at most :data:`BUDGET_S` seconds of texts. Only a CPU server is
compared: the runner's CPU cannot stand in for a GPU (``benchmarks/bench_hfserver.py`` measures
that on the GPU itself).
"""

from __future__ import annotations

import gc
import json
import os
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from embedsweep.records import HarnessCheck

__all__ = ["BUDGET_S", "check", "direct_rate", "server_info"]

# Seconds of encoding each direct measurement may take (after one warm-up batch).
BUDGET_S = 3.0
_DTYPES = ("float32", "float16", "bfloat16")
# What the server's /info says of itself, kept with every check.
_SERVER_FIELDS = (
    "dtype", "device", "runtime", "model_threads", "model_threads_now", "thread_changes",
    "frontend",
)  # fmt: skip


def server_info(url: str, timeout_s: float = 5.0) -> dict[str, Any] | None:
    """The built-in server's ``/embedsweep/info`` (placement, dtype, runtime), or None."""
    if not url.startswith("http://"):
        return None
    try:
        address = f"{url}/embedsweep/info"
        with urllib.request.urlopen(address, timeout=timeout_s) as answer:  # noqa: S310 (http only)
            info = json.load(answer)
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def direct_rate(
    model_dir: Path,
    texts: Sequence[str],
    *,
    batch: int,
    dtype: str,
    threads: int,
    trust_remote_code: bool = False,
    budget_s: float = BUDGET_S,
    device: str = "cpu",
    bind_core: int | None = None,
) -> float:
    """Inputs/s of direct encode of TEXTS (each once at most, within BUDGET_S) on DEVICE with
    THREADS torch threads; with BIND_CORE, the calling thread is bound to that core meanwhile."""
    import torch
    from sentence_transformers import SentenceTransformer

    before = torch.get_num_threads()
    affinity = os.sched_getaffinity(0) if bind_core is not None else None
    torch.set_num_threads(threads)
    if bind_core is not None:
        os.sched_setaffinity(0, {bind_core})
    try:
        model = SentenceTransformer(
            str(model_dir),
            device=device,
            trust_remote_code=trust_remote_code,
            model_kwargs={"torch_dtype": getattr(torch, dtype)},
            local_files_only=True,
        )
        model.max_seq_length = max(model.max_seq_length or 0, 1 << 20)  # never truncate
        texts = list(texts)
        with torch.inference_mode():
            model.encode(texts[:batch], batch_size=batch)  # warm-up
            done, at = 0, 0
            start = time.perf_counter()
            while True:
                chunk = [texts[(at + i) % len(texts)] for i in range(batch)]
                model.encode(chunk, batch_size=batch)
                done += batch
                at = (at + batch) % len(texts)
                elapsed = time.perf_counter() - start
                if elapsed >= budget_s or done >= len(texts):
                    break
    finally:
        if affinity is not None:
            os.sched_setaffinity(0, affinity)
        torch.set_num_threads(before)
    del model
    gc.collect()
    return done / elapsed


def check(
    model_dir: Path,
    texts: Sequence[str],
    *,
    chunk_size: int,
    concurrency: int,
    batch_size: int,
    server_inputs_per_s: float,
    info: dict[str, Any] | None,
    trust_remote_code: bool = False,
    compare: bool = True,
) -> HarnessCheck:
    """The harness check of one built-in server run (module docstring); never raises. With
    COMPARE false (the sweep's ``load.harness_check: false``) only the server's side is kept."""
    info = info or {}
    batch = concurrency * batch_size
    fields: dict[str, Any] = {
        "chunk_size": chunk_size,
        "concurrency": concurrency,
        "batch": batch,
        "server_inputs_per_s": server_inputs_per_s,
    }
    fields |= {key: info.get(key) for key in _SERVER_FIELDS}
    dtype = info.get("dtype")
    if not compare:
        return HarnessCheck(**fields, note="direct encode not compared: load.harness_check is off")
    if info.get("device") != "cpu":
        why = "a GPU server (see benchmarks/bench_hfserver.py)" if info else "no server info"
        return HarnessCheck(**fields, note=f"direct encode not compared: {why}")
    if dtype not in _DTYPES or not texts:
        return HarnessCheck(**fields, note=f"direct encode not compared: dtype {dtype!r}")
    import torch

    rates: dict[int, float] = {}
    try:
        for threads in sorted({torch.get_num_threads(), 1}, reverse=True):
            rates[threads] = direct_rate(
                model_dir,
                texts,
                batch=batch,
                dtype=dtype,
                threads=threads,
                trust_remote_code=trust_remote_code,
            )
    except Exception as exc:  # a verdict, never a failed run
        return HarnessCheck(
            **fields, note=f"direct encode failed: {type(exc).__name__}: {exc}"[:300]
        )
    threads, direct = max(rates.items(), key=lambda item: item[1])
    return HarnessCheck(
        **fields,
        direct_inputs_per_s=direct,
        direct_threads=threads,
        ratio=server_inputs_per_s / direct if direct > 0 else None,
    )
