"""The multi-process fan-out: a level split into per-process shares, run on ``spawn`` worker
processes with one event loop each, started at one agreed instant, their rows collected."""

from __future__ import annotations

import asyncio
import multiprocessing
import multiprocessing.connection
import signal
import time
from typing import cast

import numpy as np
import numpy.typing as npt

from embedsweep.errors import ConfigError, EmbedsweepError
from embedsweep.loadgen.phases import Share, drive, loop_factory
from embedsweep.loadgen.records import Rows

# Clock: every record is relative to one start instant that all processes agree on. perf_counter
# is only promised to be consistent within a process; time.monotonic is the clock the OS keeps
# system-wide (CLOCK_MONOTONIC on Linux, where the two are in fact the same clock). So the parent
# names the start as a monotonic_ns instant a little in the future, and each worker converts it
# into its own perf_counter_ns frame (two back-to-back reads) and keeps timing with perf_counter.
# Wall-clock time (time.time) is not used: NTP may step it during a level.

# How far ahead of "now" the parent sets the shared start of a multi-process level: long enough
# for every worker to receive the start message and be waiting when it comes.
_START_MARGIN_NS = 100_000_000


def _split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def split_shares(
    url: str,
    payloads: list[bytes],
    *,
    concurrency: int,
    requests: int | None,
    duration_s: float | None,
    warmup: int,
    timeout_s: float,
    api_key: str | None,
    schedule_ns: npt.NDArray[np.int64] | None,
    processes: int,
    watch_pid: int | None = None,
) -> list[Share]:
    """Split a level over ``processes``: connections, warm-up and requests as evenly as they go,
    an open loop's arrivals round-robin (so each process sees every N-th arrival and the union is
    exactly the drawn schedule). Each process starts its payload cycle at a different place, so
    they do not send the same text at the same moment."""
    connections = _split(concurrency, processes)
    warmups = _split(warmup, processes)
    counts: list[int | None] = (
        list(_split(requests, processes))
        if requests is not None and schedule_ns is None
        else [None] * processes
    )
    return [
        Share(
            url=url,
            payloads=payloads,
            api_key=api_key,
            concurrency=connections[i],
            requests=counts[i],
            duration_s=duration_s,
            warmup=warmups[i],
            timeout_s=timeout_s,
            schedule_ns=None if schedule_ns is None else schedule_ns[i::processes],
            first_payload=i * len(payloads) // processes,
            watch_pid=watch_pid,
        )
        for i in range(processes)
    ]


def run_processes(shares: list[Share]) -> list[Rows]:
    # spawn, not fork: the caller may have threads (Prefect, the engine supervisor), and forking
    # a threaded process can deadlock the child on a lock some other thread held.
    context = multiprocessing.get_context("spawn")
    pipes: list[multiprocessing.connection.Connection] = []
    procs: list[multiprocessing.process.BaseProcess] = []
    try:
        for index, share in enumerate(shares):
            parent_end, child_end = context.Pipe()
            proc = context.Process(
                target=_process_main,
                args=(child_end, share),
                name=f"embedsweep-load-{index}",
                daemon=True,
            )
            proc.start()
            child_end.close()
            pipes.append(parent_end)
            procs.append(proc)
        _collect(pipes, procs, "ready")
        origin = time.monotonic_ns() + _START_MARGIN_NS
        for pipe in pipes:
            pipe.send(("go", origin))
        return [cast(Rows, payload) for payload in _collect(pipes, procs, "rows")]
    finally:
        for started in procs:
            if started.is_alive():
                started.terminate()
        for started in procs:
            started.join(timeout=5)
            if started.is_alive():
                started.kill()
                started.join()
        for pipe in pipes:
            pipe.close()


def _collect(
    pipes: list[multiprocessing.connection.Connection],
    procs: list[multiprocessing.process.BaseProcess],
    kind: str,
) -> list[object]:
    """One ``kind`` message from every worker, failing as soon as one reports an error or
    dies."""
    received: dict[int, object] = {}
    while len(received) < len(pipes):
        waiting = {pipes[i]: i for i in range(len(pipes)) if i not in received}
        sentinels = {procs[i].sentinel: i for i in waiting.values()}
        ready = multiprocessing.connection.wait([*waiting, *sentinels])
        for item in ready:
            if isinstance(item, int):
                index = sentinels[item]
                if index in received or pipes[index].poll():
                    continue  # it exited after sending; the pipe is read below
                raise EmbedsweepError(
                    f"load process {index} exited with code {procs[index].exitcode} "
                    f"before sending its {kind}",
                    code="load_client_failed",
                )
            index = waiting[cast(multiprocessing.connection.Connection, item)]
            message = pipes[index].recv()
            if message[0] == "error":
                _, name, text, code = message
                if code == ConfigError.code:
                    raise ConfigError(text)
                raise EmbedsweepError(
                    f"load process {index} failed: {name}: {text}", code="load_client_failed"
                )
            received[index] = message[1]
    return [received[i] for i in range(len(pipes))]


def _process_main(pipe: multiprocessing.connection.Connection, share: Share) -> None:
    """A worker process: drive ``share`` on its own event loop and send back its rows."""
    # Ctrl-C reaches the whole process group: let the parent decide (it stops the workers).
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    async def start_gate() -> int:
        pipe.send(("ready", None))
        # In a thread so the loop keeps serving the warm connections' events meanwhile.
        _, origin_mono = await asyncio.to_thread(pipe.recv)
        origin = time.perf_counter_ns() + (origin_mono - time.monotonic_ns())
        # A loop timer may fire up to a millisecond early (libuv's clock is in whole, cached
        # milliseconds): sleep again until the start has really come, so no row is timed
        # before it. (Nothing could set an Event at that instant: it is a time, not an event.)
        while (wait_ns := origin - time.perf_counter_ns()) > 0:  # noqa: ASYNC110
            await asyncio.sleep(wait_ns / 1e9)
        return cast(int, origin)

    try:
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            rows = runner.run(drive(share, start_gate))
    except BaseException as exc:
        code = exc.code if isinstance(exc, EmbedsweepError) else "load_client_failed"
        pipe.send(("error", type(exc).__name__, str(exc), code))
        raise
    pipe.send(("rows", rows))
