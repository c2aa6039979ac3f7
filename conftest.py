"""Doctest collection over ``rnn_jax/`` (``--doctest-modules``, see pyproject.toml).

A module that imports an optional dependency at its top (torch, keras, a compiled backend's
package) is left out of doctest collection when that dependency is not installed, so a
minimal install can still run ``pytest``; with the dependency present it is collected as usual.

Under ``tests/`` only ``test_*.py`` (and ``conftest.py``) are collected: ``--doctest-modules``
imports every module it collects, and a helper script there (a worker that parses its own
command line at import) must not run inside pytest.

The tests compile XLA:CPU code with LLVM's optimisation level 0
(``--xla_backend_optimization_level=0``, set here before JAX starts, so the scripts the tests
run in subprocesses inherit it). Their shapes are tiny, so compiling is most of their time:
level 0 cut a compile-bound pair of tests (mlstm's check_cell, the bfloat16 check_cell) from
103 to 74 s. It changes how LLVM lowers the code, not what the computation is (XLA's HLO
passes, buffer assignment and float semantics are the same), and no test measures speed.
Speed is measured by ``experiments/bench.py``, which runs at the default level.
"""

from __future__ import annotations

import ast
import importlib.util
import os
from pathlib import Path

if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0"
    ).strip()

ROOT = Path(__file__).resolve().parent
PACKAGE = ROOT / "rnn_jax"
TESTS = ROOT / "tests"


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


def is_test_helper(path: Path) -> bool:
    """A ``.py`` file under ``tests/`` that is neither a test module nor a conftest."""
    return (
        path.suffix == ".py"
        and TESTS in path.parents
        and not path.name.startswith("test_")
        and path.name != "conftest.py"
    )


def pytest_ignore_collect(collection_path, config):
    path = Path(collection_path)
    if path.suffix == ".py" and PACKAGE in path.parents and missing_imports(path):
        return True
    if is_test_helper(path):
        return True
    return None
