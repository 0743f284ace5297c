"""The dry run: every cell of a sweep preflighted, as a matrix a person reads before any server
starts (model × engine × pool × chunk size → ok, blocked with its codes, or rerouted)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from embedsweep.config import Cell, SweepSpec
from embedsweep.hub import ModelMeta
from embedsweep.records import PreflightResult
from embedsweep.runner import preflight_cell

__all__ = ["MatrixRow", "preflight_sweep"]

Outcome = Literal["ok", "blocked", "rerouted"]


@dataclass(frozen=True)
class MatrixRow:
    cell: Cell
    checks: list[PreflightResult]
    meta: ModelMeta | None

    @property
    def final(self) -> PreflightResult:
        """The preflight result that decides (the fallback's, when the cell was rerouted)."""
        return self.checks[-1]

    @property
    def outcome(self) -> Outcome:
        if self.final.verdict == "blocked":
            return "blocked"
        return "rerouted" if len(self.checks) > 1 else "ok"

    @property
    def runnable(self) -> bool:
        return self.outcome != "blocked"

    @property
    def codes(self) -> list[str]:
        """Blocking codes first (of the engine asked for), then warnings."""
        first = self.checks[0]
        blocking = [r.code for r in first.reasons if r.severity == "block"]
        warnings = [r.code for r in self.final.reasons if r.severity == "warn"]
        return blocking + [w for w in warnings if w not in blocking]

    def as_dict(self) -> dict[str, Any]:
        final = self.final
        return {
            "model": self.cell.model.display_name,
            "engine": self.cell.engine,
            "pool": self.cell.pool.name,
            "chunk_size": self.cell.chunk_size,
            "outcome": self.outcome,
            "runs_on": final.engine if self.runnable else None,
            "max_input_tokens": self.checks[0].max_input_tokens,
            "codes": self.codes,
            "checks": [c.model_dump(mode="json") for c in self.checks],
        }


def preflight_sweep(spec: SweepSpec, *, metadata_dir: Path | None = None) -> list[MatrixRow]:
    """Preflight every cell; each model's metadata is read once (``hub`` caches it)."""
    rows = []
    for cell in spec.cells():
        checks, meta = preflight_cell(
            cell, fallback_engine=spec.fallback_engine, metadata_dir=metadata_dir
        )
        rows.append(MatrixRow(cell=cell, checks=checks, meta=meta))
    return rows
