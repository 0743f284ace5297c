"""vLLM's registry rules: which architectures a vLLM wheel serves, read from its sources.

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
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Final

from embedsweep.errors import EmbedsweepError
from embedsweep.registry_gen.wheel import (
    REFRESH_FAILED,
    Extracted,
    Wheel,
    add_argument_flags,
    assigned_name,
)

_VLLM_REGISTRY: Final = "vllm/model_executor/models/registry.py"
_VLLM_ADAPTERS: Final = "vllm/model_executor/models/adapters.py"
_VLLM_ARG_UTILS: Final = "vllm/engine/arg_utils.py"
_VLLM_LOADER: Final = "vllm/model_executor/model_loader/"
_VLLM_CONVERT_FLAGS: Final = ("--convert", "--runner", "--task")
_MODELS_DICT: Final = re.compile(r"^_[A-Z0-9_]+_MODELS$")
_GENERATION_DICT: Final = re.compile(r"^_(TEXT_)?GENERATION_MODELS$")


class _Unresolvable(Exception):
    """An expression the small evaluator below does not handle; the entry is skipped."""


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


def _vllm_dicts(wheel: Wheel) -> dict[str, _Registry]:
    tree = wheel.tree(_VLLM_REGISTRY)
    if tree is None:
        raise EmbedsweepError(f"no readable {_VLLM_REGISTRY} in the wheel", code=REFRESH_FAILED)
    evaluator = _DictEvaluator(_VLLM_REGISTRY, wheel.unresolved)
    for stmt in tree.body:
        assigned = assigned_name(stmt)
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
            f"no _*_MODELS registry dict in {_VLLM_REGISTRY}", code=REFRESH_FAILED
        )
    return dicts


def _vllm_conversion(wheel: Wheel) -> list[str]:
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


def generate_vllm(wheel: Wheel) -> Extracted:
    dicts = _vllm_dicts(wheel)
    architectures = set().union(*dicts.values())
    embedding_dicts = sorted(n for n in dicts if "EMBEDDING" in n)
    generation_dicts = sorted(n for n in dicts if _GENERATION_DICT.match(n))
    embedding: set[str] = set().union(*(dicts[n] for n in embedding_dicts))
    callers = _vllm_conversion(wheel)
    flags = add_argument_flags(wheel.tree(_VLLM_ARG_UTILS), _VLLM_CONVERT_FLAGS)
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
    return Extracted(architectures, embedding, convertible, flags if callers else [], rules)
