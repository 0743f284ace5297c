"""GPU utilisation, memory and power sampled through NVML while each load level runs, so a result
says how busy the device was, not only how fast the server answered.

Absent-safe: with CPU devices, without pynvml or without a working NVML (no driver) every call is
a harmless no-op and ``available`` is False. A metric a device does not support is None, and a
failing NVML call never stops the sampler or the load level.
"""

from __future__ import annotations

import contextlib
import logging
import statistics
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from types import ModuleType, TracebackType
from typing import Any

import pyarrow as pa

from embedsweep.gpus import import_pynvml

__all__ = ["TELEMETRY_SCHEMA", "GpuSample", "GpuTelemetry", "memory_used_mib"]

_log = logging.getLogger(__name__)

_MIB = 1024 * 1024

TELEMETRY_SCHEMA = pa.schema(
    [
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("concurrency", pa.int64(), nullable=False),
        pa.field("device", pa.string(), nullable=False),
        pa.field("t_ms", pa.float64(), nullable=False),
        pa.field("gpu_util_pct", pa.float64()),
        pa.field("mem_util_pct", pa.float64()),
        pa.field("mem_used_mib", pa.float64()),
        pa.field("mem_total_mib", pa.float64()),
        pa.field("power_w", pa.float64()),
    ]
)


@dataclass(frozen=True, slots=True)
class GpuSample:
    """One reading of one device; ``t_ms`` counts from the telemetry object's start (monotonic)."""

    concurrency: int
    device: str
    t_ms: float
    gpu_util_pct: float | None
    mem_util_pct: float | None
    mem_used_mib: float | None
    mem_total_mib: float | None
    power_w: float | None


def _gpu_indices(devices: Sequence[str]) -> list[str]:
    """The device ids NVML can address (integers); "cpu" and the like are skipped."""
    return [d for d in dict.fromkeys(devices) if d.strip().isdigit()]


def _guarded(what: str, device: str, call: Callable[..., Any], *args: Any) -> Any:
    """``call(*args)``, or None when NVML refuses (not supported, lost device, ...)."""
    try:
        return call(*args)
    except Exception as exc:
        _log.debug("NVML %s on device %s failed: %r", what, device, exc)
        return None


def _start_nvml(devices: Sequence[str]) -> tuple[ModuleType, dict[str, Any]] | None:
    """Initialised pynvml and a handle per reachable GPU, or None (nothing to sample)."""
    indices = _gpu_indices(devices)
    if not indices:
        return None
    pynvml = import_pynvml()
    if pynvml is None:
        return None
    try:
        pynvml.nvmlInit()
    except Exception:
        _log.debug("NVML did not initialise", exc_info=True)
        return None
    handles: dict[str, Any] = {}
    for device in indices:
        handle = _guarded("handle", device, pynvml.nvmlDeviceGetHandleByIndex, int(device))
        if handle is not None:
            handles[device] = handle
    if not handles:
        with contextlib.suppress(Exception):
            pynvml.nvmlShutdown()
        return None
    return pynvml, handles


def _memory_mib(pynvml: ModuleType, handle: Any, device: str) -> tuple[float | None, float | None]:
    """(used, total) MiB of one device; None for what NVML cannot read."""
    info = _guarded("memory info", device, pynvml.nvmlDeviceGetMemoryInfo, handle)
    used, total = _number(getattr(info, "used", None)), _number(getattr(info, "total", None))
    return (
        None if used is None else used / _MIB,
        None if total is None else total / _MIB,
    )


def _number(value: Any) -> float | None:
    """``value`` as a float, None for anything that is not a number."""
    if value is None or isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


class GpuTelemetry:
    """Samples the integer devices of ``devices`` every ``interval_s`` inside :meth:`level` blocks.

    Take it as a context manager (or call :meth:`close`): NVML is initialised once per object.
    """

    def __init__(self, devices: Sequence[str], interval_s: float = 0.25) -> None:
        self.interval_s = max(interval_s, 0.001)
        self._t0 = time.monotonic_ns()
        self._samples: list[GpuSample] = []
        self._mutex = threading.Lock()
        self._active = False
        started = _start_nvml(devices)
        self._pynvml: ModuleType | None = started[0] if started else None
        self._handles: dict[str, Any] = started[1] if started else {}

    @property
    def available(self) -> bool:
        """True when NVML answers for at least one device of this object."""
        return self._pynvml is not None

    @property
    def devices(self) -> list[str]:
        """The devices being sampled (empty when not available)."""
        return list(self._handles)

    @property
    def samples(self) -> list[GpuSample]:
        with self._mutex:
            return list(self._samples)

    @contextlib.contextmanager
    def level(self, concurrency: int) -> Iterator[None]:
        """Tag every sample taken while the block runs with ``concurrency``; at least one sample
        per device at the start and one at the end, however short the block."""
        if not self.available:
            yield
            return
        if self._active:
            raise RuntimeError("GpuTelemetry.level() blocks cannot nest")
        self._active = True
        stop = threading.Event()
        thread = threading.Thread(
            target=self._run, args=(concurrency, stop), name="embedsweep-gpu-telemetry", daemon=True
        )
        try:
            self._sample_all(concurrency)
            thread.start()
            yield
        finally:
            stop.set()
            if thread.ident is not None:  # it was started
                thread.join()
            self._sample_all(concurrency)
            self._active = False

    def _run(self, concurrency: int, stop: threading.Event) -> None:
        while not stop.wait(self.interval_s):
            self._sample_all(concurrency)

    def _sample_all(self, concurrency: int) -> None:
        """One sample per device; whatever fails is logged and skipped, never raised."""
        pynvml = self._pynvml
        if pynvml is None:
            return
        for device, handle in self._handles.items():
            try:
                sample = self._sample(pynvml, concurrency, device, handle)
            except Exception:
                _log.debug("GPU sample of device %s failed", device, exc_info=True)
                continue
            with self._mutex:
                self._samples.append(sample)

    def _sample(self, pynvml: ModuleType, concurrency: int, device: str, handle: Any) -> GpuSample:
        t_ms = (time.monotonic_ns() - self._t0) / 1e6
        rates = _guarded("utilisation", device, pynvml.nvmlDeviceGetUtilizationRates, handle)
        gpu, mem = _number(getattr(rates, "gpu", None)), _number(getattr(rates, "memory", None))
        used, total = _memory_mib(pynvml, handle, device)
        milliwatts = _number(_guarded("power", device, pynvml.nvmlDeviceGetPowerUsage, handle))
        return GpuSample(
            concurrency=concurrency,
            device=device,
            t_ms=t_ms,
            gpu_util_pct=gpu,
            mem_util_pct=mem,
            mem_used_mib=used,
            mem_total_mib=total,
            power_w=None if milliwatts is None else milliwatts / 1000.0,
        )

    def summary(self, concurrency: int) -> dict[str, float | None]:
        """Mean GPU utilisation, peak memory used and mean power over one level (all devices);
        None for a metric without samples."""
        rows = [s for s in self.samples if s.concurrency == concurrency]
        util = [s.gpu_util_pct for s in rows if s.gpu_util_pct is not None]
        used = [s.mem_used_mib for s in rows if s.mem_used_mib is not None]
        power = [s.power_w for s in rows if s.power_w is not None]
        return {
            "gpu_util_mean_pct": statistics.fmean(util) if util else None,
            "gpu_mem_used_max_mib": max(used) if used else None,
            "gpu_power_mean_w": statistics.fmean(power) if power else None,
        }

    def to_arrow(self, run_id: str) -> pa.Table:
        """Every sample as a table of :data:`TELEMETRY_SCHEMA` (empty, same columns, without)."""
        rows = self.samples
        columns: dict[str, list[Any]] = {
            "run_id": [run_id] * len(rows),
            "concurrency": [s.concurrency for s in rows],
            "device": [s.device for s in rows],
            "t_ms": [s.t_ms for s in rows],
            "gpu_util_pct": [s.gpu_util_pct for s in rows],
            "mem_util_pct": [s.mem_util_pct for s in rows],
            "mem_used_mib": [s.mem_used_mib for s in rows],
            "mem_total_mib": [s.mem_total_mib for s in rows],
            "power_w": [s.power_w for s in rows],
        }
        return pa.Table.from_pydict(columns, schema=TELEMETRY_SCHEMA)

    def close(self) -> None:
        """Shut NVML down (once; later calls and levels do nothing)."""
        pynvml, self._pynvml, self._handles = self._pynvml, None, {}
        if pynvml is not None:
            with contextlib.suppress(Exception):
                pynvml.nvmlShutdown()

    def __enter__(self) -> GpuTelemetry:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def memory_used_mib(devices: Sequence[str]) -> dict[str, float] | None:
    """Memory used now per GPU in MiB, to check a stopped server gave it back; None when NVML
    cannot tell (CPU devices, no pynvml, no driver). A device NVML cannot read is left out."""
    started = _start_nvml(devices)
    if started is None:
        return None
    pynvml, handles = started
    try:
        found: dict[str, float] = {}
        for device, handle in handles.items():
            used, _ = _memory_mib(pynvml, handle, device)
            if used is not None:
                found[device] = used
        return found
    finally:
        with contextlib.suppress(Exception):
            pynvml.nvmlShutdown()
