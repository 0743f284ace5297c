"""The ``embedsweep`` command line: a thin typer app over the library.

Exit codes: 0 success (preflight: verdict ok), 1 preflight blocked, 2 bad input. Bad input is one
line on stderr. ``embedsweep run`` is the one command that reaches into ``flows/`` (the Prefect
shell around the library); it imports it only when called.

The app and what its commands share live in ``_app``; each command group registers itself on it
when its module is imported (in the order ``--help`` lists them): ``_preflight`` (preflight,
calibrate), ``_endpoint`` (load, fidelity), ``_sweep`` (run, validate, ingest), ``_warehouse``
(report, sql), ``_serve`` (serve, diagnose), ``_registry`` and ``_engine`` (their sub-apps).
``_session`` holds how ``run`` re-runs itself in a session of its own.
"""

from __future__ import annotations

import sys

import typer

from embedsweep.cli._app import app, reflow_help
from embedsweep.errors import ConfigError

# The command modules register on `app` as they are imported, and --help lists the commands in
# that order: not sorted.
# isort: off
from embedsweep.cli import _preflight, _endpoint, _sweep, _warehouse, _serve  # noqa: F401
from embedsweep.cli import _registry, _engine  # noqa: F401
# isort: on

__all__ = ["app", "main"]

reflow_help(app)  # every command is registered by now


def main() -> None:
    try:
        app()
    except ConfigError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        sys.exit(2)
