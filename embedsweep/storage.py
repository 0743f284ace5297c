"""Shared artifact storage for distributed sweeps: a cell on a GPU host uploads its run directory
to an fsspec URL (``s3://…``, ``gs://…``, ``file:///mnt/shared/…``), and the sweep flow, the only
writer of the warehouse, downloads it next to its own artifacts and ingests it.

``run.json`` travels last both ways: a run directory whose ``run.json`` is present is complete,
on the remote side as on the local one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from embedsweep.errors import EmbedsweepError

__all__ = ["download_run", "remote_run_url", "upload_run"]

_LAST = ("run.json",)


def _fs(url: str) -> tuple[Any, str]:
    import fsspec

    try:
        fs, root = fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as exc:
        raise EmbedsweepError(f"artifacts_url {url!r}: {exc}", code="invalid_config") from None
    return fs, str(root).rstrip("/")


def remote_run_url(url: str, sweep_run_id: str, run_id: str) -> str:
    return f"{url.rstrip('/')}/{sweep_run_id}/{run_id}"


def _ordered(names: list[str]) -> list[str]:
    return sorted(names, key=lambda n: (n in _LAST, n))


def upload_run(run_dir: Path, url: str, sweep_run_id: str) -> str:
    """Copy ``run_dir``'s files to ``<url>/<sweep_run_id>/<run id>/``; returns that location."""
    fs, root = _fs(url)
    dest = f"{root}/{sweep_run_id}/{run_dir.name}"
    fs.makedirs(dest, exist_ok=True)
    names = [p.name for p in run_dir.iterdir() if p.is_file() and not p.name.endswith(".tmp")]
    for name in _ordered(names):
        fs.put_file(str(run_dir / name), f"{dest}/{name}")
    return remote_run_url(url, sweep_run_id, run_dir.name)


def download_run(url: str, sweep_run_id: str, run_id: str, dest_root: Path) -> Path | None:
    """Fetch a run directory into ``dest_root/<sweep_run_id>/<run id>``; None when the remote
    side has no such run (the cell never started)."""
    fs, root = _fs(url)
    src = f"{root}/{sweep_run_id}/{run_id}"
    if not fs.exists(src):
        return None
    local = dest_root / sweep_run_id / run_id
    local.mkdir(parents=True, exist_ok=True)
    names = [str(info["name"]).rsplit("/", 1)[-1] for info in fs.ls(src, detail=True)]
    for name in _ordered(names):
        fs.get_file(f"{src}/{name}", str(local / name))
    return local
