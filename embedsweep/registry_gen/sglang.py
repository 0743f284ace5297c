"""SGLang's registry rules: which architectures an SGLang wheel serves, read from its sources.

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
from typing import Final

from embedsweep.errors import EmbedsweepError
from embedsweep.registry_gen.wheel import (
    REFRESH_FAILED,
    Extracted,
    Wheel,
    absolute_module,
    add_argument_flags,
    assigned_name,
    module_file,
    str_constants,
    top_level,
)

_SGLANG_MODELS_DIR: Final = "sglang/srt/models/"
_SGLANG_SERVER_ARGS: Final = "sglang/srt/server_args.py"
_SGLANG_ARG_GROUPS: Final = "sglang/srt/arg_groups/"
_SGLANG_EMBED_FLAG: Final = "--is-embedding"
_NOT_EMBEDDING: Final = ("SequenceClassification", "RewardModel")


def _resolve_class(wheel: Wheel, file: str, name: str, depth: int = 0) -> tuple[str | None, str]:
    """(file defining the class or None, the class's ``__name__``) for ``name`` seen in ``file``."""
    tree = wheel.tree(file)
    if tree is None or depth > 8:
        return None, name
    for stmt in top_level(tree):
        if isinstance(stmt, ast.ClassDef) and stmt.name == name:
            return file, name
    for stmt in top_level(tree):
        assigned = assigned_name(stmt)
        if assigned and assigned[0] == name and isinstance(assigned[1], ast.Name):
            return _resolve_class(wheel, file, assigned[1].id, depth + 1)
        if isinstance(stmt, ast.ImportFrom):
            for alias in stmt.names:
                if (alias.asname or alias.name) == name:
                    other = module_file(wheel, absolute_module(file, stmt))
                    if other is None:
                        return None, alias.name
                    return _resolve_class(wheel, other, alias.name, depth + 1)
    return None, name


def _class_def(wheel: Wheel, file: str, name: str) -> ast.ClassDef | None:
    tree = wheel.tree(file)
    if tree is None:
        return None
    return next(
        (s for s in top_level(tree) if isinstance(s, ast.ClassDef) and s.name == name), None
    )


def _forward_takes_get_embedding(wheel: Wheel, file: str, name: str, depth: int = 0) -> bool:
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


def _entry_classes(wheel: Wheel, file: str) -> list[tuple[str | None, str]]:
    tree = wheel.tree(file)
    if tree is None:
        return []
    found: list[tuple[str | None, str]] = []
    for stmt in top_level(tree):
        assigned = assigned_name(stmt)
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


def _sglang_rule_names(wheel: Wheel) -> tuple[set[str], set[str], list[str], list[str]]:
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
                not_generative |= set().union(*(str_constants(s) for s in body))
                files.append(f"{file}::is_generation_model")
    for file in wheel.files_containing("sglang/srt/", b"_EMBEDDING_ARCHITECTURES"):
        tree = wheel.tree(file)
        for stmt in tree.body if tree else []:
            assigned = assigned_name(stmt)
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
                classification |= str_constants(assigned[1])
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


def _sglang_embed_flag_file(wheel: Wheel) -> str | None:
    """The file defining ``--is-embedding``: an ``add_argument`` call in older releases, an
    ``is_embedding`` field of a server-argument class (its CLI name derived) in newer ones."""
    if add_argument_flags(wheel.tree(_SGLANG_SERVER_ARGS), [_SGLANG_EMBED_FLAG]):
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


def generate_sglang(wheel: Wheel) -> Extracted:
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
        raise EmbedsweepError(f"no EntryClass in {_SGLANG_MODELS_DIR}*.py", code=REFRESH_FAILED)
    not_generative, classification, rule_files, classification_files = _sglang_rule_names(wheel)
    if not rule_files:
        raise EmbedsweepError(
            "no is_generation_model / _EMBEDDING_ARCHITECTURES in sglang/srt", code=REFRESH_FAILED
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
    return Extracted(architectures, embedding, convertible, flags, rules)
