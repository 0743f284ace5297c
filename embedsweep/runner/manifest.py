"""A run's manifest: how it is built (:func:`build_manifest`, :class:`Item`'s ``manifest``),
what a measured run adds to it (:class:`Measured`), and how run.json is written
(:func:`write_manifest`)."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from embedsweep.hub import ModelMeta
from embedsweep.records import (
    FidelityResult,
    HarnessCheck,
    LevelSummary,
    PreflightResult,
    RunManifest,
)
from embedsweep.runner.plan import CellPlan, now

if TYPE_CHECKING:
    from embedsweep.runner.run_folder import RunFolder


def write_manifest(run_dir: Path, manifest: RunManifest, *, name: str = "run.json") -> Path:
    """Write run.json atomically; its presence marks the run directory complete."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / name
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(manifest.model_dump_json(indent=2), encoding="utf-8")
    os.replace(tmp, path)
    return path


def build_manifest(
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
        "planned_engine": cell.engine_name,
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
        "finished_at": now(),
        "preflight": checks,
        "host": plan.host or socket.gethostname(),
    }
    base.update(fields)
    return RunManifest.model_validate(base)


@dataclass
class Measured:
    """What a measured run adds to its manifest (filled in as the run goes)."""

    levels: list[LevelSummary]
    time_to_healthy_s: float | None = None
    devices: tuple[str, ...] = ()
    port_released: bool | None = None
    gpu_memory_released: bool | None = None
    server_id: str | None = None
    fidelity: FidelityResult | None = None
    harness: HarnessCheck | None = None
    usage_counting: str | None = None
    usage_trusted: bool | None = None
    dtype_requested: str | None = None
    dtype: str | None = None
    served_dtype: str | None = None
    dtype_note: str | None = None
    startup: str | None = None

    def fields(self) -> dict[str, object]:
        return {
            "dtype_requested": self.dtype_requested,
            "dtype": self.dtype,
            "served_dtype": self.served_dtype,
            "dtype_note": self.dtype_note,
            "startup": self.startup,
            # A failed run keeps the levels it measured (the last one marked partial).
            "levels": self.levels,
            "fidelity": self.fidelity,
            "harness": self.harness,
            "usage_counting": self.usage_counting,
            "usage_trusted": self.usage_trusted,
            "devices": list(self.devices),
            "port_released": self.port_released,
            "gpu_memory_released": self.gpu_memory_released,
            "server_id": self.server_id,
            "time_to_healthy_s": self.time_to_healthy_s,
        }


@dataclass
class Item:
    """One cell of a group on its way to a manifest."""

    plan: CellPlan
    checks: list[PreflightResult]
    meta: ModelMeta | None
    run_id: str
    started_at: str
    result: RunManifest | None = None

    @property
    def run_dir(self) -> Path:
        return self.plan.artifacts / self.plan.sweep_run_id / self.run_id

    @property
    def folder(self) -> RunFolder:
        """The run's directory and its file rules (run_folder imports this module)."""
        from embedsweep.runner.run_folder import RunFolder

        return RunFolder(self.run_dir)

    @property
    def final(self) -> PreflightResult:
        """The preflight result that decides (the fallback's, when the cell was rerouted)."""
        return self.checks[-1]

    def manifest(self, status: str, **fields: object) -> RunManifest:
        return build_manifest(
            self.plan,
            run_id=self.run_id,
            engine=self.final.engine,
            checks=self.checks,
            started_at=self.started_at,
            status=status,
            **fields,
        )
