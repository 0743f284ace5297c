"""Shared artifact storage through fsspec (a ``file://`` URL here; S3/GCS go through the same
calls): a run directory uploaded by a cell and fetched by the sweep is the same directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from embedsweep.errors import EmbedsweepError
from embedsweep.storage import download_run, remote_run_url, upload_run


def _run_dir(root: Path) -> Path:
    run_dir = root / "sweep-1" / "run-1"
    run_dir.mkdir(parents=True)
    (run_dir / "run.json").write_text('{"run_id": "run-1"}')
    (run_dir / "requests.parquet").write_bytes(b"PAR1" + bytes(range(256)) * 40 + b"PAR1")
    (run_dir / "server.log").write_text("INFO started\n")
    (run_dir / "requests.parquet.tmp").write_bytes(b"half")  # never travels
    return run_dir


def test_upload_then_download_round_trip(tmp_path: Path) -> None:
    run_dir = _run_dir(tmp_path / "host-a")
    url = (tmp_path / "shared").as_uri()
    where = upload_run(run_dir, url, "sweep-1")
    assert where == remote_run_url(url, "sweep-1", "run-1")
    remote = tmp_path / "shared" / "sweep-1" / "run-1"
    assert sorted(p.name for p in remote.iterdir()) == [
        "requests.parquet",
        "run.json",
        "server.log",
    ]
    local = download_run(url, "sweep-1", "run-1", tmp_path / "sweep-host")
    assert local == tmp_path / "sweep-host" / "sweep-1" / "run-1"
    for name in ("run.json", "requests.parquet", "server.log"):
        assert (local / name).read_bytes() == (run_dir / name).read_bytes()


def test_a_run_that_never_arrived_is_none(tmp_path: Path) -> None:
    url = (tmp_path / "shared").as_uri()
    assert download_run(url, "sweep-1", "missing", tmp_path / "here") is None
    assert not (tmp_path / "here").exists()


def test_an_unknown_protocol_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(EmbedsweepError, match="artifacts_url 'nosuchfs://x'"):
        upload_run(_run_dir(tmp_path), "nosuchfs://x", "sweep-1")
