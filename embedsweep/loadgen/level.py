"""One load level end to end: :func:`run_level` (in the running event loop) and
:func:`run_level_sync` (on a fresh event loop, or fanned out over worker processes): the level's
arguments checked, its schedule drawn, its shares driven and their rows merged; SIGTERM stops
a level promptly and is then handed on."""

from __future__ import annotations

import asyncio
import math
import signal
import threading
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, NoReturn

import numpy as np
import numpy.typing as npt

from embedsweep.errors import ConfigError
from embedsweep.loadgen.connection import parse_url
from embedsweep.loadgen.phases import Share, drive, loop_factory, start_now
from embedsweep.loadgen.processes import run_processes, split_shares
from embedsweep.loadgen.records import LevelRecords, Rows, merge_records
from embedsweep.loadgen.schedule import offered, poisson_schedule


def _check_level(
    payloads: list[bytes],
    *,
    concurrency: int,
    requests: int | None,
    duration_s: float | None,
    warmup: int,
    timeout_s: float,
    rate: float | None,
    processes: int,
) -> None:
    if concurrency < 1:
        raise ConfigError(f"concurrency must be >= 1, got {concurrency}")
    if not payloads:
        raise ConfigError("no payloads to send")
    if requests is None and duration_s is None:
        raise ConfigError("give a number of requests or a duration")
    if requests is not None and requests < 1:
        raise ConfigError(f"requests must be >= 1, got {requests}")
    if duration_s is not None and duration_s <= 0:
        raise ConfigError(f"duration must be > 0 s, got {duration_s}")
    if warmup < 0:
        raise ConfigError(f"warm-up must be >= 0 requests, got {warmup}")
    if timeout_s <= 0:
        raise ConfigError(f"timeout must be > 0 s, got {timeout_s}")
    if rate is not None and not (math.isfinite(rate) and rate > 0):
        raise ConfigError(f"rate must be a positive number of requests/s, got {rate}")
    if processes < 1:
        raise ConfigError(f"processes must be >= 1, got {processes}")
    if concurrency < processes:
        raise ConfigError(
            f"concurrency {concurrency} cannot be split over {processes} processes "
            "(each needs a connection)"
        )
    if requests is not None and rate is None and requests < processes:
        raise ConfigError(f"{requests} requests cannot be split over {processes} processes")


@dataclass(frozen=True)
class _Level:
    """One level's arguments, as :func:`run_level` and :func:`run_level_sync` were given them."""

    url: str
    payloads: list[bytes]
    expected_tokens: int
    concurrency: int
    requests: int | None
    duration_s: float | None
    warmup: int
    timeout_s: float
    api_key: str | None
    rate: float | None
    seed: int
    processes: int
    watch_pid: int | None

    def check(self) -> None:
        """Raise ConfigError for arguments no level can run with."""
        _check_level(
            self.payloads,
            concurrency=self.concurrency,
            requests=self.requests,
            duration_s=self.duration_s,
            warmup=self.warmup,
            timeout_s=self.timeout_s,
            rate=self.rate,
            processes=self.processes,
        )
        parse_url(self.url)

    def plan(self) -> tuple[npt.NDArray[np.int64] | None, list[Share]]:
        """The open loop's arrival schedule (None in a closed loop) and the processes' shares."""
        schedule = (
            None
            if self.rate is None
            else poisson_schedule(
                self.rate, seed=self.seed, requests=self.requests, duration_s=self.duration_s
            )
        )
        shares = split_shares(
            self.url,
            self.payloads,
            concurrency=self.concurrency,
            requests=self.requests,
            duration_s=self.duration_s,
            warmup=self.warmup,
            timeout_s=self.timeout_s,
            api_key=self.api_key,
            schedule_ns=schedule,
            processes=self.processes,
            watch_pid=self.watch_pid,
        )
        return schedule, shares

    def records(self, parts: list[Rows], schedule: npt.NDArray[np.int64] | None) -> LevelRecords:
        """The shares' rows merged into the level's records."""
        return merge_records(
            parts,
            concurrency=self.concurrency,
            expected_tokens=self.expected_tokens,
            offered_rps=offered(schedule, self.rate, self.requests, self.duration_s),
        )


async def _run_in_loop(level: _Level) -> LevelRecords:
    """A checked one-process level, driven in the running event loop."""
    schedule, (share,) = level.plan()
    rows = await drive(share, start_now)
    return level.records([rows], schedule)


async def run_level(
    url: str,
    payloads: list[bytes],
    expected_tokens: int,
    *,
    concurrency: int,
    requests: int | None = None,
    duration_s: float | None = None,
    warmup: int = 0,
    timeout_s: float = 120.0,
    api_key: str | None = None,
    rate: float | None = None,
    seed: int = 0,
    watch_pid: int | None = None,
) -> LevelRecords:
    """Drive ``url`` + ``/v1/embeddings`` in this process's running event loop.

    Without ``rate``, a closed loop of ``concurrency`` connections; with ``rate``, an open loop of
    Poisson arrivals at ``rate`` per second (schedule from ``seed``) over at most ``concurrency``
    connections. ``warmup`` requests run first (closed loop) and are not recorded; then the clock
    starts and the level runs ``requests`` requests, or for ``duration_s`` seconds (no request
    starts after it), or until whichever comes first when both are given. ``expected_tokens`` is
    what each request sends (tokens per input × inputs per request), stored with every row.

    The level ends early, keeping what it measured (``halted`` says why), when the server is gone:
    the process ``watch_pid`` exited (checked at every failed connection and every quarter
    second), or connections failed for ``UNREACHABLE_S`` with no response in between.
    """
    level = _Level(
        url,
        payloads,
        expected_tokens,
        concurrency=concurrency,
        requests=requests,
        duration_s=duration_s,
        warmup=warmup,
        timeout_s=timeout_s,
        api_key=api_key,
        rate=rate,
        seed=seed,
        processes=1,
        watch_pid=watch_pid,
    )
    level.check()
    return await _run_in_loop(level)


def run_level_sync(
    url: str,
    payloads: list[bytes],
    expected_tokens: int,
    *,
    concurrency: int,
    requests: int | None = None,
    duration_s: float | None = None,
    warmup: int = 0,
    timeout_s: float = 120.0,
    api_key: str | None = None,
    rate: float | None = None,
    seed: int = 0,
    processes: int = 1,
    watch_pid: int | None = None,
) -> LevelRecords:
    """:func:`run_level` on a fresh event loop (uvloop when installed), or on ``processes``
    worker processes with one event loop each, for when one core cannot keep up.

    Split over processes, each gets an even share of the connections and warm-up requests, and
    of the requests (closed loop) or every N-th arrival of the one drawn schedule (open loop);
    all start their measured phase at one agreed instant and their records are merged on that
    clock, so the result reads exactly like a one-process level.

    In the main thread SIGTERM stops the level promptly (worker processes included) and is then
    handed to whoever handled it before.
    """
    level = _Level(
        url,
        payloads,
        expected_tokens,
        concurrency=concurrency,
        requests=requests,
        duration_s=duration_s,
        warmup=warmup,
        timeout_s=timeout_s,
        api_key=api_key,
        rate=rate,
        seed=seed,
        processes=processes,
        watch_pid=watch_pid,
    )
    level.check()
    if processes > 1:
        schedule, shares = level.plan()
        return level.records(_run_processes_stoppable(shares), schedule)
    coro = _run_in_loop(level)
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        if threading.current_thread() is not threading.main_thread():
            return runner.run(coro)
        return _run_stoppable(runner, coro)


def _run_stoppable(runner: asyncio.Runner, coro: Coroutine[Any, Any, LevelRecords]) -> LevelRecords:
    """Run ``coro`` so that SIGTERM stops the load promptly and then reaches whoever handled
    SIGTERM before (a Prefect flow's bridge, the CLI's handler).

    A Python-level signal handler that raises while the event loop is inside a callback is lost
    to the loop's exception handler, so the load would run to its end; instead the loop itself
    catches SIGTERM, cancels the level, and the signal is delivered again outside the loop.
    """
    loop = runner.get_loop()
    previous = signal.getsignal(signal.SIGTERM)
    received: list[int] = []

    async def main() -> LevelRecords:
        task = asyncio.current_task()
        assert task is not None

        def on_term() -> None:
            received.append(signal.SIGTERM)
            task.cancel()

        loop.add_signal_handler(signal.SIGTERM, on_term)
        return await coro

    try:
        return runner.run(main())
    except asyncio.CancelledError:
        if not received:
            raise
    finally:
        loop.remove_signal_handler(signal.SIGTERM)
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    _redeliver_sigterm(previous)


def _redeliver_sigterm(previous: Any) -> NoReturn:
    if callable(previous):
        signal.raise_signal(signal.SIGTERM)
    # No Python handler to hand it to (SIG_DFL would end the process without cleanup).
    raise KeyboardInterrupt("SIGTERM")


class _Terminated(Exception):
    """SIGTERM arrived while the parent waited for its worker processes."""


def _run_processes_stoppable(shares: list[Share]) -> list[Rows]:
    if threading.current_thread() is not threading.main_thread():
        return run_processes(shares)
    previous = signal.getsignal(signal.SIGTERM)

    def on_term(signum: int, frame: object) -> None:
        # The parent only waits on pipes here (no event loop), so raising from the handler is
        # safe and leaves through run_processes' clean-up, which stops the workers.
        raise _Terminated

    signal.signal(signal.SIGTERM, on_term)
    try:
        return run_processes(shares)
    except _Terminated:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
    _redeliver_sigterm(previous)
