"""Every fenced ``python`` block of ``docs/**/*.md`` and ``README.md`` runs, and the site builds.

The blocks of one page run in order in one namespace (a later block may use what an earlier
one defined), in a fresh temporary working directory. A block opts out only with the marker
``<!-- docs-test: skip (why) -->`` on the line right above its fence; ``docs/contributing.md``
says when that is acceptable. Docstring examples (``>>>``) run through ``--doctest-modules``
(see ``[tool.pytest.ini_options]`` in ``pyproject.toml``).
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import textwrap
import types
from pathlib import Path
from typing import NamedTuple

import pytest

ROOT = Path(__file__).resolve().parents[1]
SKIP_MARKER = re.compile(r"^\s*<!-- docs-test: skip \(.+\) -->\s*$")
FENCE = re.compile(r"^(?P<indent>\s*)(?P<ticks>`{3,}|~{3,})\s*(?P<info>[^\s`]*)")


class Block(NamedTuple):
    path: Path
    line: int  # 1-based line of the block's first code line
    code: str
    skipped: bool


def code_blocks(path: Path) -> list[Block]:
    """The fenced code blocks whose info string is ``python``, in page order."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        indent, ticks = opening["indent"], opening["ticks"]
        end = i + 1
        while end < len(lines) and not re.match(rf"^{indent}{ticks[0]}{{{len(ticks)},}}\s*$",
                                                lines[end]):  # fmt: skip
            end += 1
        if opening["info"] == "python":
            body = textwrap.dedent("\n".join(lines[i + 1 : end]))
            skipped = i > 0 and bool(SKIP_MARKER.match(lines[i - 1]))
            blocks.append(Block(path, i + 2, body + "\n", skipped))
        i = end + 1
    return blocks


def pages() -> list[Path]:
    return sorted((ROOT / "docs").rglob("*.md")) + [ROOT / "README.md"]


PAGES_WITH_CODE = [p for p in pages() if code_blocks(p)]


@pytest.mark.parametrize("page", PAGES_WITH_CODE, ids=lambda p: str(p.relative_to(ROOT)))
def test_page_code_runs(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # A real module, so that what the page defines works as in a script: a dataclass (an
    # eqx.Module) looks its module up in sys.modules.
    module = types.ModuleType("__docs__")
    monkeypatch.setitem(sys.modules, "__docs__", module)
    namespace = module.__dict__
    for block in code_blocks(page):
        if block.skipped:
            continue
        # Pad with newlines so a traceback names the Markdown file's own line numbers.
        source = "\n" * (block.line - 1) + block.code
        exec(compile(source, str(page), "exec"), namespace)


def test_extractor_reads_fences_markers_and_indentation(tmp_path):
    page = tmp_path / "p.md"
    page.write_text(
        "text\n```python\na = 1\n```\n\n<!-- docs-test: skip (needs a cluster) -->\n"
        "```python\nraise SystemExit\n```\n```bash\nls\n```\n"
        "!!! note\n    ```python\n    b = a + 1\n    ```\n````python\n```\n````\n"
    )
    blocks = code_blocks(page)
    assert [(b.line, b.code, b.skipped) for b in blocks] == [
        (3, "a = 1\n", False),
        (8, "raise SystemExit\n", True),
        (15, "b = a + 1\n", False),
        (18, "```\n", False),
    ]


def test_skip_marker_needs_a_reason(tmp_path):
    page = tmp_path / "p.md"
    page.write_text("<!-- docs-test: skip -->\n```python\nx = 1\n```\n")
    assert not code_blocks(page)[0].skipped


def test_skips_are_rare():
    """The opt-out is for code that cannot run in CI (a cluster launch), not for slow code."""
    blocks = [b for p in pages() for b in code_blocks(p)]
    skipped = [f"{b.path.relative_to(ROOT)}:{b.line}" for b in blocks if b.skipped]
    assert len(blocks) >= 20, f"only {len(blocks)} python blocks found: is the extractor broken?"
    assert len(skipped) <= 3, f"too many skipped blocks: {skipped}"


def test_mkdocs_build_strict(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "index.html").is_file()
    assert (tmp_path / "api" / "train" / "index.html").is_file()


def test_doctest_collection_leaves_out_modules_whose_optional_deps_are_missing(tmp_path):
    """The root conftest.py skips doctest collection of a module only for a missing
    top-level third-party import (rnn_jax's own and function-level imports never count)."""
    spec = importlib.util.spec_from_file_location("root_conftest", ROOT / "conftest.py")
    root_conftest = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(root_conftest)
    module = tmp_path / "m.py"
    module.write_text(
        "import numpy\nimport not_installed_pkg_xyz.sub\nfrom rnn_jax import nothing\n"
        "from .sibling import x\ndef f():\n    import also_not_installed_xyz\n"
    )
    assert root_conftest.missing_imports(module) == {"not_installed_pkg_xyz"}
    module.write_text("import numpy, jax\nfrom flax import nnx\n")
    assert root_conftest.missing_imports(module) == set()
    # Helper scripts under tests/ are never imported by collection (a worker parses its argv).
    tests = ROOT / "tests"
    assert root_conftest.is_test_helper(tests / "distributed_eval_worker.py")
    assert not root_conftest.is_test_helper(tests / "test_docs.py")
    assert not root_conftest.is_test_helper(tests / "conftest.py")


def test_custom_cell_guide_trains_with_rnn_jax_train_and_its_claim_is_what_the_code_asserts():
    """The guide trains with the library's own loop, and the accuracy its text claims lies in
    the window its (tested) code asserts, so the claim cannot drift from what the run gets."""
    page = ROOT / "docs" / "custom_cells.md"
    code = "".join(block.code for block in code_blocks(page))
    assert "train.train_loop(" in code and "train.make_train_step(" in code
    assert "apply_updates" not in code, "a hand-written optax loop is back in the guide"
    window = re.search(r"assert (0\.\d+) < accuracy < (0\.\d+)", code)
    claim = re.search(r"reach (\d+\.\d)% on those 2,000 test digits", page.read_text())
    assert window and claim, "the guide's training block or its accuracy claim moved"
    low, high = (100 * float(v) for v in window.groups())
    assert low < float(claim[1]) < high, (claim[1], window.groups())


def test_equinox_guide_is_on_the_site_and_trains_an_eqx_module_over_one_sequence():
    """Its code runs in test_page_code_runs; here: it is in the nav and does what it says."""
    page = ROOT / "docs" / "guides" / "equinox.md"
    assert "guides/equinox.md" in (ROOT / "mkdocs.yml").read_text()
    code = "".join(block.code for block in code_blocks(page) if not block.skipped)
    for piece in ("(eqx.Module)", "rj.unroll(", "jax.vmap(model)", "filter_value_and_grad",
                  "eqx.apply_updates", "assert accuracy >"):  # fmt: skip
        assert piece in code, piece


def test_api_reference_shows_each_modules_declared_exports_only():
    """The API reference renders a module's ``__all__`` (mkdocs.yml ``filters: public``), so
    every module it documents declares one, naming only what the module has; helpers such as
    ``rnn_jax.cells.simple.output_pointwise`` stay out."""
    import importlib

    assert re.search(r"^\s+filters: public\b", (ROOT / "mkdocs.yml").read_text(), re.M)
    modules = set()
    for page in (ROOT / "docs" / "api").glob("*.md"):
        for target in re.findall(r"^::: (\S+)", page.read_text(), re.M):
            if (ROOT / (target.replace(".", "/") + ".py")).exists():
                modules.add(target)
    assert len(modules) > 20
    for name in sorted(modules):
        module = importlib.import_module(name)
        exports = getattr(module, "__all__", None)
        assert exports, f"{name} is in the API reference but declares no __all__"
        assert [e for e in exports if not hasattr(module, e)] == [], name
    assert "output_pointwise" not in importlib.import_module("rnn_jax.cells.simple").__all__
