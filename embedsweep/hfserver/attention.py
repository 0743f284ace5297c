"""The built-in server's attention on a CPU with AVX-512 BF16: bfloat16 or float32 attention that
never builds a (rows x keys) mask, registered with transformers as the ``embedsweep`` attention.

transformers (5.x with torch < 2.14) passes SDPA an explicit mask whenever a batch is padded or
the model runs under torch.compile, and then SDPA can neither skip a causal row's later keys
nor run its fused kernel; at head sizes of 16-64 torch's CPU flash kernel also reaches only
~50-100 GFLOP/s on two cores. The kernel in ``attention_cpu.cpp`` takes each sequence's extent
(where its padding ends: ``ranges``) instead of a mask, and multiplies with float32 FMAs on
keys and values unpacked once (faster than ``vdpbf16ps`` on the CPUs measured: see the source;
float32 values are read in place).

The mask function registered beside it turns the 2-D padding mask into those extents, so the
model's own code path is unchanged. Where the kernel does not apply (float16, another
device, dropout, a sliding window, a head size that is not a multiple of 16, a CPU without
AVX-512 BF16, or a build failure) the attention is transformers' SDPA, with a mask built from
the extents when a batch is padded.

The kernel is compiled once per source, torch version and CPU, under the user's cache
(:func:`kernel_dir`), ~40 s the first time and loaded in under a second after.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from pathlib import Path
from typing import Any

from embedsweep.precision import cpu_flags

__all__ = [
    "NAME",
    "available",
    "extents",
    "install",
    "kernel",
    "kernel_calls",
    "kernel_dir",
    "reference",
]

NAME = "embedsweep"
_SOURCE = Path(__file__).with_name("attention_cpu.cpp")
_FLAGS = ("avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_bf16")
_log = logging.getLogger("embedsweep.hfserver")
_lock = threading.Lock()
_loaded: dict[str, Any] = {}


def available() -> bool:
    """Whether this CPU runs the kernel (AVX-512 with BF16 dot products)."""
    return all(flag in cpu_flags() for flag in _FLAGS)


def kernel() -> Any:
    """The compiled kernel module, built on first use (None where it cannot run or build; the
    log says why once)."""
    if "module" in _loaded:  # every layer of every batch asks: no lock once it is decided
        return _loaded["module"]
    with _lock:
        if "module" in _loaded:
            return _loaded["module"]
        _loaded["module"] = None
        if os.environ.get("EMBEDSWEEP_HF_ATTENTION", "auto") == "sdpa" or not available():
            return None
        try:
            _loaded["module"] = _build()
        except Exception as exc:  # no compiler, no headers: SDPA serves instead
            first = (str(exc).strip().splitlines() or [""])[0][:300]
            _log.warning(
                "attention kernel not built (%s: %s); SDPA serves", type(exc).__name__, first
            )
        return _loaded["module"]


def _build() -> Any:
    import torch
    from torch.utils import cpp_extension

    try:  # the ninja package's binary, where the server's PATH does not name the venv
        import ninja

        os.environ["PATH"] = f"{ninja.BIN_DIR}{os.pathsep}{os.environ.get('PATH', '')}"
    except ImportError:
        pass

    flags = ["-O3", "-fopenmp", os.environ.get("EMBEDSWEEP_HF_ATTENTION_ARCH", "-march=native")]
    # Built for this CPU (-march=native): the tag names the source, torch and the CPU's flags.
    # Torch's build files hold the source's path and the venv's include paths, and it rebuilds
    # when they differ: two checkouts sharing the cache would take turns rebuilding one folder
    # (~35 s at every server start), so both paths are part of the tag too.
    identity = [_SOURCE.read_bytes(), torch.__version__.encode(), " ".join(flags).encode()]
    identity += [str(_SOURCE).encode(), str(Path(torch.__file__).parent).encode()]
    identity.append(" ".join(sorted(cpu_flags())).encode())
    tag = hashlib.sha256(b"\0".join(identity)).hexdigest()[:16]
    folder = kernel_dir() / f"attention-{tag}"
    folder.mkdir(parents=True, exist_ok=True)
    return cpp_extension.load(
        name=f"embedsweep_attention_{tag}",
        sources=[str(_SOURCE)],
        extra_cflags=flags,
        extra_ldflags=["-fopenmp"],
        build_directory=str(folder),
        verbose=False,
    )


def kernel_dir() -> Path:
    """Where built kernels are kept: ``EMBEDSWEEP_KERNEL_DIR``, else the user's cache
    (``$XDG_CACHE_HOME/embedsweep/kernels``, ``~/.cache/embedsweep/kernels``). A cache, not
    state: one build serves every sweep and state folder on this machine."""
    explicit = os.environ.get("EMBEDSWEEP_KERNEL_DIR")
    if explicit:
        return Path(explicit)
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "embedsweep" / "kernels"


def extents(mask: Any) -> Any:
    """[batch, 2] int32 (start, end) of each row's ones in a 2-D padding MASK (contiguous: left
    or right padding)."""
    import torch

    ones = mask.to(torch.int32)
    lengths = ones.sum(dim=1)
    start = torch.argmax(ones, dim=1).to(torch.int32)
    start = torch.where(lengths > 0, start, torch.zeros_like(start))
    return torch.stack((start, start + lengths), dim=1).to(torch.int32)


def _mask(
    batch_size: int,
    q_length: int,
    kv_length: int,
    q_offset: int = 0,
    kv_offset: int = 0,
    attention_mask: Any = None,
    **kwargs: Any,
) -> Any:
    # transformers' mask interface: the extents instead of a 4-D mask (None: no padding); what
    # extents cannot describe (a query shorter than its keys) gets transformers' own mask.
    from transformers import masking_utils

    plain = kwargs.get("mask_function") in (
        masking_utils.causal_mask_function,
        masking_utils.bidirectional_mask_function,
    )
    # A sliding window or a composed mask (packed sequences) is not one range per row.
    if not plain or kwargs.get("local_size") is not None:
        return masking_utils.sdpa_mask(
            batch_size, q_length, kv_length, q_offset, kv_offset,
            attention_mask=attention_mask, **kwargs,
        )  # fmt: skip
    if attention_mask is None:
        return None
    if q_length != kv_length or q_offset or kv_offset or attention_mask.shape[-1] != kv_length:
        from transformers.masking_utils import sdpa_mask

        return sdpa_mask(
            batch_size, q_length, kv_length, q_offset, kv_offset,
            attention_mask=attention_mask, **kwargs,
        )  # fmt: skip
    return extents(attention_mask)


def reference(query: Any, key: Any, value: Any, ranges: Any, causal: bool, scale: float) -> Any:
    """The same attention through torch's SDPA, with a boolean mask built from RANGES (for the
    fallback and for tests): [batch, rows, heads, dim]."""
    import torch

    n = query.shape[2]
    positions = torch.arange(n)
    start, end = ranges[:, 0].view(-1, 1, 1), ranges[:, 1].view(-1, 1, 1)
    keys = positions.view(1, 1, n)
    allowed = (keys >= start) & (keys < end)
    if causal:
        allowed = allowed & (keys <= positions.view(1, n, 1))
    rows = (positions.view(1, n, 1) >= start) & (positions.view(1, n, 1) < end)
    # A padding row sees one key (itself), so that softmax has no empty row; its output is
    # zeroed below, as the kernel leaves it.
    allowed = allowed | ((~rows) & (keys == positions.view(1, n, 1)))
    group = query.shape[1] // key.shape[1]
    key = key.repeat_interleave(group, dim=1)
    value = value.repeat_interleave(group, dim=1)
    out = torch.nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=allowed.unsqueeze(1), scale=scale
    )
    out = out * rows.unsqueeze(1)
    return out.transpose(1, 2).contiguous()


def _attention(
    module: Any,
    query: Any,
    key: Any,
    value: Any,
    attention_mask: Any,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs: Any,
) -> tuple[Any, None]:
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    causal = bool(is_causal if is_causal is not None else getattr(module, "is_causal", True))
    if attention_mask is not None and attention_mask.dim() == 4:  # transformers' own mask
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    n, dim = query.shape[2], query.shape[3]
    scale = scaling if scaling is not None else dim**-0.5
    module_kernel = kernel()
    fits = (
        module_kernel is not None
        and query.dtype in (torch.bfloat16, torch.float32)
        and key.dtype == query.dtype
        and query.device.type == "cpu"
        and key.shape[2] == n
        and dim % 16 == 0
        and not (dropout and module.training)
        and kwargs.get("sliding_window") is None
        and kwargs.get("softcap") is None
    )
    batch = query.shape[0]
    ranges = attention_mask
    if ranges is None:
        ranges = torch.tensor([[0, n]] * batch, dtype=torch.int32)
    if fits:
        _loaded["calls"] = _loaded.get("calls", 0) + 1
        return module_kernel.attention(query, key, value, ranges, causal, float(scale)), None
    if bool((ranges[:, 0] == 0).all()) and bool((ranges[:, 1] == n).all()):
        return sdpa_attention_forward(
            module, query, key, value, None, dropout=dropout, scaling=scaling, **kwargs
        )
    return reference(query, key, value, ranges, causal, float(scale)), None


def kernel_calls() -> int:
    """How many attention calls the kernel has run in this process (the rest ran SDPA)."""
    return int(_loaded.get("calls", 0))


def install() -> bool:
    """Register the ``embedsweep`` attention and mask with transformers (once); False where this
    transformers has no attention registry."""
    try:
        from transformers import AttentionInterface, AttentionMaskInterface
    except ImportError:
        return False
    AttentionInterface.register(NAME, _attention)
    AttentionMaskInterface.register(NAME, _mask)
    return True
