"""The open loop's arrival schedule, drawn from a seed before the clock starts (a Poisson process,
gamma-distributed gaps of a given burstiness, or a constant rate), and the rate it actually
offers."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from embedsweep.errors import ConfigError

ARRIVALS = ("poisson", "gamma", "constant")

# A schedule is held in memory as one int64 per arrival: refuse one that would not fit sensibly.
_MAX_SCHEDULED = 100_000_000


def poisson_schedule(
    rate: float,
    *,
    seed: int,
    requests: int | None = None,
    duration_s: float | None = None,
) -> npt.NDArray[np.int64]:
    """Arrival times (ns after the clock start, ascending) of a Poisson process at ``rate`` per
    second: ``requests`` arrivals, or every arrival before ``duration_s``, or whichever set is
    smaller when both are given. The same arguments always give the same schedule."""
    return arrival_schedule(rate, seed=seed, requests=requests, duration_s=duration_s)


def arrival_schedule(
    rate: float,
    *,
    seed: int,
    kind: str = "poisson",
    burstiness: float = 1.0,
    requests: int | None = None,
    duration_s: float | None = None,
) -> npt.NDArray[np.int64]:
    """Arrival times (ns after the clock start, ascending) at a mean of ``rate`` per second, as
    :func:`poisson_schedule` counts them. KIND: ``poisson`` (exponential gaps), ``gamma`` (gaps of
    shape BURSTINESS and the same mean: below 1 burstier than Poisson, 1 Poisson, above 1 more
    even) or ``constant`` (every 1/rate s, the first at 1/rate)."""
    if kind not in ARRIVALS:
        raise ConfigError(f"arrival kind must be one of {', '.join(ARRIVALS)}, not {kind!r}")
    if not (math.isfinite(burstiness) and burstiness > 0):
        raise ConfigError(f"burstiness must be a positive number, got {burstiness}")
    if not (math.isfinite(rate) and rate > 0):
        raise ConfigError(f"rate must be a positive number of requests/s, got {rate}")
    if duration_s is not None:
        expected = rate * duration_s if requests is None else min(rate * duration_s, requests)
    elif requests is not None:
        expected = requests
    else:
        raise ConfigError("give a number of requests or a duration")
    if expected > _MAX_SCHEDULED:
        raise ConfigError(
            f"{expected:.0f} arrivals is too long a schedule (at most {_MAX_SCHEDULED:,}); "
            "lower the rate or the duration"
        )
    rng = np.random.default_rng(seed)
    mean_gap_s = 1.0 / rate

    def gaps(size: int) -> npt.NDArray[np.float64]:
        if kind == "gamma":
            return rng.gamma(burstiness, mean_gap_s / burstiness, size=size)
        return rng.exponential(mean_gap_s, size=size)

    if kind == "constant":  # multiplied, not summed: no rounding drift over a long level
        count = math.ceil(rate * duration_s) + 1 if duration_s is not None else requests
        assert count is not None
        arrivals_s = mean_gap_s * np.arange(1, count + 1, dtype=np.float64)
        if duration_s is not None:
            arrivals_s = arrivals_s[arrivals_s < duration_s][:requests]
    elif duration_s is None:
        assert requests is not None
        arrivals_s = np.cumsum(gaps(requests))
    else:
        # Enough gaps that running short is a six-sigma event; the loop covers it anyway.
        count = int(expected + 6 * math.sqrt(expected) + 16)
        arrivals_s = np.cumsum(gaps(count))
        while arrivals_s[-1] < duration_s and (requests is None or len(arrivals_s) < requests):
            more = np.cumsum(gaps(count)) + arrivals_s[-1]
            arrivals_s = np.concatenate([arrivals_s, more])
        arrivals_s = arrivals_s[arrivals_s < duration_s]
        if requests is not None:
            arrivals_s = arrivals_s[:requests]
    return np.asarray(np.floor(arrivals_s * 1e9), dtype=np.int64)


def _offered_rps(
    schedule_ns: npt.NDArray[np.int64], rate: float, requests: int | None, duration_s: float | None
) -> float:
    # Over a fixed duration the rate actually offered is the arrivals drawn over that window (a
    # short level's Poisson count is a few percent off the target, and the achieved rate should
    # be compared with what was offered, not with what was asked for). A schedule cut by a
    # request count has no window of its own: its offered rate is the target.
    if duration_s is not None and (requests is None or len(schedule_ns) < requests):
        return len(schedule_ns) / duration_s
    return rate


def offered(
    schedule: npt.NDArray[np.int64] | None,
    rate: float | None,
    requests: int | None,
    duration_s: float | None,
) -> float | None:
    if schedule is None or rate is None:
        return None
    return _offered_rps(schedule, rate, requests, duration_s)
