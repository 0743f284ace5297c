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
    assert "--trust-remote-code" in argv
    assert _flag(argv, "--tp-size") == "2"


def test_hf_on_cpu_and_gpu(tmp_path: Path) -> None:
    cpu = _launch(model_path=tmp_path, devices=("cpu",))
    argv = adapter_for("hf").command(cpu)
    assert argv[1:3] == ["-m", "embedsweep.hfserver"]
    assert _flag(argv, "--model") == str(tmp_path)
    assert _flag(argv, "--device") == "cpu"
    assert KEY not in " ".join(argv)
    assert adapter_for("hf").environment(cpu) == {"EMBEDSWEEP_API_KEY": KEY}
    gpu = adapter_for("hf").environment(_launch())
    assert gpu["CUDA_VISIBLE_DEVICES"] == "2,3"


def test_unknown_engine() -> None:
    with pytest.raises(ValueError, match="unknown engine 'tgi'"):
        adapter_for("tgi")
