"""Are the served vectors the model's vectors? The fidelity probe every measured run ends with.

A throughput figure means nothing if the engine serves another embedding than the model's (a
wrong pooling mode, a lost normalisation, a truncated input, rows of a batch mixed up). After a
cell's timed levels, with the server warm and no clock running, the probe sends a fixed,
versioned set of texts (:data:`PROBE_VERSION`) to the served model and compares each vector with
a reference encoded on the same machine:

- the reference is sentence-transformers with the model's own modules (pooling, normalisation),
  float32, on the CPU, in embedsweep's environment, each text encoded alone (no padding);
- the probe set: short texts in several languages, calibrated texts of a quarter, half and all
  of the cell's length, and the first of the run's own calibrated texts; only texts within the
  cell's length are sent;
- each text alone, one after the other, is the served vector; the same texts in one batch, in a
  shuffled batch, and shuffled across concurrent requests (each twice) must give the same vectors
  (batch and order invariance, its own finding);
- what the server did to the request: the dimension it served, unit norm or not against what the
  model's modules do, whether it refuses, honours or ignores ``dimensions``, and whether it
  answers an input longer than its limit (200 means it truncated).

The verdict compares the smallest cosine with a threshold that depends on the served dtype
(:data:`COSINE_THRESHOLDS`): float32 ≥ 0.9999, float16 / bfloat16 ≥ 0.999. The same model in
float32 on two engines agrees to about 1e-7 (1 - cosine); half precision moves it to about 1e-4;
a wrong pooling mode gives cosines far below either (README, "Fidelity").
"""

from __future__ import annotations

import base64
import json
import math
import re
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from embedsweep.records import FidelityFinding, FidelityResult, FidelityVerdict

__all__ = [
    "COSINE_THRESHOLDS",
    "PROBE_VERSION",
    "Endpoint",
    "Reference",
    "probe",
    "probe_texts",
    "reference_for",
    "served_dtype",
    "threshold_for",
    "unchecked",
]

PROBE_VERSION = 1
# The smallest cosine (served vs reference, and between the invariance passes) a served dtype
# must reach. The float32 value is 1e-4 away from identity, the tolerance vLLM's and Infinity's
# own tests allow; half precision rounds every activation to ~3 significant digits.
COSINE_THRESHOLDS: dict[str, float] = {"float32": 0.9999, "float16": 0.999, "bfloat16": 0.999}
# A vector counts as unit length within this much of 1.
UNIT_NORM_TOLERANCE = 1e-3
# Concurrent requests of the invariance pass.
PROBE_CONCURRENCY = 8
PROBE_SEED = 20261202
RUN_TEXTS = 4

# Short texts in several scripts and languages: tokenizers and poolers fail on them first.
SHORT_TEXTS: tuple[str, ...] = (
    "hello world",
    "The quick brown fox jumps over the lazy dog.",
    "How many tokens does this sentence have, counted with the special tokens?",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "Le vif renard brun saute par-dessus le chien paresseux.",
    "El veloz zorro marrón salta sobre el perro perezoso.",
    "Быстрая коричневая лиса прыгает через ленивую собаку.",
    "敏捷的棕色狐狸跳过了懒狗。",
    "素早い茶色の狐がのろまな犬を飛び越える。",
    "الثعلب البني السريع يقفز فوق الكلب الكسول",
    "Embeddings: 42 × 3.14 ≈ 131.9 — ok?",
    "a",
)


def threshold_for(dtype: str) -> float:
    """The smallest cosine a vector served in DTYPE must reach (float32's when unknown)."""
    return COSINE_THRESHOLDS.get(dtype, COSINE_THRESHOLDS["float32"])


def unchecked(dtype: str, why: str, *, reference: str = "none") -> FidelityResult:
    """The result of a run whose vectors could not be checked, and WHY."""
    return FidelityResult(
        probe_version=PROBE_VERSION,
        reference=f"{reference}: {why}"[:300],
        served_dtype=dtype,
        threshold=threshold_for(dtype),
        texts=0,
        verdict="not_checked",
        findings=[FidelityFinding(code="no_reference", message=why[:300])],
    )


# vLLM's start-up line: "... with config: model=..., dtype=torch.float16, ...".
_LOGGED_DTYPE = re.compile(r"\bdtype=torch\.(float32|float16|bfloat16)\b")


def logged_dtype(log: Path) -> str | None:
    """The dtype an engine's log says it computes in (vLLM prints its config at start-up)."""
    try:
        with log.open(errors="replace") as lines:
            for line in lines:
                found = _LOGGED_DTYPE.search(line)
                if found:
                    return found.group(1)
    except OSError:
        return None
    return None


def served_dtype(engine: str, dtype: str, on_gpu: bool, stored: str) -> str:
    """The dtype a server computes in when it does not say (the runner asks the built-in server
    and reads vLLM's log first): the dtype it was started with when that names one (a sweep's
    ``auto`` is resolved before any engine starts: ``embedsweep.precision``); for an engine
    started with its own ``auto``, what each engine picks: the built-in server the sweep's rule;
    vLLM (0.32) and SGLang the stored dtype when it is bfloat16, else float16, on a GPU and on a
    CPU alike (vLLM serves a float32 pooling model in float16); Infinity float32 on a CPU."""
    if dtype != "auto":
        return dtype
    if engine == "hf":
        from embedsweep.precision import resolve

        return resolve("auto", on_gpu=on_gpu, stored_dtype=stored)
    if engine == "infinity":
        return "bfloat16" if on_gpu and stored == "bfloat16" else "float32"
    return "bfloat16" if stored == "bfloat16" else "float16"


# ---------------------------------------------------------------------------- reference


class Reference:
    """sentence-transformers with the model's own modules, float32, on the CPU."""

    def __init__(self, model_dir: Path, *, trust_remote_code: bool = False) -> None:
        import sentence_transformers
        import torch
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging

        # No "Loading weights" bar in a sweep's or the CLI's output.
        hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
        self.model = SentenceTransformer(
            str(model_dir),
            device="cpu",
            trust_remote_code=trust_remote_code,
            model_kwargs={"torch_dtype": torch.float32},
            local_files_only=True,
        )
        self.model.eval()
        # By name: the class moved between sentence-transformers releases.
        self.normalized = any(type(module).__name__ == "Normalize" for module in self.model)
        self.name = f"sentence-transformers {sentence_transformers.__version__} float32 cpu"
        self.count: Callable[[str], int] = lambda text: len(
            self.model.tokenizer(text, add_special_tokens=True, truncation=False)["input_ids"]
        )

    def encode(self, texts: Sequence[str]) -> npt.NDArray[np.float64]:
        # One text at a time: no padding, so nothing but the model decides each vector.
        vectors = self.model.encode(
            list(texts), batch_size=1, convert_to_numpy=True, show_progress_bar=False
        )
        return np.asarray(vectors, dtype=np.float64)


_cache_lock = threading.Lock()
_cached: tuple[tuple[str, bool], Reference] | None = None


def reference_for(model_dir: Path, *, trust_remote_code: bool = False) -> Reference:
    """The reference of MODEL_DIR, loaded once per process (the last one is kept: every chunk
    size of a model and each of its engines reuse it)."""
    global _cached
    key = (str(Path(model_dir).resolve()), trust_remote_code)
    with _cache_lock:
        if _cached is not None and _cached[0] == key:
            return _cached[1]
        _cached = None  # free the previous model before loading the next
        reference = Reference(Path(model_dir), trust_remote_code=trust_remote_code)
        _cached = (key, reference)
        return reference


# ---------------------------------------------------------------------------- the probe set


def probe_texts(
    count: Callable[[str], int],
    max_tokens: int,
    run_texts: Sequence[str] = (),
    calibrated: Callable[[int], str] | None = None,
) -> list[str]:
    """The probe set for a cell of MAX_TOKENS: the short texts that fit, CALIBRATED texts of a
    quarter, half and all of the length (``calibrated(n)`` gives one text of n tokens), and the
    first :data:`RUN_TEXTS` of the run's own texts; duplicates dropped, order kept."""
    texts = [t for t in SHORT_TEXTS if count(t) <= max_tokens]
    if calibrated is not None:
        for n in sorted({max(max_tokens // 4, 1), max(max_tokens // 2, 1), max_tokens}):
            try:
                texts.append(calibrated(n))
            except Exception:  # noqa: S112 - a length this tokenizer cannot make is left out
                continue
    texts.extend(t for t in run_texts[:RUN_TEXTS] if count(t) <= max_tokens)
    return list(dict.fromkeys(texts))


# ---------------------------------------------------------------------------- the endpoint


class ProbeError(Exception):
    """The endpoint did not answer a probe request with vectors."""


@dataclass(frozen=True)
class Answer:
    status: int
    vectors: list[npt.NDArray[np.float64]] | None
    message: str


@dataclass(frozen=True)
class Endpoint:
    """An OpenAI-compatible ``/v1/embeddings`` at URL (``http://host:port``), model NAME."""

    url: str
    model: str
    api_key: str | None = None
    timeout_s: float = 120.0

    def post(self, inputs: Sequence[str], **extra: object) -> Answer:
        body = json.dumps(
            {"model": self.model, "input": list(inputs), "encoding_format": "float", **extra}
        ).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(  # noqa: S310 - the URL is the sweep's own server
            self.url.rstrip("/") + "/v1/embeddings", data=body, headers=headers, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:  # noqa: S310
                payload = response.read()
                status = response.status
        except urllib.error.HTTPError as exc:
            return Answer(exc.code, None, _error_message(exc.read()))
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            return Answer(0, None, f"no answer: {reason}")
        try:
            data = json.loads(payload)["data"]
            rows = sorted(data, key=lambda row: int(row.get("index", 0)))
            vectors = [_vector(row["embedding"]) for row in rows]
        except (ValueError, KeyError, TypeError) as exc:
            return Answer(status, None, f"unreadable answer: {type(exc).__name__}: {exc}")
        return Answer(status, vectors, "")

    def embed(self, inputs: Sequence[str]) -> list[npt.NDArray[np.float64]]:
        answer = self.post(inputs)
        if answer.vectors is None or answer.status != 200:
            raise ProbeError(f"HTTP {answer.status}: {answer.message}"[:300])
        if len(answer.vectors) != len(inputs):
            raise ProbeError(f"{len(answer.vectors)} vector(s) for {len(inputs)} input(s)")
        return answer.vectors


def _vector(value: object) -> npt.NDArray[np.float64]:
    if isinstance(value, str):
        return np.frombuffer(base64.b64decode(value), dtype="<f4").astype(np.float64)
    if not isinstance(value, list):
        raise TypeError("embedding is neither a list nor base64")
    return np.asarray(value, dtype=np.float64)


def _error_message(raw: bytes) -> str:
    try:
        body = json.loads(raw)
    except ValueError:
        return raw[:200].decode(errors="replace")
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict):
            return str(error.get("message") or error.get("detail") or error)[:300]
        return str(body.get("message") or body.get("detail") or error)[:300]
    return str(body)[:300]


# ---------------------------------------------------------------------------- comparisons


def _cosines(
    a: Sequence[npt.NDArray[np.float64]], b: Sequence[npt.NDArray[np.float64]]
) -> npt.NDArray[np.float64]:
    out = []
    for x, y in zip(a, b, strict=True):
        if x.shape != y.shape:
            out.append(-1.0)  # a different dimension: nothing alike
            continue
        nx, ny = float(np.linalg.norm(x)), float(np.linalg.norm(y))
        out.append(float(x @ y) / (nx * ny) if nx > 0 and ny > 0 else -1.0)
    return np.asarray(out, dtype=np.float64)


def _max_abs(a: Sequence[npt.NDArray[np.float64]], b: Sequence[npt.NDArray[np.float64]]) -> float:
    diffs = [float(np.max(np.abs(x - y))) for x, y in zip(a, b, strict=True) if x.shape == y.shape]
    return max(diffs, default=math.inf)


def _snippet(text: str) -> str:
    return text if len(text) <= 40 else text[:37] + "..."


def _concurrent(endpoint: Endpoint, texts: Sequence[str], rng: np.random.Generator) -> list[Any]:
    """Each text twice, in a shuffled order, across PROBE_CONCURRENCY concurrent requests;
    returns, per text, the list of its vectors."""
    order = rng.permutation(np.concatenate([np.arange(len(texts)), np.arange(len(texts))]))
    with ThreadPoolExecutor(max_workers=PROBE_CONCURRENCY) as pool:
        answers = list(pool.map(lambda i: endpoint.embed([texts[int(i)]])[0], order))
    seen: list[list[npt.NDArray[np.float64]]] = [[] for _ in texts]
    for i, vector in zip(order, answers, strict=True):
        seen[int(i)].append(vector)
    return seen


def _served_passes(
    endpoint: Endpoint, texts: Sequence[str], rng: np.random.Generator
) -> tuple[list[npt.NDArray[np.float64]], dict[str, list[npt.NDArray[np.float64]]]]:
    """Each text alone (the served vectors), then the invariance passes by name: one batch, a
    shuffled batch, and concurrent requests (first and repeat answers). Raises ProbeError."""
    alone = [endpoint.embed([t])[0] for t in texts]
    batch = endpoint.embed(texts)
    perm = rng.permutation(len(texts))
    shuffled_out = endpoint.embed([texts[int(i)] for i in perm])
    shuffled: list[npt.NDArray[np.float64]] = [np.empty(0)] * len(texts)
    for position, i in enumerate(perm):
        shuffled[int(i)] = shuffled_out[position]
    concurrent = _concurrent(endpoint, texts, rng)
    passes = {
        "one batch": batch,
        "a shuffled batch": shuffled,
        "concurrent requests": [vs[0] for vs in concurrent],
        "concurrent repeats": [vs[-1] for vs in concurrent],
    }
    return alone, passes


def _check_dimension(
    alone: Sequence[npt.NDArray[np.float64]],
    reference_dimension: int | None,
    findings: list[FidelityFinding],
) -> int | None:
    """The one served dimension (None if they differ), with a finding if not the model's."""
    dims = sorted({int(v.shape[0]) for v in alone})
    if dims != [reference_dimension]:
        findings.append(
            FidelityFinding(
                code="dimension_mismatch",
                message=f"served dimension {', '.join(map(str, dims))}, the model's is "
                f"{reference_dimension}",
            )
        )
    return dims[0] if len(dims) == 1 else None


def _check_vectors(
    alone: Sequence[npt.NDArray[np.float64]],
    ref_rows: Sequence[npt.NDArray[np.float64]],
    texts: Sequence[str],
    threshold: float,
    findings: list[FidelityFinding],
) -> npt.NDArray[np.float64]:
    """Each served vector's cosine with the reference, with a finding below THRESHOLD."""
    cos = _cosines(alone, ref_rows)
    worst = int(np.argmin(cos))
    if cos[worst] < threshold:
        findings.append(
            FidelityFinding(
                code="vectors_differ",
                message=f"cosine {cos[worst]:.6f} with the reference < {threshold} "
                f"({_snippet(texts[worst])!r}; {int((cos < threshold).sum())} of {len(texts)} "
                "text(s) below)",
            )
        )
    return cos


def _check_norms(
    alone: Sequence[npt.NDArray[np.float64]],
    reference_normalized: bool,
    findings: list[FidelityFinding],
) -> tuple[npt.NDArray[np.float64], bool]:
    """The served vectors' norms and whether all are unit length, with a finding if the model's
    modules do otherwise."""
    norms = np.asarray([np.linalg.norm(v) for v in alone])
    unit = bool(np.all(np.abs(norms - 1.0) <= UNIT_NORM_TOLERANCE))
    if unit != reference_normalized:
        findings.append(
            FidelityFinding(
                code="normalization_differs",
                message=(
                    f"served vectors are {'' if unit else 'not '}unit length (norms "
                    f"{norms.min():.4f}–{norms.max():.4f}); the model's modules "
                    f"{'' if reference_normalized else 'do not '}normalise"
                ),
            )
        )
    return norms, unit


def _check_invariance(
    passes: dict[str, list[npt.NDArray[np.float64]]],
    alone: Sequence[npt.NDArray[np.float64]],
    texts: Sequence[str],
    threshold: float,
    findings: list[FidelityFinding],
) -> tuple[float, float]:
    """The smallest cosine and largest difference of any pass against the texts sent alone,
    with a finding for each pass below THRESHOLD."""
    inv_cos = min(float(_cosines(vs, alone).min()) for vs in passes.values())
    inv_abs = max(_max_abs(vs, alone) for vs in passes.values())
    for label, vs in passes.items():
        c = _cosines(vs, alone)
        if c.min() < threshold:
            i = int(np.argmin(c))
            findings.append(
                FidelityFinding(
                    code="batch_variance",
                    message=f"{_snippet(texts[i])!r} in {label} has cosine {c[i]:.6f} with the "
                    f"same text sent alone (< {threshold})",
                )
            )
    return inv_cos, inv_abs


def probe(
    endpoint: Endpoint,
    texts: Sequence[str],
    reference: npt.NDArray[np.float64],
    *,
    reference_name: str,
    reference_normalized: bool,
    dtype: str,
    overlength_text: str | None = None,
    matryoshka: bool = False,
) -> FidelityResult:
    """Send the probe set TEXTS to ENDPOINT and compare with REFERENCE (one row per text).
    Never raises for what the endpoint does: a probe it cannot answer is verdict ``error``."""
    threshold = threshold_for(dtype)
    base: dict[str, Any] = {
        "probe_version": PROBE_VERSION,
        "reference": reference_name,
        "served_dtype": dtype,
        "threshold": threshold,
        "texts": len(texts),
        "reference_dimension": int(reference.shape[1]) if reference.ndim == 2 else None,
        "reference_normalized": reference_normalized,
    }
    rng = np.random.default_rng(PROBE_SEED)
    try:
        alone, passes = _served_passes(endpoint, texts, rng)
    except ProbeError as exc:
        finding = FidelityFinding(code="probe_error", message=f"the probe failed: {exc}")
        return FidelityResult(**base, verdict="error", findings=[finding])

    findings: list[FidelityFinding] = []
    ref_rows = [reference[i] for i in range(len(texts))]
    dimension = _check_dimension(alone, base["reference_dimension"], findings)
    cos = _check_vectors(alone, ref_rows, texts, threshold, findings)
    norms, unit = _check_norms(alone, reference_normalized, findings)
    inv_cos, inv_abs = _check_invariance(passes, alone, texts, threshold, findings)
    dimensions_request = _dimensions_request(endpoint, texts[0], dimension, matryoshka, findings)
    overlength = _overlength(endpoint, overlength_text, findings)
    failing = {"dimension_mismatch", "vectors_differ", "normalization_differs", "batch_variance"}
    verdict: FidelityVerdict = "failed" if any(f.code in failing for f in findings) else "passed"
    return FidelityResult(
        **base,
        dimension=dimension,
        min_cosine=float(cos.min()),
        mean_cosine=float(cos.mean()),
        max_abs_diff=_max_abs(alone, ref_rows),
        norm_min=float(norms.min()),
        norm_max=float(norms.max()),
        normalized=unit,
        invariance_min_cosine=inv_cos,
        invariance_max_abs_diff=inv_abs,
        dimensions_request=dimensions_request,
        overlength=overlength,
        verdict=verdict,
        findings=findings,
    )


def _dimensions_request(
    endpoint: Endpoint,
    text: str,
    dimension: int | None,
    matryoshka: bool,
    findings: list[FidelityFinding],
) -> str:
    """Ask for half the dimension: ``refused`` (4xx), ``honoured`` or ``ignored``."""
    if dimension is None or dimension < 2:
        return "not_checked"
    asked = dimension // 2
    answer = endpoint.post([text], dimensions=asked)
    if 400 <= answer.status < 500:
        if matryoshka:
            findings.append(
                FidelityFinding(
                    code="dimensions_refused",
                    message=f"dimensions={asked} refused on a Matryoshka model: {answer.message}",
                )
            )
        return "refused"
    if answer.status != 200 or not answer.vectors:
        return "error"
    got = int(answer.vectors[0].shape[0])
    if got == asked:
        return "honoured"
    findings.append(
        FidelityFinding(
            code="dimensions_ignored",
            message=f"dimensions={asked} answered 200 with {got} values: the server ignored it",
        )
    )
    return "ignored"


def _overlength(endpoint: Endpoint, text: str | None, findings: list[FidelityFinding]) -> str:
    """An input past the server's limit: ``rejected`` (4xx) or ``truncated`` (answered 200)."""
    if text is None:
        return "not_checked"
    answer = endpoint.post([text])
    if 400 <= answer.status < 500:
        return "rejected"
    if answer.status == 200:
        findings.append(
            FidelityFinding(
                code="truncates_overlength",
                message="an input longer than the server's limit was answered 200: the engine "
                "truncates silently (the preflight blocks cells past its limit)",
            )
        )
        return "truncated"
    return "error"
