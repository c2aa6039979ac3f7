"""A first-time user's path through the experiment scripts (issue 25), run as a user runs
them: ``python experiments/<script>.py ...`` in a subprocess, from the user's own folder.

- a run that fails or is stopped before its first checkpoint leaves no folder behind (so the
  same command runs again), and Ctrl-C saves a checkpoint that ``--resume`` continues;
- every script takes ``--cell`` as a built-in name of the one registry
  (``common.CELL_PATHS``), as ``MODULE:ATTR`` importable from the current folder, or as
  ``path/to/file.py:ATTR``;
- the main run ends with a short summary naming the files it wrote;
- ``compare_runs.py`` never drops a run whose label equals another's.

Kept cheap: tiny models, a few steps, one subprocess per scenario.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import pytest
from conftest import load_experiment

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = REPO / "experiments"
TIMEOUT_S = 300
TINY = ["--hidden-size", "8", "--batch-size", "16", "--eval-batch-size", "5000"]
TINY += ["--eval-every", "0", "--no-progress"]

# A user's IndRNN-style cell in a file of their own (no w_h: `sizes` says where H is).
MY_CELL = '''
import jax
import jax.numpy as jnp
import rnn_jax as rj


def init(key, input_size, hidden_size, *, dtype=jnp.float32):
    return {"w_x": jax.random.normal(key, (input_size, hidden_size), dtype) / input_size**0.5,
            "u": jnp.full((hidden_size,), 0.5, dtype), "b": jnp.zeros((hidden_size,), dtype)}


def step(params, h, x):
    h = jnp.tanh(x @ params["w_x"] + params["u"] * h + params["b"])
    return h, h


cell = rj.make_cell("indrnn", init, step,
                    sizes=lambda p: (p["w_x"].shape[0], p["u"].shape[0]))
'''


_load = load_experiment


def _mnist_available() -> bool:
    try:
        _load("mnist_rows")._load_mnist(None)
    except FileNotFoundError:
        return False
    return True


needs_mnist = pytest.mark.skipif(not _mnist_available(), reason="MNIST not installed")


@pytest.fixture
def home(tmp_path, monkeypatch):
    """The user's folder, holding their cell in my_cell.py; the current folder."""
    (tmp_path / "my_cell.py").write_text(MY_CELL)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def script(name: str, *argv: str, cwd: Path) -> subprocess.CompletedProcess:
    """``python experiments/<name>.py argv`` from ``cwd``. rnn_jax is found through
    PYTHONPATH (the repository), the user's modules only through the current folder."""
    env = dict(os.environ)
    kept = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p not in ("", ".")]
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *kept])
    command = [sys.executable, str(EXPERIMENTS / f"{name}.py"), *argv]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=TIMEOUT_S)  # fmt: skip


# ----------------------------------------------------- stopped runs, the user's own cell


@needs_mnist
def test_ctrl_c_saves_a_checkpoint_that_resume_continues_and_the_run_names_its_files(home):
    """A user's cell from a file path trains; Ctrl-C (a real SIGINT, sent by a testing hook
    during step 2, long before the first periodic checkpoint) saves step 2 and exits 130;
    the same command with --resume finishes and ends with a summary naming its files."""
    argv = [*TINY, "--cell", "./my_cell.py:cell", "--steps", "4", "--out", "runs/mine"]
    stopped = script("mnist_rows", *argv, "--debug-interrupt-at-step", "2", cwd=home)
    assert stopped.returncode == 130, stopped.stderr[-3000:]
    assert "saved its checkpoint" in stopped.stderr and "--resume" in stopped.stderr
    run = home / "runs" / "mine"
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["checkpoint_00000002.msgpack"]
    assert json.loads((run / "config.json").read_text())["cell"] == "./my_cell.py:cell"

    done = script("mnist_rows", *argv, "--resume", cwd=home)
    assert done.returncode == 0, done.stderr[-3000:]
    printed = json.loads(done.stdout.strip().splitlines()[-1])  # piped: JSON for scripts
    assert (printed["steps"], printed["resumed_from"]) == (4, 2)
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]  # each step logged once across the two invocations

    # The end of the run, as the terminal shows it: a few short lines naming the outputs.
    summary = done.stderr.strip().splitlines()[-7:]
    assert summary[0].startswith("done: ./my_cell.py:cell, 4 steps (resumed from 2), ")
    assert "test accuracy" in summary[0] and f"wrote {Path('runs/mine')}/:" == summary[1]
    names = [line.split()[0] for line in summary[2:]]
    assert names == ["summary.json", "curves.png", "metrics.jsonl", "checkpoints/", "config.json"]
    assert all(len(line) <= 110 for line in summary), summary


def test_the_human_summary_replaces_the_json_line_on_a_terminal(monkeypatch, capsys, tmp_path):
    mnist_rows = _load("mnist_rows")
    args = mnist_rows.parse_args(["--out", str(tmp_path), "--eval-every", "500"])
    for name in ("summary.json", "config.json", "curves.png"):
        (tmp_path / name).write_text("{}")
    summary = {"run_dir": str(tmp_path), "wall_s": 150.0, "test_accuracy": 0.9906,
               "test_count": 10_000, "cell": "lstm", "steps": 5000,
               "resumed_from": None}  # fmt: skip
    monkeypatch.setattr(mnist_rows, "parse_args", lambda argv: args)
    monkeypatch.setattr(mnist_rows, "load_data", lambda args: None)
    monkeypatch.setattr(mnist_rows, "train", lambda args, splits: summary)

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    with contextlib.redirect_stdout(Terminal()) as out:
        assert mnist_rows.main([]) == 0
    assert out.getvalue() == ""  # no 1,271-character JSON line on a terminal
    err = capsys.readouterr().err
    assert err.startswith("done: lstm, 5,000 steps, 2.5 min: test accuracy 99.06% on all 10,000 "
                          "test digits\n")  # fmt: skip
    assert [line.split()[0] for line in err.splitlines()[2:]] == [
        "summary.json", "curves.png", "config.json"]  # only the files that exist  # fmt: skip


@needs_mnist
@pytest.mark.skipif(jax.default_backend() == "gpu", reason="cuDNN runs on a GPU")
def test_a_start_that_fails_leaves_no_folder_and_the_same_command_runs_again(
    home, monkeypatch, capsys
):
    mnist_rows = _load("mnist_rows")
    out = home / "runs" / "cud"
    # A backend that cannot run here: a usage error before the folder exists.
    with pytest.raises(SystemExit) as exit_:
        mnist_rows.main([*TINY, "--backend", "cudnn", "--steps", "3", "--out", str(out)])
    assert exit_.value.code == 2 and not out.exists()
    assert "the model cannot run: backend='cudnn'" in capsys.readouterr().err

    # Failing (or Ctrl-C, twice) after the folder is written, before the first checkpoint:
    # what the run wrote is removed, and a message says the same command starts afresh.
    import rnn_jax.train

    argv = [*TINY, "--steps", "2", "--out", str(out)]
    for error in (RuntimeError("XLA ran out of memory"), KeyboardInterrupt()):

        def fail(*args, error=error, **kwargs):
            assert (out / "config.json").exists()  # the folder was written by now
            raise error

        with monkeypatch.context() as patch, pytest.raises(type(error)):
            patch.setattr(rnn_jax.train, "train_loop", fail)
            mnist_rows.main(argv)
        assert not out.exists(), sorted(out.rglob("*"))
        assert "removed what it had written" in capsys.readouterr().err
    assert mnist_rows.main(argv) == 0  # the same command, as the message says


def test_a_folder_left_by_an_old_failed_start_says_how_to_get_out(tmp_path, capsys):
    """Before this was fixed, a failed start left config.json and no checkpoint: neither a
    fresh run nor --resume could use it. The messages now say what to do."""
    mnist_rows = _load("mnist_rows")
    out = tmp_path / "old"
    out.mkdir()
    (out / "config.json").write_text("{}")
    for extra in ([], ["--resume"]):
        with pytest.raises(SystemExit):
            mnist_rows.main([*TINY, "--out", str(out), *extra])
        assert f"remove it (rm -r {out})" in capsys.readouterr().err


def test_char_lm_takes_a_registry_cell_and_ctrl_c_saves_a_checkpoint(home):
    argv = ["--cell", "mgu", "--steps", "3", "--hidden-size", "8", "--batch-size", "4",
            "--seq-len", "8", "--eval-every", "0", "--sample-every", "0", "--num-samples", "4",
            "--no-progress", "--out", "runs/names"]  # fmt: skip
    stopped = script("char_lm", *argv, "--debug-interrupt-at-step", "2", cwd=home)
    assert stopped.returncode == 130, stopped.stderr[-3000:]
    assert "--resume" in stopped.stderr
    assert (home / "runs" / "names" / "checkpoint_00000002.msgpack").exists()


# ------------------------------------------------------------------- --cell everywhere


def test_gradcheck_imports_a_users_module_from_the_current_folder(home):
    done = script("gradcheck", "--quick", "--cell", "my_cell:cell", "--cases", "full",
                  "--dtypes", "float64", cwd=home)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line.split() for line in done.stdout.splitlines() if line.startswith("my_cell:cell")]
    assert [(r[:3], r[-1]) for r in rows] == [(["my_cell:cell", "full", "float64"], "yes")], rows


def test_every_script_offers_the_one_registry_and_a_users_cell(home):
    common = _load("common")
    names = list(common.CELL_PATHS)
    assert "mgu" in names and "lru" in names
    for name in ("mnist_rows", "char_lm"):
        module = _load(name)
        for spec in (*names, "my_cell:cell", "./my_cell.py:cell", f"{home}/my_cell.py:cell"):
            assert module.parse_args(["--cell", spec]).cell == spec
    gradcheck, bench = _load("gradcheck"), _load("bench")
    assert set(names) <= set(gradcheck.CELLS) and set(names) <= set(bench.CELLS)
    args = gradcheck.parse_args(["--cell", "mgu", "--cell", "./my_cell.py:cell"])
    assert args.cells == [] and list(args.user_cells) == ["mgu", "./my_cell.py:cell"]
    assert bench.parse_args(["--cell", "mgu", "--cell", "my_cell:cell"]).cells == (
        "mgu,my_cell:cell")  # fmt: skip
    # The same file twice is one module: its cell objects are equal (jit reuses its cache).
    assert common.resolve_cell("./my_cell.py:cell") == common.resolve_cell("my_cell.py:cell")


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("transformer", ["'transformer'", "lstm", "mgu", "MODULE:ATTR", "file.py:ATTR"]),
        ("./nowhere.py:cell", ["nowhere.py", "no such file"]),
        ("my_cell:nothing", ["my_cell", "no attribute", "nothing"]),
        ("my_cell:init", ["is not a cell"]),
    ],
)
def test_a_wrong_cell_is_a_one_line_usage_error(spec, words, home, capsys):
    with pytest.raises(SystemExit) as exit_:
        _load("char_lm").parse_args(["--cell", spec])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and len(err.splitlines()) == 1, err
    assert "argument --cell" in err and all(word in err for word in words), err


# ------------------------------------------------------------------------ compare_runs


def _fake_run(folder: Path, seed: int, accuracy: float, **overrides) -> Path:
    folder.mkdir(parents=True)
    config = {"cell": "lstm", "layers": 1, "hidden_size": 128, "batch_size": 128, "lr": 3e-3,
              "seed": seed, "steps": 5000, "progress": True, **overrides}  # fmt: skip
    (folder / "config.json").write_text(json.dumps(config))
    record = {"step": 5000, "test_accuracy": accuracy, "wall_s": 240.0}
    (folder / "metrics.jsonl").write_text(json.dumps(record) + "\n")
    return folder


def test_compare_runs_keeps_every_run_whose_label_is_the_same(tmp_path):
    """Two seeds of one configuration, and the same configuration run twice: four rows."""
    runs = [_fake_run(tmp_path / "a", 0, 0.9905), _fake_run(tmp_path / "b", 1, 0.9906),
            _fake_run(tmp_path / "c", 1, 0.9801, progress=False),
            _fake_run(tmp_path / "d" / "b", 1, 0.9802)]  # fmt: skip
    done = script("compare_runs", *map(str, runs), "--minutes", "5", "--out",
                  str(tmp_path / "cmp"), cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = [line for line in done.stdout.splitlines() if line.startswith("| lstm")]
    assert len(rows) == 4, done.stdout
    for accuracy in ("99.05%", "99.06%", "98.01%", "98.02%"):
        assert sum(accuracy in row for row in rows) == 1, (accuracy, rows)
    assert len({row.split(" | ")[0] for row in rows}) == 4  # four different labels
    assert "[seed 0]" in rows[0] and "[seed 1]" in rows[1]
    # The same settings twice: told apart by folder name, then by path.
    assert "(c)" in rows[2] and f"({runs[3]})" in rows[3]

    again = script("compare_runs", str(runs[0]), str(runs[0]), "--out", str(tmp_path / "x"),
                   cwd=tmp_path)  # fmt: skip
    assert again.returncode == 2 and "given more than once" in again.stderr
