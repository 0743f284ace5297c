"""Run one engine server as a supervised subprocess.

The server gets its own process group (so engines that fork workers are stopped whole), its
output goes to the run's server.log, readiness is polled on ``/health`` with a timeout while
watching for an early exit, and stopping is SIGTERM to the group, then SIGKILL after a grace
period. Secrets are passed through the environment and redacted from the logged command line.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import shlex
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

from embedsweep.diagnose import diagnose_log
from embedsweep.engines import pidfiles
from embedsweep.errors import ServerError

__all__ = ["ServerProcess", "free_port", "port_is_free", "tail"]


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (the server may still lose a race: see port_in_use)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_is_free(host: str, port: int, timeout_s: float = 5.0) -> bool:
    """Whether ``port`` can be bound again within ``timeout_s`` (a stopped server released it)."""
    deadline = time.monotonic() + timeout_s
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except OSError:
                pass
            else:
                return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)


def tail(path: Path, lines: int = 20) -> list[str]:
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 64 * 1024))
            text = fh.read().decode("utf-8", errors="replace")
    except OSError:
        return []
    return [line for line in text.splitlines() if line.strip()][-lines:]


def _replace_with(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


class ServerProcess:
    """A server subprocess; use as a context manager so it is stopped on every exit path."""

    def __init__(
        self,
        argv: list[str],
        *,
        env: dict[str, str],
        log_path: Path,
        host: str,
        port: int,
        secrets: tuple[str, ...] = (),
        owner: str = "",
    ) -> None:
        self.argv = argv
        self.owner = owner
        self.env = env
        self.log_path = log_path
        self.host = host
        self.port = port
        self._secrets = tuple(s for s in secrets if s)
        self.proc: subprocess.Popen[bytes] | None = None
        self._started: int | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def _rotate_log(self) -> None:
        """A retry of the same run starts a fresh server.log; earlier attempts keep theirs as
        server.attempt-N.log, so a diagnosis only ever reads this attempt's output."""
        if not self.log_path.exists() or self.log_path.stat().st_size == 0:
            return
        n = 1
        while (rotated := self.log_path.with_name(f"server.attempt-{n}.log")).exists():
            n += 1
        os.replace(self.log_path, rotated)

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._rotate_log()
        with self.log_path.open("ab") as log:
            log.write(f"# embedsweep: {self.redact(shlex.join(self.argv))}\n".encode())
            if self.env:
                shown = " ".join(f"{k}={v}" for k, v in sorted(self.env.items()))
                log.write(f"# embedsweep env: {self.redact(shown)}\n".encode())
            log.flush()
            try:
                self.proc = subprocess.Popen(
                    self.argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env={**os.environ, **self.env},
                    start_new_session=True,
                )
            except FileNotFoundError:
                raise ServerError(
                    f"engine command not found: {self.argv[0]}", code="engine_not_installed"
                ) from None
        try:
            record = pidfiles.write(
                self.proc.pid,
                port=self.port,
                owner=self.owner,
                command=self.redact(shlex.join(self.argv))[:500],
            )
        except BaseException:
            # Without its pid file nothing could ever reap it: stop it now.
            self.stop()
            raise
        self._started = record.started

    def _healthy(self) -> bool:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=2)
        try:
            conn.request("GET", "/health")
            return conn.getresponse().status == 200
        except OSError:
            return False
        finally:
            conn.close()

    def wait_healthy(self, timeout_s: float) -> float:
        """Seconds until ``/health`` answered 200; raises ServerError on exit or timeout."""
        assert self.proc is not None, "start() first"
        started = time.monotonic()
        while True:
            code = self.proc.poll()
            if code is not None:
                raise self._exit_error(code)
            if self._healthy():
                return time.monotonic() - started
            if time.monotonic() - started > timeout_s:
                raise ServerError(
                    f"server not healthy after {timeout_s:.0f} s",
                    code="startup_timeout",
                    transient=True,
                )
            time.sleep(0.25)

    def _exit_error(self, exit_code: int) -> ServerError:
        return self.exit_error(exit_code, "before becoming healthy")

    def exit_error(self, exit_code: int, when: str, *, tail_lines: int = 0) -> ServerError:
        """Why the server died (``when`` says at what point), from its own log (``diagnose``).

        Transient only for causes that may pass (a port taken between choosing and binding it);
        with ``tail_lines`` the last lines of the log follow the evidence in the message.
        """
        found = diagnose_log(self.log_path)
        cause = "server_crashed" if found.cause == "unknown" else found.cause
        if found.evidence:
            detail = self.redact(found.evidence)
        else:
            last = tail(self.log_path, 1)
            detail = self.redact(last[-1]) if last else "no output"
        how = f"killed by signal {-exit_code}" if exit_code < 0 else f"exited with code {exit_code}"
        message = f"server {how} {when}: {detail}"
        if tail_lines:
            message += self.log_tail(tail_lines)
        return ServerError(message, code=cause, transient=found.transient)

    def log_tail(self, lines: int = 20) -> str:
        """The log's last LINES, secrets redacted, as a block to append to a failure message."""
        shown = [self.redact(line) for line in tail(self.log_path, lines)]
        return "\n--- server.log (last lines) ---\n" + "\n".join(shown)

    def stop(self, grace_s: float = 15.0) -> int | None:
        """Stop the whole process group; returns the server's exit code (None if it could not
        be stopped: its pid file then stays for ``embedsweep engine reap``)."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                try:
                    proc.wait(timeout=grace_s)
                except subprocess.TimeoutExpired:
                    # Stuck in the kernel (a hung GPU driver): leave the pid file for a reap.
                    return None
        # Workers an engine forked may outlive the leader: sweep the group once more, but only
        # while it still has members of this server's generation (the leader's pid, which is the
        # group id, may already belong to someone else).
        pidfiles.kill_group(proc.pid, self._started)
        pidfiles.remove(proc.pid)
        self._redact_log()
        return proc.returncode

    def _redact_log(self) -> None:
        """Engines print their own arguments (SGLang's --api-key among them): the run's log is
        rewritten with every secret replaced before anything reads or uploads it."""
        if not self._secrets or not self.log_path.exists():
            return
        data = self.log_path.read_bytes()
        clean = self._scrub(data)
        if clean != data:
            _replace_with(self.log_path, clean)

    def copy_log(self, target: Path) -> None:
        """The log as it is now, secrets redacted, written to TARGET (a run that shares this
        server keeps the log its diagnosis read)."""
        if target != self.log_path and self.log_path.exists():
            _replace_with(target, self._scrub(self.log_path.read_bytes()))

    def _scrub(self, data: bytes) -> bytes:
        for secret in self._secrets:
            data = data.replace(secret.encode(), b"***")
        return data

    def exited(self) -> int | None:
        """The exit code if the server has exited, else None."""
        return None if self.proc is None else self.proc.poll()

    def _signal(self, sig: int) -> None:
        assert self.proc is not None
        if self.proc.returncode is not None:
            # Reaped: its pid (= group id) may be reused; only signal surviving members.
            pidfiles.kill_group(self.proc.pid, self._started, sig)
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)

    def __enter__(self) -> ServerProcess:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
