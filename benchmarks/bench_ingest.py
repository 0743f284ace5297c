"""Seconds `embedsweep.store.ingest_run` takes for one run of 1,000,000 requests (goal: < 3 s).

The run is written as the runner writes one today (scheduled_ns included), and the figure covers
the whole call: reading requests.parquet, the foreign-row check and the one transaction.

Usage: python benchmarks/bench_ingest.py [ROWS]
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from embedsweep.records import LatencyMs, LevelSummary, RunManifest
from embedsweep.store import ingest_run, open_warehouse

LEVELS = (1, 4, 16, 64)
TARGET_S = 3.0


def build_run(root: Path, rows: int) -> Path:
    rng = np.random.default_rng(0)
    per_level = rows // len(LEVELS)
    run_id = "bench-run"
    concurrency = np.repeat(np.array(LEVELS, dtype=np.int32), per_level)
    n = len(concurrency)
    status = np.where(rng.random(n) < 0.001, 400, 200).astype(np.int16)
    start = np.cumsum(rng.integers(1_000, 100_000, n)).astype(np.int64)
    table = pa.table(
        {
            "run_id": pa.array([run_id] * n, pa.string()),
            "concurrency": concurrency,
            "seq": np.tile(np.arange(per_level, dtype=np.int64), len(LEVELS)),
            "start_ns": start,
            "scheduled_ns": start,
            "latency_ns": rng.integers(2_000_000, 50_000_000, n).astype(np.int64),
            "status": status,
            "prompt_tokens": np.where(status == 200, 512, -1).astype(np.int32),
            "expected_tokens": np.full(n, 512, dtype=np.int32),
            "error": pa.array([None if s == 200 else "context_overflow" for s in status]),
        }
    )
    latency = LatencyMs(mean=10.0, p50=9.0, p90=14.0, p95=16.0, p99=30.0, max=50.0)
    levels = [
        LevelSummary(
            concurrency=c,
            requests=per_level,
            ok=per_level,
            errors=0,
            duration_s=60.0,
            throughput_rps=per_level / 60.0,
            inputs_per_s=per_level / 60.0,
            input_tokens_per_s=per_level / 60.0 * 512,
            latency_ms=latency,
            prompt_tokens_mismatch=0,
            achieved_concurrency=float(c),
            valid=True,
        )
        for c in LEVELS
    ]
    manifest = RunManifest(
        run_id=run_id,
        sweep_run_id="bench",
        sweep_name="bench",
        cell_id="bench-cell",
        model="bench-model",
        model_ref="bench/model",
        engine="hf",
        planned_engine="hf",
        pool="cpu",
        gpu_model="none",
        gpu_count=0,
        cost_per_gpu_hour=0.0,
        chunk_size=512,
        batch_size=1,
        status="ok",
        started_at="2025-01-01T00:00:00Z",
        finished_at="2025-01-01T00:04:00Z",
        levels=levels,
    )
    run_dir = root / run_id
    run_dir.mkdir()
    (run_dir / "run.json").write_text(manifest.model_dump_json(), encoding="utf-8")
    pq.write_table(table, run_dir / "requests.parquet")
    return run_dir


def main() -> None:
    rows = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        run_dir = build_run(root, rows)
        con = open_warehouse(root / "bench.duckdb")
        try:
            started = time.perf_counter()
            ingest_run(con, run_dir)
            elapsed = time.perf_counter() - started
            stored = con.execute("SELECT count(*) FROM requests").fetchall()[0][0]
        finally:
            con.close()
    verdict = "met" if elapsed < TARGET_S else "MISSED"
    print(
        f"ingest_run: {stored:,} request rows in {elapsed:.2f} s "
        f"({stored / elapsed:,.0f} rows/s; target < {TARGET_S:g} s {verdict})"
    )


if __name__ == "__main__":
    main()
