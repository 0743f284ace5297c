"""A run directory's files apart from run.json's contents, as one object (:class:`RunFolder`):
``pending.json`` written when a run begins (the manifest it gets if it never finishes), run.json
committed when it does, ``pending.json`` promoted when a run never finished (:func:`finalize_run`,
:func:`finalize_unfinished`), an attempt's folder removed before a retry; and parquet tables
written atomically."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

from embedsweep.records import RunManifest
from embedsweep.runner.manifest import write_manifest

CANCELLED_MESSAGE = "the run was stopped before it finished (cancelled, or its process was killed)"


def finalize_run(run_dir: Path) -> bool:
    """Promote ``run_dir``'s ``pending.json`` to ``run.json`` (status ``cancelled``) when the run
    never wrote one (its process was cancelled or killed); True when it did so. Call it after
    the run's servers are stopped (``pidfiles.reap``)."""
    pending = run_dir / "pending.json"
    if (run_dir / "run.json").exists():
        with contextlib.suppress(FileNotFoundError):
            pending.unlink()
        return False
    try:
        os.replace(pending, run_dir / "run.json")
    except FileNotFoundError:
        return False
    return True


def finalize_unfinished(sweep_dir: Path) -> list[Path]:
    """:func:`finalize_run` for every run directory of a sweep run (local mode: every cell ran
    in the sweep's own process, so an unfinished one is one that process left behind)."""
    if not sweep_dir.is_dir():
        return []
    return [p.parent for p in sorted(sweep_dir.glob("*/pending.json")) if finalize_run(p.parent)]


def remove_attempt(run_dir: Path) -> None:
    """Delete RUN_DIR if it holds nothing but a server log (an attempt that will be retried)."""
    try:
        names = {p.name for p in run_dir.iterdir()}
    except OSError:
        return
    if names <= {"server.log"}:
        with contextlib.suppress(OSError):
            (run_dir / "server.log").unlink(missing_ok=True)
            run_dir.rmdir()


def discard_pending(run_dir: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        (run_dir / "pending.json").unlink()


@dataclass(frozen=True)
class RunFolder:
    """One run's directory: ``begin`` → (``commit`` | an interrupt, then ``finalize``), or
    ``discard_attempt`` when the attempt is retried as a new run."""

    path: Path

    @property
    def committed(self) -> bool:
        """Whether the run has its run.json (the directory is complete)."""
        return (self.path / "run.json").exists()

    def begin(self, unfinished: RunManifest) -> None:
        """Write ``pending.json``: what the run is recorded as if it never commits."""
        write_manifest(self.path, unfinished, name="pending.json")

    def commit(self, manifest: RunManifest) -> None:
        """Write run.json (atomically), then drop ``pending.json``."""
        write_manifest(self.path, manifest)
        self.discard_pending()

    def discard_pending(self) -> None:
        discard_pending(self.path)

    def finalize(self) -> bool:
        """:func:`finalize_run`: promote ``pending.json`` of a run that never committed."""
        return finalize_run(self.path)

    def discard_attempt(self) -> None:
        """An attempt retried as a new run is no run: drop ``pending.json``, and the folder when
        only its server log is left."""
        self.discard_pending()
        remove_attempt(self.path)


def write_table(table: object, path: Path, pq: object) -> None:
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp)  # type: ignore[attr-defined]
    os.replace(tmp, path)
