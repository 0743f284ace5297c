"""The checks after a cell's timed levels: the harness check of the built-in server
(:func:`harness_check`) and the fidelity probe against a CPU reference (:func:`fidelity_check`)."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

from embedsweep.engines import Launch
from embedsweep.engines.process import ServerProcess
from embedsweep.errors import EmbedsweepError
from embedsweep.records import FidelityResult, HarnessCheck, LevelSummary
from embedsweep.runner.manifest import Item

_log = logging.getLogger(__name__)


def _reference_budget_bytes() -> int:
    """The largest model (weights on disk) the CPU reference loads: a third of this machine's
    memory, so the reference never pushes the host into swap next to a running server."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 3
    except (ValueError, OSError):
        return 8 << 30


def harness_check(
    item: Item, top: LevelSummary, texts: Sequence[str], info: dict[str, Any] | None
) -> HarnessCheck:
    """The built-in server's inputs/s at its last (highest) level against direct encode of the
    same texts (``embedsweep.harness``), the server idle meanwhile."""
    from embedsweep import harness

    plan, meta = item.plan, item.meta
    assert meta is not None
    return harness.check(
        meta.path,
        texts,
        chunk_size=plan.cell.chunk_size,
        concurrency=top.concurrency,
        batch_size=plan.load.batch_size,
        server_inputs_per_s=top.inputs_per_s,
        info=info,
        trust_remote_code=plan.cell.model.trust_remote_code,
        compare=plan.load.harness_check,
    )


def _probe_dtype(
    item: Item, server: ServerProcess, launch: Launch, info: dict[str, Any] | None
) -> str:
    """What the server says it computes in (the built-in server's info, vLLM's start-up log),
    else each engine's rule."""
    from embedsweep import fidelity

    meta = item.meta
    assert meta is not None
    dtype = (info or {}).get("dtype") or fidelity.logged_dtype(server.log_path)
    if not isinstance(dtype, str):
        dtype = fidelity.served_dtype(
            item.final.engine, launch.dtype, launch.devices != ("cpu",), meta.stored_dtype
        )
    return dtype


def fidelity_check(
    item: Item,
    server: ServerProcess,
    launch: Launch,
    run_texts: Sequence[str],
    info: dict[str, Any] | None = None,
) -> FidelityResult:
    """The fidelity probe of ITEM's cell against the running server (``embedsweep.fidelity``),
    RUN_TEXTS the texts its levels sent: outside the timed levels; what it cannot check is a
    verdict, never an exception."""
    from embedsweep import fidelity
    from embedsweep.calibrate import Calibrator, load_tokenizer
    from embedsweep.hfserver.request import matryoshka_of

    plan, cell, meta = item.plan, item.plan.cell, item.meta
    assert meta is not None
    dtype = _probe_dtype(item, server, launch, info)
    if meta.weight_bytes and meta.weight_bytes > _reference_budget_bytes():
        return fidelity.unchecked(
            dtype,
            f"{meta.weight_bytes / 2**30:.1f} GiB of weights is too large for a CPU reference "
            f"on this host ({_reference_budget_bytes() / 2**30:.1f} GiB budget)",
        )
    try:
        trusted = cell.model.trust_remote_code
        reference = fidelity.reference_for(meta.path, trust_remote_code=trusted)
        calibrator = Calibrator(load_tokenizer(meta.path))
        texts = fidelity.probe_texts(
            reference.count,
            cell.chunk_size,
            run_texts,
            lambda n: calibrator.texts(n, 1, fidelity.PROBE_SEED)[0],
        )
        try:
            overlength: str | None = calibrator.texts(
                launch.max_input_tokens + 8, 1, fidelity.PROBE_SEED
            )[0]
        except EmbedsweepError:
            overlength = None
        vectors = reference.encode(texts)
    except Exception as exc:
        _log.warning("%s: no fidelity reference", cell.label, exc_info=True)
        why = f"the reference could not be encoded: {type(exc).__name__}: {exc}"
        return fidelity.unchecked(dtype, why)
    endpoint = fidelity.Endpoint(
        server.url, cell.model.display_name, launch.api_key, plan.load.request_timeout_s
    )
    return fidelity.probe(
        endpoint,
        texts,
        vectors,
        reference_name=reference.name,
        reference_normalized=reference.normalized,
        dtype=dtype,
        overlength_text=overlength,
        matryoshka=matryoshka_of(meta.config)[0],
    )
