"""Load a model with sentence-transformers and turn token ids into embeddings.

Tokenization never truncates or pads on its own: the tokenizer file's settings are overridden so
the server sees, counts and rejects exactly what the client sent.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["Embedder", "Encoded"]

Encoded = dict[str, list[list[int]]]

_DTYPES = {"float32": "float32", "float16": "float16", "bfloat16": "bfloat16"}


class Embedder:
    """A sentence-transformers model plus its tokenizer, used from one worker thread."""

    def __init__(
        self,
        model_dir: Path,
        *,
        device: str = "cpu",
        dtype: str = "auto",
        trust_remote_code: bool = False,
    ) -> None:
        import torch
        from sentence_transformers import SentenceTransformer

        model_kwargs: dict[str, Any] = {}
        if dtype in _DTYPES:
            model_kwargs["torch_dtype"] = getattr(torch, _DTYPES[dtype])
        elif device == "cpu":
            # Half precision on CPU is slow or unsupported; 'auto' means float32 there.
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
        enc = self.tokenizer(
            texts, add_special_tokens=True, truncation=False, padding=False, verbose=False
        )
        return {k: list(v) for k, v in enc.items()}

    def embed(self, encoded: Encoded) -> npt.NDArray[np.float32]:
        batch = self.tokenizer.pad(encoded, padding=True, return_tensors="pt")
        features = {k: v.to(self.model.device) for k, v in batch.items()}
        with self._torch.inference_mode():
            out = self.model(features)["sentence_embedding"]
        return np.asarray(out.float().cpu().numpy(), dtype=np.float32)
