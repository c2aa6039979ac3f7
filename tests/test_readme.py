"""The README's example must run as written and print what it says."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_example_runs(capsys):
    code = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)[0]
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)
    rj, params = namespace["rj"], namespace["params"]
    assert rj.count_params(params) == 80384  # the number the README's comment claims
    assert "Total params: 80,384" in capsys.readouterr().out
    assert namespace["hs"].shape == (32, 28, 128)
    d_xs = namespace["d_xs"]
    assert d_xs.shape == (32, 28, 28)


def test_readme_commands_match_ci():
    """CI runs the README's test command verbatim (after creating the venv)."""
    ci = (README.parent / ".ci" / "run").read_text()
    lines = _opening_block().splitlines()
    test_line = next(line for line in lines if "pytest" in line)
    venv_step, _, command = test_line.partition(" && ")
    assert venv_step == "python3 -m venv .venv"
    assert command in ci.splitlines()


def _opening_block() -> str:
    return re.search(r"```bash\n(.*?)```", README.read_text(), re.S)[1]


def test_readme_opening_block_says_what_command_1_does_how_long_and_what_it_writes():
    """A newcomer reads only this block before running command 1."""
    block = _opening_block()
    intro = block.split("# 2.")[0]
    assert "seed notebook 4" in intro and "5,000 steps of 128 images" in intro  # seed-004
    assert re.search(r"about \d+ minutes on a quiet 2-core CPU", intro), intro
    for output in ("runs/mnist-lstm/", "summary.json", "curves.png", "metrics.jsonl",
                   "checkpoints/", "config.json"):  # fmt: skip
        assert output in intro, output
    assert "--out runs/mnist-lstm" in intro  # the folder named is the command's


def test_the_docs_build_output_is_ignored_by_git():
    ignored = (README.parent / ".gitignore").read_text().splitlines()
    assert "site/" in ignored  # mkdocs build writes site/
