"""One precision per comparison: the dtype every engine of a (model, pool) is started with.

A sweep's ``dtype: auto`` is resolved here, once, to a concrete dtype, and every engine is then
started with that name, so that two engines in one table compute in the same precision:

- on a CPU, bfloat16 where the CPU computes it natively (AVX-512 BF16 or AMX), float32
  otherwise (emulated half precision is several times slower than float32: vLLM's CPU build
  left at its own ``auto`` computes a float32 checkpoint in float16, ~7x slower than bfloat16 on
  a CPU without AVX-512 FP16);
- on a GPU, the checkpoint's own half precision (bfloat16 or float16), float16 for a float32 one.

A pinned dtype is passed as given. What each engine then says it served is recorded next to it
(:func:`served_mismatch`): an engine that ignores the request is a finding, and a table whose rows
were served at different dtypes says so (``embedsweep.report_model.precision_note``).
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["DTYPES", "cpu_flags", "cpu_has_bf16", "resolve", "served_mismatch"]

DTYPES = ("float32", "float16", "bfloat16")

# Flags in /proc/cpuinfo that mean bfloat16 matrix arithmetic in hardware.
_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    """This CPU's feature flags (empty where /proc/cpuinfo cannot be read)."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[-1].split())
    return set()


def cpu_has_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether this CPU does bfloat16 matrix arithmetic in hardware."""
    flags = cpu_flags(cpuinfo)
    return any(flag in flags for flag in _BF16_FLAGS)


def resolve(
    asked: str, *, on_gpu: bool, stored_dtype: str = "float32", bf16: bool | None = None
) -> str:
    """The concrete dtype for ASKED (``auto`` or a name) on a GPU or a CPU, for a checkpoint
    stored in STORED_DTYPE; BF16 (native bfloat16 on this CPU) defaults to this host's."""
    if asked != "auto":
        return asked
    if on_gpu:
        return stored_dtype if stored_dtype in ("bfloat16", "float16") else "float16"
    native = cpu_has_bf16() if bf16 is None else bf16
    return "bfloat16" if native else "float32"


def served_mismatch(asked: str, served: str | None) -> str | None:
    """A one-line finding when the engine served another dtype than it was started with (None
    when they agree or the engine did not say)."""
    if served is None or asked == "auto" or served == asked:
        return None
    return f"started with --dtype {asked} but served {served}"
