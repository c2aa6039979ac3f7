"""Bad invocations of the experiment scripts: each exits with code 2 and a one-line message
naming the flag, before anything is trained or any folder written.

Run in-process (``main(argv)``), with the training function replaced by one that fails the
test if reached: "nothing is trained" is checked, not assumed.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import load_experiment

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


_load = load_experiment


def _must_not_train(*args, **kwargs):
    raise AssertionError("a bad invocation reached training")


# (script, argv, words the message must contain). "{tmp}" is a fresh folder; "{text}" a small
# UTF-8 file (characters a-e, space, newline); "{run}" a folder holding a finished run.
CASES = [
    ("mnist_rows", ["--data-dir", "/nonexistent"], ["--data-dir", "/nonexistent"]),
    ("mnist_rows", ["--data-dir", "{tmp}"], ["--data-dir"]),  # a folder without MNIST
    ("mnist_rows", ["--resume"], ["--resume", "no checkpoint"]),
    ("mnist_rows", ["--out", "{run}"], ["already holds a run", "--resume"]),
    ("mnist_rows", ["--hidden-size", "0"], ["--hidden-size", "'0'", ">= 1"]),
    ("mnist_rows", ["--steps", "0"], ["--steps", "'0'"]),
    ("mnist_rows", ["--batch-size", "-3"], ["--batch-size", "'-3'"]),
    ("mnist_rows", ["--batch-size", "100000"], ["--batch-size", "100000", "60000"]),
    ("mnist_rows", ["--val-size", "60000"], ["--val-size", "60000"]),
    ("mnist_rows", ["--lr", "0"], ["--lr", "'0'", "(0, inf]"]),
    ("mnist_rows", ["--lr", "nan"], ["--lr", "'nan'"]),
    ("mnist_rows", ["--cell", "transformer"], ["--cell", "'transformer'", "lstm"]),
    ("mnist_rows", ["--warmup-steps", "5", "--decay-steps", "5"], ["--decay-steps"]),
    ("mnist_rows", ["--eval-every", "-1"], ["--eval-every"]),
    ("mnist_rows", ["--ckpt-every", "5"], ["--ckpt-every"]),  # the flag is --checkpoint-every
    ("mnist_rows", ["--num-processes", "2"], ["--coordinator", "--process-id"]),
    (
        "mnist_rows",
        ["--coordinator", "localhost", "--num-processes", "2", "--process-id", "0"],
        ["--coordinator", "HOST:PORT"],
    ),
    (
        "mnist_rows",
        ["--coordinator", "h:1", "--num-processes", "2", "--process-id", "2"],
        ["--process-id", "< --num-processes"],
    ),
    ("char_lm", ["--top-k", "-1"], ["--top-k", "'-1'"]),
    ("char_lm", ["--temperature", "-1"], ["--temperature", "'-1'"]),
    ("char_lm", ["--data", "{text}", "--prime", "Q"], ["--prime", "'Q'"]),
    ("char_lm", ["--prime", "Ann"], ["--prime", "--data names"]),
    ("char_lm", ["--data", "{text}", "--prime", ""], ["--prime"]),
    ("char_lm", ["--data", "shakespear"], ["--data", "'shakespear'", "names", "shakespeare"]),
    ("char_lm", ["--data", "/missing.txt"], ["--data", "'/missing.txt'"]),
    ("char_lm", ["--data", "{text}", "--seq-len", "0"], ["--seq-len", "'0'"]),
    ("char_lm", ["--data", "{text}", "--batch-size", "5000"], ["--batch-size", "5000"]),
    ("char_lm", ["--steps", "0"], ["--steps", "'0'"]),
    ("char_lm", ["--val-fraction", "1"], ["--val-fraction", "'1'"]),
    ("char_lm", ["--dropout", "1.5"], ["--dropout"]),
    ("char_lm", ["--resume"], ["--resume", "no checkpoint"]),
    ("gradcheck", ["--steps", "0"], ["--steps", "'0'"]),
    ("gradcheck", ["--cell", "no_such_module:cell"], ["--cell", "no_such_module"]),
    ("gradcheck", ["--cell", "rnn_jax:no_such_cell"], ["--cell", "no_such_cell"]),
    ("bench", ["--steps", "0"], ["--steps"]),
    ("bench", ["--impls", "rnn_jax,tensorflow"], ["--impls", "tensorflow"]),
    ("bench", ["--config", "2,3,4"], ["--config", "2,3,4"]),
    ("bench", ["--cell", "no_such_module:cell"], ["--cell", "no_such_module"]),
]
TRAINERS = {"mnist_rows": "train", "char_lm": "run", "gradcheck": "run_case", "bench": "build"}


@pytest.fixture
def places(tmp_path):
    text = tmp_path / "text.txt"
    text.write_text("abc de\nedcba\n" * 200, encoding="utf-8")
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"cell": "simple"}))
    empty = tmp_path / "empty"
    empty.mkdir()
    return {"tmp": str(empty), "text": str(text), "run": str(run)}


@pytest.mark.parametrize(("script", "argv", "words"), CASES, ids=lambda v: str(v)[:40])
def test_bad_invocation_exits_2_with_one_line_and_leaves_nothing(
    script, argv, words, places, tmp_path, monkeypatch, capsys
):
    module = _load(script)
    monkeypatch.setattr(module, TRAINERS[script], _must_not_train)
    argv = [a.format(**places) for a in argv]
    out = tmp_path / "out"
    if script in ("mnist_rows", "char_lm"):
        argv += ["--no-progress"] + ([] if "--out" in argv else ["--out", str(out)])
    before = sorted(p.name for p in Path(places["run"]).iterdir())
    with pytest.raises(SystemExit) as exit_:
        module.main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert ": error: " in lines[0] and lines[0].endswith("(see --help)"), lines[0]
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert not out.exists(), "a failed start left its run folder behind"
    assert sorted(p.name for p in Path(places["run"]).iterdir()) == before


def test_help_shows_each_default_once(capsys):
    for script in ("mnist_rows", "char_lm", "gradcheck", "bench"):
        with pytest.raises(SystemExit) as exit_:
            _load(script).parse_args(["--help"])
        assert exit_.value.code == 0
        text = " ".join(capsys.readouterr().out.split())  # undo the line wrapping
        assert "(default: True)" not in text and "(default: False)" not in text, script
        assert "(default: None)" not in text, script
        for option in text.split(" --")[1:]:
            assert option.count("(default:") <= 1, (script, option)
    assert "--checkpoint-every" in _help("mnist_rows", capsys)
    assert "--checkpoint-every" in _help("char_lm", capsys)


def _help(script, capsys) -> str:
    with pytest.raises(SystemExit):
        _load(script).parse_args(["--help"])
    return capsys.readouterr().out


def test_gradcheck_and_bench_take_a_users_cell(tmp_path, capsys):
    """``--cell module:attr``: any importable cell object (here rnn_jax's own LSTM, reached
    by its import path as a user's cell would be) is checked / timed like a built-in one."""
    gradcheck = _load("gradcheck")
    argv = ["--quick", "--cells", "--cell", "rnn_jax:lstm.cell", "--cases", "full", "truncated"]
    assert gradcheck.main(argv + ["--dtypes", "float64", "--out", str(tmp_path / "gc")]) == 0
    rows = json.loads((tmp_path / "gc" / "gradcheck.json").read_text())["rows"]
    assert [(r["cell"], r["case"], r["ok"]) for r in rows] == [
        ("rnn_jax:lstm.cell", "full", True), ("rnn_jax:lstm.cell", "truncated", True)
    ]  # fmt: skip

    bench = _load("bench")
    argv = ["--config", "2,3,4,5", "--cells", "", "--cell", "rnn_jax:lstm", "--modes", "train"]
    argv += ["--impls", "rnn_jax,torch", "--steps", "2", "--warmup", "1"]
    report = bench.main(argv + ["--out", str(tmp_path), "--name", "user"])
    assert [(r["cell"], r["impl"]) for r in report["results"]] == [("rnn_jax:lstm", "rnn_jax")]
    assert report["results"][0]["median_ms"] > 0 and report["results"][0]["gflops"] > 0
    assert any("torch" in s for s in report["skipped"])  # no counterpart of a user's cell
