"""Was the host quiet while a level was measured? CPU time of everything outside the run.

The cores are shared: a level measured while another process computes gives a fraction of the
normal figure (2.3 req/s where ~67 is normal) and nothing else says so. Around each level this
reads ``/proc``: the whole machine's busy CPU time (``/proc/stat``) and the CPU time of the run's
own processes (this process, its threads and children, reaped ones included, and the engine
server's session), and reports the difference as the cores that *other* processes kept busy,
with the 1-minute load average. A level where others used more than :data:`QUIET_OTHER_CORES`
cores is flagged (``host_quiet`` false) wherever its figures are shown. Linux only; elsewhere
(no ``/proc``) the fields stay None.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["QUIET_OTHER_CORES", "HostLoad", "HostSampler"]

# Other processes using more than this many cores on average during a level make it noisy.
QUIET_OTHER_CORES = 0.25
_HZ = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PROC = Path("/proc")


@dataclass(frozen=True)
class HostLoad:
    other_cpu_cores: float
    load_1m: float
    quiet: bool


def _busy_jiffies() -> int | None:
    try:
        fields = _PROC.joinpath("stat").read_text().split("\n", 1)[0].split()
    except OSError:
        return None
    # user nice system idle iowait irq softirq steal: all but idle and iowait are busy.
    values = [int(v) for v in fields[1:9]]
    return sum(values) - values[3] - values[4]


def _stat(pid: str) -> list[str] | None:
    try:
        return (_PROC / pid / "stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None


def _own_jiffies(session: int | None) -> int:
    """CPU time of this process (threads and reaped children included), its live descendants,
    and every process of SESSION (the engine server's)."""
    me = os.getpid()
    rows: dict[int, list[str]] = {}
    for entry in _PROC.iterdir():
        if entry.name.isdigit() and (fields := _stat(entry.name)) is not None:
            rows[int(entry.name)] = fields
    children: dict[int, list[int]] = {}
    for pid, fields in rows.items():
        children.setdefault(int(fields[1]), []).append(pid)
    ours: set[int] = set()
    todo = [me]
    while todo:
        pid = todo.pop()
        if pid not in ours:
            ours.add(pid)
            todo.extend(children.get(pid, ()))
    if session is not None:
        ours.update(pid for pid, fields in rows.items() if int(fields[3]) == session)
    total = 0
    for pid in ours:
        fields = rows.get(pid)
        if fields is None:
            continue
        # utime stime cutime cstime (fields 14-17 of stat; here after the ")" at 11-14).
        total += sum(int(v) for v in fields[11:15])
    return total


class HostSampler:
    """``start()`` before a level, ``stop()`` after it: what else used the host meanwhile."""

    def __init__(self, server_session: int | None = None) -> None:
        self._session = server_session
        self._start: tuple[float, int, int] | None = None

    def start(self) -> None:
        busy = _busy_jiffies()
        if busy is None:
            self._start = None
            return
        self._start = (time.monotonic(), busy, _own_jiffies(self._session))

    def stop(self) -> HostLoad | None:
        if self._start is None:
            return None
        busy = _busy_jiffies()
        if busy is None:
            return None
        began, busy0, own0 = self._start
        wall = time.monotonic() - began
        if wall <= 0:
            return None
        other = max(0, (busy - busy0) - (_own_jiffies(self._session) - own0)) / _HZ / wall
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
        return HostLoad(other_cpu_cores=other, load_1m=load, quiet=other <= QUIET_OTHER_CORES)
