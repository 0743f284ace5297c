"""How ``embedsweep run`` holds its processes: it re-runs itself in a session of its own (so a
terminal's Ctrl-C reaches the sweep once, from here), the child dies with its parent (prctl),
SIGTERM unwinds like Ctrl-C, and the settings of the Prefect it starts are made before
``import prefect``."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from typing import NoReturn

import typer

__all__ = [
    "RUN_WORKER_ENV",
    "die_with_parent",
    "prefect_environment",
    "run_in_own_session",
    "terminate_like_ctrl_c",
]

# Set in the process that does a sweep's work (see run_in_own_session): the parent's pid.
RUN_WORKER_ENV = "EMBEDSWEEP_RUN_WORKER"


def terminate_like_ctrl_c(signum: int, frame: object) -> None:
    # Unwinds like Ctrl-C, so every `finally` runs (the load loop handles SIGTERM itself).
    raise KeyboardInterrupt(f"signal {signum}")


def die_with_parent(parent: int) -> None:
    """In a forked child before exec: SIGTERM when PARENT dies (Linux), even by SIGKILL."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # it died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def run_in_own_session() -> NoReturn:
    """Run this ``embedsweep run`` in a child process in a session of its own, and only
    forward signals to it.

    A terminal's Ctrl-C goes to the whole foreground process group: Prefect's temporary server
    (started by the flow, in the sweep's group) died with it, and the interrupted sweep then
    spent minutes printing tracebacks about an API that was gone. In its own session the sweep
    gets exactly one SIGINT, from here, and stops like a single SIGINT stops it (the cell
    recorded cancelled, servers stopped, Prefect's server stopped last). A SIGKILL of this
    process reaches the child as SIGTERM (PR_SET_PDEATHSIG), which it handles the same way."""
    import subprocess

    parent = os.getpid()
    child = subprocess.Popen(
        [sys.executable, "-m", "embedsweep.cli", *sys.argv[1:]],
        env={**os.environ, RUN_WORKER_ENV: str(parent)},
        start_new_session=True,
        # No threads run yet in this process: preexec_fn is safe here.
        preexec_fn=lambda: die_with_parent(parent),
    )

    def forward(signum: int, frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(signum)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, forward)
    code = child.wait()
    raise typer.Exit(code if code >= 0 else 128 - code)


def prefect_environment(show_bar: bool) -> None:
    """Settings for the Prefect that ``embedsweep run`` starts, set before ``import prefect``
    (which configures its logging and telemetry) and inherited by its temporary server. Each
    is a default: a value already in the environment wins."""
    # Prefect's local mode starts a temporary server; it has nothing to phone home about.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # The client's telemetry, and the notice "Prefect collects anonymous usage data…" that
    # Prefect 3.9 prints on a terminal, follow DO_NOT_TRACK only: the server setting above does
    # not silence them (prefect/_internal/analytics/enabled.py).
    os.environ.setdefault("DO_NOT_TRACK", "1")
    if show_bar:
        # With a bar, the terminal shows warnings and errors (above the bar); the INFO lines
        # (a task finished, the temporary server started) still go to Prefect's API, and
        # --no-progress shows them all.
        os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")
