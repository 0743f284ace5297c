"""Which architectures each engine version serves as an embedding model.

One JSON snapshot per engine version lives in ``registry_data/`` (``ENGINE-VERSION.json``,
generated from the engine's wheel by :mod:`embedsweep.registry_gen`, which documents the rules):
the architectures served natively for embeddings, the ones the engine serves as embedding models
when asked to (vLLM converts causal LMs with ``--runner pooling``/``--convert embed``, or
``--task embed`` before 0.10; SGLang pools them with ``--is-embedding``), and every architecture
it registers. A release whose code does not convert causal LMs has an empty ``convertible``.
A version without a snapshot uses the nearest older one, and says so. The built-in ``hf``
engine and Infinity serve whatever transformers can load, custom code included when trusted
(Infinity: no ``*ForSequenceClassification``, which it serves as a reranker; see
:func:`support`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Literal

__all__ = [
    "LiveArchitectures",
    "Snapshot",
    "Support",
    "live_architectures",
    "snapshot_for",
    "support",
    "version_key",
]

SupportKind = Literal["native", "convertible", "custom_code", "unsupported"]


@dataclass(frozen=True)
class Snapshot:
    engine: str
    version: str
    embedding: frozenset[str]
    convertible: frozenset[str]
    architectures: frozenset[str] = frozenset()
    # The engine flags that turn a convertible architecture into an embedding server
    # (e.g. ("--convert", "--runner") or ("--task",) for vLLM, ("--is-embedding",) for SGLang).
    convert_flags: tuple[str, ...] = ()


@dataclass(frozen=True)
class LiveArchitectures:
    """What an installed engine reports about itself (``embedding`` None where it cannot say)."""

    version: str
    architectures: frozenset[str]
    embedding: frozenset[str] | None
    differences: tuple[str, ...] = ()


@dataclass(frozen=True)
class Support:
    kind: SupportKind
    snapshot_version: str | None

    @property
    def served(self) -> bool:
        return self.kind in ("native", "convertible")


def version_key(version: str) -> tuple[int, ...]:
    parts = []
    for piece in version.split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


@cache
def _snapshots(engine: str) -> tuple[Snapshot, ...]:
    found = []
    for entry in resources.files("embedsweep.registry_data").iterdir():
        if entry.name.startswith(f"{engine}-") and entry.name.endswith(".json"):
            data = json.loads(entry.read_text(encoding="utf-8"))
            embedding = frozenset(data["embedding"])
            convertible = frozenset(data["convertible"])
            found.append(
                Snapshot(
                    engine=engine,
                    version=str(data["version"]),
                    embedding=embedding,
                    convertible=convertible,
                    architectures=frozenset(data["architectures"]) | embedding | convertible,
                    convert_flags=tuple(data["convert_flags"]),
                )
            )
    return tuple(sorted(found, key=lambda s: version_key(s.version)))


def snapshot_for(engine: str, version: str | None) -> Snapshot | None:
    """The snapshot for ``version``: exact, else the nearest older one, else the newest."""
    snaps = _snapshots(engine)
    if not snaps:
        return None
    if version is None:
        return snaps[-1]
    older = [s for s in snaps if version_key(s.version) <= version_key(version)]
    return older[-1] if older else snaps[0]


@cache
def _transformers_architectures() -> frozenset[str]:
    from transformers.models.auto import modeling_auto

    names: set[str] = set()
    for mapping_name in dir(modeling_auto):
        mapping = getattr(modeling_auto, mapping_name)
        if mapping_name.endswith("_MAPPING_NAMES") and isinstance(mapping, dict):
            for value in mapping.values():
                names.update(value if isinstance(value, tuple | list) else [value])
    return frozenset(names)


def support(
    engine: str,
    version: str | None,
    architecture: str,
    *,
    has_auto_map: bool,
    live: LiveArchitectures | None = None,
) -> Support:
    """How ``engine`` at ``version`` serves ``architecture`` as an embedding model.

    ``live`` is what the installed engine itself reports; where it says, it wins over the
    snapshot (whether a causal LM converts still comes from the snapshot's rules).
    """
    if engine == "infinity" and "SequenceClassification" in architecture:
        # Infinity 0.0.78 picks its engine from config.json (inference/select_model.py): an
        # architecture naming SequenceClassification becomes a reranker or classifier, never an
        # embedding model on /embeddings.
        return Support("unsupported", None)
    if engine in ("hf", "infinity"):
        # Both load text models through sentence-transformers over transformers' Auto classes:
        # Infinity 0.0.78's torch engine is sentence_transformers.SentenceTransformer (its
        # transformer/embedder/sentence_transformer.py; the server and torch extras pull
        # sentence-transformers 3.x and transformers 4.x), which builds AutoModel from the
        # folder, with a mean pooler when the folder has no modules.json. So whatever
        # transformers maps is served, a model's own code (auto_map) only when trusted
        # (the adapter passes --no-trust-remote-code otherwise: Infinity's default trusts).
        # Infinity's environment has its own transformers; this one's answers.
        if architecture in _transformers_architectures():
            return Support("native", None)
        return Support("custom_code" if has_auto_map else "unsupported", None)
    snap = snapshot_for(engine, version)
    if live is not None:
        where = f"{live.version} (installed)"
        if live.embedding is not None and architecture in live.embedding:
            return Support("native", where)
        convertible = snap is not None and architecture in snap.convertible
        if architecture in live.architectures and convertible:
            return Support("convertible", where)
        if live.embedding is not None or architecture not in live.architectures:
            return Support("unsupported", where)
    if snap is None:
        return Support("unsupported", None)
    if architecture in snap.embedding:
        return Support("native", snap.version)
    if architecture in snap.convertible:
        return Support("convertible", snap.version)
    return Support("unsupported", snap.version)


@cache
def live_architectures(
    engine: str, python: str, snapshot_version: str | None = None
) -> LiveArchitectures | None:
    """Ask the engine installed in ``python``'s environment (once per process), with the
    differences from the snapshot of ``snapshot_version`` (default: the installed version's);
    None when the engine is not importable there."""
    from embedsweep.registry_gen import diff_snapshot
    from embedsweep.registry_gen import live_architectures as query

    live = query(engine, python)
    if live is None:
        return None
    snap = snapshot_for(engine, snapshot_version or live["version"])
    differences: list[str] = []
    if snap is not None:
        data_file = resources.files("embedsweep.registry_data") / f"{engine}-{snap.version}.json"
        differences = diff_snapshot(json.loads(data_file.read_text(encoding="utf-8")), live)
    return LiveArchitectures(
        version=live["version"],
        architectures=live["architectures"],
        embedding=live["embedding"],
        differences=tuple(differences),
    )
