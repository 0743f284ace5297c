"""Registry snapshots generated from an engine's released wheel, and the check against a live
engine.

A snapshot (``registry_data/ENGINE-VERSION.json``) says which architectures one engine release
serves as embedding models. It is generated, never typed: the wheel is read with ``zipfile`` and
its Python sources with ``ast``; the engine is never imported (it pins its own torch and CUDA
stack, see research/ENGINES.md). The same wheel always gives the same bytes.

Where things are:

- ``wheel``: reading a wheel, once (member names, each source parsed at most once, on demand)
  and the ``ast`` helpers both engines' rules share;
- ``vllm``: vLLM's rules (the ``_*_MODELS`` dicts of its model registry, the causal-LM
  conversion), documented there with the files they come from;
- ``sglang``: SGLang's rules (``EntryClass`` declarations, ``is_generation_model``,
  ``forward(..., get_embedding)``), documented there likewise;
- ``snapshot``: :func:`generate` (a wheel opened once, handed to its engine's rules),
  :func:`dumps_snapshot`, :func:`write_snapshot` and :func:`refresh` (pip download, then
  generate);
- ``live``: :func:`live_architectures` (the installed engine asked from its own Python) and
  :func:`diff_snapshot`.

Each snapshot repeats its engine's rules under ``rules``.
"""

from __future__ import annotations

from embedsweep.registry_gen.live import LiveRegistry, diff_snapshot, live_architectures
from embedsweep.registry_gen.snapshot import ENGINE_BUILDS as ENGINE_BUILDS
from embedsweep.registry_gen.snapshot import (
    ENGINE_PACKAGES,
    GENERATOR,
    SCHEMA_VERSION,
    SnapshotData,
    SnapshotSource,
    dumps_snapshot,
    generate,
    refresh,
    write_snapshot,
)

__all__ = [
    "ENGINE_PACKAGES",
    "GENERATOR",
    "SCHEMA_VERSION",
    "LiveRegistry",
    "SnapshotData",
    "SnapshotSource",
    "diff_snapshot",
    "dumps_snapshot",
    "generate",
    "live_architectures",
    "refresh",
    "write_snapshot",
]
