"""Calibration speed per tokenizer family: texts/s for exact texts at 512 tokens (goal: at least
2,000 on one core), at 32 and 4096 tokens, and for corpus windows at 512.

The families are the tokenizers tests/unit/test_calibrate_families.py verifies (the packaged
all-MiniLM-L6-v2 plus small ones trained there). Every timed batch is then counted by a fresh
``Tokenizer`` outside the timing, and the script exits non-zero on any miss. For scale it also
prints how fast the tokenizer alone encodes the same 512-token texts: the rate any method that
encodes every text could not beat.

A measurement, not a test: run it pinned to one core,
``taskset -c 0 .venv/bin/python benchmarks/bench_calibrate.py``.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from tokenizers import Tokenizer

from embedsweep.calibrate import Calibrator

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "unit"))
from test_calibrate_families import build_families, generated_lines

# Target -> texts per timed call.
TARGETS = {32: 5000, 512: 2000, 4096: 250}
WINDOW_TOKENS = 512
WINDOWS = 200


def _fresh(spec: str) -> Tokenizer:
    tokenizer = Tokenizer.from_str(spec)
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


def _check(counter: Tokenizer, texts: list[str], n_tokens: int, family: str) -> None:
    counts = [len(e.ids) for e in counter.encode_batch(texts, add_special_tokens=True)]
    misses = sum(c != n_tokens for c in counts)
    if misses:
        raise SystemExit(f"{family}: {misses} inexact texts at {n_tokens} tokens")


def main() -> None:
    cores = sorted(os.sched_getaffinity(0))
    print(f"cores allowed: {cores} ({len(cores)})")
    families = build_families()
    corpus = "\n".join(generated_lines(seed=1, lines=20_000))
    header = (
        f"{'family':<18} {'setup s':>8} {'pool':>6} {'by constr.':>10} "
        + " ".join(f"{f'texts/s@{n}':>12}" for n in TARGETS)
        + f" {'encode/s@512':>12} {'windows/s@512':>13}"
    )
    print(header)
    for family, spec in families.items():
        started = time.perf_counter()
        # The raw file-level tokenizer, as a user's tokenizer.json would be loaded.
        calibrator = Calibrator(Tokenizer.from_str(spec))
        setup_s = time.perf_counter() - started
        counter = _fresh(spec)
        rates: list[float] = []
        texts_512: list[str] = []
        for n_tokens, count in TARGETS.items():
            started = time.perf_counter()
            texts = calibrator.texts(n_tokens, count, seed=0)
            rates.append(count / (time.perf_counter() - started))
            _check(counter, texts, n_tokens, family)
            if n_tokens == 512:
                texts_512 = texts
        started = time.perf_counter()
        counter.encode_batch_fast(texts_512, add_special_tokens=True)
        encode_rate = len(texts_512) / (time.perf_counter() - started)
        calibrator.windows(corpus, WINDOW_TOKENS, 1, seed=99)  # index the corpus, untimed
        started = time.perf_counter()
        windows = calibrator.windows(corpus, WINDOW_TOKENS, WINDOWS, seed=0)
        window_rate = WINDOWS / (time.perf_counter() - started)
        _check(counter, windows, WINDOW_TOKENS, family)
        print(
            f"{family:<18} {setup_s:>8.2f} {calibrator.pool_size:>6} "
            f"{calibrator.exact_by_construction!s:>10} "
            + " ".join(f"{rate:>12,.0f}" for rate in rates)
            + f" {encode_rate:>12,.0f} {window_rate:>13,.0f}"
        )


if __name__ == "__main__":
    main()
