"""Where the built-in server's work runs: how many threads the model gets, what is left for the
front end (HTTP, JSON, tokenizing), and the dtype it computes in. Chosen from the cores the process
is given (its CPU affinity), logged at start-up and served on ``GET /embedsweep/info`` so a run
records what it measured.

On a CPU the model's intra-op threads spin at their barriers, and a thread descheduled by
another process stalls every one of them: the model gets the given cores while they are free, and
fewer when other processes take a share (the governor below; one thread has a core of its own); the
front end (HTTP, JSON, tokenizing) runs between batches on any core. A CPU ``auto`` dtype is
bfloat16 only where the CPU computes it natively and a measured matmul shows it faster than
float32 (``embedsweep.precision.cpu_bf16_pays``), float32 elsewhere: the rule every engine of a
sweep is started with.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from embedsweep.precision import cpu_has_bf16, resolve

__all__ = [
    "Placement",
    "ThreadGovernor",
    "choose",
    "cpu_has_bf16",
    "given_cores",
    "place_model_thread",
]

_log = logging.getLogger("embedsweep.hfserver")


def given_cores() -> tuple[int, ...]:
    """The CPUs this process may run on (its affinity), in order."""
    try:
        return tuple(sorted(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return tuple(range(os.cpu_count() or 1))


@dataclass(frozen=True)
class Placement:
    device: str
    dtype: str
    cores: int
    model_threads: int
    frontend: str

    def describe(self) -> str:
        return (
            f"{self.device} {self.dtype}: model {self.model_threads} thread(s) of {self.cores} "
            f"core(s); front end: {self.frontend}"
        )

    def fields(self) -> dict[str, object]:
        return asdict(self)


def choose(
    device: str,
    dtype: str,
    *,
    stored_dtype: str = "float32",
    model_threads: int | None = None,
    cores: int | None = None,
    bf16: bool | None = None,
) -> Placement:
    """The placement for DEVICE ("cpu", "cuda", "cuda:N") and the asked DTYPE (``auto`` or a
    name). MODEL_THREADS overrides the rule; CORES and BF16 default to this host's."""
    count = cores if cores is not None else len(given_cores())
    if device == "cpu":
        threads = model_threads or count
        frontend_cores = max(count - threads, 0)
        dtype = resolve(dtype, on_gpu=False, bf16=bf16)
        frontend = (
            f"asyncio loop and tokenizer, unbound: {frontend_cores} core(s) the model leaves, "
            "and the model's between batches"
        )
        if frontend_cores == 0:
            frontend = "asyncio loop and tokenizer between the model's batches"
    else:
        # The GPU does the model's work; a CPU thread only launches it.
        threads = model_threads or 1
        dtype = resolve(dtype, on_gpu=True, stored_dtype=stored_dtype)
        frontend = f"asyncio loop and tokenizer on {count} core(s)"
    return Placement(
        device=device, dtype=dtype, cores=count, model_threads=threads, frontend=frontend
    )


def place_model_thread(threads: int, cores: Sequence[int]) -> tuple[int, ...]:
    """Called from the model's thread before it runs THREADS intra-op threads: the cores the
    model's thread may now use. One thread is bound to the last of the given CORES; more threads
    run on all of them (unbound first, so that the threads torch then starts may use every core).
    The front end (the event loop's thread) is never bound.

    Bound, the model keeps a core of its own: the scheduler moves other processes to the rest
    instead of sharing the model's core with them, as vLLM's CPU build binds its worker (measured
    beside one busy process, direct encode of 16 x 128 tokens on one thread: 38-45 inputs/s
    unbound, 43-49 bound). The front end's work comes between batches, while the model waits for
    it, so it may use the model's core then: kept to the other cores, it queued behind the busy
    process there and the model idled ~8 ms a batch (beside one busy process, 16 clients of 32
    tokens: the model busy 91-93% of the time, 95-96% with the front end unbound, and no slower
    in its batches)."""
    wanted = (cores[-1],) if threads == 1 and len(cores) > 1 else tuple(cores)
    try:
        os.sched_setaffinity(0, wanted)  # 0: the calling thread only
    except (AttributeError, OSError):  # not Linux, or a core taken away meanwhile
        return tuple(cores)
    return wanted


_HZ = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _cpu_jiffies() -> tuple[int, int] | None:
    """(busy CPU time of the whole machine, of this process), in clock ticks. Busy leaves out
    idle, iowait and steal (the hypervisor's, not a process's). Niced processes count: a niced
    process still takes a core for a slice now and then, and each slice stalls a spinning
    barrier (measured: direct encode on 2 threads fell from ~340 to 23 inputs/s beside niced
    work, on 1 thread it kept ~195)."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
        own = Path("/proc/self/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq = (int(v) for v in fields[1:8])
    # utime and stime of every thread (fields 14 and 15 of stat; here after the ")" at 11, 12).
    return user + nice + system + irq + softirq, int(own[11]) + int(own[12])


class ThreadGovernor:
    """The model's threads on a CPU, following what other processes leave of the given cores.

    The model's threads spin at every barrier (OpenMP's default, fastest on a quiet host); a
    process that takes one of their cores stalls each barrier until the scheduler comes back to
    the thread it preempted, and a 2-thread model on 2 cores next to one busy process serves a
    tenth of what 1 thread does. So every ``interval_s`` (between batches) this reads the cores
    that other processes used since the last look (``/proc``) and sets the threads to the cores
    they left, rounded, never below one or above the placement's; it goes back up only with a
    margin, so a load near the boundary does not flip it on every look.
    """

    def __init__(
        self,
        placement: Placement,
        set_threads: Callable[[int], None],
        *,
        interval_s: float = 1.0,
        sample: Callable[[], tuple[int, int] | None] = _cpu_jiffies,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.most = placement.model_threads
        self.cores = placement.cores
        self.threads = self.most
        self.changes = 0
        self.other_cores: float | None = None
        self._set = set_threads
        self._interval = interval_s
        self._sample = sample
        self._clock = clock
        self._last: tuple[float, int, int] | None = None
        self._due = 0.0

    def tick(self) -> int:
        """Look again if due; the threads the model now uses."""
        now = self._clock()
        if now < self._due:
            return self.threads
        self._due = now + self._interval
        got = self._sample()
        if got is None:
            return self.threads
        last, self._last = self._last, (now, *got)
        if last is None or now <= last[0]:
            return self.threads
        wall = now - last[0]
        other = max(0.0, ((got[0] - last[1]) - (got[1] - last[2])) / _HZ / wall)
        self.other_cores = other
        want = self.wanted(other)
        if want > self.threads and self.wanted(other + 0.2) <= self.threads:
            want = self.threads  # not clearly free yet
        if want != self.threads:
            _log.info(
                "other processes used %.2f of %d cores: the model now runs %d thread(s)",
                other,
                self.cores,
                want,
            )
            self._set(want)
            self.threads = want
            self.changes += 1
        return self.threads

    def wanted(self, other: float) -> int:
        return max(1, min(self.most, self.cores - int(other + 0.5)))
