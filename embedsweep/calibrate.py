"""Calibrated inputs: texts that are exactly N tokens long as the model's own tokenizer counts them,
special tokens included.

This module owns loading a model's tokenizer with its file-level truncation and padding switched
off (all-MiniLM-L6-v2's tokenizer.json truncates and pads to 128: left on, every count would be
capped and padded), and two ways of making exact texts:

- ``Calibrator.texts``: space-joined vocabulary words, each of which the tokenizer turns into one
  token wherever it stands. The pool of such words is found once per tokenizer, by encoding all
  candidates joined into one text and keeping those that came out as exactly one token. For
  tokenizers whose words provably tokenize independently of their neighbours (see
  ``Calibrator.exact_by_construction``) a text of k words is then exactly k tokens plus the
  special tokens, with no per-text encode: that is what makes thousands of 512-token texts a
  second possible on one core, where encoding each text alone would not be. Each call still has
  the tokenizer count a few of its texts; any other tokenizer has every text counted and repaired
  at its end.
- ``Calibrator.windows``: windows of a real corpus, located once through the corpus' token
  offsets, then each counted by the tokenizer and repaired at its end.

Any words-per-token factor is wrong for some tokenizer; a text that cannot be made exact raises
rather than being returned.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from tokenizers import Encoding, Tokenizer, models

from embedsweep.errors import ConfigError, ModelError

__all__ = [
    "CalibrationError",
    "Calibrator",
    "calibrate",
    "calibrate_corpus",
    "load_tokenizer",
]

# Repair rounds per text before giving up; a word-level tokenizer converges in zero or one round,
# a merge-happy one in a handful.
_MAX_REPAIR_ROUNDS = 32
# Below this many ASCII words the tokenizer is probably not Latin-script-first: accept any letters.
_MIN_ASCII_POOL = 256
# Rounds of "join the candidates, drop the ones that did not come out as one token". A tokenizer
# whose words tokenize alone settles after one round (the second finds nothing to drop).
_POOL_ROUNDS = 4
# Texts per call that the tokenizer counts even when the construction already makes them exact:
# a tripwire for a tokenizer that fooled the independence check, at a cost of a few encodes
# (fewer for long texts, at least one).
_SPOT_CHECKS = 4
_SPOT_TOKENS = 16_384
# Word indices drawn at once: bounds memory for long texts (count x 32k words would be gigabytes).
_DRAW_CHUNK = 1 << 20
# Corpus text per encode call: a tokenizer without a pre-tokenizer (Llama-style BPE, unigram with
# an unsplit Metaspace) runs its model over the whole call as one word, so a many-megabyte corpus
# is cut, at line ends where it can be. Each window is counted on its own afterwards, so the cut
# points cannot make a window inexact.
_CORPUS_CHUNK_CHARS = 1 << 16
# Tries of one window start: "move the end by the miss" settles in one try unless the boundary
# tokens re-merge; after these, another start is drawn.
_WINDOW_REPAIRS = 8
# What str.isspace() calls whitespace, as code points, for vectorised word-start detection.
_WHITESPACE = np.array([c for c in range(0x3001) if chr(c).isspace()], dtype=np.uint32)


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


@dataclass(frozen=True)
class _Judged:
    """One joined-candidates text as the tokenizer saw it."""

    encoding: Encoding
    # Per word: not exactly one token of its own.
    bad: NDArray[np.bool_]
    # Indices of the tokens that lie on words (not on the anchor), in order.
    word_tokens: NDArray[np.int64]


@dataclass(frozen=True)
class _CorpusIndex:
    """A corpus encoded once: where each token starts and ends (characters), and which tokens
    may open a window."""

    text: str
    starts: NDArray[np.int64]
    ends: NDArray[np.int64]
    openers: NDArray[np.int64]


class Calibrator:
    """Produces texts of an exact token count for one tokenizer.

    Texts are space-joined words from a pool of vocabulary entries that each come out as exactly
    one token in the middle of a text; the first word comes from those that are also one token
    with nothing before them (byte-level BPE spells "word" and " word" differently). The first
    two words of the texts of one call differ pairwise, so texts share no prefix beyond the
    leading special tokens and one word (a server's prefix cache cannot flatter them).
    """

    def __init__(self, tokenizer: Tokenizer) -> None:
        if tokenizer.truncation is not None or tokenizer.padding is not None:
            # A copy, so the caller's tokenizer keeps its settings: a truncating tokenizer would
            # cap every count this class makes.
            tokenizer = Tokenizer.from_str(tokenizer.to_str())
            tokenizer.no_truncation()
            tokenizer.no_padding()
        self._tokenizer = tokenizer
        # The difference between with- and without-special-token encodings of the same word is
        # what the post-processor adds ([CLS]+[SEP], BOS+EOS, EOS only...), whatever the family.
        probe = "hello"
        with_special = len(tokenizer.encode(probe, add_special_tokens=True).ids)
        without_special = len(tokenizer.encode(probe, add_special_tokens=False).ids)
        self.special_tokens = with_special - without_special
        pool, independent = self._safe_words()
        if not pool:
            raise CalibrationError("the tokenizer's vocabulary has no single-token words")
        alone = tokenizer.encode_batch_fast(pool, add_special_tokens=False)
        first = [w for w, e in zip(pool, alone, strict=True) if len(e.ids) == 1]
        self._pool = pool
        self._pool_array = np.array(pool, dtype=object)
        # Without any word that stands alone as one token, the repair pass has to fix the start.
        self._first_pool = first or pool
        self._exact_by_construction = independent and bool(first)
        self._corpus: _CorpusIndex | None = None

    @property
    def min_tokens(self) -> int:
        """The shortest target: the special tokens plus one word."""
        return self.special_tokens + 1

    @property
    def pool_size(self) -> int:
        """How many words texts are drawn from (after the first word)."""
        return len(self._pool)

    @property
    def first_pool_size(self) -> int:
        """How many words may open a text: the most distinct texts of ``min_tokens``."""
        return len(self._first_pool)

    @property
    def exact_by_construction(self) -> bool:
        """Whether a text of k pool words is k tokens plus the special tokens without being
        counted. True when the pool check showed each word in a pre-token of its own (the model
        then never sees two words together), or when the model sees whole texts but is a BPE or
        unigram model none of whose vocabulary entries could span a word boundary (Llama-style
        BPE without a pre-tokenizer). Turns False for good if a spot check ever disagrees."""
        return self._exact_by_construction

    def count(self, text: str) -> int:
        """Tokens in ``text`` with special tokens, as the tokenizer counts them."""
        return len(self._tokenizer.encode(text, add_special_tokens=True).ids)

    def count_batch(self, texts: Sequence[str]) -> list[int]:
        """``count`` for many texts in one call."""
        # encode_batch_fast skips offset tracking, which counting does not need.
        encodings = self._tokenizer.encode_batch_fast(list(texts), add_special_tokens=True)
        return [len(e.ids) for e in encodings]

    def texts(self, n_tokens: int, count: int, seed: int) -> list[str]:
        """``count`` distinct texts of exactly ``n_tokens`` tokens (special tokens included),
        reproducible from ``seed``; no two open with the same two words.

        Where ``exact_by_construction`` holds, a few of the texts are counted as a tripwire and
        the rest are exact by how they were built; otherwise every text is counted and the
        inexact ones are repaired at their end.
        """
        self._check_request(n_tokens, count, seed)
        n_words = n_tokens - self.special_tokens
        n_first, n_pool = len(self._first_pool), len(self._pool)
        # Distinct (first, second) word pairs make distinct texts with no shared prefix; one-word
        # texts can only differ in their one word.
        openings = n_first if n_words == 1 else n_first * n_pool
        if count > openings:
            raise ConfigError(
                f"only {openings} distinct {n_tokens}-token texts with distinct openings exist, "
                f"{count} requested"
            )
        # The target joins the seed so that texts of different lengths from one seed are not
        # prefixes of each other (a server's prefix cache would otherwise flatter long inputs).
        rng = np.random.default_rng((seed, n_tokens))
        openings_drawn = rng.choice(openings, size=count, replace=False)
        texts = self._compose(openings_drawn, n_words, rng)
        if self._exact_by_construction:
            spot = texts[: max(1, min(_SPOT_CHECKS, _SPOT_TOKENS // n_tokens))]
            if self.count_batch(spot) == [n_tokens] * len(spot):
                return texts
            # The independence check was fooled: count everything from now on.
            self._exact_by_construction = False
        return self._verify_and_repair(texts, n_tokens, rng)

    def windows(self, corpus_text: str, n_tokens: int, count: int, seed: int) -> list[str]:
        """``count`` distinct windows of ``corpus_text``, each exactly ``n_tokens`` tokens with
        special tokens, reproducible from ``seed``.

        The corpus is encoded once (kept for further calls with the same text); windows start at
        seeded distinct tokens that open a word, span ``n_tokens`` minus the special tokens of
        the corpus' own tokens, and are then counted alone and repaired by moving their end
        (a window's first token may split differently without the text before it).
        """
        self._check_request(n_tokens, count, seed)
        content = n_tokens - self.special_tokens
        index = self._index(corpus_text)
        total = len(index.starts)
        if total < content:
            raise ConfigError(
                f"the corpus is {total} tokens long; a {n_tokens}-token window needs {content} "
                f"besides the {self.special_tokens} special tokens"
            )
        candidates = index.openers[index.openers <= total - content]
        if len(candidates) < count:
            # Scripts without spaces between words have few "openers": any token will do.
            candidates = np.arange(total - content + 1, dtype=np.int64)
        if len(candidates) < count:
            raise ConfigError(
                f"the corpus is too short for {count} distinct {n_tokens}-token windows: "
                f"only {len(candidates)} start positions"
            )
        rng = np.random.default_rng((seed, n_tokens))
        # One permutation: the first ``count`` starts are the windows, the rest are spares for
        # windows that cannot be made exact or that repeat another window's text.
        order = candidates[rng.permutation(len(candidates))].tolist()
        found: list[str] = []
        seen: set[str] = set()
        used = 0
        while len(found) < count:
            if used >= len(order):
                raise CalibrationError(
                    f"could only make {len(found)} distinct exact {n_tokens}-token windows of "
                    f"{count} from this corpus"
                )
            batch = order[used : used + count - len(found)]
            used += len(batch)
            texts = [self._window(index, self._begins(index, s)[0], s + content) for s in batch]
            for start, text, got in zip(batch, texts, self.count_batch(texts), strict=True):
                exact = (
                    text if got == n_tokens else self._repair_window(index, start, got, n_tokens)
                )
                if exact is not None and exact not in seen:
                    seen.add(exact)
                    found.append(exact)
        return found

    def _check_request(self, n_tokens: int, count: int, seed: int) -> None:
        if n_tokens < self.min_tokens:
            raise ConfigError(
                f"cannot make a {n_tokens}-token text: the tokenizer adds {self.special_tokens} "
                f"special tokens, so the smallest input is {self.min_tokens} tokens"
            )
        if count < 0:
            raise ConfigError(f"count must be >= 0, got {count}")
        if seed < 0:
            raise ConfigError(f"seed must be >= 0, got {seed}")

    def _compose(
        self, openings: NDArray[np.int64], n_words: int, rng: np.random.Generator
    ) -> list[str]:
        """Texts from drawn openings (an index into first words, or into (first, second) word
        pairs) followed by uniformly drawn pool words."""
        first_pool, pool = self._first_pool, self._pool_array
        if n_words == 1:
            return [first_pool[i] for i in openings.tolist()]
        firsts, seconds = np.divmod(openings, len(pool))
        texts: list[str] = []
        rows = max(1, _DRAW_CHUNK // n_words)
        for begin in range(0, len(openings), rows):
            end = min(begin + rows, len(openings))
            picks = np.empty((end - begin, n_words - 1), dtype=np.int64)
            picks[:, 0] = seconds[begin:end]
            picks[:, 1:] = rng.integers(0, len(pool), size=(end - begin, n_words - 2))
            words = pool[picks]
            texts.extend(
                first_pool[f] + " " + " ".join(row)
                for f, row in zip(firsts[begin:end].tolist(), words.tolist(), strict=True)
            )
        return texts

    def _verify_and_repair(
        self, texts: list[str], n_tokens: int, rng: np.random.Generator
    ) -> list[str]:
        counts = self.count_batch(texts)
        exact = [
            text if got == n_tokens else self._repair(text.split(" "), got, n_tokens, rng)
            for text, got in zip(texts, counts, strict=True)
        ]
        # Repairs only touch a text's end, so two texts can meet only if one was cut back to
        # its first word: raise rather than return a duplicate.
        if len(set(exact)) < len(exact):
            raise CalibrationError(
                f"could only make {len(set(exact))} distinct {n_tokens}-token texts of {len(exact)}"
            )
        return exact

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

    def _safe_words(self) -> tuple[list[str], bool]:
        """Vocabulary entries that decode to a plain word and come out as exactly one token in
        the middle of a text; and whether such words tokenize independently of each other."""
        tokenizer = self._tokenizer
        size = tokenizer.get_vocab_size(with_added_tokens=False)
        decoded = tokenizer.decode_batch([[i] for i in range(size)], skip_special_tokens=True)
        # Byte-level BPE decodes "Ġword" to " word"; the stripped form is what gets joined.
        # dict.fromkeys: two ids decoding to one word would only skew the draw.
        candidates = list(dict.fromkeys(w for d in decoded if (w := d.strip()).isalpha()))
        added = [t.content for t in tokenizer.get_added_tokens_decoder().values()]
        # Added tokens are cut out of the raw text before anything else: a word containing one
        # would not be the vocabulary entry it came from.
        alpha_added = [a for a in added if a.isalpha()]
        if alpha_added:
            pattern = re.compile("|".join(map(re.escape, alpha_added)), re.IGNORECASE)
            candidates = [w for w in candidates if not pattern.search(w)]
        words = candidates
        final: _Judged | None = None
        order_rng = np.random.default_rng(0)
        for _ in range(_POOL_ROUNDS):
            if not words:
                break
            # A fresh order each round: a word is also judged next to new neighbours.
            order = [words[i] for i in order_rng.permutation(len(words))]
            judged = self._judge_joined(order)
            if not judged.bad.any():
                final = judged
                words = order
                break
            words = [w for w, b in zip(order, judged.bad.tolist(), strict=True) if not b]
        kept = set(words)
        pool = [w for w in candidates if w in kept]
        ascii_words = [w for w in pool if w.isascii()]
        # Plain ASCII words look like the English text most benchmarks send; keep the others only
        # for vocabularies where ASCII words are too few to draw distinct texts from.
        if len(ascii_words) >= _MIN_ASCII_POOL:
            pool = ascii_words
        # An added token with a space inside could match across two words of a text.
        spaced_added = any(any(c.isspace() for c in a) for a in added)
        independent = (
            final is not None
            and not spaced_added
            and (self._own_pre_tokens(final) or self._no_entry_spans_words(final, words))
        )
        return pool, independent

    def _judge_joined(self, words: list[str]) -> _Judged:
        """Encode ``words`` joined by spaces; a word is bad unless exactly one token falls on it
        (its leading space included) and no token reaches into a neighbour."""
        # The last word again in front, as an anchor that is not judged: every word is then
        # judged in the middle of a text (byte-level BPE spells "word" and " word" differently),
        # and the anchor is a string the vocabulary knows (an unknown one can be dropped).
        anchor = words[-1]
        lengths = np.fromiter(map(len, words), dtype=np.int64, count=len(words))
        # Word k owns the space before it and its letters: [region[k], region[k] + 1 + len).
        region = len(anchor) + np.concatenate(([0], np.cumsum(lengths + 1)[:-1]))
        encoding = self._tokenizer.encode(anchor + " " + " ".join(words), add_special_tokens=False)
        offsets = np.array(encoding.offsets, dtype=np.int64).reshape(-1, 2)
        last_char = np.maximum(offsets[:, 1] - 1, offsets[:, 0])
        # -1: the token lies in the anchor.
        first_word = np.searchsorted(region, offsets[:, 0], side="right") - 1
        last_word = np.searchsorted(region, last_char, side="right") - 1
        on_word = first_word >= 0
        bad = np.bincount(first_word[on_word], minlength=len(words)) != 1
        for lo, hi in zip(
            first_word[first_word != last_word].tolist(),
            last_word[first_word != last_word].tolist(),
            strict=True,
        ):
            bad[max(lo, 0) : hi + 1] = True
        return _Judged(encoding, bad, np.flatnonzero(on_word).astype(np.int64))

    @staticmethod
    def _own_pre_tokens(judged: _Judged) -> bool:
        """Whether every word of the last judged text was a pre-token of its own. The model runs
        on each pre-token separately, so a word's tokens then cannot depend on its neighbours;
        pre-tokenizers split on whitespace, punctuation or regexes over adjacent characters,
        which are the same (a space, letters) wherever a pool word stands."""
        ids = judged.encoding.word_ids
        on_words = [ids[i] for i in judged.word_tokens.tolist()]
        if any(i is None for i in on_words) or not on_words:
            return False
        word_ids = np.array(on_words, dtype=np.int64)
        anchor_ids = [i for i in ids[: int(judged.word_tokens[0])] if i is not None]
        return bool(np.all(np.diff(word_ids) > 0)) and all(i < word_ids[0] for i in anchor_ids)

    def _no_entry_spans_words(self, judged: _Judged, words: list[str]) -> bool:
        """Whether a BPE or unigram model that sees several words at once (no pre-tokenizer, or
        Metaspace with split=False) still cannot join two of them: every token of the model
        lies within the segments that the space marker ("▁", "Ġ") opens, so a text's best
        segmentation (unigram) or merge sequence (BPE) is that of each word alone."""
        model = self._tokenizer.model
        if isinstance(model, models.BPE):
            # Dropout makes merges random; prefixes and suffixes make a joined text's tokens
            # differ from a lone word's.
            if model.dropout or model.continuing_subword_prefix or model.end_of_word_suffix:
                return False
        elif not isinstance(model, models.Unigram):
            return False
        tokens = judged.encoding.tokens
        markers = {
            tokens[i][: len(tokens[i]) - len(w)]
            for i, w in zip(judged.word_tokens.tolist(), words, strict=True)
        }
        if len(markers) != 1:
            return False
        marker = markers.pop()
        if not marker:
            return False
        for entry in self._tokenizer.get_vocab(with_added_tokens=False):
            rest = entry
            while rest.startswith(marker):
                rest = rest[len(marker) :]
            # A marker after other text ("s▁the") is what a merge across two words would need;
            # runs of markers alone only match runs of spaces, which the texts never contain.
            if marker in rest:
                return False
        return True

    def _index(self, corpus_text: str) -> _CorpusIndex:
        cached = self._corpus
        if cached is not None and (cached.text is corpus_text or cached.text == corpus_text):
            return cached
        chunks: list[str] = []
        bases: list[int] = []
        begin, size = 0, len(corpus_text)
        while begin < size:
            stop = min(begin + _CORPUS_CHUNK_CHARS, size)
            if stop < size:
                # Cut after a line end, else after a space; a hard cut only in unbroken text.
                cut = corpus_text.rfind("\n", begin, stop)
                if cut <= begin:
                    cut = corpus_text.rfind(" ", begin, stop)
                if cut > begin:
                    stop = cut + 1
            chunks.append(corpus_text[begin:stop])
            bases.append(begin)
            begin = stop
        encodings = self._tokenizer.encode_batch(chunks, add_special_tokens=False)
        parts = [
            np.array(e.offsets, dtype=np.int64).reshape(-1, 2) + base
            for e, base in zip(encodings, bases, strict=True)
        ]
        offsets = np.concatenate(parts) if parts else np.zeros((0, 2), dtype=np.int64)
        starts, ends = offsets[:, 0], offsets[:, 1]
        codes = np.frombuffer(corpus_text.encode("utf-32-le"), dtype=np.uint32)
        is_space = np.isin(codes, _WHITESPACE)
        # Byte-fallback tokens of one character share its offsets: only the first may open.
        new_char = np.ones(len(starts), dtype=bool)
        new_char[1:] = starts[1:] != starts[:-1]
        before = np.zeros(len(starts), dtype=bool)
        before[starts > 0] = is_space[starts[starts > 0] - 1]
        # A token opens a word when whitespace precedes it or when it carries its own leading
        # space (byte-level "Ġword" starts on the space).
        at_space = np.zeros(len(starts), dtype=bool)
        inside = starts < len(codes)
        at_space[inside] = is_space[starts[inside]]
        opens = new_char & ((starts == 0) | before | at_space)
        index = _CorpusIndex(corpus_text, starts, ends, np.flatnonzero(opens).astype(np.int64))
        self._corpus = index
        return index

    @staticmethod
    def _begins(index: _CorpusIndex, first: int) -> list[int]:
        """Where a window opening with token ``first`` may begin, best first: at the token's
        first non-space character (a window reads as text); at the token's own start (byte-level
        "Ġword" owns its space, and "word" alone splits differently); or at the end of the token
        before, taking the whitespace between them (GPT-2's ByteLevel post-processor trims that
        space off the token's offsets)."""
        start, stop = int(index.starts[first]), int(index.ends[first])
        stripped = start
        while stripped < stop and index.text[stripped].isspace():
            stripped += 1
        begins = [stripped]
        if start < stripped:
            begins.append(start)
        if first > 0 and index.ends[first - 1] < start:
            begins.append(int(index.ends[first - 1]))
        return begins

    @staticmethod
    def _window(index: _CorpusIndex, begin: int, end: int) -> str:
        """The corpus text from character ``begin`` to the end of token ``end - 1``."""
        return index.text[begin : int(index.ends[end - 1])]

    def _repair_window(self, index: _CorpusIndex, first: int, got: int, target: int) -> str | None:
        """Move the window's end by the miss until the count is exact, from each possible
        beginning in turn; None when it will not settle or runs off the corpus (the caller draws
        another start). ``got`` is the count of the window from the first beginning."""
        for attempt, begin in enumerate(self._begins(index, first)):
            end = first + target - self.special_tokens
            if attempt > 0:
                text = self._window(index, begin, end)
                got = self.count(text)
                if got == target:
                    return text
            for _ in range(_WINDOW_REPAIRS):
                end += target - got
                if end <= first or end > len(index.starts):
                    break
                text = self._window(index, begin, end)
                got = self.count(text)
                if got == target:
                    return text
        return None


def calibrate(model_dir: Path, n_tokens: int, count: int, seed: int) -> list[tuple[str, int]]:
    """``count`` texts of exactly ``n_tokens`` tokens for the model in ``model_dir``, each with
    its verified count."""
    calibrator = Calibrator(load_tokenizer(model_dir))
    texts = calibrator.texts(n_tokens, count, seed)
    return list(zip(texts, calibrator.count_batch(texts), strict=True))


def calibrate_corpus(
    model_dir: Path, corpus_path: Path, n_tokens: int, count: int, seed: int
) -> list[tuple[str, int]]:
    """``count`` windows of the UTF-8 text file ``corpus_path``, each exactly ``n_tokens``
    tokens for the model in ``model_dir``, with their verified counts."""
    corpus_path = Path(corpus_path)
    try:
        corpus_text = corpus_path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"corpus file is not UTF-8 text: {corpus_path}: {exc}") from exc
    except OSError as exc:
        raise ConfigError(f"cannot read corpus file {corpus_path}: {exc}") from exc
    calibrator = Calibrator(load_tokenizer(model_dir))
    texts = calibrator.windows(corpus_text, n_tokens, count, seed)
    return list(zip(texts, calibrator.count_batch(texts), strict=True))
