"""Tests for experiments/common.py: atomic JSON, metrics log on resume, plots, run folders."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def load_common():
    if "common" in sys.modules:
        return sys.modules["common"]
    spec = importlib.util.spec_from_file_location("common", EXPERIMENTS / "common.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["common"] = module
    spec.loader.exec_module(module)
    return module


common = load_common()


def test_jsonable_converts_numpy_and_non_finite():
    value = {"a": np.float32(1.5), "b": np.arange(3), "c": [float("nan"), math.inf], 4: (1, 2)}
    assert common.jsonable(value) == {"a": 1.5, "b": [0, 1, 2], "c": [None, None], "4": [1, 2]}


def test_write_json_atomic_leaves_no_temp_files(tmp_path):
    path = common.write_json_atomic(tmp_path / "sub" / "s.json", {"x": np.int64(3)})
    assert json.loads(path.read_text()) == {"x": 3}
    common.write_json_atomic(path, {"x": 4})
    assert json.loads(path.read_text()) == {"x": 4}
    assert [p.name for p in path.parent.iterdir()] == ["s.json"]


def test_metrics_log_drops_records_after_the_resume_step(tmp_path):
    path = tmp_path / "metrics.jsonl"
    with common.MetricsLog(path) as log:
        for step in range(1, 6):
            log.write({"step": step, "loss": np.float32(1.0 / step)})
    with path.open("a") as f:
        f.write('{"step": 6, "lo')  # a torn line, as after a crash mid-write
    with common.MetricsLog(path, resume_step=3) as log:
        assert [r["step"] for r in log.records()] == [1, 2, 3]
        log.write({"step": 4, "loss": 0.2})
    assert [r["step"] for r in common.read_jsonl(path)] == [1, 2, 3, 4]
    with common.MetricsLog(path) as log:  # a fresh run starts an empty log
        assert log.records() == []


def test_plot_curves_writes_a_png(tmp_path):
    records = [{"step": s, "loss": 2.0 / s, "accuracy": 1 - 1 / s} for s in range(1, 60)]
    records += [{"step": 30, "test_accuracy": 0.9}, {"step": 59, "test_accuracy": 0.95}]
    records.append({"step": 60, "loss": float("nan")})  # skipped, not plotted
    path = common.plot_curves(
        records,
        tmp_path / "curves.png",
        [["loss"], ["accuracy", "test_accuracy"]],
        smooth=5,
        zoom=[False, True],
    )
    assert path.read_bytes()[:8] == PNG_MAGIC
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curves.png"]


def test_setup_run_dir_refuses_to_mix_runs(tmp_path):
    out = tmp_path / "run"
    config = {"lr": 1e-3, "steps": 10, "resumable_keys": ["steps"]}
    common.setup_run_dir(out, resume=False, config=config)
    with pytest.raises(FileExistsError, match="--resume"):
        common.setup_run_dir(out, resume=False, config=config)
    common.setup_run_dir(out, resume=True, config={**config, "steps": 20})  # more steps: fine
    with pytest.raises(ValueError, match="lr"):
        common.setup_run_dir(out, resume=True, config={**config, "lr": 1e-2})


def test_print_summary_is_one_json_line(capsys):
    line = common.print_summary({"test_accuracy": np.float64(0.5), "steps": 3})
    out = capsys.readouterr().out
    assert out == line + "\n" and json.loads(out) == {"test_accuracy": 0.5, "steps": 3}


def test_progress_can_be_silent(capsys):
    bar = common.progress(5, initial=2, enabled=False)
    bar.update(1)
    bar.set_postfix(loss=1.0)
    bar.close()
    assert capsys.readouterr().err == ""
