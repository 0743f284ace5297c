"""Pid files of engine servers: written on start, removed on stop, and orphans reaped (real
processes: an owner that dies without stopping its server, a server that forked a worker)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from embedsweep.engines import pidfiles
from embedsweep.engines.process import ServerProcess, free_port


@pytest.fixture(autouse=True)
def _state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("EMBEDSWEEP_STATE_DIR", str(tmp_path / "state"))
    return tmp_path / "state"


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


def _wait_gone(pid: int, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return False


# A "server" that forks a worker (as engines do) and writes the worker's pid next to its log.
FORKING_SERVER = "sleep 300 & echo $! > {worker}; wait"


def test_pid_file_lives_as_long_as_the_server(tmp_path: Path) -> None:
    server = ServerProcess(
        ["sh", "-c", "sleep 300"],
        env={},
        log_path=tmp_path / "server.log",
        host="127.0.0.1",
        port=free_port(),
        owner="run-1",
    )
    with server:
        assert server.proc is not None
        [record] = pidfiles.records()
        assert record.pid == server.proc.pid
        assert record.owner == "run-1"
        assert record.owner_pid == os.getpid()
        assert record.alive()
    assert pidfiles.records() == []
    assert _wait_gone(record.pid)


def test_servers_of_a_dead_owner_are_reaped_with_their_workers(tmp_path: Path) -> None:
    worker_file = tmp_path / "worker.pid"
    # The owner: a separate Python process that starts a server and dies without stopping it,
    # as a flow process killed by a cancellation or a crash does.
    owner = textwrap.dedent(
        f"""
        import os, time
        from pathlib import Path
        from embedsweep.engines.process import ServerProcess
        server = ServerProcess(
            ["sh", "-c", {FORKING_SERVER.format(worker=worker_file)!r}],
            env={{}}, log_path=Path({str(tmp_path / "server.log")!r}),
            host="127.0.0.1", port=1, owner="crashed-flow",
        )
        server.start()
        while not Path({str(worker_file)!r}).exists():
            time.sleep(0.02)
        os._exit(1)
        """
    )
    subprocess.run([sys.executable, "-c", owner], check=False, timeout=60, env=os.environ.copy())
    [record] = pidfiles.records()
    worker = int(worker_file.read_text())
    assert record.alive()
    assert _alive(worker)
    assert not record.owner_alive()

    stopped = pidfiles.reap()
    assert [r.pid for r in stopped] == [record.pid]
    assert _wait_gone(record.pid)
    assert _wait_gone(worker)
    assert pidfiles.records() == []


def test_reap_by_owner_leaves_other_owners_alone(tmp_path: Path) -> None:
    mine = ServerProcess(
        ["sh", "-c", "sleep 300"],
        env={},
        log_path=tmp_path / "a.log",
        host="127.0.0.1",
        port=1,
        owner="cancelled-run",
    )
    other = ServerProcess(
        ["sh", "-c", "sleep 300"],
        env={},
        log_path=tmp_path / "b.log",
        host="127.0.0.1",
        port=2,
        owner="another-run",
    )
    with other:
        mine.start()
        assert mine.proc is not None
        assert other.proc is not None
        # Without an owner, live owners' servers (this process owns both) are not orphans.
        assert pidfiles.reap() == []
        stopped = pidfiles.reap(owner="cancelled-run")
        assert [r.pid for r in stopped] == [mine.proc.pid]
        assert _wait_gone(mine.proc.pid)
        mine.proc.wait(timeout=5)
        assert other.proc.poll() is None
        assert [r.owner for r in pidfiles.records()] == ["another-run"]
    assert pidfiles.records() == []


def test_a_reused_pid_is_never_signalled() -> None:
    # A pid file whose pid now belongs to another program (different start time): the file goes,
    # the program stays.
    bystander = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        record = pidfiles.write(bystander.pid, port=1, owner="old", command="vllm serve")
        data = record.path.read_text().replace(
            f'"started": {record.started}', f'"started": {(record.started or 0) + 12345}'
        )
        record.path.write_text(data)
        assert pidfiles.reap(owner="old") == []
        assert bystander.poll() is None
        assert pidfiles.records() == []
    finally:
        bystander.kill()
        bystander.wait()


def test_unreadable_pid_files_are_dropped() -> None:
    folder = pidfiles.servers_dir()
    folder.mkdir(parents=True)
    (folder / "123.json").write_text("{not json")
    assert pidfiles.records() == []
    assert not (folder / "123.json").exists()


def test_a_server_whose_pid_file_cannot_be_written_is_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The state folder is a file: the pid file cannot be written, so the server must not live on
    # unrecorded (nothing could ever reap it).
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv("EMBEDSWEEP_STATE_DIR", str(blocker))
    server = ServerProcess(
        ["sh", "-c", "sleep 300"],
        env={},
        log_path=tmp_path / "server.log",
        host="127.0.0.1",
        port=1,
    )
    with pytest.raises(NotADirectoryError), server:
        pass
    assert server.proc is not None
    assert server.proc.returncode is not None
    assert not _alive(server.proc.pid)


def test_secrets_an_engine_prints_are_redacted_from_its_log(tmp_path: Path) -> None:
    # SGLang takes its API key on the command line and prints its arguments at start-up.
    secret = "sk-run-key-1234"
    server = ServerProcess(
        ["sh", "-c", "echo \"server_args=ServerArgs(api_key='$0')\"; sleep 300", secret],
        env={},
        log_path=tmp_path / "server.log",
        host="127.0.0.1",
        port=1,
        secrets=(secret,),
    )
    with server:
        deadline = time.monotonic() + 10
        # The log's header line names the command (with "ServerArgs" in it): wait for the output.
        while "\nserver_args=" not in (tmp_path / "server.log").read_text():
            assert time.monotonic() < deadline
            time.sleep(0.02)
    text = (tmp_path / "server.log").read_text()
    assert "api_key='***'" in text
    assert secret not in text


def test_each_attempt_of_a_run_gets_its_own_log(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    for word in ("first", "second"):
        server = ServerProcess(
            ["sh", "-c", f"echo {word}"], env={}, log_path=log, host="127.0.0.1", port=1
        )
        with server:
            assert server.proc is not None
            server.proc.wait(timeout=10)
    assert "second" in log.read_text()
    assert "first" not in log.read_text()
    assert "first" in (tmp_path / "server.attempt-1.log").read_text()
