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
    lines = README.read_text().splitlines()
    test_line = next(line for line in lines[:8] if "pytest" in line)
    venv_step, _, command = test_line.partition(" && ")
    assert venv_step == "python3 -m venv .venv"
    assert command in ci.splitlines()
