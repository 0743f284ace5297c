"""One precision per comparison: the dtype every engine of a (model, pool) is started with.

A sweep's ``dtype: auto`` is resolved here, once, to a concrete dtype, and every engine is then
started with that name, so that two engines in one table compute in the same precision:

- on a CPU, bfloat16 where the CPU computes it natively (AVX-512 BF16 or AMX) *and* that is
  faster than float32 there, float32 otherwise (:func:`cpu_bf16_pays`). Emulated half precision
  is several times slower than float32 (vLLM's CPU build left at its own ``auto`` computes a
  float32 checkpoint in float16, ~7x slower than bfloat16 on a CPU without AVX-512 FP16), and
  native is not enough: on an Intel Xeon with AVX-512 BF16 but no AMX, ``vdpbf16ps`` issues at a
  quarter of a float32 FMA's rate, a bfloat16 matmul ran at 0.5x float32's speed, and both the
  built-in server and vLLM served all-MiniLM-L6-v2 ~1.4x faster in float32;
- on a GPU, the checkpoint's own half precision (bfloat16 or float16), float16 for a float32 one.

A pinned dtype is passed as given. What each engine then says it served is recorded next to it
(:func:`served_mismatch`): an engine that ignores the request is a finding, and a table whose rows
were served at different dtypes says so (``embedsweep.report_model.precision_note``).
"""

from __future__ import annotations

import json
import os
import platform
import time
from importlib import metadata
from pathlib import Path

__all__ = [
    "CPU_DTYPE_ENV",
    "DTYPES",
    "PROBE_FILE",
    "cpu_bf16_pays",
    "cpu_flags",
    "cpu_has_bf16",
    "resolve",
    "served_mismatch",
]

DTYPES = ("float32", "float16", "bfloat16")

# Flags in /proc/cpuinfo that mean bfloat16 matrix arithmetic in hardware.
_BF16_FLAGS = ("avx512_bf16", "amx_bf16")

# ``bfloat16`` or ``float32``: what a CPU ``auto`` resolves to, without measuring.
CPU_DTYPE_ENV = "EMBEDSWEEP_CPU_DTYPE"
# The measurement, kept in embedsweep's state folder (one entry per CPU, core count and torch).
PROBE_FILE = "cpu-precision.json"
# bfloat16 must be this much faster to be chosen: float32 is the more exact of the two.
_BF16_MARGIN = 1.1
# A transformer layer's feed-forward matmul: 2,048 tokens (16 inputs of 128), 384 -> 1,536.
_PROBE_SHAPE = (2048, 384, 1536)


def _cpuinfo(cpuinfo: Path) -> tuple[str, set[str]]:
    """This CPU's model name and feature flags, from one read of CPUINFO (the platform's name and
    no flags where it cannot be read)."""
    model, flags = "", set[str]()
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        text = ""
    for line in text.splitlines():
        if not model and line.startswith("model name"):
            model = line.split(":", 1)[-1].strip()
        elif line.startswith("flags"):
            flags = set(line.split(":", 1)[-1].split())
            break
    return model or platform.processor() or "unknown CPU", flags


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    """This CPU's feature flags (empty where /proc/cpuinfo cannot be read)."""
    return _cpuinfo(cpuinfo)[1]


def _native_bf16(flags: set[str]) -> bool:
    return any(flag in flags for flag in _BF16_FLAGS)


def cpu_has_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether this CPU does bfloat16 matrix arithmetic in hardware."""
    return _native_bf16(cpu_flags(cpuinfo))


def _matmul_ms(dtype_name: str, repeats: int = 5) -> float:
    """The fastest of REPEATS timings of the probe's matmul in DTYPE_NAME, in milliseconds."""
    import torch

    dtype = getattr(torch, dtype_name)
    rows, inner, cols = _PROBE_SHAPE
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(rows, inner, generator=generator).to(dtype)
    b = torch.randn(inner, cols, generator=generator).to(dtype)
    torch.mm(a, b)  # the first call picks and builds the kernel
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return best * 1e3


def _measure() -> dict[str, object]:
    # Alternated, so that a neighbour's burst does not fall on one precision only.
    times: dict[str, list[float]] = {"float32": [], "bfloat16": []}
    for _ in range(2):
        for name, taken in times.items():
            taken.append(_matmul_ms(name))
    f32, bf16 = min(times["float32"]), min(times["bfloat16"])
    return {
        "float32_ms": round(f32, 3),
        "bfloat16_ms": round(bf16, 3),
        "bfloat16_pays": f32 >= _BF16_MARGIN * bf16,
        "shape": list(_PROBE_SHAPE),
    }


def cpu_bf16_pays(state: Path | None = None, cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether bfloat16 is this CPU's faster precision: native bfloat16 (its flags) and a
    measured matmul of a transformer's shape at least 1.1x float32's speed. Measured once per CPU
    model, core count and torch version (~0.2 s) and kept in STATE (embedsweep's state folder) as
    ``cpu-precision.json``; ``$EMBEDSWEEP_CPU_DTYPE`` (``bfloat16`` or ``float32``) decides
    without measuring."""
    forced = os.environ.get(CPU_DTYPE_ENV)
    if forced in ("bfloat16", "float32"):
        return forced == "bfloat16"
    model, flags = _cpuinfo(cpuinfo)  # one read for both
    if not _native_bf16(flags):
        return False
    if state is None:
        from embedsweep.engines.pidfiles import state_dir

        state = state_dir()
    path = state / PROBE_FILE
    cores = len(os.sched_getaffinity(0))
    key = f"{model} | {cores} cores | torch {metadata.version('torch')}"
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        known = {}
    if not isinstance(known, dict):
        known = {}
    entry = known.get(key)
    if not isinstance(entry, dict) or not isinstance(entry.get("bfloat16_pays"), bool):
        entry = known[key] = _measure()
        try:
            state.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(known, indent=2) + "\n")
            tmp.replace(path)
        except OSError:
            pass  # measured again next time
    return bool(entry["bfloat16_pays"])


def resolve(
    asked: str, *, on_gpu: bool, stored_dtype: str = "float32", bf16: bool | None = None
) -> str:
    """The concrete dtype for ASKED (``auto`` or a name) on a GPU or a CPU, for a checkpoint
    stored in STORED_DTYPE; BF16 (bfloat16 the faster precision on this CPU) defaults to this
    host's (:func:`cpu_bf16_pays`)."""
    if asked != "auto":
        return asked
    if on_gpu:
        return stored_dtype if stored_dtype in ("bfloat16", "float16") else "float16"
    pays = cpu_bf16_pays() if bf16 is None else bf16
    return "bfloat16" if pays else "float32"


def served_mismatch(asked: str, served: str | None) -> str | None:
    """A one-line finding when the engine served another dtype than it was started with (None
    when they agree or the engine did not say)."""
    if served is None or asked == "auto" or served == asked:
        return None
    return f"started with --dtype {asked} but served {served}"
