"""Doctest collection over ``rnn_jax/`` (``--doctest-modules``, see pyproject.toml).

A module that imports an optional dependency at its top (torch, keras, a compiled backend's
package) is left out of doctest collection when that dependency is not installed, so a
minimal install can still run ``pytest``; with the dependency present it is collected as usual.
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent / "rnn_jax"


def _top_level_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def missing_imports(path: Path) -> set[str]:
    """Top-level imports of ``path`` that are not installed (rnn_jax's own never count)."""
    return {
        name
        for name in _top_level_imports(path) - {"rnn_jax"}
        if importlib.util.find_spec(name) is None
    }


def pytest_ignore_collect(collection_path, config):
    path = Path(collection_path)
    if path.suffix == ".py" and PACKAGE in path.parents and missing_imports(path):
        return True
    return None
