"""Typed records that cross module boundaries: preflight verdicts, load-level summaries and the
run manifest (``run.json``) that a cell writes and the warehouse ingests.

A run directory holds ``run.json`` (a :class:`RunManifest`), ``requests.parquet`` (one row per
request, columns in :data:`REQUEST_COLUMNS`) and ``server.log``. It is the unit of ingest: the
warehouse takes a whole run or none of it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "REQUEST_COLUMNS",
    "CellStatus",
    "FidelityFinding",
    "FidelityResult",
    "FidelityVerdict",
    "HarnessCheck",
    "LatencyMs",
    "LevelSummary",
    "LoadMode",
    "PreflightResult",
    "Reason",
    "RunManifest",
    "Severity",
]

Severity = Literal["block", "warn"]
CellStatus = Literal["ok", "blocked", "failed", "cancelled"]
# closed: fixed concurrency, each connection sends again when answered; open: Poisson arrivals at
# an offered rate, sent on schedule whether or not earlier requests were answered.
LoadMode = Literal["closed", "open"]

# requests.parquet columns, in order. start_ns is relative to the level's clock start
# (perf_counter_ns); scheduled_ns is when the request was due on the same clock (an open loop's
# drawn arrival; equal to start_ns in a closed loop), so start_ns - scheduled_ns is the client's
# lag; status is the HTTP status, 0 when no response arrived; prompt_tokens is -1 when the
# response carried no usage. Files written before scheduled_ns existed lack it: ingest fills it
# from start_ns.
REQUEST_COLUMNS: tuple[str, ...] = (
    "run_id",
    "concurrency",
    "seq",
    "start_ns",
    "scheduled_ns",
    "latency_ns",
    "status",
    "prompt_tokens",
    "expected_tokens",
    "error",
)


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Reason(_Frozen):
    """One preflight finding; ``code`` is a stable reason code (see ARCHITECTURE.md)."""

    code: str
    severity: Severity
    message: str


class PreflightResult(_Frozen):
    """The preflight's answer for one (model, engine, engine version, chunk size, pool)."""

    model: str
    engine: str
    engine_version: str | None
    architecture: str | None
    chunk_size: int
    max_input_tokens: int | None
    verdict: Literal["ok", "blocked"]
    reasons: list[Reason] = Field(default_factory=list)
    fallback_engine: str | None = None

    @property
    def blocking(self) -> list[Reason]:
        return [r for r in self.reasons if r.severity == "block"]


class LatencyMs(_Frozen):
    mean: float
    p50: float
    p90: float
    p95: float
    p99: float
    max: float


class LevelSummary(_Frozen):
    """Metrics of one load level (one concurrency) of one run, from ``embedsweep.metrics``.

    The fields after ``cost_per_million_tokens`` came with open-loop load; their defaults are
    what a closed-loop level (every run.json written before them) has: no offered rate, and no
    lag, since a closed loop's requests are due exactly when they start.
    """

    concurrency: int
    requests: int
    ok: int
    errors: int
    errors_by_cause: dict[str, int] = Field(default_factory=dict)
    duration_s: float
    throughput_rps: float
    inputs_per_s: float
    input_tokens_per_s: float
    latency_ms: LatencyMs
    prompt_tokens_mismatch: int
    achieved_concurrency: float
    valid: bool
    cost_per_million_tokens: float | None = None
    mode: LoadMode = "closed"
    offered_rps: float | None = Field(
        default=None,
        description="Open loop: arrivals offered per second (drawn arrivals / duration, or the "
        "target rate for a request-count level); None in a closed loop.",
    )
    lag_mean_ms: float = Field(
        default=0.0, description="Mean of actual start - scheduled start over sent requests."
    )
    lag_p99_ms: float = Field(default=0.0, description="99th percentile of the client's lag.")
    lag_max_ms: float = Field(default=0.0, description="Largest client lag.")
    unsent: int = Field(
        default=0,
        description="Open loop: scheduled arrivals never sent because the duration ran out "
        "(not counted in requests).",
    )
    gpu_util_mean_pct: float | None = Field(
        default=None, description="NVML: mean GPU utilisation over the level's devices and samples."
    )
    gpu_mem_used_max_mib: float | None = Field(
        default=None, description="NVML: most memory used on one of the level's devices (MiB)."
    )
    gpu_power_mean_w: float | None = Field(
        default=None, description="NVML: mean power draw of one device during the level (W)."
    )
    partial: bool = Field(
        default=False,
        description="The level stopped before its end (the server died or stopped answering): "
        "its figures cover what was measured until then, and it is never valid.",
    )
    stopped_reason: str | None = Field(
        default=None, description="Why a partial level stopped (None for a whole one)."
    )
    host_other_cpu_cores: float | None = Field(
        default=None,
        description="Cores other processes (not the run, its client or its server) kept busy "
        "on average during the level, from /proc (None: not measured).",
    )
    host_load_1m: float | None = Field(
        default=None, description="The host's 1-minute load average at the level's end."
    )
    host_quiet: bool | None = Field(
        default=None,
        description="False when other processes used more than embedsweep.hostload."
        "QUIET_OTHER_CORES: the figures are of a shared host.",
    )


FidelityVerdict = Literal["passed", "failed", "error", "not_checked"]


class FidelityFinding(_Frozen):
    """One thing the fidelity probe found (``embedsweep.fidelity``): ``vectors_differ``,
    ``dimension_mismatch``, ``normalization_differs``, ``batch_variance`` fail the verdict;
    ``dimensions_ignored``, ``dimensions_refused``, ``truncates_overlength`` are reported only;
    ``probe_error`` / ``no_reference`` say why there is no verdict."""

    code: str
    message: str


class FidelityResult(_Frozen):
    """The fidelity probe of one run: served vectors against a reference encode of the same
    texts, and against themselves in other batches, orders and concurrent requests."""

    probe_version: int
    reference: str = Field(description="What encoded the reference vectors, or why none.")
    served_dtype: str
    threshold: float = Field(description="Smallest cosine the served dtype must reach.")
    texts: int = Field(description="Probe texts sent (each alone, batched, shuffled, concurrent).")
    dimension: int | None = None
    reference_dimension: int | None = None
    min_cosine: float | None = None
    mean_cosine: float | None = None
    max_abs_diff: float | None = None
    norm_min: float | None = None
    norm_max: float | None = None
    normalized: bool | None = Field(default=None, description="Served vectors are unit length.")
    reference_normalized: bool | None = Field(
        default=None, description="The model's own modules end with a Normalize."
    )
    invariance_min_cosine: float | None = Field(
        default=None,
        description="Smallest cosine of a text in a batch / shuffled / concurrent "
        "request with the same text sent alone.",
    )
    invariance_max_abs_diff: float | None = None
    dimensions_request: str = Field(
        default="not_checked",
        description="What the server did with dimensions=half: refused, honoured, ignored.",
    )
    overlength: str = Field(
        default="not_checked",
        description="An input past the server's limit: rejected (4xx) or truncated (200).",
    )
    verdict: FidelityVerdict
    findings: list[FidelityFinding] = Field(default_factory=list)


class HarnessCheck(_Frozen):
    """How close the built-in server came to its own model on this host: its inputs/s at the
    run's highest concurrency against direct ``SentenceTransformer.encode`` of the same texts, in
    the same dtype and batch size, in the runner's process with the server idle
    (``embedsweep.harness``). With how the server placed its work."""

    chunk_size: int
    concurrency: int
    batch: int = Field(description="Direct encode's batch: the level's concurrency x batch size.")
    server_inputs_per_s: float
    direct_inputs_per_s: float | None = None
    ratio: float | None = Field(default=None, description="server / direct inputs per second.")
    direct_threads: int | None = Field(
        default=None, description="torch threads of the faster direct encode (default or 1)."
    )
    dtype: str | None = None
    device: str | None = None
    runtime: str | None = None
    model_threads: int | None = Field(default=None, description="The placement's model threads.")
    model_threads_now: int | None = Field(
        default=None, description="The model's threads at the end (the governor may lower them)."
    )
    thread_changes: int | None = None
    frontend: str | None = None
    note: str | None = Field(default=None, description="Why direct encode was not measured.")


class RunManifest(_Frozen):
    """Everything about one cell's run except the per-request rows; written as ``run.json``."""

    run_id: str
    sweep_run_id: str
    sweep_name: str
    cell_id: str
    model: str
    model_ref: str
    engine: str
    planned_engine: str
    pool: str
    gpu_model: str
    gpu_count: int
    cost_per_gpu_hour: float
    chunk_size: int
    batch_size: int
    status: CellStatus
    reason: str | None = None
    message: str | None = None
    engine_version: str | None = None
    max_input_tokens: int | None = None
    time_to_healthy_s: float | None = None
    seed: int = 0
    started_at: str
    finished_at: str
    preflight: list[PreflightResult] = Field(default_factory=list)
    levels: list[LevelSummary] = Field(default_factory=list)
    host: str | None = Field(
        default=None, description="Where the server ran: the pool's host (work queue) or hostname."
    )
    devices: list[str] = Field(default_factory=list, description="Devices the server was given.")
    port_released: bool | None = Field(
        default=None, description="After the stop: the server's port could be bound again."
    )
    gpu_memory_released: bool | None = Field(
        default=None,
        description="After the stop: the devices' used memory fell back to what it was before the "
        "start (None without NVML).",
    )
    server_id: str | None = Field(
        default=None,
        description="The engine server this run was measured on: every chunk size of a (model, "
        "engine, pool) shares one. The run that started it holds time_to_healthy_s.",
    )
    usage_counting: str | None = Field(
        default=None,
        description="How the engine's usage.prompt_tokens counts: tokens (with special tokens, "
        "as the model's tokenizer does), tokens_without_special (Infinity), characters. The "
        "levels' validity compares every request with embedsweep's own count in that rule.",
    )
    usage_trusted: bool | None = Field(
        default=None,
        description="Whether the engine's usage can reveal a truncated input (False: an "
        "over-length input is answered 200 with the count capped).",
    )
    dtype_requested: str | None = Field(
        default=None,
        description="The sweep's dtype for the model: auto or a pinned name.",
    )
    dtype: str | None = Field(
        default=None,
        description="The dtype the engine was started with: the sweep's, auto resolved once per "
        "(model, pool) (embedsweep.precision), so every engine of a comparison gets the same.",
    )
    served_dtype: str | None = Field(
        default=None,
        description="The dtype the engine says it computed in (the built-in server's info, vLLM's "
        "start-up log); None when it does not say.",
    )
    dtype_note: str | None = Field(
        default=None,
        description="A finding: the engine served another dtype than it was started with.",
    )
    startup: str | None = Field(
        default=None,
        description="How the built-in server started its model: compiled (torch.compile, "
        "compiled now), cached (compiled graphs reused from an earlier start) or eager.",
    )
    fidelity: FidelityResult | None = Field(
        default=None,
        description="The fidelity probe after the levels (None: not measured, or turned off). "
        "A run whose verdict is failed keeps its numbers, marked fidelity_failed.",
    )
    harness: HarnessCheck | None = Field(
        default=None,
        description="Built-in server runs: its inputs/s against direct encode on this host, and "
        "how it placed its work (None: another engine, or no level measured).",
    )
