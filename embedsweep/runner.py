"""One cell from start to artifacts: preflight (with fallback routing), calibrate the texts, serve
the model, drive every load level, and write the run directory (run.json, requests.parquet,
server.log). The single entrypoint is :func:`run_cell`; Prefect tasks wrap it, the library does
not know they exist.

A blocked cell is a result: it gets a run directory with its reasons, like a measured one.
"""

from __future__ import annotations

import os
import secrets
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from embedsweep.config import Cell, LoadSpec
from embedsweep.engines import Launch, server_for
from embedsweep.engines.process import free_port
from embedsweep.errors import EmbedsweepError, ModelError, ServerError
from embedsweep.hub import ModelMeta, is_hub_id, resolve_model
from embedsweep.preflight import PoolLimits, run_preflight
from embedsweep.records import LevelSummary, PreflightResult, Reason, RunManifest
from embedsweep.registry import LiveArchitectures, live_architectures

__all__ = ["CellPlan", "Progress", "preflight_cell", "run_cell", "write_manifest"]

# Called with (load levels just completed, a short description of what runs now).
Progress = Callable[[int, str], None]
MAX_DISTINCT_PAYLOADS = 1024


@dataclass(frozen=True)
class CellPlan:
    """A cell plus the sweep-level settings it runs with."""

    cell: Cell
    sweep_name: str
    sweep_run_id: str
    load: LoadSpec
    artifacts: Path
    startup_timeout_s: float = 600.0
    fallback_engine: str | None = None

    @property
    def cell_id(self) -> str:
        return self.cell.cell_id(self.sweep_name)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _pool_limits(cell: Cell) -> PoolLimits:
    pool = cell.pool
    return PoolLimits(
        gpu_memory_gb=0.0 if pool.is_cpu else pool.gpu_memory_gb,
        gpu_memory_utilization=pool.gpu_memory_utilization,
        tensor_parallel_size=pool.tensor_parallel_size,
    )


def _engine_version(cell: Cell, engine: str) -> str | None:
    command = cell.pool.engines.get(engine)  # type: ignore[call-overload]
    return command.version if command else None


def _unresolvable(cell: Cell, engine: str, error: ModelError) -> PreflightResult:
    return PreflightResult(
        model=cell.model.display_name,
        engine=engine,
        engine_version=_engine_version(cell, engine),
        architecture=None,
        chunk_size=cell.chunk_size,
        max_input_tokens=None,
        verdict="blocked",
        reasons=[Reason(code=error.code, severity="block", message=error.message)],
    )


def _live(engine: str, python: str) -> LiveArchitectures | None:
    try:
        return live_architectures(engine, python)
    except EmbedsweepError:
        # An engine that cannot even be imported will fail to start too: the run records that;
        # the preflight falls back to the snapshot.
        return None


def preflight_cell(
    cell: Cell, *, fallback_engine: str | None = None, metadata_dir: Path | None = None
) -> tuple[list[PreflightResult], ModelMeta | None]:
    """Preflight the cell's engine and, when it routes there, the fallback engine.

    The last result decides: ok → run on its engine; blocked → the cell is blocked.
    ``metadata_dir`` is a local mirror of hub models' metadata (see ``hub.resolve_model``).
    """
    try:
        meta = resolve_model(cell.model.source, cell.model.revision, metadata_dir=metadata_dir)
    except ModelError as exc:
        return [_unresolvable(cell, cell.engine, exc)], None

    def check(engine: str, fallback: str | None) -> PreflightResult:
        command = cell.pool.engines.get(engine)  # type: ignore[call-overload]
        live = _live(engine, command.python) if command and command.python else None
        return run_preflight(
            meta,
            model=cell.model.display_name,
            engine=engine,
            engine_version=_engine_version(cell, engine),
            chunk_size=cell.chunk_size,
            pool=_pool_limits(cell),
            trust_remote_code=cell.model.trust_remote_code,
            dtype=cell.model.dtype,
            fallback_engine=fallback,
            live=live,
        )

    first = check(cell.engine, fallback_engine)
    if first.fallback_engine is None:
        return [first], meta
    return [first, check(first.fallback_engine, None)], meta


def write_manifest(run_dir: Path, manifest: RunManifest) -> Path:
    """Write run.json atomically; its presence marks the run directory complete."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "run.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(manifest.model_dump_json(indent=2), encoding="utf-8")
    os.replace(tmp, path)
    return path


def _manifest(
    plan: CellPlan,
    *,
    run_id: str,
    engine: str,
    checks: list[PreflightResult],
    started_at: str,
    **fields: object,
) -> RunManifest:
    cell = plan.cell
    pool = cell.pool
    final = checks[-1]
    base: dict[str, object] = {
        "run_id": run_id,
        "sweep_run_id": plan.sweep_run_id,
        "sweep_name": plan.sweep_name,
        "cell_id": plan.cell_id,
        "model": cell.model.display_name,
        "model_ref": cell.model.source,
        "engine": engine,
        "planned_engine": cell.engine,
        "pool": pool.name,
        "gpu_model": pool.gpu_model,
        "gpu_count": pool.tensor_parallel_size,
        "cost_per_gpu_hour": pool.cost_per_gpu_hour,
        "chunk_size": cell.chunk_size,
        "batch_size": plan.load.batch_size,
        "engine_version": final.engine_version,
        "max_input_tokens": final.max_input_tokens,
        "seed": plan.load.seed,
        "started_at": started_at,
        "finished_at": _now(),
        "preflight": checks,
    }
    base.update(fields)
    return RunManifest.model_validate(base)


def _calibrated_payloads(
    meta: ModelMeta, plan: CellPlan, served_name: str
) -> tuple[list[bytes], int]:
    from embedsweep.calibrate import Calibrator, load_tokenizer
    from embedsweep.loadgen import build_payloads

    load = plan.load
    wanted = (load.requests or MAX_DISTINCT_PAYLOADS) + load.warmup_requests
    count = min(wanted, MAX_DISTINCT_PAYLOADS) * load.batch_size
    calibrator = Calibrator(load_tokenizer(meta.path))
    texts = calibrator.texts(plan.cell.chunk_size, count, load.seed)
    payloads = build_payloads(served_name, texts, load.batch_size)
    return payloads, plan.cell.chunk_size * load.batch_size


def _measure(
    plan: CellPlan,
    meta: ModelMeta,
    final: PreflightResult,
    run_dir: Path,
    run_id: str,
    progress: Progress | None,
) -> tuple[list[LevelSummary], float]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from embedsweep.loadgen import run_level_sync
    from embedsweep.metrics import summarize

    cell, load = plan.cell, plan.load
    served_name = cell.model.display_name
    payloads, expected = _calibrated_payloads(meta, plan, served_name)
    command = cell.pool.engines.get(final.engine)  # type: ignore[call-overload]
    launch = Launch(
        model_path=cell.model.source if is_hub_id(cell.model.source) else meta.path,
        served_name=served_name,
        port=free_port(),
        api_key=secrets.token_urlsafe(24),
        max_input_tokens=final.max_input_tokens or cell.chunk_size,
        dtype=cell.model.dtype,
        revision=cell.model.revision,
        trust_remote_code=cell.model.trust_remote_code,
        tensor_parallel_size=cell.pool.tensor_parallel_size,
        gpu_memory_utilization=cell.pool.gpu_memory_utilization,
        devices=tuple(cell.pool.devices),
        command=tuple(command.command) if command else (),
        version=final.engine_version,
        env=dict(command.env) if command else {},
    )
    server = server_for(final.engine, launch, run_dir / "server.log")
    summaries: list[LevelSummary] = []
    tables = []
    with server:
        if progress:
            progress(0, f"{cell.label}: starting {final.engine}")
        time_to_healthy = server.wait_healthy(plan.startup_timeout_s)
        for concurrency in load.concurrency:
            if progress:
                progress(0, f"{cell.label}: concurrency {concurrency}")
            records = run_level_sync(
                server.url,
                payloads,
                expected,
                concurrency=concurrency,
                requests=load.requests,
                duration_s=load.duration_s,
                warmup=load.warmup_requests,
                timeout_s=load.request_timeout_s,
                api_key=launch.api_key,
            )
            summaries.append(
                summarize(
                    records,
                    batch_size=load.batch_size,
                    cost_per_gpu_hour=cell.pool.cost_per_gpu_hour,
                    gpu_count=cell.pool.tensor_parallel_size,
                )
            )
            tables.append(records.to_arrow(run_id))
            if progress:
                progress(1, f"{cell.label}: concurrency {concurrency} done")
            if server.proc is not None and server.proc.poll() is not None:
                raise ServerError(
                    f"server exited with code {server.proc.returncode} during the load",
                    code="server_crashed",
                )
    table = pa.concat_tables(tables)
    tmp = run_dir / "requests.parquet.tmp"
    pq.write_table(table, tmp)
    os.replace(tmp, run_dir / "requests.parquet")
    return summaries, time_to_healthy


def run_cell(
    plan: CellPlan,
    *,
    checked: tuple[list[PreflightResult], ModelMeta | None] | None = None,
    progress: Progress | None = None,
    raise_transient: bool = False,
) -> RunManifest:
    """Run one cell and write its run directory; returns the manifest (also in run.json).

    With ``raise_transient`` a transient server failure (port taken, start-up timeout) is raised
    instead of recorded, so a caller with retries can try again. ``checked`` is this cell's
    :func:`preflight_cell` answer when the caller already has it.
    """
    run_id = uuid.uuid4().hex
    run_dir = plan.artifacts / plan.sweep_run_id / run_id
    started_at = _now()
    checks, meta = checked or preflight_cell(plan.cell, fallback_engine=plan.fallback_engine)
    final = checks[-1]
    if final.verdict == "blocked" or meta is None:
        blocking = final.blocking or checks[0].blocking
        manifest = _manifest(
            plan,
            run_id=run_id,
            engine=final.engine,
            checks=checks,
            started_at=started_at,
            status="blocked",
            reason=blocking[0].code if blocking else "unknown",
            message="; ".join(r.message for r in blocking) or None,
        )
        write_manifest(run_dir, manifest)
        return manifest
    try:
        levels, time_to_healthy = _measure(plan, meta, final, run_dir, run_id, progress)
    except ServerError as exc:
        if exc.transient and raise_transient:
            raise
        manifest = _manifest(
            plan,
            run_id=run_id,
            engine=final.engine,
            checks=checks,
            started_at=started_at,
            status="failed",
            reason=exc.code,
            message=exc.message,
        )
    except EmbedsweepError as exc:
        manifest = _manifest(
            plan,
            run_id=run_id,
            engine=final.engine,
            checks=checks,
            started_at=started_at,
            status="failed",
            reason=exc.code,
            message=exc.message,
        )
    else:
        manifest = _manifest(
            plan,
            run_id=run_id,
            engine=final.engine,
            checks=checks,
            started_at=started_at,
            status="ok",
            levels=levels,
            time_to_healthy_s=time_to_healthy,
        )
    write_manifest(run_dir, manifest)
    return manifest
