"""A cell's preflight (:func:`preflight_cell`, with fallback routing) and how a pool starts an
engine (:func:`engine_command`, :func:`served_engine`)."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from embedsweep import precision
from embedsweep.config import Cell, EngineCommand, PoolSpec, split_engine
from embedsweep.errors import EmbedsweepError, ModelError
from embedsweep.hub import ModelMeta, resolve_model
from embedsweep.preflight import PoolLimits, run_preflight
from embedsweep.records import PreflightResult, Reason
from embedsweep.registry import LiveArchitectures, live_architectures


def _pool_limits(cell: Cell) -> PoolLimits:
    pool = cell.pool
    return PoolLimits(
        gpu_memory_gb=0.0 if pool.is_cpu else pool.gpu_memory_gb,
        gpu_memory_utilization=pool.gpu_memory_utilization,
        tensor_parallel_size=pool.tensor_parallel_size,
    )


def engine_command(pool: PoolSpec, ref: str) -> EngineCommand | None:
    """How ``pool`` starts engine ``ref`` (``vllm`` or ``vllm@0.33.0``), or None.

    The pool's own entry for ``ref`` wins; a pinned version without one is looked up among the
    engines installed with ``embedsweep engine install``; an unpinned name uses the pool's entry
    for the bare name (None: the engine's default command, e.g. ``vllm`` on the PATH). An entry
    for a pinned version that names no command (only ``args`` or ``env``, e.g. ``--enforce-eager``)
    starts the installed engine with them.
    """
    name, pin = split_engine(ref)
    if ref in pool.engines:
        command = pool.engines[ref]
        installed = _installed(name, pin) if pin and not command.command else None
        if installed is not None:
            return installed.model_copy(update={"args": command.args, "env": command.env})
        return (
            command if command.version or not pin else command.model_copy(update={"version": pin})
        )
    if pin is None:
        return pool.engines.get(name)
    installed = _installed(name, pin)
    if installed is not None:
        return installed
    bare = pool.engines.get(name)
    if bare is not None and bare.version == pin:
        return bare
    return None


def _installed(name: str, pin: str) -> EngineCommand | None:
    """How to start ``name@pin`` installed with ``embedsweep engine install``, or None."""
    from embedsweep import engine_envs

    installed = engine_envs.lookup(name, pin)
    if installed is None:
        return None
    return EngineCommand(
        command=list(installed.command),
        version=pin,
        python=str(installed.python),
        build="cpu" if installed.build == "cpu" else None,
    )


def _engine_version(cell: Cell, ref: str) -> str | None:
    pin = split_engine(ref)[1]
    if pin:
        return pin
    command = engine_command(cell.pool, ref)
    return command.version if command else None


def _unresolvable(cell: Cell, engine: str, error: ModelError) -> PreflightResult:
    return PreflightResult(
        model=cell.model.display_name,
        engine=split_engine(engine)[0],
        engine_version=_engine_version(cell, engine),
        architecture=None,
        chunk_size=cell.chunk_size,
        max_input_tokens=None,
        verdict="blocked",
        reasons=[Reason(code=error.code, severity="block", message=error.message)],
    )


def _live(engine: str, python: str) -> LiveArchitectures | None:
    try:
        return live_architectures(engine, python)
    except EmbedsweepError:
        # An engine that cannot even be imported will fail to start too: the run records that;
        # the preflight falls back to the snapshot.
        return None


class Preflighted(NamedTuple):
    """A cell's preflight: one result per engine checked (the sweep's, then the fallback it
    routes to) and the model's metadata (None when it could not be resolved). A named tuple,
    so ``checks, meta = preflight_cell(cell)`` reads as before."""

    checks: list[PreflightResult]
    meta: ModelMeta | None

    @property
    def final(self) -> PreflightResult:
        """The result that decides: ok → run on its engine; blocked → the cell is blocked."""
        return self.checks[-1]


def preflight_cell(
    cell: Cell, *, fallback_engine: str | None = None, metadata_dir: Path | None = None
) -> Preflighted:
    """Preflight the cell's engine and, when it routes there, the fallback engine.

    The last result decides: ok → run on its engine; blocked → the cell is blocked.
    ``metadata_dir`` is a local mirror of hub models' metadata (see ``hub.resolve_model``).
    """
    try:
        meta = resolve_model(cell.model.source, cell.model.revision, metadata_dir=metadata_dir)
    except ModelError as exc:
        return Preflighted([_unresolvable(cell, cell.engine, exc)], None)

    def check(ref: str, fallback: str | None) -> PreflightResult:
        name = split_engine(ref)[0]
        command = engine_command(cell.pool, ref)
        live = _live(name, command.python) if command and command.python else None
        return run_preflight(
            meta,
            model=cell.model.display_name,
            engine=name,
            engine_version=_engine_version(cell, ref),
            chunk_size=cell.chunk_size,
            pool=_pool_limits(cell),
            trust_remote_code=cell.model.trust_remote_code,
            # The dtype the engine will be started with (auto resolved): the memory it needs.
            dtype=precision.resolve(
                cell.model.dtype,
                on_gpu=list(cell.pool.devices) != ["cpu"],
                stored_dtype=meta.stored_dtype,
            ),
            fallback_engine=fallback,
            live=live,
        )

    first = check(cell.engine, fallback_engine)
    if first.fallback_engine is None:
        return Preflighted([first], meta)
    return Preflighted([first, check(first.fallback_engine, None)], meta)


def served_engine(cell: Cell, final: PreflightResult) -> str:
    """The engine reference a cell is served by: the sweep's (pin included), or its fallback."""
    return cell.engine if final.engine == cell.engine_name else final.engine
