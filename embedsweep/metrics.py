"""Load-level metrics: pure functions from a level's per-request records to a
:class:`~embedsweep.records.LevelSummary`, and the goodput search (the highest offered rate whose
levels still meet a latency SLO) over any function that runs a level at a rate. No I/O, no clocks,
no printing.

Conventions: rates divide by the level's wall time; latency percentiles cover successful (2xx)
requests only and use numpy's default linear interpolation; tokens are the server's own
``usage.prompt_tokens``, so a server that counts differently from the calibration shows up as a
mismatch instead of as a faster or slower run. Client lag (actual start - scheduled start) covers
every request sent, failed ones included: the client was late for those too.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from embedsweep.errors import ConfigError
from embedsweep.loadgen import LevelRecords
from embedsweep.records import LatencyMs, LevelSummary

__all__ = ["error_cause", "meets_slo", "slo_search", "summarize"]

_NO_RESPONSE_CAUSES = ("timeout", "connection")
_PERCENTILES = (50.0, 90.0, 95.0, 99.0)


def error_cause(status: int, error: str | None) -> str:
    """The cause code of a failed request: ``http_<status>`` when the server answered, else
    ``timeout`` or ``connection`` from the client's error prefix."""
    if status != 0:
        return f"http_{status}"
    prefix = (error or "").partition(":")[0]
    return prefix if prefix in _NO_RESPONSE_CAUSES else "connection"


def summarize(
    records: LevelRecords,
    *,
    batch_size: int,
    cost_per_gpu_hour: float = 0.0,
    gpu_count: int = 1,
) -> LevelSummary:
    """Throughput, latency and validity of one load level.

    ``prompt_tokens_mismatch`` counts successful requests whose server-counted tokens differ from
    what was sent, a response without ``usage`` (-1) included: an unverified length is not a
    valid measurement of that length.
    """
    status = records.status.astype(np.int64)
    ok_mask = (status >= 200) & (status < 300)
    requests = len(status)
    ok = int(ok_mask.sum())
    duration_s = records.wall_ns / 1e9

    ok_tokens = records.prompt_tokens[ok_mask].astype(np.int64)
    server_tokens = int(ok_tokens[ok_tokens >= 0].sum())
    mismatch = int((ok_tokens != records.expected_tokens[ok_mask]).sum())

    def per_second(amount: float) -> float:
        return amount / duration_s if duration_s > 0 else 0.0

    tokens_per_s = per_second(server_tokens)
    lag_mean, lag_p99, lag_max = _client_lag_ms(records)
    return LevelSummary(
        concurrency=records.concurrency,
        requests=requests,
        ok=ok,
        errors=requests - ok,
        errors_by_cause=_errors_by_cause(records, status, ok_mask),
        duration_s=duration_s,
        throughput_rps=per_second(ok),
        inputs_per_s=per_second(ok * batch_size),
        input_tokens_per_s=tokens_per_s,
        latency_ms=_latency_ms(records.latency_ns[ok_mask]),
        prompt_tokens_mismatch=mismatch,
        # Little's law: the mean number of requests in flight over the level.
        achieved_concurrency=per_second(float(records.latency_ns.sum()) / 1e9),
        valid=ok > 0 and mismatch == 0 and records.halted is None,
        cost_per_million_tokens=_cost_per_million(cost_per_gpu_hour, gpu_count, tokens_per_s),
        mode=records.mode,
        offered_rps=records.offered_rps,
        partial=records.halted is not None,
        stopped_reason=records.halted,
        lag_mean_ms=lag_mean,
        lag_p99_ms=lag_p99,
        lag_max_ms=lag_max,
        unsent=records.unsent,
    )


def _errors_by_cause(
    records: LevelRecords, status: npt.NDArray[np.int64], ok_mask: npt.NDArray[np.bool_]
) -> dict[str, int]:
    """The failed requests counted by :func:`error_cause`, causes in sorted order."""
    causes: Counter[str] = Counter()
    for row in np.flatnonzero(~ok_mask).tolist():
        causes[error_cause(int(status[row]), records.error[row])] += 1
    return dict(sorted(causes.items()))


def _cost_per_million(
    cost_per_gpu_hour: float, gpu_count: int, tokens_per_s: float
) -> float | None:
    """Dollars per million input tokens at ``tokens_per_s``; None without a price or a rate."""
    if cost_per_gpu_hour > 0 and tokens_per_s > 0:
        return cost_per_gpu_hour * gpu_count / 3600 / tokens_per_s * 1e6
    return None


def _client_lag_ms(records: LevelRecords) -> tuple[float, float, float]:
    """Mean, p99 and max of actual minus scheduled start, in ms; zeros for no request."""
    lag_ms = (records.start_ns - records.scheduled_ns).astype(np.float64) / 1e6
    if not len(lag_ms):
        return 0.0, 0.0, 0.0
    return float(lag_ms.mean()), float(np.percentile(lag_ms, 99.0)), float(lag_ms.max())


def _latency_ms(latency_ns: npt.NDArray[np.int64]) -> LatencyMs:
    if len(latency_ns) == 0:
        return LatencyMs(mean=0.0, p50=0.0, p90=0.0, p95=0.0, p99=0.0, max=0.0)
    ms = latency_ns.astype(np.float64) / 1e6
    p50, p90, p95, p99 = (float(v) for v in np.percentile(ms, _PERCENTILES))
    return LatencyMs(mean=float(ms.mean()), p50=p50, p90=p90, p95=p95, p99=p99, max=float(ms.max()))


def meets_slo(
    summary: LevelSummary,
    slo_p99_ms: float,
    *,
    offered_rps: float,
    keep_up: float = 0.95,
    max_error_rate: float = 0.0,
) -> bool:
    """Whether a level counts as served at ``offered_rps``: a valid measurement (every token
    count verified), p99 latency within the SLO, at most ``max_error_rate`` of requests failed,
    and throughput at least ``keep_up`` × the offered rate (a server that falls behind its
    arrivals is not serving that rate, however fast the requests it does answer)."""
    if not summary.valid or summary.requests == 0:
        return False
    if summary.latency_ms.p99 > slo_p99_ms:
        return False
    if summary.errors > max_error_rate * summary.requests:
        return False
    offered = summary.offered_rps if summary.offered_rps is not None else offered_rps
    return summary.throughput_rps >= keep_up * offered


def _check_search(
    slo_p99_ms: float, lo: float, hi: float, *, growth: float, rel_tol: float, max_levels: int
) -> None:
    """Raise :class:`ConfigError` for :func:`slo_search` arguments it cannot search with."""
    if not (0 < lo <= hi and math.isfinite(hi)):
        raise ConfigError(f"rate bounds must satisfy 0 < lo <= hi, got lo={lo}, hi={hi}")
    if slo_p99_ms <= 0:
        raise ConfigError(f"SLO p99 must be > 0 ms, got {slo_p99_ms}")
    if growth <= 1:
        raise ConfigError(f"growth must be > 1, got {growth}")
    if rel_tol <= 0:
        raise ConfigError(f"relative tolerance must be > 0, got {rel_tol}")
    if max_levels < 1:
        raise ConfigError(f"max_levels must be >= 1, got {max_levels}")


def slo_search(
    run_at_rate: Callable[[float], LevelSummary],
    slo_p99_ms: float,
    lo: float,
    hi: float,
    *,
    growth: float = 2.0,
    rel_tol: float = 0.05,
    max_levels: int = 16,
    keep_up: float = 0.95,
    max_error_rate: float = 0.0,
) -> tuple[float | None, list[LevelSummary]]:
    """The highest offered rate in [``lo``, ``hi``] that :func:`meets_slo`, and every level run
    on the way (in the order run).

    Runs ``lo`` first (None when even that fails), then multiplies the rate by ``growth`` until a
    level fails or ``hi`` passes, then bisects (geometrically: rates span orders of magnitude)
    between the last pass and the first fail until they are within ``rel_tol`` of each other or
    ``max_levels`` levels have run. The answer is the fastest rate seen to pass, so it never
    exceeds a rate that failed. Assumes that meeting the SLO is monotone in the rate; a noisy
    level near the knee can only make the answer lower, not invalid.
    """
    _check_search(slo_p99_ms, lo, hi, growth=growth, rel_tol=rel_tol, max_levels=max_levels)
    summaries: list[LevelSummary] = []

    def passes(rate: float) -> bool:
        summary = run_at_rate(rate)
        summaries.append(summary)
        return meets_slo(
            summary,
            slo_p99_ms,
            offered_rps=rate,
            keep_up=keep_up,
            max_error_rate=max_error_rate,
        )

    if not passes(lo):
        return None, summaries
    best = lo
    failed: float | None = None
    while failed is None and best < hi and len(summaries) < max_levels:
        rate = min(best * growth, hi)
        if passes(rate):
            best = rate
        else:
            failed = rate
    while failed is not None and failed > best * (1 + rel_tol) and len(summaries) < max_levels:
        rate = math.sqrt(best * failed)
        if passes(rate):
            best = rate
        else:
            failed = rate
    return best, summaries
