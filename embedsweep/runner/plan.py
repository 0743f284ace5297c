"""The plan of one cell (:class:`CellPlan`: the cell plus the sweep-level settings it runs with),
the progress callback the runner reports to, and the runner's clock (:func:`now`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from embedsweep.config import Cell, LoadSpec

# Called with (load levels just completed, a short description of what runs now).
Progress = Callable[[int, str], None]


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
    # Placement: the host (a distributed pool's work queue) and the devices to choose from;
    # None = this machine and the pool's devices. The server gets devices from the host's
    # file-lock allocator either way, so two cells never share one.
    host: str | None = None
    devices: tuple[str, ...] | None = None
    device_wait_s: float | None = None
    # Written into each server's pid file, so hooks can stop exactly this run's servers.
    owner: str = ""

    @property
    def cell_id(self) -> str:
        return self.cell.cell_id(self.sweep_name)


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")
