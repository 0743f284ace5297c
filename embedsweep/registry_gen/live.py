"""The installed engine: its architectures asked from its own Python (the engine is imported
there, never here), and how they differ from the snapshot."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Mapping
from typing import Final, TypedDict

from packaging.version import InvalidVersion, Version

from embedsweep.errors import EmbedsweepError
from embedsweep.registry_gen.snapshot import SnapshotData

_QUERY_FAILED: Final = "engine_query_failed"


class LiveRegistry(TypedDict):
    """What an installed engine reports; ``embedding`` is None where it cannot say."""

    engine: str
    version: str
    architectures: frozenset[str]
    embedding: frozenset[str] | None


_LIVE_MARKER: Final = "EMBEDSWEEP-LIVE-REGISTRY "
# Run by the engine's own Python. Engines log to stdout while importing, hence the marker line.
# The embedding set is best effort: vLLM keeps it in private dicts, SGLang in is_generation_model.
_LIVE_SCRIPTS: Final[Mapping[str, str]] = {
    "vllm": """
import json
try:
    import vllm
    from vllm import ModelRegistry
except ImportError:
    print(MARKER + "null")
    raise SystemExit(0)
archs = sorted(ModelRegistry.get_supported_archs())
embedding = None
try:
    from vllm.model_executor.models import registry as reg
    found = [v for k, v in vars(reg).items()
             if k.startswith("_") and k.endswith("_MODELS") and "EMBEDDING" in k
             and isinstance(v, dict)]
    embedding = sorted(set().union(*found)) if found else None
except ImportError:
    pass
print(MARKER + json.dumps({"version": vllm.__version__, "architectures": archs,
                           "embedding": embedding}))
""",
    "sglang": """
import json
try:
    import sglang
    from sglang.srt.models.registry import ModelRegistry
except ImportError:
    print(MARKER + "null")
    raise SystemExit(0)
archs = sorted(ModelRegistry.get_supported_archs())
embedding = None
try:
    from sglang.srt.configs.model_config import is_generation_model
    embedding = sorted(
        a for a in archs if not is_generation_model([a], False)
        and "SequenceClassification" not in a and "RewardModel" not in a
    )
except ImportError:
    pass
print(MARKER + json.dumps({"version": sglang.__version__, "architectures": archs,
                           "embedding": embedding}))
""",
}


def live_architectures(
    engine: str, python: str, *, timeout_s: float = 900.0
) -> LiveRegistry | None:
    """Ask the engine installed in ``python``'s environment for its architectures; None when the
    engine is not importable there. A crash or timeout of the query is an EmbedsweepError."""
    if engine not in _LIVE_SCRIPTS:
        raise EmbedsweepError(f"no live registry query for engine {engine!r}", code=_QUERY_FAILED)
    script = f"MARKER = {_LIVE_MARKER!r}\n" + _LIVE_SCRIPTS[engine]
    try:
        done = subprocess.run(
            [python, "-c", script], capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except FileNotFoundError as exc:
        raise EmbedsweepError(f"no Python at {python}", code=_QUERY_FAILED) from exc
    except subprocess.TimeoutExpired as exc:
        raise EmbedsweepError(
            f"{engine} registry query in {python} took over {timeout_s:.0f} s", code=_QUERY_FAILED
        ) from exc
    answer = [ln for ln in done.stdout.splitlines() if ln.startswith(_LIVE_MARKER)]
    if done.returncode != 0 or not answer:
        lines = [ln.strip() for ln in done.stderr.splitlines() if ln.strip()]
        last = lines[-1] if lines else f"exit status {done.returncode}"
        raise EmbedsweepError(f"{engine} registry query failed: {last}", code=_QUERY_FAILED)
    data = json.loads(answer[-1][len(_LIVE_MARKER) :])
    if data is None:
        return None
    embedding = data.get("embedding")
    return LiveRegistry(
        engine=engine,
        version=str(data["version"]),
        architectures=frozenset(data["architectures"]),
        embedding=None if embedding is None else frozenset(embedding),
    )


def _same_release(a: str, b: str) -> bool:
    """Equal public versions: a local build (``0.33.0+cu130``) is the release it was built from."""
    try:
        return Version(a).public == Version(b).public
    except InvalidVersion:
        return a == b


def diff_snapshot(snapshot: SnapshotData, live: LiveRegistry) -> list[str]:
    """How the installed engine differs from the snapshot, one line each; the live engine wins."""
    engine = snapshot["engine"]
    where = f"the installed {engine} {live['version']}"
    lines = []
    if not _same_release(live["version"], snapshot["version"]):
        lines.append(f"the snapshot is of {engine} {snapshot['version']}, {where} is used")
    pairs: list[tuple[str, frozenset[str] | None, list[str]]] = [
        ("architecture", live["architectures"], snapshot["architectures"]),
        ("embedding architecture", live["embedding"], snapshot["embedding"]),
    ]
    for label, live_names, snap_names in pairs:
        if live_names is None:
            continue
        known = set(snap_names)
        lines += [
            f"{label} {a}: in {where}, not in the snapshot" for a in sorted(live_names - known)
        ]
        lines += [
            f"{label} {a}: in the snapshot, not in {where}" for a in sorted(known - live_names)
        ]
    return lines
