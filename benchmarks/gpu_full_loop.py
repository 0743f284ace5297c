"""The whole loop on a GPU without Prefect: preflight, device lock, the built-in server in fp16 on
the GPU, calibrated load at each level with NVML telemetry, run directories (run.json,
requests.parquet, telemetry.parquet) — then direct ``SentenceTransformer.encode`` of the same
calibrated inputs on the same GPU for comparison. Prints one line per level and a summary.

    python benchmarks/gpu_full_loop.py --model DIR --out RUNS_DIR \\
        [--chunk-sizes 32,128,256] [--concurrency 64,256] [--requests 4000] [--batch 512]

Meant for a GPU host where Prefect and DuckDB may be missing (the device machines here): the run
directories are ingested afterwards where DuckDB is, with ``embedsweep ingest RUNS_DIR``; then
``SELECT * FROM gpu_samples`` holds the telemetry rows and ``results.gpu_*`` the per-level means.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from embedsweep.calibrate import Calibrator, load_tokenizer
from embedsweep.config import parse_sweep
from embedsweep.gpus import nvml_devices
from embedsweep.runner import CellPlan, run_cell


def _gpu_name() -> str:
    try:
        import pynvml

        pynvml.nvmlInit()
        name = pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(0))
        return name.decode() if isinstance(name, bytes) else str(name)
    except Exception:
        return "unknown-gpu"


def direct_rate(model_dir: Path, texts: list[str], batch: int) -> float:
    import torch
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(
        str(model_dir), device="cuda", model_kwargs={"torch_dtype": torch.float16}
    )
    model.max_seq_length = 512
    with torch.inference_mode():
        model.encode(texts[: batch * 2], batch_size=batch)
        torch.cuda.synchronize()
        start = time.perf_counter()
        model.encode(texts, batch_size=batch)
        torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
    del model
    torch.cuda.empty_cache()
    return len(texts) / elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="model folder (fp16 is fine)")
    parser.add_argument("--out", type=Path, required=True, help="artifacts folder for the runs")
    parser.add_argument("--chunk-sizes", default="32,128,256")
    parser.add_argument("--concurrency", default="64,256")
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--batch", type=int, default=512, help="direct encode batch size")
    args = parser.parse_args()
    devices = nvml_devices()
    if not devices:
        print("error: NVML finds no GPU here", file=sys.stderr)
        return 2
    spec = parse_sweep(
        {
            "name": "gpu-full-loop",
            "models": [{"source": str(args.model.resolve()), "name": "all-MiniLM-L6-v2",
                        "dtype": "float16"}],
            "engines": ["hf"],
            "pools": [{"name": "gpu", "gpu_model": _gpu_name(), "gpu_memory_gb": 80,
                       "devices": [devices[0]]}],
            "load": {
                "chunk_sizes": [int(x) for x in args.chunk_sizes.split(",")],
                "concurrency": [int(x) for x in args.concurrency.split(",")],
                "requests_per_level": args.requests,
                "warmup_requests": 256,
            },
            "artifacts": str(args.out),
            "startup_timeout_s": 300,
        },
        source="gpu_full_loop",
    )  # fmt: skip
    summary: list[dict[str, object]] = []
    calibrator = Calibrator(load_tokenizer(args.model))
    for cell in spec.cells():
        plan = CellPlan(
            cell=cell,
            sweep_name=spec.name,
            sweep_run_id="gpu-full-loop",
            load=spec.load,
            artifacts=spec.artifacts,
            startup_timeout_s=spec.startup_timeout_s,
        )
        manifest = run_cell(plan)
        print(f"{cell.label}: {manifest.status} {manifest.reason or ''} "
              f"(healthy after {manifest.time_to_healthy_s or 0:.1f} s, "
              f"gpu memory released: {manifest.gpu_memory_released})", flush=True)  # fmt: skip
        texts = calibrator.texts(cell.chunk_size, 20_000, 0)
        direct = direct_rate(args.model, texts, args.batch)
        for level in manifest.levels:
            row = {
                "chunk_size": cell.chunk_size,
                "concurrency": level.concurrency,
                "server_inputs_per_s": round(level.inputs_per_s, 1),
                "direct_inputs_per_s": round(direct, 1),
                "ratio": round(level.inputs_per_s / direct, 3),
                "p99_ms": round(level.latency_ms.p99, 2),
                "gpu_util_mean_pct": level.gpu_util_mean_pct,
                "gpu_mem_used_max_mib": level.gpu_mem_used_max_mib,
                "gpu_power_mean_w": level.gpu_power_mean_w,
                "valid": level.valid,
            }
            summary.append(row)
            print(json.dumps(row), flush=True)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
