"""scripts/style_check.py: the house limits it holds the library to, on sources made here."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "style_check.py"


@pytest.fixture(scope="module")
def style() -> ModuleType:
    spec = importlib.util.spec_from_file_location("style_check", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["style_check"] = module  # dataclasses look their module up while defining
    spec.loader.exec_module(module)
    return module


def _function(name: str, body_lines: int, above: str = "") -> str:
    body = "".join(f"    x{i} = {i}\n" for i in range(body_lines))
    return f"{above}def {name}() -> None:\n{body}"


def test_a_function_of_sixty_lines_passes_and_sixty_one_fails(style: ModuleType) -> None:
    ok, functions, _ = style.check_source("m.py", _function("f", 59))
    assert ok == []
    assert functions == [(60, "m.py:1 f")]
    findings, _, _ = style.check_source("m.py", _function("g", 60))
    assert [str(f) for f in findings] == ["m.py:1: function g is 61 lines (at most 60)"]


def test_a_long_function_passes_only_with_a_reason_above_it(style: ModuleType) -> None:
    excused = _function("f", 80, above="# long: one table of cases, read top to bottom\n")
    assert style.check_source("m.py", excused)[0] == []
    bare = _function("f", 80, above="# long:\n")
    assert len(style.check_source("m.py", bare)[0]) == 1
    decorated = "# long: a reason\n@staticmethod\n" + _function("f", 80)
    assert style.check_source("m.py", decorated)[0] == []


def test_nested_and_async_functions_count(style: ModuleType) -> None:
    inner = "".join(f"        y{i} = {i}\n" for i in range(61))
    source = f"async def outer() -> None:\n    def inner() -> None:\n{inner}"
    names = [f.message.split()[1] for f in style.check_source("m.py", source)[0]]
    assert names == ["outer", "inner"]


def test_a_module_over_six_hundred_lines_fails_unless_it_says_why(style: ModuleType) -> None:
    big = "x = 1\n" * 601
    assert [f.message for f in style.check_source("m.py", big)[0]] == [
        "module is 601 lines (at most 600)"
    ]
    said = "# long module: the generated table of every engine's flags\n" + big
    assert style.check_source("m.py", said)[0] == []
    assert style.check_source("m.py", "x = 1\n" * 600)[0] == []


def test_the_library_may_not_import_its_shells(style: ModuleType) -> None:
    source = (
        "import flows.sweep\n"
        "from tasks.cells import run\n"
        "from flowsy import x\n"
        "from .flows import y\n"
        "def f() -> None:\n"
        "    from flows.sweep import sweep  # noqa: TID251 - the run command starts the flow\n"
    )
    findings = style.check_source("m.py", source)[0]
    assert [(f.line, f.message) for f in findings] == [
        (1, "the library imports its shell flows.sweep"),
        (2, "the library imports its shell tasks.cells"),
    ]


def test_the_script_exits_1_on_a_finding_and_names_the_longest(tmp_path: Path) -> None:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "a.py").write_text(_function("short", 3))
    clean = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path / "pkg")], capture_output=True, text=True
    )
    assert clean.returncode == 0, clean.stdout
    assert "longest function: 4 lines" in clean.stdout
    assert "0 finding(s)" in clean.stdout
    (tmp_path / "pkg" / "b.py").write_text("import tasks\n")
    dirty = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path / "pkg")], capture_output=True, text=True
    )
    assert dirty.returncode == 1
    assert "b.py:1: the library imports its shell tasks" in dirty.stdout
    missing = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path / "nope")], capture_output=True, text=True
    )
    assert missing.returncode == 2
    assert missing.stderr.count("\n") == 1
