"""The commands that drive an endpoint already running: ``embedsweep load`` (a calibrated load,
closed or open loop, or the search of the highest rate within a p99 SLO) and ``embedsweep
fidelity`` (does it serve the model's vectors)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

import typer

from embedsweep.cli._app import JsonFlag, app, calibrator_for, echo_json, fail
from embedsweep.errors import ConfigError, ModelError
from embedsweep.report_terminal import print_fidelity

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    from embedsweep.fidelity import Endpoint, Reference
    from embedsweep.hub import ModelMeta
    from embedsweep.records import FidelityResult, LevelSummary

__all__ = ["fidelity", "load"]


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
    if slo_p99_ms is None and (requests is None) == (duration is None):
        fail("give exactly one of --requests or --duration")
    if slo_p99_ms is not None and duration is None:
        fail("--slo-p99-ms runs each rate for --duration seconds: give --duration")
    level = _Level(
        url=url.rstrip("/"),
        payloads=_payloads(model, tokenizer, chunk_size, requests, warmup, batch, seed),
        expected_tokens=chunk_size * batch,
        concurrency=concurrency,
        requests=None if slo_p99_ms is not None else requests,
        duration_s=duration,
        warmup=warmup,
        timeout_s=timeout,
        api_key=os.environ.get(api_key_env) or None,
        seed=seed,
        processes=processes,
        batch=batch,
    )
    if slo_p99_ms is not None:
        _search_rate(level, slo_p99_ms, rate or 10.0, rate_max, as_json)
        return
    _report_level(level(rate), as_json)


def _payloads(
    model: str,
    tokenizer: str,
    chunk_size: int,
    requests: int | None,
    warmup: int,
    batch: int,
    seed: int,
) -> list[bytes]:
    """The request bodies, built before the clock starts: at most 1,024 distinct ones."""
    from embedsweep.loadgen import build_payloads

    try:
        calibrator = calibrator_for(tokenizer)
        distinct = min((requests or 1024) + warmup, 1024) * batch
        texts = calibrator.texts(chunk_size, distinct, seed)
    except (ConfigError, ModelError) as exc:
        fail(exc.message)
    return build_payloads(model, texts, batch)


@dataclass(frozen=True)
class _Level:
    """One load level against the endpoint, everything but its rate decided: called with a
    rate (None: closed loop), it runs and summarizes the level."""

    url: str
    payloads: list[bytes]
    expected_tokens: int
    concurrency: int
    requests: int | None
    duration_s: float | None
    warmup: int
    timeout_s: float
    api_key: str | None
    seed: int
    processes: int
    batch: int

    def __call__(self, at_rate: float | None) -> LevelSummary:
        from embedsweep.loadgen import run_level_sync
        from embedsweep.metrics import summarize

        records = run_level_sync(
            self.url,
            self.payloads,
            self.expected_tokens,
            concurrency=self.concurrency,
            requests=self.requests,
            duration_s=self.duration_s,
            warmup=self.warmup,
            timeout_s=self.timeout_s,
            api_key=self.api_key,
            rate=at_rate,
            seed=self.seed,
            processes=self.processes,
        )
        return summarize(records, batch_size=self.batch)


def _search_rate(level: _Level, slo_p99_ms: float, lo: float, hi: float, as_json: bool) -> None:
    """The highest rate in [LO, HI] whose p99 stays within SLO_P99_MS, and every level tried."""
    from embedsweep.metrics import slo_search

    best, tried = slo_search(level, slo_p99_ms, lo, hi)
    if as_json:
        echo_json(
            {
                "slo_p99_ms": slo_p99_ms,
                "best_rate_rps": best,
                "levels": [t.model_dump(mode="json") for t in tried],
            }
        )
        return
    for t in tried:
        typer.echo(
            f"  offered {t.offered_rps or 0:.1f}/s: achieved {t.throughput_rps:.1f}/s, "
            f"p99 {t.latency_ms.p99:.1f} ms, valid {t.valid}"
        )
    verdict = f"{best:.1f} requests/s" if best else "no rate met it"
    typer.echo(f"highest rate with p99 <= {slo_p99_ms} ms: {verdict}")


def _report_level(summary: LevelSummary, as_json: bool) -> None:
    if as_json:
        echo_json(_level_json(summary))
    else:
        _print_level(summary)


def _level_json(summary: LevelSummary) -> dict[str, Any]:
    """``embedsweep load --json``: the keys the CLI contract names, and more."""
    return {
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


def _print_level(summary: LevelSummary) -> None:
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

    if dtype not in fid.COSINE_THRESHOLDS:
        fail(f"--dtype must be one of {', '.join(fid.COSINE_THRESHOLDS)}, not {dtype!r}")
    if not url.startswith(("http://", "https://")):
        fail(f"--url must start with http:// or https://, not {url!r}")
    probe_set = _probe_set(reference, max_tokens, limit, trust_remote_code)
    endpoint = fid.Endpoint(url, model, os.environ.get(api_key_env) or None, timeout)
    result = _probe(endpoint, probe_set, dtype)
    if as_json:
        echo_json(result.model_dump(mode="json"))
    elif result.verdict == "error":
        fail(result.findings[0].message if result.findings else "the probe failed")
    else:
        print_fidelity(result)
    raise typer.Exit({"passed": 0, "failed": 1}.get(result.verdict, 2))


@dataclass(frozen=True)
class _ProbeSet:
    """The probe texts with their reference vectors, and the model they were encoded from."""

    meta: ModelMeta
    ref: Reference
    texts: list[str]
    vectors: npt.NDArray[np.float64]
    overlength_text: str | None


def _probe_set(
    reference: str, max_tokens: int, limit: int | None, trust_remote_code: bool
) -> _ProbeSet:
    """Calibrated probe texts up to MAX_TOKENS (and one past LIMIT when given), encoded by the
    reference; a reference that cannot be loaded is bad input."""
    from embedsweep import fidelity as fid
    from embedsweep.calibrate import Calibrator, load_tokenizer
    from embedsweep.hub import resolve_model

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
        fail(exc.message)
    except (OSError, ValueError) as exc:
        fail(f"cannot load the reference {reference}: {exc}")
    return _ProbeSet(meta, ref, texts, vectors, over)


def _probe(endpoint: Endpoint, probe_set: _ProbeSet, dtype: str) -> FidelityResult:
    from embedsweep import fidelity as fid
    from embedsweep.hfserver.request import matryoshka_of

    return fid.probe(
        endpoint,
        probe_set.texts,
        probe_set.vectors,
        reference_name=probe_set.ref.name,
        reference_normalized=probe_set.ref.normalized,
        dtype=dtype,
        overlength_text=probe_set.overlength_text,
        matryoshka=matryoshka_of(probe_set.meta.config)[0],
    )
