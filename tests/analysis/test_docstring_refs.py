"""Every cross-reference in tinylens.analysis's docstrings names something that exists.

pdoc renders a reference it cannot resolve as plain text, without a warning; this check makes a
broken one fail, in the test suite and in ``make docs`` (which runs this file as a script).
References checked: Sphinx-style roles (``:func:`~tinylens.analysis.patch_sweep```, ``:mod:`~.sites```,
``:attr:`ContrastPrompts.metric```) and any dotted ``tinylens.…`` name in backticks.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import pkgutil
import re
import sys
from types import ModuleType

import tinylens.analysis

ROLE = re.compile(r":(?:func|class|mod|meth|attr|data|obj|exc):`~?(?P<name>[\w.]+)`")
DOTTED = re.compile(r"`+(?P<name>tinylens(?:\.\w+)+)(?:\(\))?`+")


def _modules() -> list[ModuleType]:
    found = [tinylens.analysis]
    for info in pkgutil.walk_packages(tinylens.analysis.__path__, "tinylens.analysis."):
        found.append(importlib.import_module(info.name))
    return found


def _docstrings(module: ModuleType) -> list[tuple[str, str]]:
    """(scope, text) of every string literal statement: module, class, function and attribute
    docstrings alike; scope is the enclosing class's name or ''."""
    tree = ast.parse(importlib.util.find_spec(module.__name__).loader.get_source(module.__name__))
    out: list[tuple[str, str]] = []

    def visit(node: ast.AST, scope: str) -> None:
        for child in ast.iter_child_nodes(node):
            if (
                isinstance(child, ast.Expr)
                and isinstance(child.value, ast.Constant)
                and isinstance(child.value.value, str)
            ):
                out.append((scope, child.value.value))
            visit(child, child.name if isinstance(child, ast.ClassDef) else scope)

    visit(tree, "")
    return out


def _resolve(name: str, module: ModuleType, scope: str) -> bool:
    if name.startswith("."):  # relative to the module's package
        package = module.__name__ if hasattr(module, "__path__") else module.__name__.rsplit(".", 1)[0]
        name = package + name
    candidates = [name]
    if not name.startswith("tinylens"):
        candidates += [f"{module.__name__}.{scope}.{name}", f"{module.__name__}.{name}"]
    return any(_exists(c) for c in candidates)


def _exists(dotted: str) -> bool:
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj: object = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            if attr in getattr(obj, "__dataclass_fields__", {}) or attr in getattr(
                obj, "__annotations__", {}
            ):
                obj = None  # a field: documented, nothing further to walk
                continue
            if isinstance(obj, type) and not hasattr(obj, attr):  # set in __init__?
                source = inspect.getsource(obj)
                if re.search(rf"self\.{attr}(?:,\s*self\.\w+)*\s*[:=]", source):
                    obj = None
                    continue
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


def broken_references() -> list[str]:
    """``module: reference`` for every reference that does not resolve."""
    broken = []
    for module in _modules():
        for scope, text in _docstrings(module):
            for pattern in (ROLE, DOTTED):
                for match in pattern.finditer(text):
                    if not _resolve(match["name"], module, scope):
                        broken.append(f"{module.__name__}: {match['name']}")
    return broken


def test_every_docstring_reference_resolves() -> None:
    assert broken_references() == []


def test_a_broken_reference_is_caught() -> None:
    assert not _resolve("tinylens.analysis.no_such_thing", tinylens.analysis, "")
    assert not _resolve("no_such_thing", tinylens.analysis.metrics, "")
    assert _resolve("~.sites".lstrip("~"), importlib.import_module("tinylens.analysis.patching"), "")
    assert _resolve("ContrastPrompts.metric", importlib.import_module("tinylens.analysis.contrast"), "")


if __name__ == "__main__":
    problems = broken_references()
    for problem in problems:
        print(f"broken docstring reference: {problem}", file=sys.stderr)
    sys.exit(1 if problems else 0)
