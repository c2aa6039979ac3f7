"""experiments/compare_runs.py: accuracy at wall-time marks from mnist_rows.py run folders."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

PATH = Path(__file__).resolve().parents[1] / "experiments" / "compare_runs.py"


def _load():
    spec = importlib.util.spec_from_file_location("compare_runs", PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["compare_runs"] = module
    spec.loader.exec_module(module)
    return module


def _run(folder: Path, cell: str, evals: list[tuple[float, int, float]]) -> Path:
    folder.mkdir()
    config = {"cell": cell, "layers": 2, "hidden_size": 8, "batch_size": 4, "input": "pixels"}
    (folder / "config.json").write_text(json.dumps(config))
    lines = [json.dumps({"step": 1, "loss": 2.0})]  # a training record: no wall_s, skipped
    lines += [json.dumps({"step": s, "test_accuracy": a, "wall_s": 60 * m}) for m, s, a in evals]
    (folder / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def test_table_reads_the_last_accuracy_by_each_mark(tmp_path, capsys):
    compare = _load()
    fast = _run(tmp_path / "a", "mingru", [(5, 100, 0.5), (14, 300, 0.9), (31, 700, 0.95)])
    slow = _run(tmp_path / "b", "lstm", [(20, 50, 0.3)])
    code = compare.main([str(fast), str(slow), "--minutes", "15", "30", "--out",
                         str(tmp_path / "cmp")])  # fmt: skip
    assert code == 0
    table = (tmp_path / "cmp.md").read_text()
    assert "| mingru 2x8 (plain, pixels, batch 4) | 90.00% (14.0 min, step 300) | 90.00% " in table
    assert "| 95.00% (31.0 min) |" in table
    assert "| lstm 2x8 (plain, pixels, batch 4) | - | 30.00% (20.0 min, step 50) |" in table
    assert (tmp_path / "cmp.png").read_bytes()[:4] == b"\x89PNG"
    assert table in capsys.readouterr().out


def test_step_seconds_put_runs_on_a_training_time_axis(tmp_path):
    compare = _load()
    # Made on a loaded machine: wall time says 14 min for 300 steps, the quiet rate 1.2 s/step.
    run = _run(tmp_path / "a", "mingru", [(5, 100, 0.5), (14, 300, 0.9), (31, 700, 0.95)])
    out = str(tmp_path / "cmp")
    assert compare.main([str(run), "--minutes", "10", "--step-seconds", "1.2", "--out", out]) == 0
    assert "| 90.00% (6.0 min, step 300) |" in (tmp_path / "cmp.md").read_text()
    try:
        compare.main([str(run), "--step-seconds", "1", "2", "--out", out])
    except SystemExit as e:
        assert e.code == 2
    else:
        raise AssertionError("two --step-seconds for one run must be refused")


def test_label_names_a_residual_mlp_expansion_other_than_the_default(tmp_path):
    compare = _load()
    run = _run(tmp_path / "a", "mingru", [(5, 100, 0.5)])
    config = json.loads((run / "config.json").read_text())
    assert compare.label(run) == "mingru 2x8 (plain, pixels, batch 4)"
    for expansion, text in ((2, "residual"), (1, "residual x1 MLP")):
        config.update(block="residual", expansion=expansion, steps=10)
        (run / "config.json").write_text(json.dumps(config))
        assert compare.label(run) == f"mingru 2x8 ({text}, pixels, batch 4, 10 steps)"
