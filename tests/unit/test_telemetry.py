"""GPU telemetry: the real absent path (no NVML on a CPU host) and, through a FAKE ``pynvml``
module, the sampling logic itself (tags per level, typed table, unsupported metrics, failing
calls)."""

from __future__ import annotations

import sys
import threading
import time
import types
from collections.abc import Callable
from dataclasses import dataclass, field

import pyarrow as pa
import pytest

from embedsweep.gpus import nvml_devices, resolve_devices
from embedsweep.telemetry import TELEMETRY_SCHEMA, GpuTelemetry, memory_used_mib

EXPECTED_COLUMNS = [
    "run_id",
    "concurrency",
    "device",
    "t_ms",
    "gpu_util_pct",
    "mem_util_pct",
    "mem_used_mib",
    "mem_total_mib",
    "power_w",
]
SUMMARY_KEYS = {"gpu_util_mean_pct", "gpu_mem_used_max_mib", "gpu_power_mean_w"}
MIB = 1024 * 1024


def _wait_for(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Poll until ``condition`` holds (a loaded CI box may sample slower than the interval)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for samples"
        time.sleep(0.005)


def _assert_empty_and_typed(telemetry: GpuTelemetry) -> None:
    assert telemetry.samples == []
    table = telemetry.to_arrow("run-1")
    assert table.num_rows == 0
    assert table.column_names == EXPECTED_COLUMNS
    assert table.schema == TELEMETRY_SCHEMA
    summary = telemetry.summary(4)
    assert summary.keys() == SUMMARY_KEYS
    assert all(value is None for value in summary.values())


def test_real_absent_path_is_silent() -> None:
    """This host has no GPU and no libnvidia-ml: everything is a harmless no-op."""
    if nvml_devices():
        pytest.skip("this host has GPUs that NVML sees")
    with GpuTelemetry(["0", "1"], interval_s=0.01) as telemetry:
        assert telemetry.available is False
        with telemetry.level(4):
            time.sleep(0.03)
        _assert_empty_and_typed(telemetry)
    assert memory_used_mib(["0"]) is None


def test_cpu_devices_and_missing_pynvml(monkeypatch: pytest.MonkeyPatch) -> None:
    with GpuTelemetry(["cpu"]) as cpu:
        assert cpu.available is False
        with cpu.level(1):
            pass
        _assert_empty_and_typed(cpu)
    assert memory_used_mib(["cpu"]) is None
    monkeypatch.setitem(sys.modules, "pynvml", None)  # `import pynvml` raises ImportError
    with GpuTelemetry(["0"]) as missing:
        assert missing.available is False
        with missing.level(1):
            pass
        _assert_empty_and_typed(missing)
    assert memory_used_mib(["0"]) is None


# --- FAKE pynvml: there is no GPU on this host, so the sampling logic is tested against a stand-in
# module that mimics pynvml's API (functions, result structs, NVMLError classes).


class NVMLError(Exception):
    pass


class NVMLError_NotSupported(NVMLError):  # pynvml's own name
    pass


@dataclass
class _Util:
    gpu: int
    memory: int


@dataclass
class _Mem:
    used: int
    total: int


@dataclass
class FakeNvml:
    """State behind the fake module: the test sets ``base_util`` per level."""

    base_util: int = 30
    calls: int = 0
    inits: int = 0
    shutdowns: int = 0
    fail_util_calls: set[int] = field(default_factory=set)
    util_calls: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def module(self) -> types.ModuleType:
        fake = types.ModuleType("pynvml")
        fake.NVMLError = NVMLError  # type: ignore[attr-defined]
        fake.NVMLError_NotSupported = NVMLError_NotSupported  # type: ignore[attr-defined]
        fake.nvmlInit = self.init  # type: ignore[attr-defined]
        fake.nvmlShutdown = self.shutdown  # type: ignore[attr-defined]
        fake.nvmlDeviceGetCount = lambda: 2  # type: ignore[attr-defined]
        fake.nvmlDeviceGetHandleByIndex = self.handle  # type: ignore[attr-defined]
        fake.nvmlDeviceGetUtilizationRates = self.utilization  # type: ignore[attr-defined]
        fake.nvmlDeviceGetMemoryInfo = self.memory  # type: ignore[attr-defined]
        fake.nvmlDeviceGetPowerUsage = self.power  # type: ignore[attr-defined]
        return fake

    def init(self) -> None:
        self.inits += 1

    def shutdown(self) -> None:
        self.shutdowns += 1

    def handle(self, index: int) -> str:
        if index > 1:
            raise NVMLError("Invalid Argument")
        return f"h{index}"

    def utilization(self, handle: str) -> _Util:
        with self.lock:
            self.util_calls += 1
            if self.util_calls in self.fail_util_calls:
                raise NVMLError("Unknown Error")
        offset = 10 if handle == "h1" else 0
        return _Util(gpu=self.base_util + offset, memory=self.base_util // 2)

    def memory(self, handle: str) -> _Mem:
        with self.lock:
            self.calls += 1  # memory used grows with every reading: "changing numbers"
            return _Mem(used=(1000 + self.calls) * MIB, total=80_000 * MIB)

    def power(self, handle: str) -> int:
        if handle == "h1":
            raise NVMLError_NotSupported("Not Supported")
        return 150_000  # mW


@pytest.fixture
def fake_nvml(monkeypatch: pytest.MonkeyPatch) -> FakeNvml:
    state = FakeNvml()
    monkeypatch.setitem(sys.modules, "pynvml", state.module())
    return state


def test_fake_nvml_samples_are_tagged_per_level(fake_nvml: FakeNvml) -> None:
    with GpuTelemetry(["0", "cpu", "1", "7"], interval_s=0.01) as telemetry:
        assert telemetry.available is True
        assert telemetry.devices == ["0", "1"]  # cpu skipped, 7 has no handle
        fake_nvml.base_util = 30
        with telemetry.level(1):
            _wait_for(lambda: len(telemetry.samples) >= 10)
        between = len(telemetry.samples)
        time.sleep(0.05)
        assert len(telemetry.samples) == between  # nothing is sampled outside a level
        fake_nvml.base_util = 70
        with telemetry.level(8):
            _wait_for(lambda: len(telemetry.samples) >= between + 10)
        samples = telemetry.samples
        table = telemetry.to_arrow("run-7")
        level_1, level_8 = telemetry.summary(1), telemetry.summary(8)
        assert telemetry.summary(99) == dict.fromkeys(SUMMARY_KEYS)
    assert fake_nvml.inits == 1
    assert fake_nvml.shutdowns == 1

    assert {s.concurrency for s in samples} == {1, 8}
    for level, base in ((1, 30), (8, 70)):
        rows = [s for s in samples if s.concurrency == level]
        assert len(rows) >= 10  # the start and end rounds and the ticks waited for
        assert {s.gpu_util_pct for s in rows if s.device == "0"} == {base}
        assert {s.gpu_util_pct for s in rows if s.device == "1"} == {base + 10}
        assert {s.mem_util_pct for s in rows} == {base // 2}
        assert {s.power_w for s in rows if s.device == "0"} == {150.0}
        assert {s.power_w for s in rows if s.device == "1"} == {None}  # NotSupported
        assert {s.mem_total_mib for s in rows} == {80_000.0}
    assert [s.t_ms for s in samples] == sorted(s.t_ms for s in samples)
    assert samples[0].mem_used_mib is not None
    assert samples[-1].mem_used_mib == max(s.mem_used_mib or 0 for s in samples)

    # Both devices are read in every round, so the mean is the midpoint of their values.
    assert level_1["gpu_util_mean_pct"] == pytest.approx(35.0)
    assert level_8["gpu_util_mean_pct"] == pytest.approx(75.0)
    assert level_1["gpu_power_mean_w"] == pytest.approx(150.0)
    assert level_1["gpu_mem_used_max_mib"] == max(
        s.mem_used_mib or 0 for s in samples if s.concurrency == 1
    )
    assert level_8["gpu_mem_used_max_mib"] == samples[-1].mem_used_mib

    assert table.schema == TELEMETRY_SCHEMA
    assert table.column_names == EXPECTED_COLUMNS
    assert table.num_rows == len(samples)
    assert set(table.column("run_id").to_pylist()) == {"run-7"}
    assert table.schema.field("concurrency").type == pa.int64()
    assert table.schema.field("power_w").type == pa.float64()
    assert table.column("power_w").null_count == len([s for s in samples if s.device == "1"])


def test_fake_nvml_short_level_still_sampled(fake_nvml: FakeNvml) -> None:
    with GpuTelemetry(["0", "1"], interval_s=30) as telemetry:
        started = time.monotonic()
        with telemetry.level(2):
            pass
        assert time.monotonic() - started < 1  # the sampler does not sit out its interval
        samples = telemetry.samples
    assert len(samples) == 4  # one at the start and one at the end, per device
    assert {(s.device, s.concurrency) for s in samples} == {("0", 2), ("1", 2)}


def test_fake_nvml_failing_calls_do_not_stop_the_sampler(fake_nvml: FakeNvml) -> None:
    fake_nvml.fail_util_calls = set(range(3, 9))  # a burst of errors right after the start
    with GpuTelemetry(["0"], interval_s=0.01) as telemetry:
        with telemetry.level(3):
            _wait_for(lambda: fake_nvml.util_calls >= 12)
        samples = telemetry.samples
    assert len(samples) >= 10
    failed = [s for s in samples if s.gpu_util_pct is None]
    assert len(failed) == 6
    assert all(s.mem_used_mib is not None for s in failed)  # the other metrics still read
    assert samples[-1].gpu_util_pct == 30  # and utilisation came back after the burst


def test_fake_nvml_exception_inside_a_level_still_closes_it(fake_nvml: FakeNvml) -> None:
    with GpuTelemetry(["0"], interval_s=0.01) as telemetry:
        with pytest.raises(ValueError, match="load failed"), telemetry.level(5):
            raise ValueError("load failed")
        with telemetry.level(6):
            pass
        assert {s.concurrency for s in telemetry.samples} == {5, 6}
    assert not any(t.name == "embedsweep-gpu-telemetry" for t in threading.enumerate())


def test_fake_nvml_memory_used(fake_nvml: FakeNvml) -> None:
    used = memory_used_mib(["cpu", "0", "1"])
    assert used == {"0": 1001.0, "1": 1002.0}
    assert fake_nvml.inits == fake_nvml.shutdowns == 1


def test_fake_nvml_init_failure_is_absent(monkeypatch: pytest.MonkeyPatch) -> None:
    state = FakeNvml()
    fake = state.module()

    def broken() -> None:
        raise NVMLError("Driver Not Loaded")

    fake.nvmlInit = broken  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    with GpuTelemetry(["0"]) as telemetry:
        assert telemetry.available is False
        with telemetry.level(1):
            pass
        _assert_empty_and_typed(telemetry)
    assert memory_used_mib(["0"]) is None
    assert nvml_devices() == []


def test_fake_nvml_devices(fake_nvml: FakeNvml) -> None:
    assert nvml_devices() == ["0", "1"]
    assert resolve_devices(["auto"]) == ["0", "1"]
    assert fake_nvml.inits == fake_nvml.shutdowns == 2
