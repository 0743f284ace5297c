"""The built-in server's attention kernel (embedsweep.hfserver.attention), bfloat16 and float32
in, against torch's SDPA in float32 with an explicit mask: causal and bidirectional, left and
right padding, grouped KV heads, head sizes 16 to 160, lengths around its blocks; and whole
models served through it (the Qwen3-shaped decoder with left padding and last-token pooling, a
512-position BERT with right padding) against the same models on transformers' SDPA."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from embedsweep.calibrate import Calibrator, load_tokenizer
from embedsweep.hfserver import attention
from embedsweep.synthetic import bert_encoder, qwen3_decoder

# This project's machines have AVX-512 BF16; a CPU without it serves SDPA (tested below too).
pytestmark = pytest.mark.skipif(not attention.available(), reason="CPU without AVX-512 BF16")


@pytest.fixture(scope="module")
def kernel() -> object:
    module = attention.kernel()
    assert module is not None, "the attention kernel did not build"
    return module


CASES = [
    # batch, heads, kv heads, rows, head size, causal, extents
    (2, 2, 1, 37, 32, True, [(0, 37), (5, 37)]),  # left padding, grouped KV
    (2, 4, 2, 50, 16, False, [(0, 50), (0, 33)]),  # right padding
    (3, 12, 12, 128, 32, False, [(0, 128)] * 3),  # all-MiniLM's shape
    (1, 2, 2, 300, 64, True, [(1, 300)]),  # an odd start
    (1, 2, 1, 17, 128, True, [(3, 16)]),  # padding on both sides
    (2, 2, 1, 600, 32, True, [(0, 600), (77, 600)]),  # more than one key block
    (1, 1, 1, 5, 16, False, [(0, 0)]),  # an empty row: zeros
    (1, 2, 2, 45, 48, False, [(0, 45)]),  # three vectors of output dimensions
    (1, 2, 1, 70, 160, True, [(4, 70)]),  # a head size past the fixed ones: the generic loop
]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize(("b", "h", "hk", "n", "d", "causal", "spans"), CASES)
def test_kernel_matches_sdpa_with_a_mask(
    kernel: object,
    dtype: torch.dtype,
    b: int,
    h: int,
    hk: int,
    n: int,
    d: int,
    causal: bool,
    spans: list[tuple[int, int]],
) -> None:
    torch.manual_seed(n)
    q = torch.randn(b, h, n, d, dtype=dtype)
    k = torch.randn(b, hk, n, d, dtype=dtype)
    v = torch.randn(b, hk, n, d, dtype=dtype)
    ranges = torch.tensor(spans, dtype=torch.int32)
    out = kernel.attention(q, k, v, ranges, causal, d**-0.5)  # type: ignore[attr-defined]
    assert out.dtype == dtype
    got = out.float()
    want = attention.reference(q.float(), k.float(), v.float(), ranges, causal, d**-0.5)
    assert got.shape == (b, n, h, d)
    inside = torch.zeros(b, n, dtype=torch.bool)
    for row, (start, end) in enumerate(spans):
        inside[row, start:end] = True
    assert bool((got[~inside] == 0).all())  # padding rows are zeros
    if inside.any():
        # bfloat16 output: within a few bfloat16 steps of float32's answer; float32: rounding.
        bound, least = (0.03, 0.999) if dtype == torch.bfloat16 else (1e-4, 0.999999)
        assert float((got[inside] - want[inside]).abs().max()) < bound
        cos = torch.nn.functional.cosine_similarity(got[inside], want[inside], dim=-1)
        assert float(cos.min()) > least


def test_extents_of_left_and_right_padding() -> None:
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 0], [1, 1, 1, 1], [0, 0, 0, 0]])
    assert attention.extents(mask).tolist() == [[2, 4], [0, 3], [0, 4], [0, 0]]


def _served(
    model_dir: Path,
    texts: list[str],
    mode: str,
    monkeypatch: pytest.MonkeyPatch,
    dtype: str = "bfloat16",
) -> np.ndarray:
    from embedsweep.hfserver.embedder import Embedder

    monkeypatch.setenv("EMBEDSWEEP_HF_ATTENTION", mode)
    monkeypatch.setattr(attention, "_loaded", {})
    embedder = Embedder(model_dir, dtype=dtype)
    assert ("embedsweep attention" in embedder.runtime) == (mode == "auto")
    before = attention.kernel_calls()
    vectors = embedder.embed(embedder.tokenize(texts))
    # Every layer's attention ran on the kernel (none fell back to a dense mask), or none did.
    layers = embedder.model[0].auto_model.config.num_hidden_layers
    assert attention.kernel_calls() - before == (layers if mode == "auto" else 0)
    return vectors


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
@pytest.mark.parametrize("build", ["decoder", "encoder"])
def test_a_padded_batch_serves_the_models_vectors(
    build: str, dtype: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if build == "decoder":  # Qwen3's rules: left padding, causal, last-token pooling
        folder = qwen3_decoder(tmp_path / "qwen3", max_positions=1024)
        lengths = [700, 31, 256, 2]
    else:  # BERT with 512 positions: right padding, bidirectional, mean pooling
        folder = bert_encoder(tmp_path / "bert")
        lengths = [512, 40, 300, 3]
    calibrator = Calibrator(load_tokenizer(folder))
    texts = [calibrator.texts(n, 1, seed=n)[0] for n in lengths]
    kernel_vectors = _served(folder, texts, "auto", monkeypatch, dtype)
    sdpa_vectors = _served(folder, texts, "sdpa", monkeypatch, dtype)
    # Each row alone (no padding at all) on SDPA: what the model gives that text.
    alone = np.concatenate([_served(folder, [t], "sdpa", monkeypatch, dtype) for t in texts])
    least = 0.999 if dtype == "bfloat16" else 0.99999
    for vectors in (kernel_vectors, sdpa_vectors):
        cosines = (vectors * alone).sum(axis=1)
        assert float(cosines.min()) > least, cosines
    np.testing.assert_allclose(np.linalg.norm(kernel_vectors, axis=1), 1.0, atol=1e-5)
