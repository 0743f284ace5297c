"""The built-in server's CPU attention kernel against torch's SDPA, and the two instructions it
could multiply with, on this CPU.

    .venv/bin/python benchmarks/bench_attention_kernel.py [--lengths 2048,8192] [--batch 4]
        [--heads 2] [--kv-heads 1] [--head-size 32] [--threads 1,2] [--seconds 3]
        [--dtype bfloat16|float32]

First the issue rate of 512-bit ``vdpbf16ps`` (bfloat16 pairs into float32) and of 512-bit
``vfmadd231ps`` (float32 FMA), 16 independent chains each, timed in a small C program built here
with the system's C compiler: where two FMAs issue in less time than one bfloat16 dot pair
(on this project's machines the FMA issued ~4x as often, ~2x the work), the kernel's float32
FMAs are the faster choice. Then, per length and thread count: the kernel
(``embedsweep.hfserver.attention``) and SDPA (``is_causal``, no mask: its fastest path), ms
per call and GFLOP/s over the causal product's useful work (4 x rows^2/2 x head size per head).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

_PEAK_C = r"""
#include <stdio.h>
#include <time.h>
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec * 1e-9; }
#define X16(I) I(0) I(1) I(2) I(3) I(4) I(5) I(6) I(7) I(8) I(9) I(10) I(11) I(12) I(13) I(14) I(15)
#define DP(i) "vdpbf16ps %%zmm30, %%zmm31, %%zmm" #i "\n"
#define FM(i) "vfmadd231ps %%zmm30, %%zmm31, %%zmm" #i "\n"
int main(void) {
  const long n = 30000000; double t, dp, fm;
  asm volatile("vpxord %%zmm30, %%zmm30, %%zmm30\n vpxord %%zmm31, %%zmm31, %%zmm31"
               ::: "xmm30", "xmm31");
  t = now(); for (long i = 0; i < n; i++) asm volatile(X16(DP) ::: "memory"); dp = now() - t;
  t = now(); for (long i = 0; i < n; i++) asm volatile(X16(FM) ::: "memory"); fm = now() - t;
  printf("%f %f\n", n * 16 / dp / 1e9, n * 16 / fm / 1e9);
  return 0;
}
"""


def instruction_rates() -> tuple[float, float] | None:
    """(vdpbf16ps, vfmadd231ps) in G instructions/s on one core, or None without a compiler."""
    with tempfile.TemporaryDirectory() as tmp:
        source, binary = Path(tmp) / "peak.c", Path(tmp) / "peak"
        source.write_text(_PEAK_C)
        built = subprocess.run(
            ["cc", "-O2", "-march=native", str(source), "-o", str(binary)],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if built.returncode != 0:
            return None
        out = subprocess.run([str(binary)], capture_output=True, text=True, check=True).stdout
    dp, fm = (float(x) for x in out.split())
    return dp, fm


def _time(call: Callable[[], object], seconds: float) -> float:
    call()
    started, n = time.perf_counter(), 0
    while time.perf_counter() - started < seconds:
        call()
        n += 1
    return (time.perf_counter() - started) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", default="2048,8192")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--kv-heads", type=int, default=1)
    parser.add_argument("--head-size", type=int, default=32)
    parser.add_argument("--threads", default=f"1,{os.cpu_count() or 1}")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    args = parser.parse_args()

    import torch

    from embedsweep.hfserver import attention
    from embedsweep.precision import cpu_flags

    lines = Path("/proc/cpuinfo").read_text().splitlines()
    model = next((x for x in lines if x.startswith("model name")), "model name: ?")
    model = model.split(":", 1)[1].strip()
    flags = [f for f in ("avx512_bf16", "avx512_fp16", "amx_bf16") if f in cpu_flags()]
    print(f"{model}, {os.cpu_count()} CPUs, flags: {' '.join(flags) or 'none of bf16/fp16/amx'}")
    rates = instruction_rates()
    if rates:
        dp, fm = rates
        print(
            f"one core: vdpbf16ps {dp:.2f} G/s ({dp * 64:.0f} GFLOP/s), "
            f"vfmadd231ps {fm:.2f} G/s ({fm * 32:.0f} GFLOP/s)"
        )
    else:
        print("no C compiler: instruction rates not measured")
    kernel = attention.kernel()
    if kernel is None:
        raise SystemExit("error: the attention kernel is not available on this CPU (see the log)")
    b, h, hk, d = args.batch, args.heads, args.kv_heads, args.head_size
    group = h // hk
    dtype = getattr(torch, args.dtype)
    print(f"{args.dtype}, batch {b}, {h} heads, {hk} KV heads, head size {d}, causal, no padding")
    for threads in (int(t) for t in args.threads.split(",")):
        torch.set_num_threads(threads)
        for n in (int(x) for x in args.lengths.split(",")):
            torch.manual_seed(0)
            q = torch.randn(b, h, n, d, dtype=dtype)
            k = torch.randn(b, hk, n, d, dtype=dtype)
            v = torch.randn(b, hk, n, d, dtype=dtype)
            ranges = torch.tensor([[0, n]] * b, dtype=torch.int32)
            kr, vr = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
            work = b * h * (n * n / 2) * d * 4
            ours = _time(partial(kernel.attention, q, k, v, ranges, True, d**-0.5), args.seconds)
            sdpa_call = torch.nn.functional.scaled_dot_product_attention
            sdpa = _time(partial(sdpa_call, q, kr, vr, is_causal=True), args.seconds)
            print(
                f"{threads} thread(s), {n:>6} tokens: kernel {ours * 1e3:7.1f} ms "
                f"({work / ours / 1e9:5.0f} GFLOP/s), SDPA {sdpa * 1e3:7.1f} ms "
                f"({work / sdpa / 1e9:5.0f} GFLOP/s), kernel/SDPA speed {sdpa / ours:.2f}x",
                flush=True,
            )


if __name__ == "__main__":
    main()
