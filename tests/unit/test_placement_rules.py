"""Where the built-in server puts its work: the model's threads from the cores it is given, the
CPU dtype from what the CPU computes natively, and the governor that gives a core back when
another process takes it. The governor's samples are given here (the rule is the subject); the
real server under a real busy process is in tests/integration/test_hfserver_placement.py."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from embedsweep.hfserver.placement import (
    ThreadGovernor,
    choose,
    cpu_has_bf16,
    given_cores,
    place_model_thread,
)

HZ = 100


def test_a_cpu_model_gets_the_given_cores_and_bfloat16_only_where_it_pays() -> None:
    native = choose("cpu", "auto", cores=2, bf16=True)
    assert (native.dtype, native.model_threads, native.cores) == ("bfloat16", 2, 2)
    assert choose("cpu", "auto", cores=8, bf16=False).dtype == "float32"
    assert choose("cpu", "float32", cores=2, bf16=True).dtype == "float32"
    assert choose("cpu", "auto", cores=4, model_threads=3).model_threads == 3
    assert "1 core(s) the model leaves" in choose("cpu", "auto", cores=4, model_threads=3).frontend


def test_a_gpu_model_is_half_precision_by_default() -> None:
    assert choose("cuda", "auto", cores=16).dtype == "float16"
    assert choose("cuda", "auto", stored_dtype="bfloat16", cores=16).dtype == "bfloat16"
    assert choose("cuda:1", "float32", cores=16).dtype == "float32"
    assert choose("cuda", "auto", cores=16).model_threads == 1


def test_cpuinfo_flags_tell_native_bfloat16(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 avx512_vnni\n")
    assert cpu_has_bf16(info)
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f\n")
    assert not cpu_has_bf16(info)
    assert not cpu_has_bf16(tmp_path / "missing")


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("other_cores", "threads"),
    [(0.0, 2), (0.3, 2), (0.67, 1), (1.0, 1), (1.9, 1)],
)
def test_the_governor_leaves_other_processes_their_cores(other_cores: float, threads: int) -> None:
    clock = Clock()
    set_to: list[int] = []
    busy = own = 0

    def sample() -> tuple[int, int]:
        return busy, own

    governor = ThreadGovernor(
        choose("cpu", "auto", cores=2, bf16=True), set_to.append, sample=sample, clock=clock
    )
    assert governor.tick() == 2  # the first look only takes a sample
    clock.now += 1.0
    own += 150  # the model used 1.5 cores ...
    busy += 150 + int(other_cores * HZ)  # ... and others the rest
    assert governor.tick() == threads
    assert set_to == ([] if threads == 2 else [threads])
    assert governor.other_cores == pytest.approx(other_cores, abs=0.01)


def test_the_governor_goes_back_up_only_when_the_core_is_clearly_free() -> None:
    clock = Clock()
    set_to: list[int] = []
    samples = iter([(0, 0), (200, 100), (345, 200), (445, 300)])
    governor = ThreadGovernor(
        choose("cpu", "auto", cores=2, bf16=True), set_to.append, sample=lambda: next(samples),
        clock=clock,
    )  # fmt: skip
    governor.tick()
    clock.now = 1.0
    assert governor.tick() == 1  # others: 1.0 core
    clock.now = 2.0
    assert governor.tick() == 1  # others: 0.45, near the boundary: stays
    clock.now = 2.5
    assert governor.tick() == 1  # not due yet (one look a second)
    clock.now = 3.0
    assert governor.tick() == 2  # others: 0.0
    assert set_to == [1, 2]
    assert governor.changes == 2


def test_one_model_thread_gets_a_core_of_its_own_and_more_threads_share_them_all() -> None:
    # Real affinities of real threads: a stand-in for the model's worker and the event loop.
    cores = given_cores()
    if len(cores) < 2:
        pytest.skip("one core: nothing to bind apart")
    frontend_ready, done = threading.Event(), threading.Event()
    frontend_id: list[int] = []

    def frontend() -> None:
        frontend_id.append(threading.get_native_id())
        frontend_ready.set()
        done.wait(10)

    seen: dict[str, object] = {}

    def model() -> None:
        frontend_ready.wait(10)
        seen["alone"] = place_model_thread(1, cores)
        seen["alone_now"] = os.sched_getaffinity(0)
        seen["frontend_alone"] = os.sched_getaffinity(frontend_id[0])
        seen["shared"] = place_model_thread(2, cores)
        seen["shared_now"] = os.sched_getaffinity(0)

    threads = [threading.Thread(target=frontend), threading.Thread(target=model)]
    for t in threads:
        t.start()
    threads[1].join(10)
    done.set()
    threads[0].join(10)
    assert seen["alone"] == (cores[-1],)
    assert seen["alone_now"] == {cores[-1]}
    # The front end may use every core, the model's too (its work comes between batches).
    assert seen["frontend_alone"] == set(cores)
    assert seen["shared"] == cores
    assert seen["shared_now"] == set(cores)
    assert os.sched_getaffinity(0) == set(cores)  # this thread was never touched
