"""Calibrated inputs: texts that are exactly N tokens long as the model's own tokenizer counts them,
special tokens included.

This module owns loading a model's tokenizer with its file-level truncation and padding switched
off (all-MiniLM-L6-v2's tokenizer.json truncates and pads to 128: left on, every count would be
capped and padded), the pool of "safe" vocabulary words, and the draw-then-repair procedure that
turns a seed into exact texts. Any words-per-token factor is wrong for some tokenizer, so every
returned text has been counted by the tokenizer itself; a text that cannot be made exact raises
rather than being returned.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from embedsweep.errors import ConfigError, ModelError

__all__ = ["CalibrationError", "Calibrator", "calibrate", "load_tokenizer"]

# Repair rounds per text before giving up; a word-level tokenizer converges in zero or one round,
# a merge-happy one in a handful.
_MAX_REPAIR_ROUNDS = 32
# Rounds of "draw replacements for duplicate texts" before concluding the request is infeasible.
_MAX_DRAW_ROUNDS = 64
# Below this many ASCII words the tokenizer is probably not Latin-script-first: accept any letters.
_MIN_ASCII_POOL = 256


class CalibrationError(ModelError):
    """The tokenizer would not yield exact texts (e.g. no single-token words in its vocabulary)."""


def load_tokenizer(model_dir: Path) -> Tokenizer:
    """The model's fast tokenizer with truncation and padding disabled.

    Reads ``tokenizer.json``; a folder that only has slow-tokenizer files (vocab.txt,
    spiece.model, ...) is converted through ``transformers``.
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ConfigError(f"tokenizer folder not found: {model_dir}")
    tokenizer_file = model_dir / "tokenizer.json"
    tokenizer: Tokenizer
    try:
        if tokenizer_file.is_file():
            tokenizer = Tokenizer.from_file(str(tokenizer_file))
        else:
            # Imported here: transformers is slow to import and only needed for slow-only folders.
            from transformers import AutoTokenizer

            auto = AutoTokenizer.from_pretrained(str(model_dir))
            backend = getattr(auto, "backend_tokenizer", None)
            if not isinstance(backend, Tokenizer):
                raise ConfigError(f"no fast tokenizer can be built from {model_dir}")
            tokenizer = backend
    except ConfigError:
        raise
    except Exception as exc:
        # Tokenizer.from_file raises a bare Exception on bad JSON; transformers raises OSError,
        # ValueError or its own errors: all mean the folder holds no usable tokenizer.
        raise ConfigError(f"cannot load a tokenizer from {model_dir}: {exc}") from exc
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


class Calibrator:
    """Produces texts of an exact token count for one tokenizer.

    Texts are space-joined words drawn from a pool of vocabulary entries that each encode, after a
    space, to exactly one token; the first word comes from those that are also one token with no
    space before them (byte-level BPE spells "word" and " word" differently). For word-level
    pre-tokenizers the count is then exact by construction; a verify-and-repair pass covers
    tokenizers where it is not.
    """

    def __init__(self, tokenizer: Tokenizer) -> None:
        self._tokenizer = tokenizer
        # The difference between with- and without-special-token encodings of the same word is
        # what the post-processor adds ([CLS]+[SEP], BOS+EOS, EOS only...), whatever the family.
        probe = "hello"
        with_special = len(tokenizer.encode(probe, add_special_tokens=True).ids)
        without_special = len(tokenizer.encode(probe, add_special_tokens=False).ids)
        self.special_tokens = with_special - without_special
        self._pool, first = self._safe_words()
        if not self._pool:
            raise CalibrationError("the tokenizer's vocabulary has no single-token words")
        # Without any word that stands alone as one token, the repair pass has to fix the start.
        self._first_pool = first or self._pool

    @property
    def min_tokens(self) -> int:
        """The shortest target: the special tokens plus one word."""
        return self.special_tokens + 1

    @property
    def pool_size(self) -> int:
        """How many words texts are drawn from (after the first word)."""
        return len(self._pool)

    def count(self, text: str) -> int:
        return len(self._tokenizer.encode(text, add_special_tokens=True).ids)

    def count_batch(self, texts: Sequence[str]) -> list[int]:
        encodings = self._tokenizer.encode_batch(list(texts), add_special_tokens=True)
        return [len(e.ids) for e in encodings]

    def texts(self, n_tokens: int, count: int, seed: int) -> list[str]:
        """``count`` distinct texts of exactly ``n_tokens`` tokens, reproducible from ``seed``."""
        if n_tokens < self.min_tokens:
            raise ConfigError(
                f"cannot make a {n_tokens}-token text: the tokenizer adds {self.special_tokens} "
                f"special tokens, so the smallest input is {self.min_tokens} tokens"
            )
        if count < 0:
            raise ConfigError(f"count must be >= 0, got {count}")
        if seed < 0:
            raise ConfigError(f"seed must be >= 0, got {seed}")
        words_per_text = n_tokens - self.special_tokens
        first_pool, pool = self._first_pool, self._pool
        if words_per_text == 1 and count > len(first_pool):
            raise ConfigError(
                f"only {len(first_pool)} distinct {n_tokens}-token texts exist, {count} requested"
            )
        # The target joins the seed so that texts of different lengths from one seed are not
        # prefixes of each other (a server's prefix cache would otherwise flatter long inputs).
        rng = np.random.default_rng((seed, n_tokens))
        found: list[str] = []
        seen: set[str] = set()
        for _ in range(_MAX_DRAW_ROUNDS):
            missing = count - len(found)
            if missing == 0:
                break
            if words_per_text == 1:
                # Single-word texts collide often: draw them without replacement.
                unused = [w for w in first_pool if w not in seen]
                picks = rng.choice(len(unused), size=min(missing, len(unused)), replace=False)
                word_lists = [[unused[i]] for i in picks.tolist()]
            else:
                firsts = rng.integers(0, len(first_pool), size=missing).tolist()
                rest = rng.integers(0, len(pool), size=(missing, words_per_text - 1)).tolist()
                word_lists = [
                    [first_pool[f], *(pool[i] for i in row)]
                    for f, row in zip(firsts, rest, strict=True)
                ]
            texts = [" ".join(words) for words in word_lists]
            counts = self.count_batch(texts)
            for words, text, got in zip(word_lists, texts, counts, strict=True):
                exact = text if got == n_tokens else self._repair(words, got, n_tokens, rng)
                if exact not in seen:
                    seen.add(exact)
                    found.append(exact)
        if len(found) < count:
            raise CalibrationError(
                f"could only make {len(found)} distinct {n_tokens}-token texts of {count}"
            )
        return found

    def _repair(self, words: list[str], got: int, target: int, rng: np.random.Generator) -> str:
        """Add or drop words at the end until the count is exact; raise when it will not settle."""
        pool = self._pool
        for _ in range(_MAX_REPAIR_ROUNDS):
            if got < target:
                words.extend(pool[i] for i in rng.integers(0, len(pool), size=target - got))
            elif len(words) > 1:
                # Keep one word: an empty text would count only the special tokens.
                del words[len(words) - min(got - target, len(words) - 1) :]
            else:
                words[0] = self._first_pool[int(rng.integers(0, len(self._first_pool)))]
            text = " ".join(words)
            got = self.count(text)
            if got == target:
                return text
        raise CalibrationError(
            f"no exact {target}-token text after {_MAX_REPAIR_ROUNDS} repairs (last: {got})"
        )

    def _safe_words(self) -> tuple[list[str], list[str]]:
        """Vocabulary entries that decode to a plain word and re-encode, after a space, to the
        same single token (joined with spaces, each adds exactly one token); and the subset that
        is also a single token with nothing before it (fit to open a text)."""
        tokenizer = self._tokenizer
        size = tokenizer.get_vocab_size(with_added_tokens=False)
        decoded = tokenizer.decode_batch([[i] for i in range(size)], skip_special_tokens=True)
        # Byte-level BPE decodes "Ġword" to " word"; the stripped form is what gets joined.
        candidates = [(i, d.strip()) for i, d in enumerate(decoded) if d.strip().isalpha()]
        spaced = tokenizer.encode_batch([" " + w for _, w in candidates], add_special_tokens=False)
        safe = [w for (i, w), e in zip(candidates, spaced, strict=True) if e.ids == [i]]
        ascii_words = [w for w in safe if w.isascii()]
        # Plain ASCII words look like the English text most benchmarks send; keep the others only
        # for vocabularies where ASCII words are too few to draw distinct texts from.
        words = ascii_words if len(ascii_words) >= _MIN_ASCII_POOL else safe
        # Duplicates would only skew the draw (two ids decoding to one word).
        words = list(dict.fromkeys(words))
        alone = tokenizer.encode_batch(words, add_special_tokens=False)
        first = [w for w, e in zip(words, alone, strict=True) if len(e.ids) == 1]
        return words, first


def calibrate(model_dir: Path, n_tokens: int, count: int, seed: int) -> list[tuple[str, int]]:
    """``count`` texts of exactly ``n_tokens`` tokens for the model in ``model_dir``, each with
    its verified count."""
    calibrator = Calibrator(load_tokenizer(model_dir))
    texts = calibrator.texts(n_tokens, count, seed)
    return list(zip(texts, calibrator.count_batch(texts), strict=True))
