#!/usr/bin/env python3
"""The house limits that ruff and mypy do not check, on the library (``embedsweep/``).

- No function longer than 60 lines (from its ``def`` to its last line), unless the line above
  the ``def`` (or its decorators) is a comment ``# long: <why it must be>``.
- No module longer than 600 lines, unless one of its first 40 lines is a comment
  ``# long module: <why it must be>``.
- The library imports neither ``flows`` nor ``tasks`` (its Prefect shells), except on a line that
  also carries ruff's ``# noqa: TID251`` (the one place that must, said why beside it).

Usage: ``scripts/style_check.py [ROOT ...]`` (default ``embedsweep``). Prints one line per
finding and the longest function and module, exits 1 on any finding. Run by ``scripts/test``.
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from pathlib import Path

MAX_FUNCTION_LINES = 60
MAX_MODULE_LINES = 600
SHELLS = ("flows", "tasks")


@dataclass(frozen=True)
class Finding:
    path: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}"


@dataclass
class Tally:
    findings: list[Finding]
    longest_function: tuple[int, str]
    largest_module: tuple[int, str]


def _excused(lines: list[str], line: int, marker: str) -> bool:
    """Whether the comment line just above ``line`` (1-based) is ``# <marker>: <reason>``."""
    if line < 2:
        return False
    above = lines[line - 2].strip()
    prefix = f"# {marker}:"
    return above.startswith(prefix) and bool(above[len(prefix) :].strip())


def _module_excused(lines: list[str]) -> bool:
    prefix = "# long module:"
    return any(
        text.strip().startswith(prefix) and bool(text.strip()[len(prefix) :].strip())
        for text in lines[:40]
    )


def _shell_imports(tree: ast.Module) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        for name in names:
            if name.split(".")[0] in SHELLS:
                found.append((node.lineno, name))
    return found


def check_source(path: str, source: str) -> tuple[list[Finding], list[tuple[int, str]], int]:
    """Findings for one module, its functions' (lines, name) and its line count."""
    lines = source.splitlines()
    tree = ast.parse(source, filename=path)
    findings: list[Finding] = []
    functions: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        length = (node.end_lineno or node.lineno) - node.lineno + 1
        functions.append((length, f"{path}:{node.lineno} {node.name}"))
        first = min([node.lineno] + [d.lineno for d in node.decorator_list])
        if length > MAX_FUNCTION_LINES and not _excused(lines, first, "long"):
            findings.append(
                Finding(
                    path,
                    node.lineno,
                    f"function {node.name} is {length} lines (at most {MAX_FUNCTION_LINES})",
                )
            )
    if len(lines) > MAX_MODULE_LINES and not _module_excused(lines):
        findings.append(
            Finding(path, 1, f"module is {len(lines)} lines (at most {MAX_MODULE_LINES})")
        )
    for line, name in _shell_imports(tree):
        if "noqa: TID251" not in lines[line - 1]:
            findings.append(Finding(path, line, f"the library imports its shell {name}"))
    return findings, functions, len(lines)


def check_tree(roots: list[Path]) -> Tally:
    tally = Tally([], (0, "-"), (0, "-"))
    for root in roots:
        files = sorted(root.rglob("*.py")) if root.is_dir() else [root]
        for file in files:
            findings, functions, size = check_source(str(file), file.read_text())
            tally.findings.extend(findings)
            tally.longest_function = max([tally.longest_function, *functions])
            tally.largest_module = max(tally.largest_module, (size, str(file)))
    return tally


def main(argv: list[str]) -> int:
    roots = [Path(a) for a in argv] or [Path("embedsweep")]
    missing = [str(r) for r in roots if not r.exists()]
    if missing:
        print(f"style_check: no such path: {', '.join(missing)}", file=sys.stderr)
        return 2
    tally = check_tree(roots)
    for finding in tally.findings:
        print(finding)
    print(
        f"longest function: {tally.longest_function[0]} lines ({tally.longest_function[1]}); "
        f"largest module: {tally.largest_module[0]} lines ({tally.largest_module[1]}); "
        f"{len(tally.findings)} finding(s)"
    )
    return 1 if tally.findings else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
