"""The engine server of a cell: what it is started with (:func:`build_launch`), the precision it
says it serves, and whether it gave back its port and its devices' memory after the stop."""

from __future__ import annotations

import secrets
import time

from embedsweep import precision
from embedsweep.config import split_engine
from embedsweep.engines import Launch
from embedsweep.engines.process import ServerProcess, free_port, port_is_free
from embedsweep.errors import ServerError
from embedsweep.hub import ModelMeta, is_hub_id
from embedsweep.records import PreflightResult
from embedsweep.runner.plan import CellPlan
from embedsweep.runner.preflight import engine_command, served_engine

# After a stop, a device's used memory within this much of its level before the start counts as
# returned (the driver's own bookkeeping moves a little).
GPU_MEMORY_SLACK_MIB = 256.0


def build_launch(
    plan: CellPlan,
    meta: ModelMeta,
    final: PreflightResult,
    devices: tuple[str, ...],
    max_input_tokens: int,
) -> Launch:
    cell = plan.cell
    ref = served_engine(cell, final)
    command = engine_command(cell.pool, ref)
    if command is None and split_engine(ref)[1]:
        name, pin = split_engine(ref)
        raise ServerError(
            f"{ref} is not installed (embedsweep engine install {name}=={pin}) and pool "
            f"{cell.pool.name!r} names no command for it",
            code="engine_not_installed",
        )
    return Launch(
        model_path=cell.model.source if is_hub_id(cell.model.source) else meta.path,
        served_name=cell.model.display_name,
        port=free_port(),
        api_key=secrets.token_urlsafe(24),
        max_input_tokens=max_input_tokens,
        # One precision per comparison: auto resolved once, the same for every engine.
        dtype=precision.resolve(
            cell.model.dtype, on_gpu=devices != ("cpu",), stored_dtype=meta.stored_dtype
        ),
        revision=cell.model.revision,
        trust_remote_code=cell.model.trust_remote_code,
        tensor_parallel_size=cell.pool.tensor_parallel_size,
        gpu_memory_utilization=cell.pool.gpu_memory_utilization,
        devices=devices,
        command=tuple(command.command) if command else (),
        version=final.engine_version,
        env=dict(command.env) if command else {},
        build=command.build if command else None,
        extra_args=tuple(command.args) if command else (),
    )


def served_precision(engine: str, server: ServerProcess) -> tuple[str | None, str | None]:
    """The dtype a healthy server says it computes in (the built-in server's info, vLLM's
    start-up log; None when it does not say), and for the built-in server how its model started
    (compiled, cached or eager)."""
    from embedsweep import fidelity

    if engine == "hf":
        from embedsweep.harness import server_info

        info = server_info(server.url) or {}
        dtype, startup = info.get("dtype"), info.get("startup")
        return (
            dtype if isinstance(dtype, str) else None,
            startup if isinstance(startup, str) else None,
        )
    return fidelity.logged_dtype(server.log_path), None


def server_port_released(server: ServerProcess) -> bool | None:
    if server.proc is None:
        return None
    return port_is_free(server.host, server.port)


def memory_returned(devices: tuple[str, ...], before: dict[str, float] | None) -> bool | None:
    from embedsweep.telemetry import memory_used_mib

    if before is None:
        return None
    deadline = time.monotonic() + 10.0
    while True:
        after = memory_used_mib(devices)
        if after is None:
            return None
        if all(after.get(d, 0.0) <= before.get(d, 0.0) + GPU_MEMORY_SLACK_MIB for d in devices):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)
