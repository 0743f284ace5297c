"""A pid file per running engine server, so that servers outlive nothing that started them.

An engine runs in its own session (so it can be stopped as a whole group), which also means that
a flow process killed by a cancellation or a crash leaves it running, holding a GPU. Every server
therefore writes ``<state dir>/servers/<pid>.json`` when it starts and removes it when it stops.
:func:`reap` stops the servers whose owner is gone (called when a sweep starts, the ``embedsweep
engine reap`` command) or whose owner token matches (called from a flow's cancellation and crash
hooks). A pid is only signalled when its process start time still matches the file, so a pid
that the kernel reused for some other program is never touched.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = [
    "ServerRecord",
    "group_members",
    "kill_group",
    "reap",
    "records",
    "remove",
    "servers_dir",
    "state_dir",
    "write",
]


def state_dir() -> Path:
    """embedsweep's state folder: ``$EMBEDSWEEP_STATE_DIR`` (default
    ``~/.local/state/embedsweep``): pid files, engines' caches."""
    root = os.environ.get("EMBEDSWEEP_STATE_DIR")
    return Path(root) if root else Path.home() / ".local" / "state" / "embedsweep"


def servers_dir() -> Path:
    """``$EMBEDSWEEP_STATE_DIR/servers`` (default ``~/.local/state/embedsweep/servers``)."""
    return state_dir() / "servers"


def _start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (/proc/PID/stat field 22), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    fields = stat.rpartition(")")[2].split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def group_members(pgid: int, started_after: int | None = None) -> list[int]:
    """Live processes of process group ``pgid`` (started at or after ``started_after``, so a
    group id the kernel handed to a newer session is not mistaken for the old one)."""
    members: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        try:
            state, group, start = fields[0], int(fields[2]), int(fields[19])
        except (IndexError, ValueError):
            continue
        if group != pgid or state == "Z":
            continue
        if started_after is not None and start < started_after:
            continue
        members.append(int(entry.name))
    return members


def kill_group(pgid: int, started_after: int | None, sig: int = signal.SIGKILL) -> bool:
    """Signal group ``pgid`` only while it still has members of that generation; True if it had."""
    if not group_members(pgid, started_after):
        return False
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
    return True


def _alive(pid: int, started: int | None) -> bool:
    now = _start_time(pid)
    if now is None:
        return False
    # A zombie has exited; only its parent's wait() is missing.
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z":
            return False
    return started is None or now == started


@dataclass(frozen=True)
class ServerRecord:
    """What a pid file says about one running server."""

    pid: int
    pgid: int
    started: int | None
    port: int
    owner: str
    owner_pid: int
    owner_started: int | None
    host: str
    command: str
    created_at: float

    @property
    def path(self) -> Path:
        return servers_dir() / f"{self.pid}.json"

    def alive(self) -> bool:
        return _alive(self.pid, self.started)

    def owner_alive(self) -> bool:
        return _alive(self.owner_pid, self.owner_started)


def write(pid: int, *, port: int, owner: str, command: str) -> ServerRecord:
    """Record a just-started server (its group id is its pid: it leads a new session)."""
    record = ServerRecord(
        pid=pid,
        pgid=pid,
        started=_start_time(pid),
        port=port,
        owner=owner,
        owner_pid=os.getpid(),
        owner_started=_start_time(os.getpid()),
        host=socket.gethostname(),
        command=command,
        created_at=time.time(),
    )
    path = record.path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(asdict(record)), encoding="utf-8")
    os.replace(tmp, path)
    return record


def remove(pid: int) -> None:
    with contextlib.suppress(FileNotFoundError):
        (servers_dir() / f"{pid}.json").unlink()


def records() -> list[ServerRecord]:
    """Every pid file of this host; unreadable files are skipped (and removed)."""
    out: list[ServerRecord] = []
    folder = servers_dir()
    if not folder.is_dir():
        return out
    for path in sorted(folder.glob("*.json")):
        try:
            out.append(ServerRecord(**json.loads(path.read_text(encoding="utf-8"))))
        except (OSError, ValueError, TypeError):
            with contextlib.suppress(OSError):
                path.unlink()
    return out


def _kill_group(record: ServerRecord, grace_s: float) -> None:
    if not record.alive():
        kill_group(record.pgid, record.started)  # workers that outlived their leader
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(record.pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while record.alive() and time.monotonic() < deadline:
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(record.pgid, signal.SIGKILL)
    deadline = time.monotonic() + 5.0
    while record.alive() and time.monotonic() < deadline:
        time.sleep(0.05)


def reap(*, owner: str | None = None, grace_s: float = 10.0) -> list[ServerRecord]:
    """Stop orphaned servers and remove their pid files; returns the ones stopped.

    With ``owner``, every server of that owner is stopped (a cancelled or crashed flow run);
    without, only those whose owning process has exited. Servers of other hosts sharing the state
    folder are left alone. Files of servers that already exited are removed silently.
    """
    stopped: list[ServerRecord] = []
    here = socket.gethostname()
    for record in records():
        if record.host != here:
            continue
        if not record.alive():
            # The leader is gone; engine workers it forked may still hold a GPU.
            if kill_group(record.pgid, record.started):
                stopped.append(record)
            remove(record.pid)
            continue
        if (owner is not None and record.owner == owner) or (
            owner is None and not record.owner_alive()
        ):
            _kill_group(record, grace_s)
            remove(record.pid)
            stopped.append(record)
    return stopped
