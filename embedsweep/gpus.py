"""Which devices a host has, and a cross-process allocator so that two sweeps started at once on
one host never place two cells on the same device.

The allocator holds one ``flock`` per device in a lock directory shared by every user of the host
(:func:`lock_dir`). The kernel drops a ``flock`` when its holder dies, so a killed sweep never
leaves a stale lock behind. Each lock file carries a small JSON note (pid, host, owner, since)
so a person, and the timeout error, can see who holds a device.

The lock descriptors are not inherited by child processes: an engine server started by the holder
does not keep the device locked once the holder is gone.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Any

from embedsweep.errors import ConfigError, EmbedsweepError

__all__ = [
    "DEFAULT_LOCK_DIR",
    "LOCK_DIR_ENV",
    "Allocation",
    "DeviceAllocator",
    "holders",
    "import_pynvml",
    "lock_dir",
    "lock_path",
    "nvml_devices",
    "resolve_devices",
]

_log = logging.getLogger(__name__)

LOCK_DIR_ENV = "EMBEDSWEEP_LOCK_DIR"
DEFAULT_LOCK_DIR = Path("/tmp/embedsweep-locks")  # noqa: S108 - host-wide on purpose, see lock_dir

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


def import_pynvml() -> ModuleType | None:
    """The ``pynvml`` module, or None when it is not installed (a CPU-only host is normal)."""
    try:
        import pynvml
    except Exception:  # ImportError, or a broken install: either way there is no NVML here.
        _log.debug("pynvml cannot be imported", exc_info=True)
        return None
    module: ModuleType = pynvml
    return module


def nvml_devices() -> list[str]:
    """Indices ("0", "1", ...) of the GPUs NVML finds; ``[]`` without pynvml or a working NVML."""
    pynvml = import_pynvml()
    if pynvml is None:
        return []
    try:
        pynvml.nvmlInit()
    except Exception:
        _log.debug("NVML did not initialise", exc_info=True)
        return []
    try:
        count = int(pynvml.nvmlDeviceGetCount())
    except Exception:
        _log.debug("NVML could not count devices", exc_info=True)
        count = 0
    finally:
        with contextlib.suppress(Exception):
            pynvml.nvmlShutdown()
    return [str(i) for i in range(count)]


def resolve_devices(devices: Sequence[str]) -> list[str]:
    """``["auto"]`` becomes the GPUs NVML finds (error when none); any other list is kept as is."""
    if list(devices) == ["auto"]:
        found = nvml_devices()
        if not found:
            raise ConfigError(
                "devices: auto found no GPU (pynvml missing, NVML not initialised or no devices); "
                "list the devices explicitly, e.g. ['0', '1'] or ['cpu']"
            )
        return found
    return list(devices)


def lock_dir() -> Path:
    """``$EMBEDSWEEP_LOCK_DIR`` or ``/tmp/embedsweep-locks``: one directory per host, shared by
    every user (created sticky and world-writable, like /tmp), so all sweeps see the same locks."""
    return _host_lock_dir()


def _host_lock_dir() -> Path:
    env = os.environ.get(LOCK_DIR_ENV)
    path = Path(env) if env else DEFAULT_LOCK_DIR
    _ensure_dir(path)
    return path


def _ensure_dir(path: Path) -> None:
    """Create ``path`` mode 1777 if missing; leave an existing one (maybe another user's) alone."""
    if path.is_dir():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        path.mkdir()
    except FileExistsError:
        return  # another process made it first
    with contextlib.suppress(OSError):
        # Sticky and world-writable like /tmp (mkdir's mode is cut by the umask; chmod is not).
        os.chmod(path, 0o1777)  # noqa: S103 - every user's sweeps must share the host's locks


def lock_path(directory: Path, device: str) -> Path:
    """``device-<id>.lock``; an id that needs sanitising gets a short hash so ids never collide."""
    safe = _UNSAFE.sub("_", device)
    if safe != device or not safe:
        safe = f"{safe}-{hashlib.sha256(device.encode()).hexdigest()[:8]}"
    return directory / f"device-{safe}.lock"


def _open_lock_file(path: Path) -> int:
    """A descriptor on the lock file, created 0o666 if missing.

    An existing file is opened without ``O_CREAT``: with ``fs.protected_regular`` the kernel
    refuses ``O_CREAT`` on another user's file in a sticky directory even when its mode allows.
    """
    while True:
        try:
            return os.open(path, os.O_RDWR)
        except FileNotFoundError:
            pass
        except PermissionError:
            return os.open(path, os.O_RDONLY)  # flock works on a read-only descriptor too
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue  # created by someone else in between: open theirs
        with contextlib.suppress(OSError):
            os.fchmod(fd, 0o666)  # past the umask, so other users can write their notes
        return fd


def _try_lock(path: Path) -> int | None:
    """The locked descriptor, or None when someone else holds the lock."""
    fd = _open_lock_file(path)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return None
        raise
    return fd


def _write_note(fd: int, note: dict[str, Any]) -> None:
    """Replace the lock file's content with ``note`` (best effort: a read-only file stays empty)."""
    data = json.dumps(note, sort_keys=True).encode()
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
    except OSError:
        _log.debug("cannot write the lock note", exc_info=True)


def _unlock(fd: int) -> None:
    """Clear the note, drop the lock, close the descriptor."""
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
    with contextlib.suppress(OSError):
        fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


def holders(devices: Sequence[str], directory: Path | None = None) -> dict[str, dict[str, Any]]:
    """Who holds each held device: its lock note (``{}`` if unreadable); free devices are absent.

    A device counts as held only when its lock really is taken, so a note left by a killed
    process is never reported.
    """
    base = _host_lock_dir() if directory is None else directory
    found: dict[str, dict[str, Any]] = {}
    for device in devices:
        path = lock_path(base, device)
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue  # never locked (or unreadable): nobody to report
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError:
                found[device] = _read_note(fd)
            else:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
    return found


def _read_note(fd: int) -> dict[str, Any]:
    try:
        note = json.loads(os.pread(fd, 65536, 0) or b"{}")
    except (OSError, ValueError):
        return {}
    return note if isinstance(note, dict) else {}


def _describe(device: str, note: dict[str, Any]) -> str:
    if not note:
        return f"{device} by an unknown holder"
    return (
        f"{device} by {note.get('owner', '?')!r} (pid {note.get('pid', '?')} on "
        f"{note.get('hostname', '?')} since {note.get('acquired_at', '?')})"
    )


class Allocation:
    """Devices held together until :meth:`release` (idempotent) or the end of a ``with`` block."""

    def __init__(self, devices: tuple[str, ...], fds: list[int], owner: str) -> None:
        self.devices = devices
        self.owner = owner
        self._fds = fds
        self._mutex = threading.Lock()

    @property
    def released(self) -> bool:
        return not self._fds

    def release(self) -> None:
        """Give the devices back; a second call does nothing."""
        with self._mutex:
            fds, self._fds = self._fds, []
        for fd in fds:
            _unlock(fd)

    def __enter__(self) -> Allocation:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def __repr__(self) -> str:
        state = "released" if self.released else "held"
        return f"Allocation(devices={self.devices!r}, owner={self.owner!r}, {state})"


class DeviceAllocator:
    """Hands out devices of this host one cell at a time, across processes and users."""

    def __init__(self, lock_dir: Path | None = None) -> None:
        if lock_dir is None:
            lock_dir = _host_lock_dir()
        else:
            _ensure_dir(lock_dir)
        self.lock_dir = lock_dir

    def acquire(
        self,
        devices: Sequence[str],
        count: int,
        *,
        owner: str,
        timeout_s: float | None = None,
        poll_s: float = 0.2,
    ) -> Allocation:
        """Hold ``count`` free devices of ``devices`` at once (all or nothing), preferring them in
        the order given; retry every ``poll_s`` until ``timeout_s`` (None: wait forever).

        Raises :class:`ConfigError` when ``count`` cannot ever be met and
        :class:`EmbedsweepError` (code ``device_busy``) on timeout, naming who holds what.
        """
        wanted = list(dict.fromkeys(devices))  # drop repeats, keep order
        if count < 1:
            raise ConfigError(f"device count must be at least 1, got {count}")
        if count > len(wanted):
            raise ConfigError(
                f"cannot hold {count} devices at once from {len(wanted)} ({', '.join(wanted)})"
            )
        deadline = None if timeout_s is None else time.monotonic() + max(timeout_s, 0.0)
        poll = max(poll_s, 0.001)
        while True:
            allocation = self._try_acquire(wanted, count, owner)
            if allocation is not None:
                return allocation
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                raise self._busy_error(wanted, count, owner, timeout_s)
            time.sleep(poll if deadline is None else min(poll, deadline - now))

    def _try_acquire(self, wanted: list[str], count: int, owner: str) -> Allocation | None:
        taken: list[tuple[str, int]] = []
        try:
            for device in wanted:
                fd = _try_lock(lock_path(self.lock_dir, device))
                if fd is not None:
                    taken.append((device, fd))
                    if len(taken) == count:
                        break
        except BaseException:
            for _, fd in taken:
                _unlock(fd)
            raise
        if len(taken) < count:
            for _, fd in taken:
                _unlock(fd)
            return None
        note = {
            "pid": os.getpid(),
            "hostname": socket.gethostname(),
            "owner": owner,
            "acquired_at": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "devices": [device for device, _ in taken],
        }
        for _, fd in taken:
            _write_note(fd, note)
        return Allocation(tuple(device for device, _ in taken), [fd for _, fd in taken], owner)

    def _busy_error(
        self, wanted: list[str], count: int, owner: str, timeout_s: float | None
    ) -> EmbedsweepError:
        held = holders(wanted, self.lock_dir)
        who = "; ".join(_describe(d, note) for d, note in held.items()) or "none held right now"
        return EmbedsweepError(
            f"{owner}: no {count} free device(s) among {', '.join(wanted)} after {timeout_s}s; "
            f"held: {who}",
            code="device_busy",
        )
