"""Load-level metrics: pure functions from a level's per-request records to a
:class:`~embedsweep.records.LevelSummary`. No I/O, no clocks, no printing.

Conventions: rates divide by the level's wall time; latency percentiles cover successful (2xx)
requests only and use numpy's default linear interpolation; tokens are the server's own
``usage.prompt_tokens``, so a server that counts differently from the calibration shows up as a
mismatch instead of as a faster or slower run.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import numpy.typing as npt

from embedsweep.loadgen import LevelRecords
from embedsweep.records import LatencyMs, LevelSummary

__all__ = ["error_cause", "summarize"]

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

    causes: Counter[str] = Counter()
    for row in np.flatnonzero(~ok_mask).tolist():
        causes[error_cause(int(status[row]), records.error[row])] += 1

    ok_tokens = records.prompt_tokens[ok_mask].astype(np.int64)
    server_tokens = int(ok_tokens[ok_tokens >= 0].sum())
    mismatch = int((ok_tokens != records.expected_tokens[ok_mask]).sum())

    def per_second(amount: float) -> float:
        return amount / duration_s if duration_s > 0 else 0.0

    tokens_per_s = per_second(server_tokens)
    cost: float | None = None
    if cost_per_gpu_hour > 0 and tokens_per_s > 0:
        cost = cost_per_gpu_hour * gpu_count / 3600 / tokens_per_s * 1e6

    return LevelSummary(
        concurrency=records.concurrency,
        requests=requests,
        ok=ok,
        errors=requests - ok,
        errors_by_cause=dict(sorted(causes.items())),
        duration_s=duration_s,
        throughput_rps=per_second(ok),
        inputs_per_s=per_second(ok * batch_size),
        input_tokens_per_s=tokens_per_s,
        latency_ms=_latency_ms(records.latency_ns[ok_mask]),
        prompt_tokens_mismatch=mismatch,
        # Little's law: the mean number of requests in flight over the level.
        achieved_concurrency=per_second(float(records.latency_ns.sum()) / 1e9),
        valid=ok > 0 and mismatch == 0,
        cost_per_million_tokens=cost,
    )


def _latency_ms(latency_ns: npt.NDArray[np.int64]) -> LatencyMs:
    if len(latency_ns) == 0:
        return LatencyMs(mean=0.0, p50=0.0, p90=0.0, p95=0.0, p99=0.0, max=0.0)
    ms = latency_ns.astype(np.float64) / 1e6
    p50, p90, p95, p99 = (float(v) for v in np.percentile(ms, _PERCENTILES))
    return LatencyMs(mean=float(ms.mean()), p50=p50, p90=p90, p95=p95, p99=p99, max=float(ms.max()))
