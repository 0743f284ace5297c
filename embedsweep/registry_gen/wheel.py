"""Reading an engine's wheel, once: :class:`Wheel` (its member names, each Python source parsed
at most once and only on demand, the files parsed and what could not be resolved) and the small
``ast`` helpers both engines' rules use. Nothing in a wheel is imported or executed."""

from __future__ import annotations

import ast
import sys
import zipfile
from collections.abc import Iterable, Iterator
from email.parser import HeaderParser
from pathlib import PurePosixPath
from typing import Final, NamedTuple

from packaging.utils import canonicalize_name

from embedsweep.errors import EmbedsweepError

REFRESH_FAILED: Final = "registry_refresh_failed"


class Extracted(NamedTuple):
    """What one engine's rules find in a wheel (sets; sorted when written)."""

    architectures: set[str]
    embedding: set[str]
    convertible: set[str]
    convert_flags: list[str]
    rules: dict[str, str]


class Wheel:
    """Sources of one wheel, parsed on demand; remembers which files were parsed."""

    def __init__(self, archive: zipfile.ZipFile) -> None:
        self._zip = archive
        self.names = frozenset(archive.namelist())
        self.parsed: set[str] = set()
        self.unresolved: list[str] = []
        self._trees: dict[str, ast.Module | None] = {}

    def read(self, name: str) -> bytes:
        return self._zip.read(name)

    def tree(self, name: str) -> ast.Module | None:
        """The module's AST; None (and a note) when it is missing or does not parse here."""
        if name not in self._trees:
            self._trees[name] = self._parse(name)
        return self._trees[name]

    def _parse(self, name: str) -> ast.Module | None:
        if name not in self.names:
            return None
        self.parsed.add(name)
        try:
            return ast.parse(self.read(name), filename=name)
        except (SyntaxError, ValueError) as exc:
            here = f"{sys.version_info.major}.{sys.version_info.minor}"
            self.unresolved.append(f"{name}: not parsable by Python {here}: {exc}")
            return None

    def files_containing(self, prefix: str, needle: bytes) -> list[str]:
        """``.py`` files under ``prefix`` whose text contains ``needle`` (cheap pre-filter)."""
        return sorted(
            n
            for n in self.names
            if n.startswith(prefix) and n.endswith(".py") and needle in self.read(n)
        )

    def metadata(self) -> tuple[str, str]:
        """(canonical distribution name, version) from ``*.dist-info/METADATA``."""
        found = [n for n in self.names if n.count("/") == 1 and n.endswith(".dist-info/METADATA")]
        if len(found) != 1:
            raise EmbedsweepError(
                "not a wheel: no single *.dist-info/METADATA", code=REFRESH_FAILED
            )
        headers = HeaderParser().parsestr(self.read(found[0]).decode("utf-8", "replace"))
        name, version = headers.get("Name"), headers.get("Version")
        if not name or not version:
            raise EmbedsweepError(f"{found[0]} names no Name/Version", code=REFRESH_FAILED)
        return str(canonicalize_name(name)), version


def module_file(wheel: Wheel, module: str) -> str | None:
    base = module.replace(".", "/")
    for candidate in (f"{base}.py", f"{base}/__init__.py"):
        if candidate in wheel.names:
            return candidate
    return None


def absolute_module(current_file: str, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    package = list(PurePosixPath(current_file).parent.parts)
    package = package[: len(package) - (node.level - 1)]
    return ".".join([*package, *([node.module] if node.module else [])])


def top_level(tree: ast.Module) -> Iterator[ast.stmt]:
    """Module-level statements, including those inside module-level ``if``/``try`` blocks."""
    pending: list[ast.stmt] = list(tree.body)
    while pending:
        stmt = pending.pop(0)
        yield stmt
        if isinstance(stmt, ast.If):
            pending[:0] = [*stmt.body, *stmt.orelse]
        elif isinstance(stmt, ast.Try):
            handlers = [s for handler in stmt.handlers for s in handler.body]
            pending[:0] = [*stmt.body, *handlers, *stmt.orelse, *stmt.finalbody]


def assigned_name(stmt: ast.stmt) -> tuple[str, ast.expr] | None:
    if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1:
        target = stmt.targets[0]
        if isinstance(target, ast.Name):
            return target.id, stmt.value
    if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and stmt.value:
        return stmt.target.id, stmt.value
    return None


def str_constants(node: ast.AST) -> set[str]:
    return {
        n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)
    }


def add_argument_flags(tree: ast.Module | None, wanted: Iterable[str]) -> list[str]:
    """Which of ``wanted`` an argparse ``add_argument("--flag", ...)`` call in ``tree`` defines."""
    if tree is None:
        return []
    found: set[str] = set()
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "add_argument"
        ):
            found.update(
                arg.value
                for arg in node.args
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str)
            )
    return sorted(found.intersection(wanted))
