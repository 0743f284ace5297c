"""Cells from start to artifacts: preflight (with fallback routing), serve the model, calibrate
the texts, drive every load level, and write each cell's run directory (run.json,
requests.parquet, server.log). :func:`run_group` runs the cells that share one engine server
(every chunk size of a model on an engine and pool, :func:`group_cells`) on one server start;
:func:`run_cell` is the group of one. Prefect tasks wrap them; the library does not know they
exist.

A blocked cell is a result: it gets a run directory with its reasons, like a measured one.

While a cell runs, its run directory holds ``pending.json``: the manifest the run gets if it never
finishes (status ``cancelled``). A normal end replaces it with ``run.json``; an interrupt
(SIGINT, Prefect's cancellation SIGTERM) promotes it; and if the process was killed outright,
:func:`finalize_unfinished` promotes it later (the flow's cancellation and crash hooks call it).

The modules: ``plan`` (:class:`CellPlan`, :data:`Progress`), ``preflight``, ``manifest``,
``run_folder`` (pending.json, finalizing), ``launch`` (the server's start and stop checks),
``levels`` (the load levels), ``checks`` (fidelity and harness checks), ``group`` (grouping
cells and running a group).
"""

from embedsweep.runner.group import group_cells, run_cell, run_group, server_key
from embedsweep.runner.levels import level_failure
from embedsweep.runner.manifest import build_manifest, write_manifest
from embedsweep.runner.plan import CellPlan, Progress
from embedsweep.runner.preflight import Preflighted, engine_command, preflight_cell
from embedsweep.runner.run_folder import RunFolder, finalize_run, finalize_unfinished

__all__ = [
    "CellPlan",
    "Preflighted",
    "Progress",
    "RunFolder",
    "build_manifest",
    "engine_command",
    "finalize_run",
    "finalize_unfinished",
    "group_cells",
    "level_failure",
    "preflight_cell",
    "run_cell",
    "run_group",
    "server_key",
    "write_manifest",
]
