"""Sweep-file validation: every bad file gets one line naming the file, field path and problem."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from embedsweep.config import ConfigError, load_sweep, parse_sweep

ROOT = Path(__file__).resolve().parents[2]


def _write(tmp_path: Path, data: Any) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


@pytest.mark.parametrize(
    "name", ["local-cpu.yaml", "local-hosts.yaml", "nightly.yaml", "seed.yaml"]
)
def test_shipped_sweeps_are_valid(name: str) -> None:
    spec = load_sweep(ROOT / "sweeps" / name)
    assert spec.cells()


def test_local_cpu_expands_to_the_documented_cells() -> None:
    spec = load_sweep(ROOT / "sweeps" / "local-cpu.yaml")
    assert [c.chunk_size for c in spec.cells()] == [32, 128, 256, 512]
    assert spec.load.concurrency == [1, 4, 16]
    assert {c.engine for c in spec.cells()} == {"hf"}


def _mutate(base: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    data = yaml.safe_load(yaml.safe_dump(base))
    node = data
    keys = path.split(".")
    for key in keys[:-1]:
        node = node[int(key)] if key.isdigit() else node[key]
    last = keys[-1]
    node[int(last) if last.isdigit() else last] = value
    return data


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        ("colour", "blue", "colour: unknown key"),
        ("load.concurrency", [1, -4], "load.concurrency[1]: Input should be greater than 0"),
        ("load.chunk_sizes", "many", "load.chunk_sizes: Input should be a valid list"),
        ("engines", ["hf", "tgi"], "engines[1]: unknown engine 'tgi' (known: vllm, sglang, hf"),
        (
            "models.0.source",
            "./no/such/model",
            "models[0].source: model folder './no/such/model' does not exist",
        ),
        ("models.0.dtype", "int3", "models[0].dtype"),
        (
            "pools.0.gpu_memory_gb",
            -1,
            "pools[0].gpu_memory_gb: Input should be greater than or equal to 0",
        ),
        ("fallback_engine", "ollama", "fallback_engine"),
        ("models", [], "models: List should have at least 1 item"),
    ],
)
def test_bad_fields_name_file_path_and_problem(
    tmp_path: Path, minimal_sweep: dict[str, Any], path: str, value: Any, expected: str
) -> None:
    sweep = _write(tmp_path, _mutate(minimal_sweep, path, value))
    with pytest.raises(ConfigError) as err:
        load_sweep(sweep)
    message = str(err.value)
    assert message.startswith(f"{sweep}: ")
    assert expected in message
    assert "\n" not in message


def test_malformed_yaml_gives_line_and_column(tmp_path: Path) -> None:
    sweep = _write(tmp_path, "name: x\nmodels: [\n  - a\n")
    with pytest.raises(ConfigError, match=r"sweep.yaml: line \d+, column \d+: malformed YAML"):
        load_sweep(sweep)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read sweep file"):
        load_sweep(tmp_path / "absent.yaml")


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_sweep(_write(tmp_path, "- just\n- a list\n"))


def test_empty_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="the file is empty"):
        load_sweep(_write(tmp_path, "# only a comment\n"))


def test_requests_and_duration_are_exclusive(minimal_sweep: dict[str, Any]) -> None:
    data = _mutate(minimal_sweep, "load.requests_per_level", 10)
    data["load"]["duration_s"] = 5
    with pytest.raises(ConfigError, match="not both"):
        parse_sweep(data, source="x")


def test_relative_model_folder_resolves_from_the_sweep_file(
    tmp_path: Path, minimal_sweep: dict[str, Any]
) -> None:
    (tmp_path / "models" / "m").mkdir(parents=True)
    data = _mutate(minimal_sweep, "models.0.source", "./models/m")
    spec = load_sweep(_write(tmp_path, data))
    assert spec.models[0].source == str(tmp_path / "models" / "m")
    assert spec.models[0].display_name == "minilm"


def test_duplicate_model_names_are_rejected(minimal_sweep: dict[str, Any]) -> None:
    data = yaml.safe_load(yaml.safe_dump(minimal_sweep))
    data["models"].append(dict(data["models"][0]))
    with pytest.raises(ConfigError, match="duplicate model name"):
        parse_sweep(data, source="x")


def test_cell_ids_are_stable_and_distinct(minimal_sweep: dict[str, Any]) -> None:
    data = _mutate(minimal_sweep, "load.chunk_sizes", [16, 32])
    spec = parse_sweep(data, source="x")
    ids = [c.cell_id(spec.name) for c in spec.cells()]
    assert len(set(ids)) == 2
    assert ids == [c.cell_id(spec.name) for c in parse_sweep(data, source="x").cells()]
