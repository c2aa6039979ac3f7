"""Smoke test for experiments/bench.py: it runs on a minuscule config and writes its reports.

No timing assertions: only that the JSON and Markdown exist with the expected fields.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "experiments" / "bench.py"
ROW_KEYS = {
    "impl",
    "cell",
    "mode",
    "config",
    "steps",
    "median_ms",
    "iqr_ms",
    "ratio_to_rnn_jax",
    "gflops",
    "peak_memory_bytes",
}


def load_bench():
    spec = importlib.util.spec_from_file_location("bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench"] = module  # dataclasses look their module up while being defined
    spec.loader.exec_module(module)
    return module


def test_bench_writes_json_and_markdown(tmp_path):
    bench = load_bench()
    argv = ["--config", "2,3,4,5", "--cells", "lstm", "--modes", "train,inference"]
    argv += ["--impls", "rnn_jax,rnn_jax-manual", "--steps", "2", "--warmup", "1"]
    bench.main(argv + ["--out", str(tmp_path), "--name", "smoke"])

    report = json.loads((tmp_path / "smoke.json").read_text())
    assert {"date", "cpu", "versions", "memory_measure"} <= set(report["machine"])
    results = report["results"]
    assert len(results) == 2 * 2  # modes x impls
    for row in results:
        assert ROW_KEYS <= set(row)
        assert row["steps"] == 2 and row["median_ms"] > 0
        assert row["config"] == {"B": 2, "T": 3, "I": 4, "H": 5}
    baseline = [r for r in results if r["impl"] == "rnn_jax"]
    assert all(r["ratio_to_rnn_jax"] == 1.0 for r in baseline)

    markdown = (tmp_path / "smoke.md").read_text()
    assert "| config B,T,I,H |" in markdown and "rnn_jax-manual" in markdown
    assert not list(tmp_path.glob(".smoke*"))  # atomic writes leave no temporaries


def test_bench_runs_torch_in_a_worker_process(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    bench = load_bench()
    processes = []
    popen = bench.subprocess.Popen

    def recording_popen(*args, **kwargs):
        processes.append(popen(*args, **kwargs))
        return processes[-1]

    monkeypatch.setattr(bench.subprocess, "Popen", recording_popen)
    argv = ["--config", "2,3,4,5", "--cells", "lstm", "--impls", "rnn_jax,torch"]
    argv += ["--steps", "2", "--warmup", "1", "--out", str(tmp_path), "--name", "torch"]
    report = bench.main(argv)

    assert not report["skipped"]
    rows = {(r["impl"], r["mode"]): r for r in report["results"]}
    assert set(rows) == {(i, m) for i in ("rnn_jax", "torch") for m in ("train", "inference")}
    for mode in ("train", "inference"):
        assert rows["torch", mode]["steps"] == 2 and rows["torch", mode]["median_ms"] > 0
    assert rows["torch", "train"]["peak_memory_bytes"] > 0  # measured in the worker
    assert rows["torch", "inference"]["peak_memory_bytes"] == 0
    workers = [p for p in processes if bench.TORCH_WORKER_FLAG in p.args]
    assert len(workers) == 2  # one per mode, each shut down cleanly
    assert all(w.returncode == 0 for w in workers)


def test_useful_flops_counts_gates():
    bench = load_bench()
    cfg = (2, 3, 4, 5)
    assert bench.useful_flops("lstm", cfg, "inference") == 2 * 2 * 3 * (4 + 5) * 4 * 5
    assert bench.useful_flops("gru", cfg, "train") == 3 * 2 * 2 * 3 * (4 + 5) * 3 * 5
    # Projected LSTM, P = 5 // 2 = 2: the recurrent product reads h (B, P), plus m @ w_hr.
    projected = 2 * 2 * 3 * ((4 + 2) * 4 * 5 + 5 * 2)
    assert bench.useful_flops("lstm_proj", cfg, "inference") == projected


def test_bench_linear_recurrences_rows(tmp_path, monkeypatch):
    """``--linear``: every linear-recurrence row and the LSTM baseline in one round robin."""
    bench = load_bench()
    monkeypatch.setattr(bench, "LINEAR_SHAPE", (2, 4, 4))  # B, I, H: tiny
    rows = ("mingru parallel", "lru sequential", bench.LINEAR_BASELINE)  # fewer compiles
    monkeypatch.setattr(bench, "LINEAR_ROWS", {r: bench.LINEAR_ROWS[r] for r in rows})
    argv = ["--config", "2,3,4,5", "--cells", "lstm", "--modes", "train", "--impls", "rnn_jax"]
    argv += ["--steps", "2", "--warmup", "1", "--linear", "3", "--out", str(tmp_path)]
    report = bench.main(argv + ["--name", "linear"])

    rows = {r["impl"]: r for r in report["linear_recurrences"]}
    assert set(bench.LINEAR_ROWS) | {"torch lstm"} == set(rows)
    assert rows["lstm manual"]["speedup_vs_lstm"] == 1.0
    assert all(r["steps"] == 2 and r["config"]["T"] == 3 for r in rows.values())
    assert "| 2,3,4,4 | mingru parallel |" in (tmp_path / "linear.md").read_text()


def test_bench_times_keras_layers_on_the_jax_backend(tmp_path):
    """Keras is the peer that has the reset-before GRU: its row is timed in the same run."""
    bench = load_bench()
    argv = ["--config", "2,3,4,5", "--cells", "gru_reset_before", "--modes", "train"]
    argv += ["--impls", "rnn_jax,keras", "--steps", "2", "--warmup", "1"]
    bench.main(argv + ["--out", str(tmp_path), "--name", "keras"])

    rows = json.loads((tmp_path / "keras.json").read_text())["results"]
    assert [r["impl"] for r in rows] == ["rnn_jax", "keras"]
    assert all(r["median_ms"] > 0 for r in rows)


def test_bench_times_the_projected_lstm_against_torch_proj_size(tmp_path):
    """``lstm_proj``: rj.lstm with proj_size=H//2 and torch.nn.LSTM(proj_size=H//2), one run."""
    pytest.importorskip("torch")
    bench = load_bench()
    argv = ["--config", "2,3,4,5", "--cells", "lstm_proj", "--modes", "train"]
    argv += ["--impls", "rnn_jax-manual,torch,flax", "--steps", "2", "--warmup", "1"]
    report = bench.main(argv + ["--out", str(tmp_path), "--name", "proj"])

    assert [r["impl"] for r in report["results"]] == ["rnn_jax-manual", "torch"]
    assert all(r["median_ms"] > 0 for r in report["results"])
    assert any("flax" in line for line in report["skipped"])  # no Flax counterpart


def test_bench_conv_lstm_rows_against_flax_and_keras(tmp_path, monkeypatch):
    """``--conv-lstm``: rj.conv_lstm (both gradients), Flax and Keras in one round robin."""
    bench = load_bench()
    monkeypatch.setattr(bench, "CONV_SHAPE", (2, 2, 3, 3, 1, 2, (2, 2)))
    argv = ["--configs", "", "--conv-lstm", "--steps", "2", "--warmup", "1"]
    report = bench.main(argv + ["--out", str(tmp_path), "--name", "conv"])

    rows = report["conv_lstm"]
    assert [r["impl"] for r in rows] == list(bench.CONV_NAMES)
    assert all(r["median_ms"] > 0 for r in rows) and rows[0]["ratio_to_rnn_jax"] == 1.0
    assert "| 2,2,3,3,1,2 | 2x2 | keras ConvLSTM2D |" in (tmp_path / "conv.md").read_text()


def test_bench_references_quick_run_times_each_cell_against_its_reference(tmp_path):
    """experiments/bench_references.py --quick, as a user runs it: every rnn_jax row and every
    reference row of the three cells (the PyTorch ones from worker processes) with a finite
    positive ratio to the cell's first rnn_jax row, and the Markdown table."""
    pytest.importorskip("torch")
    pytest.importorskip("xlstm")
    pytest.importorskip("mlstm_kernels")
    pytest.importorskip("recurrentgemma.jax")
    script = BENCH.parent / "bench_references.py"
    command = [sys.executable, str(script), "--quick", "--out", str(tmp_path), "--name", "refs"]
    done = subprocess.run(command, cwd=BENCH.parents[1], capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr

    report = json.loads((tmp_path / "refs.json").read_text())
    assert not report["skipped"] and report["config"] == [2, 8, 8]
    rows = {(r["cell"], r["impl"]): r for r in report["results"]}
    references = load_bench_references()
    for cell in references.CELLS:
        ours = [name for name, _ in references.OURS[cell]]
        assert {name for c, name in rows if c == cell} == {*ours, *references.THEIRS[cell]}
        assert rows[cell, ours[0]]["ratio_to_rnn_jax"] == 1.0
        # Same parameters (converted), same input, same loss: the same value before the first
        # update, up to float32 rounding (measured: at most 1.1e-7 relative).
        first = rows[cell, ours[0]]["initial_loss"]
        for name in references.THEIRS[cell]:
            np.testing.assert_allclose(rows[cell, name]["initial_loss"], first, rtol=1e-6)
    for row in rows.values():
        assert row["steps"] == 3 and row["median_ms"] > 0
        assert np.isfinite(row["ratio_to_rnn_jax"]) and row["ratio_to_rnn_jax"] > 0
    assert rows["slstm", "xlstm sLSTMCell vanilla"]["peak_memory_bytes"] > 0  # the worker's
    markdown = (tmp_path / "refs.md").read_text()
    assert "| mlstm | " in markdown and "mlstm-kernels chunkwise custbw" in markdown
    assert not list(tmp_path.glob(".refs*"))  # atomic writes leave no temporaries


def load_bench_references():
    """experiments/bench_references.py as a module (it puts its folder on the path to import
    its sibling ``bench``)."""
    spec = importlib.util.spec_from_file_location("bench_references", BENCH.parent
                                                  / "bench_references.py")  # fmt: skip
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
