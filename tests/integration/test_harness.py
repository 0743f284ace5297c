"""The harness check for real: direct encode of the packaged model on this CPU, in the served
dtype, against a server figure; a GPU server is not compared with the runner's CPU."""

from __future__ import annotations

from pathlib import Path

import pytest

from embedsweep import harness
from embedsweep.calibrate import Calibrator, load_tokenizer

pytestmark = pytest.mark.integration


def test_direct_encode_is_measured_in_the_served_dtype(minilm_dir: Path) -> None:
    texts = Calibrator(load_tokenizer(minilm_dir)).texts(32, 48, seed=3)
    info = {"device": "cpu", "dtype": "bfloat16", "runtime": "torch", "model_threads": 2}
    check = harness.check(
        minilm_dir, texts, chunk_size=32, concurrency=8, batch_size=2, server_inputs_per_s=100.0,
        info=info,
    )  # fmt: skip
    assert check.note is None
    assert check.batch == 16
    assert check.direct_inputs_per_s is not None
    assert check.direct_inputs_per_s > 0
    assert check.ratio == pytest.approx(100.0 / check.direct_inputs_per_s)
    assert check.direct_threads in (1, *range(2, 65))
    assert (check.dtype, check.model_threads) == ("bfloat16", 2)


def test_a_gpu_server_or_a_server_that_said_nothing_is_not_compared(minilm_dir: Path) -> None:
    gpu = harness.check(
        minilm_dir, ["x"], chunk_size=32, concurrency=8, batch_size=1, server_inputs_per_s=5e3,
        info={"device": "cuda", "dtype": "float16"},
    )  # fmt: skip
    assert gpu.ratio is None
    assert gpu.note is not None
    assert "GPU" in gpu.note
    silent = harness.check(
        minilm_dir, ["x"], chunk_size=32, concurrency=8, batch_size=1, server_inputs_per_s=5.0,
        info=None,
    )  # fmt: skip
    assert silent.ratio is None
    assert silent.note is not None
    assert "no server info" in silent.note


def test_switched_off_keeps_the_servers_side_and_says_so(minilm_dir: Path) -> None:
    info = {"device": "cpu", "dtype": "bfloat16", "runtime": "torch", "model_threads": 1}
    off = harness.check(
        minilm_dir, ["x"], chunk_size=32, concurrency=4, batch_size=1, server_inputs_per_s=50.0,
        info=info, compare=False,
    )  # fmt: skip
    assert (off.ratio, off.direct_inputs_per_s) == (None, None)
    assert off.note == "direct encode not compared: load.harness_check is off"
    assert (off.server_inputs_per_s, off.dtype, off.model_threads) == (50.0, "bfloat16", 1)
