"""experiments/state_tracking.py: the task's data and one smoke run end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import load_experiment

state_tracking = load_experiment("state_tracking")


@pytest.mark.parametrize("modulus", [2, 5])
def test_labels_are_the_sum_of_the_valid_symbols_mod_k(modulus):
    rng = np.random.default_rng(0)
    batch = state_tracking.make_problems(rng, 50, rng.integers(1, 12, size=50), modulus)
    symbols = batch["x"].argmax(-1)
    assert batch["x"].shape == (50, int(batch["lengths"].max()), modulus)
    assert np.all(batch["x"].sum(-1) == 1)  # one-hot everywhere, padding reads symbol 0
    for row, length, label in zip(symbols, batch["lengths"], batch["y"], strict=True):
        assert np.all(row[length:] == 0)
        assert label == row[:length].sum() % modulus
    assert len(set(batch["y"].tolist())) == modulus  # every class occurs


def test_training_batches_are_a_pure_function_of_the_step():
    batch_of = state_tracking.train_batches(seed=3, batch_size=8, max_len=40, modulus=2)
    first, again, other = batch_of(7), batch_of(7), batch_of(8)
    assert all(np.array_equal(first[k], again[k]) for k in first)
    assert not np.array_equal(first["lengths"], other["lengths"])
    assert 1 <= first["lengths"].min() and first["lengths"].max() <= 40


def test_quick_run_writes_accuracy_by_length_for_each_cell(tmp_path):
    out = tmp_path / "run"
    flags = ["--cells", "lstm,rglru", "--hidden", "8", "--quick", "--test-lengths", "40,64"]
    summary = state_tracking.main([*flags, "--no-progress", "--out", str(out)])
    assert set(summary["cells"]) == {"lstm", "rglru"}
    for entry in summary["cells"].values():
        assert set(entry["accuracy_by_length"]) == {"40", "64"}
        assert all(0 <= a <= 1 for a in entry["accuracy_by_length"].values())
    assert json.loads((out / "summary.json").read_text())["cells"] == summary["cells"]
    assert (out / "accuracy_by_length.png").stat().st_size > 0
    assert (out / "curves.png").stat().st_size > 0
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {r["cell"] for r in logged} == {"lstm", "rglru"} and logged[-1]["step"] == 20


def test_bad_flags_are_refused_by_name(capsys):
    with pytest.raises(SystemExit):
        state_tracking.parse_args(["--task", "parity", "--modulus", "3"])
    assert "--task parity is the sum mod 2" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        state_tracking.parse_args(["--test-lengths", "40,x"])
    assert "--test-lengths" in capsys.readouterr().err
