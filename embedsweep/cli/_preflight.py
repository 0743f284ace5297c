"""``embedsweep preflight`` (one model on one engine, or the matrix of a sweep file) and
``embedsweep calibrate`` (texts of exactly N tokens): the answers read from metadata and the
tokenizer, before any server starts."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer

from embedsweep.cli._app import Engine, JsonFlag, app, calibrator_for, echo_json, fail
from embedsweep.errors import ConfigError, ModelError
from embedsweep.report_terminal import print_matrix

if TYPE_CHECKING:
    from embedsweep.records import PreflightResult

__all__ = ["calibrate", "preflight"]


@app.command()
def preflight(
    model: Annotated[
        str | None, typer.Argument(help="Model folder, package:MODULE, or hub id.")
    ] = None,
    engine: Annotated[Engine | None, typer.Option(help="Engine to check against.")] = None,
    chunk_size: Annotated[int | None, typer.Option(min=1, help="Input length in tokens.")] = None,
    sweep_file: Annotated[
        Path | None,
        typer.Option("--sweep", help="Preflight every cell of a sweep file instead (dry run)."),
    ] = None,
    metadata_dir: Annotated[
        Path | None,
        typer.Option(
            help="Local mirror of hub models' metadata (one folder per model), read before the hub."
        ),
    ] = None,
    engine_version: Annotated[
        str | None, typer.Option(help="Engine version (default: the newest snapshot).")
    ] = None,
    gpu_memory_gb: Annotated[
        float, typer.Option(min=0, help="Memory of one GPU in GB; 0 skips the check.")
    ] = 0.0,
    gpu_memory_utilization: Annotated[float, typer.Option(min=0.01, max=1.0)] = 0.9,
    tensor_parallel_size: Annotated[int, typer.Option(min=1)] = 1,
    dtype: Annotated[str, typer.Option(help="auto, float32, float16 or bfloat16.")] = "auto",
    revision: Annotated[str | None, typer.Option(help="Hub revision to pin.")] = None,
    trust_remote_code: Annotated[
        bool, typer.Option("--trust-remote-code", help="Trust this model's own code.")
    ] = False,
    fallback_engine: Annotated[
        Engine | None, typer.Option(help="Engine to route to when the architecture is unsupported.")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Can ENGINE serve MODEL at CHUNK_SIZE tokens? Exit 0 ok, 1 blocked, 2 bad input.

    With --sweep, prints the whole matrix of a sweep file (exit 1 if any cell is blocked).
    """
    if sweep_file is not None:
        if model is not None or engine is not None or chunk_size is not None:
            fail("--sweep takes the models, engines and chunk sizes from the sweep file")
        _preflight_matrix(sweep_file, metadata_dir, as_json)
    if model is None or engine is None or chunk_size is None:
        fail("give MODEL, --engine and --chunk-size (or --sweep SWEEP.yaml)")
    if dtype not in ("auto", "float32", "float16", "bfloat16"):
        fail(f"--dtype must be auto, float32, float16 or bfloat16, not {dtype!r}")
    result = _preflight_model(
        model,
        engine,
        chunk_size,
        revision=revision,
        metadata_dir=metadata_dir,
        engine_version=engine_version,
        pool=(gpu_memory_gb, gpu_memory_utilization, tensor_parallel_size),
        trust_remote_code=trust_remote_code,
        dtype=dtype,
        fallback_engine=fallback_engine,
    )
    _answer(result, model, engine, chunk_size, as_json)


def _preflight_model(
    model: str,
    engine: Engine,
    chunk_size: int,
    *,
    revision: str | None,
    metadata_dir: Path | None,
    engine_version: str | None,
    pool: tuple[float, float, int],
    trust_remote_code: bool,
    dtype: str,
    fallback_engine: Engine | None,
) -> PreflightResult:
    """The verdict on one model: a model whose files cannot be read is blocked with its code.
    POOL is (GPU memory in GB, memory utilization, tensor parallel size)."""
    from embedsweep.hub import resolve_model
    from embedsweep.preflight import PoolLimits, run_preflight
    from embedsweep.records import PreflightResult, Reason

    try:
        meta = resolve_model(model, revision, metadata_dir=metadata_dir)
        return run_preflight(
            meta,
            model=model,
            engine=engine,
            engine_version=engine_version,
            chunk_size=chunk_size,
            pool=PoolLimits(*pool),
            trust_remote_code=trust_remote_code,
            dtype=dtype,
            fallback_engine=fallback_engine,
        )
    except ModelError as exc:
        return PreflightResult(
            model=model,
            engine=engine,
            engine_version=engine_version,
            architecture=None,
            chunk_size=chunk_size,
            max_input_tokens=None,
            verdict="blocked",
            reasons=[Reason(code=exc.code, severity="block", message=exc.message)],
        )


def _answer(
    result: PreflightResult, model: str, engine: str, chunk_size: int, as_json: bool
) -> NoReturn:
    """Print the verdict on MODEL at CHUNK_SIZE tokens on ENGINE (as asked), and exit with it: 0
    ok, 1 blocked."""
    if as_json:
        echo_json(result.model_dump(mode="json"))
    else:
        version = f" {result.engine_version}" if result.engine_version else ""
        typer.echo(
            f"{result.verdict.upper()}: {model} on {engine}{version} at {chunk_size} tokens "
            f"(architecture {result.architecture}, longest accepted input "
            f"{result.max_input_tokens} tokens)"
        )
        for reason in result.reasons:
            typer.echo(f"  [{reason.severity}] {reason.code}: {reason.message}")
        if result.fallback_engine:
            typer.echo(f"  → runs on the fallback engine {result.fallback_engine}")
    raise typer.Exit(0 if result.verdict == "ok" else 1)


def _preflight_matrix(sweep_file: Path, metadata_dir: Path | None, as_json: bool) -> NoReturn:
    """The dry run of a whole sweep file; exit 1 when any cell is blocked."""
    from embedsweep.config import load_sweep
    from embedsweep.matrix import preflight_sweep

    try:
        spec = load_sweep(sweep_file)
        rows = preflight_sweep(spec, metadata_dir=metadata_dir)
    except (ConfigError, ModelError) as exc:
        fail(exc.message)
    if as_json:
        echo_json([row.as_dict() for row in rows])
    else:
        print_matrix(rows)
    raise typer.Exit(0 if all(row.runnable for row in rows) else 1)


@app.command()
def calibrate(
    model: Annotated[str, typer.Argument(help="Model folder, package:MODULE, or hub id.")],
    tokens: Annotated[int, typer.Option(min=1, help="Exact length of each text, in tokens.")],
    count: Annotated[int, typer.Option(min=1, help="How many distinct texts.")] = 1,
    seed: Annotated[int, typer.Option(help="Seed of the generator.")] = 0,
    corpus: Annotated[
        Path | None,
        typer.Option(
            help="Cut windows of this UTF-8 text file instead of drawing vocabulary words."
        ),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Texts of exactly TOKENS tokens as MODEL's own tokenizer counts them (special tokens too).

    The counts printed with --json are the tokenizer's own, counted again after generation."""
    try:
        calibrator = calibrator_for(model)
        if corpus is not None:
            try:
                corpus_text = corpus.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                fail(f"{corpus}: cannot read the corpus as UTF-8 text ({exc})")
            texts = calibrator.windows(corpus_text, tokens, count, seed)
        else:
            texts = calibrator.texts(tokens, count, seed)
        counts = calibrator.count_batch(texts)
    except (ConfigError, ModelError) as exc:
        fail(exc.message)
    if as_json:
        echo_json(
            {
                "model": model,
                "target_tokens": tokens,
                "texts": [{"text": t, "tokens": n} for t, n in zip(texts, counts, strict=True)],
            }
        )
    else:
        for text in texts:
            typer.echo(text)
