"""The device allocator with real processes and real ``flock`` (no mocks): exclusive devices,
all-or-nothing multi-device cells, holder notes, locks freed by a killed holder, and ``auto``
without NVML."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import defaultdict
from pathlib import Path

import pytest

from embedsweep.errors import ConfigError, EmbedsweepError
from embedsweep.gpus import (
    LOCK_DIR_ENV,
    DeviceAllocator,
    holders,
    lock_dir,
    lock_path,
    nvml_devices,
    resolve_devices,
)

ROOT = Path(__file__).resolve().parents[2]


def _python(code: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code)]


def test_two_allocations_in_one_process_do_not_overlap(tmp_path: Path) -> None:
    alloc = DeviceAllocator(tmp_path)
    first = alloc.acquire(["0", "1", "2"], 1, owner="a", timeout_s=0)
    second = alloc.acquire(["0", "1", "2"], 1, owner="b", timeout_s=0)
    assert first.devices == ("0",)  # first free device in the order given
    assert second.devices == ("1",)
    # Only one device left: a two-device cell cannot be placed, and takes nothing meanwhile.
    with pytest.raises(EmbedsweepError) as info:
        alloc.acquire(["0", "1", "2"], 2, owner="c", timeout_s=0)
    assert info.value.code == "device_busy"
    third = alloc.acquire(["0", "1", "2"], 1, owner="d", timeout_s=0)
    assert third.devices == ("2",)
    first.release()
    second.release()
    third.release()
    with alloc.acquire(["0", "1", "2"], 2, owner="e", timeout_s=0) as pair:
        assert pair.devices == ("0", "1")
        assert set(holders(["0", "1", "2"], tmp_path)) == {"0", "1"}
    assert pair.released
    pair.release()  # idempotent
    assert holders(["0", "1", "2"], tmp_path) == {}


def test_all_or_nothing_releases_partial_take(tmp_path: Path) -> None:
    alloc = DeviceAllocator(tmp_path)
    with alloc.acquire(["1"], 1, owner="holder", timeout_s=0):
        with pytest.raises(EmbedsweepError):
            alloc.acquire(["0", "1"], 2, owner="pair", timeout_s=0.05, poll_s=0.01)
        # "0" was taken and given back while "1" was busy.
        with alloc.acquire(["0"], 1, owner="single", timeout_s=0) as single:
            assert single.devices == ("0",)


def test_count_beyond_devices_is_a_config_error_at_once(tmp_path: Path) -> None:
    alloc = DeviceAllocator(tmp_path)
    started = time.monotonic()
    with pytest.raises(ConfigError, match="cannot hold 3 devices"):
        alloc.acquire(["0", "1"], 3, owner="x", timeout_s=10)
    with pytest.raises(ConfigError):
        alloc.acquire(["0", "0"], 2, owner="x", timeout_s=10)  # repeats count once
    with pytest.raises(ConfigError):
        alloc.acquire(["0"], 0, owner="x")
    assert time.monotonic() - started < 1


def test_timeout_names_the_holder(tmp_path: Path) -> None:
    alloc = DeviceAllocator(tmp_path)
    with alloc.acquire(["0"], 1, owner="sweep-a/cell-1", timeout_s=0):
        note = holders(["0"], tmp_path)["0"]
        assert note["owner"] == "sweep-a/cell-1"
        assert note["pid"] == os.getpid()
        assert {"hostname", "acquired_at"} <= note.keys()
        started = time.monotonic()
        with pytest.raises(EmbedsweepError) as info:
            alloc.acquire(["0"], 1, owner="sweep-b", timeout_s=0.3, poll_s=0.05)
        waited = time.monotonic() - started
    assert 0.3 <= waited < 2
    message = str(info.value)
    assert "\n" not in message
    assert "sweep-b" in message
    assert "'sweep-a/cell-1'" in message
    assert f"pid {os.getpid()}" in message


def test_cpu_and_odd_ids_get_their_own_lock_files(tmp_path: Path) -> None:
    assert lock_path(tmp_path, "cpu").name == "device-cpu.lock"
    assert lock_path(tmp_path, "0").name == "device-0.lock"
    odd, other = lock_path(tmp_path, "a/b"), lock_path(tmp_path, "a_b")
    assert odd.parent == tmp_path
    assert odd != other  # sanitised ids never collide
    assert "/" not in odd.name
    alloc = DeviceAllocator(tmp_path)
    with alloc.acquire(["cpu"], 1, owner="x", timeout_s=0) as cpu:
        assert cpu.devices == ("cpu",)
        with pytest.raises(EmbedsweepError):
            alloc.acquire(["cpu"], 1, owner="y", timeout_s=0)
    assert lock_path(tmp_path, "cpu").stat().st_mode & 0o777 == 0o666


def test_lock_dir_from_env_is_created_sticky(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "locks"
    monkeypatch.setenv(LOCK_DIR_ENV, str(target))
    assert lock_dir() == target
    assert target.stat().st_mode & 0o7777 == 0o1777
    assert DeviceAllocator().lock_dir == target


_WORKER = """
import json, os, random, sys, time
from pathlib import Path
from embedsweep.gpus import DeviceAllocator

index, out, go = int(sys.argv[1]), Path(sys.argv[3]), float(sys.argv[4])
rng = random.Random(index)
alloc = DeviceAllocator(Path(sys.argv[2]))
while time.time() < go:
    time.sleep(0.001)
with out.open("w") as f:
    for i in range(6):
        count = 2 if (index + i) % 3 == 0 else 1
        owner = f"w{index}-{i}"
        with alloc.acquire(["0", "1", "2"], count, owner=owner, timeout_s=20, poll_s=0.005) as a:
            start = time.time_ns()
            time.sleep(rng.uniform(0.02, 0.08))
            end = time.time_ns()
            f.write(json.dumps({"devices": list(a.devices), "pid": os.getpid(),
                                "start": start, "end": end}) + "\\n")
"""


def test_concurrent_sweeps_never_share_a_device(tmp_path: Path) -> None:
    """Acceptance: two (here four) sweeps started at once on one host never place two cells on
    the same device; fake device list ["0", "1", "2"], one and two-device cells."""
    locks = tmp_path / "locks"
    go = time.time() + 1.5  # every worker starts its first acquire at the same instant
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                _WORKER,
                str(i),
                str(locks),
                str(tmp_path / f"w{i}.jsonl"),
                repr(go),
            ],
            cwd=ROOT,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(4)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
    intervals: dict[str, list[tuple[int, int, int]]] = defaultdict(list)
    pids = set()
    cells = 0
    for i in range(4):
        for line in (tmp_path / f"w{i}.jsonl").read_text().splitlines():
            cell = json.loads(line)
            cells += 1
            pids.add(cell["pid"])
            assert len(cell["devices"]) == len(set(cell["devices"]))
            for device in cell["devices"]:
                intervals[device].append((cell["start"], cell["end"], cell["pid"]))
    assert cells == 24
    assert len(pids) == 4
    assert set(intervals) == {"0", "1", "2"}  # every device got used
    for device, spans in intervals.items():
        spans.sort()
        for (_, prev_end, prev_pid), (start, _, pid) in itertools.pairwise(spans):
            assert start >= prev_end, f"device {device}: pid {pid} overlapped pid {prev_pid}"
    assert holders(["0", "1", "2"], locks) == {}


def test_killed_holder_frees_its_device(tmp_path: Path) -> None:
    code = f"""
        import sys, time
        from pathlib import Path
        from embedsweep.gpus import DeviceAllocator
        a = DeviceAllocator(Path({str(tmp_path)!r})).acquire(["0"], 1, owner="doomed", timeout_s=5)
        print("held", flush=True)
        time.sleep(60)
    """
    proc = subprocess.Popen(_python(code), cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "held"
        alloc = DeviceAllocator(tmp_path)
        with pytest.raises(EmbedsweepError, match="doomed"):
            alloc.acquire(["0"], 1, owner="next", timeout_s=0)
        assert holders(["0"], tmp_path)["0"]["pid"] == proc.pid
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()
    started = time.monotonic()
    with alloc.acquire(["0"], 1, owner="next", timeout_s=5, poll_s=0.01) as taken:
        assert taken.devices == ("0",)
    assert time.monotonic() - started < 1
    assert holders(["0"], tmp_path) == {}  # the dead holder's note is not reported


def test_auto_without_nvml_is_a_clear_error() -> None:
    if nvml_devices():
        pytest.skip("this host has GPUs that NVML sees")
    assert nvml_devices() == []
    with pytest.raises(ConfigError, match="auto found no GPU") as info:
        resolve_devices(["auto"])
    assert "\n" not in str(info.value)
    assert resolve_devices(["cpu"]) == ["cpu"]
    assert resolve_devices(("0", "1")) == ["0", "1"]


def test_nvml_devices_without_pynvml(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes `import pynvml` raise ImportError
    assert nvml_devices() == []
