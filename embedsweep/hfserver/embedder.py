"""Load a model with sentence-transformers and turn token ids into embeddings.

Tokenization never truncates or pads on its own: the tokenizer file's settings are overridden so
the server sees, counts and rejects exactly what the client sent.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["Embedder", "Encoded", "NullModel"]

Encoded = dict[str, list[list[int]]]

_DTYPES = {"float32": "float32", "float16": "float16", "bfloat16": "bfloat16"}

_log = logging.getLogger("embedsweep.hfserver")


def tokenizer_function(tokenizer: Any) -> Callable[[list[str]], Encoded]:
    """Texts to token ids as the model's tokenizer counts them (special tokens added, never
    truncated or padded), one list per feature the model takes.

    A fast tokenizer is called through its Rust tokenizer directly, in the calling thread: the
    transformers wrapper costs about as much again as the tokenizing, and its batch call hands a
    single short text to a thread pool (~140 us a request under load against ~30 us here).
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    names = list(getattr(tokenizer, "model_input_names", ()) or ())
    if backend is None or "input_ids" not in names:

        def slow(texts: list[str]) -> Encoded:
            enc = tokenizer(
                texts, add_special_tokens=True, truncation=False, padding=False, verbose=False
            )
            return {k: list(v) for k, v in enc.items()}

        return slow
    from tokenizers import Tokenizer

    own = Tokenizer.from_str(backend.to_str())  # a copy: the wrapper's settings stay its own
    own.no_truncation()
    own.no_padding()
    wanted = [n for n in names if n in ("input_ids", "token_type_ids", "attention_mask")]

    def fast(texts: list[str]) -> Encoded:
        encodings = (
            [own.encode(texts[0], add_special_tokens=True)]
            if len(texts) == 1
            else own.encode_batch(texts, add_special_tokens=True)
        )
        out: Encoded = {}
        for name in wanted:
            if name == "input_ids":
                out[name] = [e.ids for e in encodings]
            elif name == "attention_mask":
                out[name] = [e.attention_mask for e in encodings]
            else:
                out[name] = [e.type_ids for e in encodings]
        return out

    return fast


class Embedder:
    """A sentence-transformers model plus its tokenizer, used from one worker thread."""

    def __init__(
        self,
        model_dir: Path,
        *,
        device: str = "cpu",
        dtype: str = "auto",
        trust_remote_code: bool = False,
        compile_threads: tuple[int, ...] = (),
    ) -> None:
        import torch
        from sentence_transformers import SentenceTransformer

        model_kwargs: dict[str, Any] = {}
        if dtype in _DTYPES:
            model_kwargs["torch_dtype"] = getattr(torch, _DTYPES[dtype])
        elif device == "cpu":
            # 'auto' is resolved by the placement (embedsweep.hfserver.placement); here float32.
            model_kwargs["torch_dtype"] = torch.float32
        self._torch = torch
        self.model = SentenceTransformer(
            str(model_dir),
            device=device,
            trust_remote_code=trust_remote_code,
            model_kwargs=model_kwargs,
            local_files_only=True,
        )
        self.model.eval()
        self.tokenizer = self.model.tokenizer
        self._tokenize = tokenizer_function(self.tokenizer)
        self.dtype = str(next(self.model.parameters()).dtype).removeprefix("torch.")
        pad = getattr(self.tokenizer, "pad_token_id", None)
        self._pad_id = pad if isinstance(pad, int) else 0
        self._pad_left = getattr(self.tokenizer, "padding_side", "right") == "left"
        normalizes = any(type(m).__name__ == "Normalize" for m in self.model)
        self._renormalize = normalizes and self.dtype != "float32"
        # A compiled graph keeps transformers' SDPA (the kernel would break the graph).
        if (
            device == "cpu"
            and self.dtype in ("bfloat16", "float32")
            and not (trust_remote_code or compile_threads)
        ):
            self._use_range_attention()
        attention = getattr(
            getattr(self._auto_model(), "config", None), "_attn_implementation", None
        )
        self.runtime = f"torch {torch.__version__} eager, {attention or 'default'} attention"
        self._compiled: Callable[[dict[str, Any]], dict[str, Any]] | None = None
        self._compiled_threads: frozenset[int] = frozenset()
        self._on_cpu = device == "cpu"
        self.compiled_batches = 0  # batches the compiled graph ran (the rest ran eager)
        # How the model started: eager, compiled (graphs compiled now) or cached (every graph
        # from Inductor's cache of an earlier start).
        self.startup = "eager"
        if compile_threads:
            self._compile(compile_threads, f"{attention or 'default'} attention")

    def _use_range_attention(self) -> None:
        """The model's attention through embedsweep's kernel (bfloat16 or float32)
        (``embedsweep.hfserver.attention``) where it is built and the model takes a registered
        attention; otherwise it stays as loaded."""
        from embedsweep.hfserver import attention

        auto_model = self._auto_model()
        setter = getattr(auto_model, "set_attn_implementation", None)
        if setter is None or not attention.install() or attention.kernel() is None:
            return
        try:
            setter(attention.NAME)
        except (ValueError, TypeError, AttributeError) as exc:  # an architecture without it
            _log.info("the model keeps its attention (%s)", str(exc).splitlines()[0][:200])

    def _compile(self, threads: tuple[int, ...], attention: str) -> None:
        """The model through torch.compile (Inductor, weights frozen into the graph: constant
        folded and prepacked for oneDNN), compiled now by the warm-up batches; on any failure (no
        C++ compiler, an operation Inductor cannot take) the model stays eager and the log says
        why. Measured on this CPU, one thread, bfloat16, 16 inputs a batch: 32 tokens ~255
        inputs/s against eager's ~237, 128 tokens ~55-58 against ~51, cosine to eager >= 0.99994;
        compiling takes 20-40 s, once per start. After the warm-up a shape that would need a new
        graph (a batch of one-token rows: dynamo specialises a length of one) runs eager rather
        than stall every client while it compiles."""
        torch = self._torch
        import torch._inductor.config as inductor_config
        from torch._dynamo.utils import counters

        inductor_config.freezing = True
        hits = counters["inductor"]["fxgraph_cache_hit"]
        misses = counters["inductor"]["fxgraph_cache_miss"]
        # Both dimensions dynamic, and the batch's unbacked (embed marks it): one graph for every
        # batch, one row included. Inductor's CPU kernels are built for a thread count, so there
        # is one graph per count in THREADS (a GPU's kernels are not: one graph); a batch at any
        # other count runs eager.
        self._compiled = torch.compile(self.model, dynamic=True)
        before = torch.get_num_threads()
        try:
            for count in dict.fromkeys(threads):
                torch.set_num_threads(count)
                self._compiled_threads = frozenset({count})
                self.embed(self.tokenize(["warm up"] * 2))
        except Exception as exc:  # anything Inductor raises: serve eager instead
            self._compiled, self._compiled_threads = None, frozenset()
            reason = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
            _log.warning(
                "torch.compile failed (%s: %s); the model runs eager", type(exc).__name__, reason
            )
            return
        finally:
            torch.set_num_threads(before)
        self._compiled_threads = frozenset(threads)
        hit = counters["inductor"]["fxgraph_cache_hit"] > hits
        missed = counters["inductor"]["fxgraph_cache_miss"] > misses
        self.startup = "cached" if hit and not missed else "compiled"
        torch.compiler.set_stance("eager_on_recompile")
        self.runtime = (
            f"torch {torch.__version__} compiled (Inductor, frozen weights; "
            f"{'/'.join(str(t) for t in sorted(self._compiled_threads))} thread(s)), {attention}"
        )

    def _auto_model(self) -> Any:
        for module in self.model:
            auto_model = getattr(module, "auto_model", None)
            if auto_model is not None:
                return auto_model
        return None

    @property
    def vocab_size(self) -> int:
        """How many token ids the model can embed: the rows of its input embedding matrix.

        vLLM accepts ids below the larger of the tokenizer's and the config's vocabulary; for a
        model whose matrix is smaller than its tokenizer that would index past the matrix, and
        here one such id would fail every request batched with it.
        """
        for module in self.model:
            auto_model = getattr(module, "auto_model", None)
            if auto_model is None:
                continue
            try:
                rows = auto_model.get_input_embeddings().num_embeddings
            except (AttributeError, NotImplementedError):  # custom code without the accessor
                rows = None
            if isinstance(rows, int):
                return rows
            config_size = getattr(getattr(auto_model, "config", None), "vocab_size", None)
            return max(len(self.tokenizer), config_size if isinstance(config_size, int) else 0)
        return len(self.tokenizer)

    def dimension(self) -> int:
        """The length of the vectors this model serves."""
        # Renamed in sentence-transformers 6 (the old name warns).
        declared = (
            getattr(self.model, "get_embedding_dimension", None)
            or self.model.get_sentence_embedding_dimension
        )()
        if isinstance(declared, int):
            return declared
        # No module declares it: measure it.
        return int(self.embed(self.tokenize(["dimension"])).shape[1])

    def tokenize(self, texts: list[str]) -> Encoded:
        return self._tokenize(texts)

    def pad(self, encoded: Encoded) -> dict[str, npt.NDArray[np.int64]]:
        """ENCODED padded to its longest row on the tokenizer's side, as arrays (the tokenizer's
        own ``pad`` is Python per element, a cost at thousands of inputs a second)."""
        rows = encoded["input_ids"]
        width = max((len(r) for r in rows), default=0)
        out: dict[str, npt.NDArray[np.int64]] = {}
        for key, values in encoded.items():
            fill = self._pad_id if key == "input_ids" else 0
            array = np.full((len(rows), width), fill, dtype=np.int64)
            for i, row in enumerate(values):
                if self._pad_left:
                    array[i, width - len(row) :] = row
                else:
                    array[i, : len(row)] = row
            out[key] = array
        return out

    def embed(self, encoded: Encoded) -> npt.NDArray[np.float32]:
        torch = self._torch
        device = self.model.device
        features = {k: torch.from_numpy(v).to(device) for k, v in self.pad(encoded).items()}
        forward: Callable[[dict[str, Any]], dict[str, Any]] = self.model
        if self._compiled is not None and (
            not self._on_cpu or torch.get_num_threads() in self._compiled_threads
        ):
            forward = self._compiled
            self.compiled_batches += 1
            for tensor in features.values():
                torch._dynamo.decorators.mark_unbacked(tensor, 0)
        with self._torch.inference_mode():
            out = forward(features)["sentence_embedding"].float()
            if self._renormalize:
                # A half-precision Normalize leaves norms up to ~4e-3 from one (bfloat16 keeps 8
                # bits); the model's promise is unit length, kept here in float32.
                out = torch.nn.functional.normalize(out, dim=1)
        return np.asarray(out.cpu().numpy(), dtype=np.float32)


class NullModel:
    """The server without a model: the real tokenizer, then zero vectors of the model's width.
    What the server does around the model costs the same; what it reaches is its own ceiling."""

    runtime = "null model (no model work)"
    compiled_batches = 0
    startup = "eager"

    def __init__(self, model_dir: Path, config: dict[str, Any]) -> None:
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
        self._tokenize = tokenizer_function(self.tokenizer)
        width = config.get("hidden_size") or config.get("d_model") or 384
        self._width = int(width)
        self.model: list[object] = []
        self.vocab_size = len(self.tokenizer)
        self.dtype = "float32"

    def dimension(self) -> int:
        return self._width

    def tokenize(self, texts: list[str]) -> Encoded:
        return self._tokenize(texts)

    def embed(self, encoded: Encoded) -> npt.NDArray[np.float32]:
        vectors = np.zeros((len(encoded["input_ids"]), self._width), dtype=np.float32)
        vectors[:, 0] = 1.0  # unit length, as a normalized model's
        return vectors
