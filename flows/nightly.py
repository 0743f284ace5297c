"""The nightly sweep: the sweep flow over a sweep file in the repository (the ``nightly``
deployment runs it on a cron schedule). Each nightly cell is compared with the previous run of
the same cell; a drop beyond the threshold is flagged and emitted as a Prefect event."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow

from embedsweep.config import load_sweep
from flows.sweep import Mode, RegressionThreshold, sweep

__all__ = ["nightly"]


@flow(name="nightly", log_prints=True)
def nightly(
    sweep_file: str = "sweeps/nightly.yaml",
    warehouse: str | None = None,
    mode: Mode = "local",
    regression_threshold: RegressionThreshold = 0.10,
) -> dict[str, Any]:
    """Load ``sweep_file`` (relative to the repository) and run it as a sweep."""
    spec = load_sweep(Path(sweep_file))
    result: dict[str, Any] = sweep(
        spec, warehouse=warehouse, mode=mode, regression_threshold=regression_threshold
    )
    return result
