"""The closed-loop and open-loop phases, and one process's share of a level.

A phase is one run of requests (the warm-up, or the measured part): its budget and the rows it
produces. A closed-loop phase lets a request start whenever a connection is free; an open-loop
phase hands out the arrivals of a fixed schedule at their due times, parking connections that
are free early. :func:`drive` runs one share (warm-up, start gate, measured phase) on the
running event loop and returns its rows, in the parent or in a worker process alike.
"""

from __future__ import annotations

import array
import asyncio
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from embedsweep.loadgen.connection import (
    DONE,
    EXHAUSTED,
    NOT_YET,
    Connection,
    Shared,
    Worker,
    parse_url,
    request_bytes,
    watch_timeouts,
)
from embedsweep.loadgen.records import Rows

_NO_DEADLINE = sys.maxsize


class Phase:
    """One closed-loop run of requests (warm-up or measured): its budget and the rows it
    produced. A request may start whenever a connection is free."""

    __slots__ = (
        "deadline_ns",
        "errors",
        "halted",
        "latencies",
        "prompt_tokens",
        "remaining",
        "scheduled",
        "starts",
        "statuses",
    )

    def __init__(self, requests: int | None, deadline_ns: int) -> None:
        self.remaining = requests if requests is not None else sys.maxsize
        self.deadline_ns = deadline_ns
        self.halted = False
        self.starts: list[int] = []
        self.scheduled: list[int] = []
        self.latencies: list[int] = []
        self.statuses: list[int] = []
        self.prompt_tokens: list[int] = []
        # Sparse: row index → message; almost every row has none.
        self.errors: dict[int, str] = {}

    def exhausted(self, now_ns: int) -> bool:
        return self.remaining <= 0 or now_ns >= self.deadline_ns

    def take(self, now_ns: int) -> int:
        """Claim the next request: the time it was due (here: now), or ``EXHAUSTED``."""
        if self.remaining <= 0 or now_ns >= self.deadline_ns:
            return EXHAUSTED
        self.remaining -= 1
        return now_ns

    def park(self, connection: Connection) -> None:
        raise AssertionError("a closed loop never has to wait for a due time")

    def fail_connect(self, started_ns: int, end_ns: int, message: str) -> None:
        """Record the request a failed connection attempt was for."""
        if not self.exhausted(end_ns):
            self.remaining -= 1
            self.add_failure(started_ns, started_ns, end_ns, message)

    def add_failure(self, scheduled_ns: int, start_ns: int, end_ns: int, message: str) -> None:
        self.errors[len(self.latencies)] = message
        self.scheduled.append(scheduled_ns)
        self.starts.append(start_ns)
        self.latencies.append(end_ns - start_ns)
        self.statuses.append(0)
        self.prompt_tokens.append(-1)

    def unsent(self) -> int:
        # Requests a halted level never sent (a duration level has no count to leave).
        return self.remaining if self.halted and self.remaining != sys.maxsize else 0

    def halt(self) -> None:
        """End the phase now: nothing more is sent (the server is gone)."""
        self.halted = True
        self.deadline_ns = 0
        self.stop()

    def stop(self) -> None:
        """Release what the phase holds on to (nothing in a closed loop)."""


class _OpenPhase(Phase):
    """An open-loop run: requests are due at the times of a fixed schedule.

    A connection that finishes a response takes the next arrival if it is due; otherwise it parks
    here, and one timer (for the earliest pending arrival) hands due arrivals to parked
    connections. An arrival due while every connection is busy waits for the next one to free
    up; its actual start minus its due time is the lag the records show.
    """

    __slots__ = ("_idle", "_loop", "_next", "_schedule", "_timer")

    def __init__(
        self, schedule_ns: array.array[int], deadline_ns: int, loop: asyncio.AbstractEventLoop
    ) -> None:
        super().__init__(None, deadline_ns)
        self._schedule = schedule_ns
        self._next = 0
        self._loop = loop
        self._idle: list[Connection] = []
        self._timer: asyncio.TimerHandle | None = None

    def exhausted(self, now_ns: int) -> bool:
        return self._next >= len(self._schedule) or now_ns >= self.deadline_ns

    def take(self, now_ns: int) -> int:
        at = self._next
        if at >= len(self._schedule) or now_ns >= self.deadline_ns:
            self.stop()
            return EXHAUSTED
        due = self._schedule[at]
        if due > now_ns:
            return NOT_YET
        self._next = at + 1
        if at + 1 == len(self._schedule):
            # The last arrival is out: connections still parked have nothing left to wait for.
            self.stop()
        return due

    def park(self, connection: Connection) -> None:
        self._idle.append(connection)
        if self._timer is None:
            self._arm()

    def _arm(self) -> None:
        if self._next >= len(self._schedule):
            return
        delay_s = (self._schedule[self._next] - time.perf_counter_ns()) / 1e9
        # Event-loop timers have millisecond granularity (libuv's, and epoll's timeout), so a
        # dispatch can be up to about a millisecond late; that shows in the lag rather than
        # being hidden by a busy wait that would take CPU from the server on a shared host.
        self._timer = self._loop.call_later(max(delay_s, 0.0), self._tick)

    def _tick(self) -> None:
        self._timer = None
        idle = self._idle
        while idle:
            now = time.perf_counter_ns()
            if self.exhausted(now):
                self.stop()
                return
            if self._schedule[self._next] > now:
                # The timer fired early (granularity); wait again for the same arrival.
                self._arm()
                return
            connection = idle.pop()
            if not connection.closed:
                # Takes the due arrival; a connection found dead here was already handed back to
                # its worker by connection_lost, which reconnects and parks the new one.
                connection.send_next()

    def fail_connect(self, started_ns: int, end_ns: int, message: str) -> None:
        due = self.take(end_ns)
        if due >= 0:
            self.add_failure(due, max(due, started_ns), end_ns, message)

    def unsent(self) -> int:
        return len(self._schedule) - self._next

    def halt(self) -> None:
        self.halted = True
        self.deadline_ns = 0
        self.stop()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        idle, self._idle = self._idle, []
        for connection in idle:
            connection.finish(DONE)


async def _run_phase(workers: Sequence[Worker], phase: Phase) -> None:
    shared = workers[0].shared
    shared.phase = phase
    if shared.halted is not None:
        phase.halt()
    try:
        await asyncio.gather(*(worker.run(phase) for worker in workers))
    finally:
        phase.stop()


@dataclass(frozen=True)
class Share:
    """What one process drives: everything :func:`drive` needs, picklable for a worker
    process. ``schedule_ns`` (open loop) holds arrival offsets from the clock start."""

    url: str
    payloads: list[bytes]
    api_key: str | None
    concurrency: int
    requests: int | None
    duration_s: float | None
    warmup: int
    timeout_s: float
    schedule_ns: npt.NDArray[np.int64] | None
    first_payload: int = 0
    watch_pid: int | None = None


async def start_now() -> int:
    return time.perf_counter_ns()


async def drive(share: Share, start_gate: Callable[[], Awaitable[int]]) -> Rows:
    """Warm up, wait for ``start_gate`` to give the clock start (a perf_counter_ns value), then
    run the measured phase from it."""
    target = parse_url(share.url)
    shared = Shared(
        request_bytes(target, share.payloads, share.api_key),
        share.timeout_s,
        share.first_payload,
        share.watch_pid,
    )
    workers = [Worker(target, shared) for _ in range(share.concurrency)]
    shared.workers = workers
    watchdog = asyncio.create_task(watch_timeouts(workers, share.timeout_s))
    try:
        if share.warmup:
            await _run_phase(workers, Phase(share.warmup, _NO_DEADLINE))
        clock_start = await start_gate()
        deadline = (
            clock_start + int(share.duration_s * 1e9)
            if share.duration_s is not None
            else _NO_DEADLINE
        )
        phase: Phase
        if share.schedule_ns is None:
            phase = Phase(share.requests, deadline)
        else:
            # array.array: indexing gives plain ints (several times cheaper in the hot path than
            # numpy scalars) at 8 bytes an arrival (a list of ints takes about 40).
            due = array.array("q", (share.schedule_ns + clock_start).astype(np.int64).tobytes())
            phase = _OpenPhase(due, deadline, asyncio.get_running_loop())
        await _run_phase(workers, phase)
        wall_ns = time.perf_counter_ns() - clock_start
    finally:
        watchdog.cancel()
        await _close_all(shared, watchdog)
    return Rows(
        starts=np.asarray(phase.starts, dtype=np.int64) - clock_start,
        scheduled=np.asarray(phase.scheduled, dtype=np.int64) - clock_start,
        latencies=np.asarray(phase.latencies, dtype=np.int64),
        statuses=np.asarray(phase.statuses, dtype=np.int16),
        prompt_tokens=np.asarray(phase.prompt_tokens, dtype=np.int32),
        errors=phase.errors,
        wall_ns=wall_ns,
        unsent=phase.unsent(),
        halted=shared.halted,
    )


async def _close_all(shared: Shared, watchdog: asyncio.Task[None]) -> None:
    connections = list(shared.live)
    for connection in connections:
        connection.close()
    # Wait for the transports to finish closing so no socket outlives the level.
    pending = [c.lost for c in connections if not c.lost.done()]
    if pending:
        await asyncio.wait(pending, timeout=5.0)
    await asyncio.gather(watchdog, return_exceptions=True)


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop
