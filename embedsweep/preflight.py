"""Preflight: can this engine serve this model at this input length on this pool? Answered from
metadata alone, before any server starts. Pure functions over :class:`~embedsweep.hub.ModelMeta`.

Length rules mirror each engine (research/ENGINES.md):

* vLLM: the smallest config length key; capped by the tokenizer's ``model_max_length`` for
  absolute-position models; ``sentence_bert_config.json``'s ``max_seq_length`` overrides. An input
  of exactly that many tokens is accepted.
* SGLang: the first of its config keys, no tokenizer or sentence-transformers cap; an input of
  ``>= context length`` tokens is rejected, so the longest accepted input is one less.
* hf (built-in server, the project's own rule): the vLLM rule, so a cell's limit does not change
  when it falls back from vLLM to hf; an input of exactly the limit is accepted.
* infinity: what sentence-transformers (3.4.1 in Infinity 0.0.78's environment; its
  ``models.Transformer``) truncates every input to: ``sentence_bert_config.json``'s
  ``max_seq_length``, else ``min(config.max_position_embeddings, tokenizer model_max_length)``,
  else no limit; special tokens included, an input of exactly that many tokens embedded whole.
  Measured with all-MiniLM-L6-v2: 256 (its sentence_bert_config; BERT's 512 positions and the
  tokenizer's 512 play no part): a 257- or 512-token input gives the vector of its first 256.

What an engine does with a longer input is :data:`OVERLENGTH`: vLLM, SGLang and hf **reject** it
(HTTP 400); Infinity **truncates** it silently (HTTP 200, ``prompt_tokens`` capped), so its
over-length cells are blocked with a message that says a measurement would be of a truncated
input. An engine not listed is taken to reject.

Memory: weights converted to the served dtype, times 1.2 for activations and the engine's
buffers, plus 1.5 GB for the CUDA context, must fit in ``gpu_memory_gb × gpu_memory_utilization ×
tensor_parallel_size``. CPU pools (``gpu_memory_gb: 0``) skip the check.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from embedsweep.hub import ModelMeta
from embedsweep.records import PreflightResult, Reason
from embedsweep.registry import LiveArchitectures, snapshot_for, support

__all__ = [
    "OVERLENGTH",
    "TRUNCATING_ENGINES",
    "Overlength",
    "PoolLimits",
    "file_reasons",
    "max_input_tokens",
    "required_gpu_memory_gb",
    "run_preflight",
]

_VLLM_LENGTH_KEYS = (
    "max_position_embeddings",
    "n_positions",
    "max_seq_len",
    "seq_length",
    "model_max_length",
    "max_sequence_length",
    "max_seq_length",
    "seq_len",
)
_SGLANG_LENGTH_KEYS = (
    "max_sequence_length",
    "seq_length",
    "max_seq_len",
    "model_max_length",
    "max_position_embeddings",
)
Overlength = Literal["rejects", "truncates"]
# What each engine does with an input past its limit (measured on the real servers, README):
# "rejects" answers an error, "truncates" answers 200 with the embedding of the input's head.
OVERLENGTH: dict[str, Overlength] = {
    "vllm": "rejects",
    "sglang": "rejects",
    "hf": "rejects",
    "infinity": "truncates",
}
TRUNCATING_ENGINES = frozenset(e for e, how in OVERLENGTH.items() if how == "truncates")
# tokenizer_config.json uses a huge sentinel (int(1e30)) for "no limit".
_TOKENIZER_NO_LIMIT = 1_000_000_000
NON_COMMERCIAL = ("-nc", "non-commercial", "noncommercial")
RUNTIME_FACTOR = 1.2
RUNTIME_OVERHEAD_GB = 1.5


@dataclass(frozen=True)
class PoolLimits:
    """The part of a pool the preflight looks at."""

    gpu_memory_gb: float = 0.0
    gpu_memory_utilization: float = 0.9
    tensor_parallel_size: int = 1


def _text_config(meta: ModelMeta) -> dict[str, object]:
    # Multimodal and wrapper configs keep the language model's lengths in text_config.
    inner = meta.config.get("text_config")
    return inner if isinstance(inner, dict) else meta.config


def _is_absolute_position(config: dict[str, object]) -> bool:
    if config.get("rope_scaling") or config.get("rope_theta") or config.get("rope_parameters"):
        return False
    return config.get("position_embedding_type", "absolute") == "absolute"


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _sentence_transformers_limit(meta: ModelMeta) -> int | None:
    """sentence-transformers' ``max_seq_length`` as its ``models.Transformer`` sets it (the
    Infinity rule in the module docstring). It reads the loaded model's own (top-level) config
    and the tokenizer's limit, the no-limit sentinel included."""
    st_max = _int((meta.sentence_bert_config or {}).get("max_seq_length"))
    if st_max is not None:
        return st_max
    positions = _int(meta.config.get("max_position_embeddings"))
    if positions is None:
        return None
    tok_max = _int(meta.tokenizer_config.get("model_max_length"))
    return positions if tok_max is None else min(positions, tok_max)


def max_input_tokens(meta: ModelMeta, engine: str) -> int | None:
    """The longest input, in tokens with special tokens, that ``engine`` accepts for this model
    (for an engine that truncates: the longest it embeds whole)."""
    config = _text_config(meta)
    if engine == "infinity":
        return _sentence_transformers_limit(meta)
    if engine == "sglang":
        for key in _SGLANG_LENGTH_KEYS:
            value = _int(config.get(key))
            if value is not None:
                return value - 1
        return None
    lengths = [v for k in _VLLM_LENGTH_KEYS if (v := _int(config.get(k))) is not None]
    limit = min(lengths) if lengths else None
    tok_max = _int(meta.tokenizer_config.get("model_max_length"))
    if tok_max is not None and tok_max < _TOKENIZER_NO_LIMIT and _is_absolute_position(config):
        limit = tok_max if limit is None else min(limit, tok_max)
    st_max = _int((meta.sentence_bert_config or {}).get("max_seq_length"))
    if st_max is not None:
        limit = st_max
    return limit


def required_gpu_memory_gb(meta: ModelMeta, dtype: str) -> float | None:
    weights = meta.served_weight_bytes(dtype)
    if weights is None:
        return None
    return weights / 1e9 * RUNTIME_FACTOR + RUNTIME_OVERHEAD_GB


def _architecture_reasons(
    meta: ModelMeta,
    engine: str,
    version: str | None,
    trusted: bool,
    live: LiveArchitectures | None = None,
) -> list[Reason]:
    arch = meta.architecture
    if arch is None:
        return [
            Reason(
                code="invalid_model_files",
                severity="block",
                message="config.json names no architectures",
            )
        ]
    sup = support(engine, version, arch, has_auto_map=bool(meta.auto_map), live=live)
    if sup.served:
        return []
    if sup.kind == "custom_code":
        if trusted:
            return []
        return [
            Reason(
                code="trust_remote_code_required",
                severity="block",
                message=(
                    f"{arch} is implemented by the model's own code (auto_map); trust this model "
                    "by name (trust_remote_code: true, or --trust-remote-code) to run it"
                ),
            )
        ]
    where = f"{engine} {sup.snapshot_version}" if sup.snapshot_version else engine
    return [
        Reason(
            code="unsupported_architecture",
            severity="block",
            message=f"{where} does not serve {arch} as an embedding model",
        )
    ]


def _live_reasons(engine: str, live: LiveArchitectures | None) -> list[Reason]:
    if live is None or not live.differences:
        return []
    shown = "; ".join(live.differences[:3])
    more = f" (and {len(live.differences) - 3} more)" if len(live.differences) > 3 else ""
    return [
        Reason(
            code="registry_live_differs",
            severity="warn",
            message=f"the installed {engine} differs from the snapshot, and wins: {shown}{more}",
        )
    ]


def _length_reasons(limit: int | None, chunk_size: int, engine: str) -> list[Reason]:
    if limit is None:
        return [
            Reason(
                code="invalid_model_files",
                severity="warn",
                message="no length limit found in config.json; chunk size not checked",
            )
        ]
    if chunk_size > limit:
        if OVERLENGTH.get(engine, "rejects") == "truncates":
            message = (
                f"chunk size {chunk_size} exceeds the longest input {engine} embeds whole for "
                f"this model ({limit} tokens): {engine} truncates longer inputs silently (HTTP "
                "200), so a measurement would be of a truncated input"
            )
        else:
            message = (
                f"chunk size {chunk_size} exceeds the longest input {engine} accepts for this "
                f"model ({limit} tokens)"
            )
        return [Reason(code="exceeds_context", severity="block", message=message)]
    return []


def _memory_reasons(meta: ModelMeta, dtype: str, pool: PoolLimits) -> list[Reason]:
    if pool.gpu_memory_gb <= 0:
        return []
    need = required_gpu_memory_gb(meta, dtype)
    if need is None:
        return [
            Reason(
                code="invalid_model_files",
                severity="warn",
                message="weight size unknown (no safetensors index or weights): memory not checked",
            )
        ]
    have = pool.gpu_memory_gb * pool.gpu_memory_utilization * pool.tensor_parallel_size
    if need > have:
        return [
            Reason(
                code="insufficient_gpu_memory",
                severity="block",
                message=(
                    f"needs about {need:.1f} GB (weights in {dtype} × {RUNTIME_FACTOR} + "
                    f"{RUNTIME_OVERHEAD_GB} GB), the pool gives {have:.1f} GB"
                ),
            )
        ]
    return []


def _license_reasons(meta: ModelMeta) -> list[Reason]:
    lic = meta.license
    if lic and any(marker in lic for marker in NON_COMMERCIAL):
        return [
            Reason(
                code="non_commercial_license",
                severity="warn",
                message=f"license {lic} does not allow commercial use",
            )
        ]
    return []


# Config values the engines read as positive integers: a string or a zero here passes a JSON
# parse and crashes the server.
_POSITIVE_INT_KEYS = (
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "intermediate_size",
    "vocab_size",
    "type_vocab_size",
    *_VLLM_LENGTH_KEYS,
)
_DTYPES = ("float32", "float16", "bfloat16", "float64", "auto")


def _bad_value(value: object) -> bool:
    return not (isinstance(value, int) and not isinstance(value, bool) and value > 0)


def file_reasons(meta: ModelMeta) -> list[Reason]:
    """The model's own files, as the engines will read them: the config values they take as
    numbers, the dtype, and the tokenizer files (a local tokenizer.json must be readable JSON
    with a model). Each finding blocks with ``invalid_model_files`` naming file and field."""
    problems: list[str] = []
    for where, config in (("config.json", meta.config), ("config.json text_config", None)):
        if config is None:
            inner = meta.config.get("text_config")
            if not isinstance(inner, dict):
                continue
            config = inner
        for key in _POSITIVE_INT_KEYS:
            if key in config and config[key] is not None and _bad_value(config[key]):
                problems.append(f"{where}: {key} = {config[key]!r} is not a positive integer")
        for key in ("torch_dtype", "dtype"):
            value = config.get(key)
            if value is not None and str(value).removeprefix("torch.") not in _DTYPES:
                problems.append(f"{where}: {key} = {value!r} is not a dtype")
    archs = meta.config.get("architectures")
    if archs is not None and not (
        isinstance(archs, list) and all(isinstance(a, str) and a for a in archs)
    ):
        problems.append(f"config.json: architectures = {archs!r} is not a list of names")
    st_max = (meta.sentence_bert_config or {}).get("max_seq_length")
    if st_max is not None and _bad_value(st_max):
        problems.append(
            f"sentence_bert_config.json: max_seq_length = {st_max!r} is not a positive integer"
        )
    problems.extend(_tokenizer_problems(meta))
    return [Reason(code="invalid_model_files", severity="block", message=p) for p in problems]


def _tokenizer_problems(meta: ModelMeta) -> list[str]:
    # The one file read here rather than by the hub: a tokenizer.json is often megabytes, and
    # only its being readable matters (every engine, and the calibration, loads it).
    import json

    path = meta.path / "tokenizer.json"
    if not path.is_file():
        return []
    try:
        with path.open("rb") as handle:
            data = json.load(handle)
    except (OSError, ValueError) as exc:
        return [f"tokenizer.json is not readable JSON ({str(exc).splitlines()[0][:120]})"]
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
        return ["tokenizer.json: no tokenizer model in it (field 'model')"]
    return []


def _check(
    meta: ModelMeta,
    *,
    engine: str,
    version: str | None,
    chunk_size: int,
    pool: PoolLimits,
    trusted: bool,
    dtype: str,
    live: LiveArchitectures | None = None,
) -> tuple[list[Reason], int | None]:
    limit = max_input_tokens(meta, engine)
    reasons = [
        *file_reasons(meta),
        *_live_reasons(engine, live),
        *_architecture_reasons(meta, engine, version, trusted, live),
        *_length_reasons(limit, chunk_size, engine),
        *_memory_reasons(meta, dtype, pool),
        *_license_reasons(meta),
    ]
    return reasons, limit


def run_preflight(
    meta: ModelMeta,
    *,
    model: str,
    engine: str,
    chunk_size: int,
    engine_version: str | None = None,
    pool: PoolLimits | None = None,
    trust_remote_code: bool = False,
    dtype: str = "auto",
    fallback_engine: str | None = None,
    live: LiveArchitectures | None = None,
) -> PreflightResult:
    """The verdict for one cell. ``fallback_engine`` is named in the result when the engine cannot
    serve the architecture and the fallback passes every check. ``live`` is the installed
    engine's own registry, when there is one: it wins over the snapshot."""
    pool = pool or PoolLimits()
    if live is not None:
        engine_version = live.version
    elif engine != "hf" and engine_version is None:
        snap = snapshot_for(engine, None)
        engine_version = snap.version if snap else None
    reasons, limit = _check(
        meta,
        engine=engine,
        version=engine_version,
        chunk_size=chunk_size,
        pool=pool,
        trusted=trust_remote_code,
        dtype=dtype,
        live=live,
    )
    blocked = any(r.severity == "block" for r in reasons)
    fallback = None
    unsupported = any(r.code == "unsupported_architecture" for r in reasons)
    if blocked and unsupported and fallback_engine and fallback_engine != engine:
        fb_reasons, _ = _check(
            meta,
            engine=fallback_engine,
            version=None,
            chunk_size=chunk_size,
            pool=pool,
            trusted=trust_remote_code,
            dtype=dtype,
        )
        if not any(r.severity == "block" for r in fb_reasons):
            fallback = fallback_engine
    return PreflightResult(
        model=model,
        engine=engine,
        engine_version=engine_version,
        architecture=meta.architecture,
        chunk_size=chunk_size,
        max_input_tokens=limit,
        verdict="blocked" if blocked else "ok",
        reasons=reasons,
        fallback_engine=fallback,
    )
