"""The commands about one engine server: ``embedsweep serve`` (the built-in server in the
foreground) and ``embedsweep diagnose`` (why a server.log says it died)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from embedsweep.cli._app import DEFAULT_MODEL, JsonFlag, app, echo_json, fail
from embedsweep.errors import ModelError

__all__ = ["diagnose", "serve"]


@app.command()
def serve(
    model: Annotated[
        str, typer.Argument(help="Model folder, package:MODULE, or hub id.")
    ] = DEFAULT_MODEL,
    engine: Annotated[str, typer.Option(help="Only the built-in 'hf' is served directly.")] = "hf",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8000,
    host: Annotated[str, typer.Option(help="Listen address.")] = "127.0.0.1",
    device: Annotated[str | None, typer.Option(help="cpu, cuda, cuda:N.")] = None,
    dtype: Annotated[str, typer.Option()] = "auto",
    trust_remote_code: Annotated[bool, typer.Option("--trust-remote-code")] = False,
) -> None:
    """Serve a model on the built-in OpenAI-compatible server (foreground; Ctrl-C stops)."""
    from embedsweep.hfserver.__main__ import main as serve_main
    from embedsweep.hub import resolve_model

    if engine != "hf":
        fail("only --engine hf is served by embedsweep; start vllm/sglang with their own commands")
    try:
        meta = resolve_model(model)
    except ModelError as exc:
        fail(exc.message)
    argv = [
        "--model",
        str(meta.path),
        "--served-model-name",
        model.rsplit("/", 1)[-1].removeprefix("package:"),
    ]
    argv += ["--host", host, "--port", str(port), "--dtype", dtype]
    if device:
        argv += ["--device", device]
    if trust_remote_code:
        argv.append("--trust-remote-code")
    raise typer.Exit(serve_main(argv))


@app.command()
def diagnose(
    server_log: Annotated[
        Path, typer.Argument(help="An engine's server.log.", metavar="SERVER_LOG")
    ],
    as_json: JsonFlag = False,
) -> None:
    """Classify a server.log: the failure code and the line that decided it."""
    from embedsweep.diagnose import diagnose_log

    try:
        result = diagnose_log(server_log)
    except OSError as exc:
        fail(f"cannot read {server_log}: {exc.strerror or exc}")
    if as_json:
        echo_json(
            {"cause": result.cause, "evidence": result.evidence, "transient": result.transient}
        )
    else:
        typer.echo(
            result.cause if result.evidence is None else f"{result.cause}: {result.evidence}"
        )
