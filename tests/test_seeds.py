"""The five seed notebooks redone (experiments/seeds/): each script runs at a small budget,
its numbers agree with the notebook's, and its docs page shows what the script prints."""

from __future__ import annotations

import contextlib
import importlib
import io
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SEEDS = ROOT / "experiments" / "seeds"
PAGES = ROOT / "docs" / "seeds"


def load(name: str):
    """``experiments/seeds/<name>.py`` as a module (its folder on the path, as when run)."""
    if str(SEEDS) not in sys.path:
        sys.path.insert(0, str(SEEDS))
    return importlib.import_module(name)


def run(name: str, argv: list[str]) -> tuple[dict, str]:
    """``main(argv)`` of ``experiments/seeds/<name>.py`` in-process: (its result, its stdout)."""
    module = load(name)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        result = module.main(argv)
    return result, out.getvalue()


def assert_page_shows(page: str, rows: list[tuple]) -> None:
    """Every row's quantity, notebook and rnn_jax columns appear on the page as printed (the
    max-diff column is left out: its last digits at 1e-16 may differ between CPUs)."""
    from seedlib import cells

    text = (PAGES / page).read_text()
    for quantity, notebook, ours, *_ in rows:
        line = cells(quantity, notebook, ours)
        assert line in text, f"{page} does not show the script's row {line!r}"


def diffs(rows):
    return {r[0]: r[3] for r in rows if len(r) > 3 and isinstance(r[3], float)}


def test_seed1_scratch_classifier_worked_example_is_exact():
    result, _ = run("seed1_scratch_classifier", [])
    forward = diffs(result["forward"])
    assert forward.pop("final state h_3 (Out[53], 8 decimals)") < 5e-9  # printed to 8 decimals
    assert max(forward.values()) < 1e-14
    assert max(diffs(result["backward"]).values()) < 1e-14
    assert_page_shows("scratch_classifier.md", result["forward"] + result["backward"])


def test_seed2_keras_simplernn_42_parameters_and_the_loop():
    result, _ = run("seed2_keras_simplernn", [])
    counts = {r[0]: r[1:3] for r in result["counts"]}
    assert counts["parameters, SimpleRNN(units=3) on 10 features"] == (42, 42)
    assert counts["parameters of a real keras.layers.SimpleRNN(3)"] == (42, 42)
    assert counts["output shape, batch_input_shape=(8, 2, 10)"] == ((8, 2, 3), (8, 2, 3))
    assert diffs(result["counts"])["outputs, Keras layer on rnn_jax's weights"] < 1e-6
    loop = {r[0]: r for r in result["loop"]}
    assert loop["all 10 hidden states, uniform[0, 1) weights"][3] < 1e-14
    assert loop["smallest state of steps 2-10 (notebook: its own weights)"][2] > 0.999
    mean_tanh_prime = "mean tanh' over steps 2-10: uniform weights vs rnn_jax's default init"
    uniform, default = loop[mean_tanh_prime][1:3]
    assert default > 100 * uniform
    assert_page_shows("keras_simplernn.md", result["counts"] + result["loop"])


def test_seed3_cell_functions_match_the_notebook_and_jax_vjp():
    result, _ = run("seed3_cell_functions", [])
    for rows in (result["rnn"], result["lstm"]):
        assert max(diffs(rows).values()) < 1e-12
        shapes = [r for r in rows if "shape" in r[0]]
        assert [(r[1], r[2]) for r in shapes] == [((5, 10), (10, 5))]
    assert len(diffs(result["rnn"])) == 14 and len(diffs(result["lstm"])) == 12
    assert_page_shows("cell_functions.md", result["rnn"] + result["lstm"])


def test_seed0_notebook_bptt_is_truncate_10_and_zero_init_never_moves():
    result, _ = run("seed0_numpy_tbptt", ["--steps", "40", "--test-size", "1000"])
    gradients = diffs(result["gradients"])
    full = gradients.pop("dU (notebook) vs d w_x with full BPTT: not the same")
    assert max(gradients.values()) < 1e-10 and full > 1e-3
    zero = {r[0]: r[1:3] for r in result["zero_init"]}
    assert zero["largest |weight| after one update from zeros"] == (0.0, 0.0)
    majority, ours = zero["test accuracy at zero init (every digit -> class 0)"]
    assert majority == ours == pytest.approx(0.085)  # the share of 0s in the first 1000 digits
    assert zero["the notebook's np.argmax(rnn.forward(x))"][0].startswith("ValueError")
    training = {r[0]: r[2] for r in result["training"]}
    assert training["rnn_jax's init with the notebook's lr"].startswith("diverges")
    steps, losses, accuracies = np.array(result["curve"]).T
    # Measured at 40 steps: loss 26.8 -> 13.6, test accuracy 19.4% (zero init: 8.5%).
    assert steps[-1] == 40 and losses[-1] < 0.7 * losses[0] and accuracies[-1] > majority
    assert_page_shows("numpy_tbptt_mnist.md", result["gradients"])


def test_seed4_tf_scan_settings_and_a_short_run():
    result, out = run("seed4_tf_scan", ["--steps", "300", "--test-size", "1000"])
    rows = {r[0]: r[1:3] for r in result["rows"]}
    for name in ("element_size", "time_steps", "num_classes", "batch_size", "hidden_layer_size"):
        assert rows[name][0] == rows[name][1], name
    assert rows["largest |Wx|, |Wh|, |bx| at init"] == (0.0, 0.0)
    assert out.startswith("Iter 0, Minibatch Loss = 2.30")  # log(10): the zero-init RNN
    # TF1's RMSProp starts slowly (its accumulator starts at 1). Measured at 300 steps: mean
    # loss of the first/last 20 steps 2.303 -> 1.754, test accuracy 22.6% (chance: 10%).
    losses = np.array(result["losses"])
    assert losses[:20].mean() > 2.29 and losses[-20:].mean() < 2.0
    assert result["test_accuracy"] > 0.15


def test_seed4_optimizer_is_tf1_rmsprop():
    """One update of ``tf.train.RMSPropOptimizer(lr)`` by hand: ms starts at 1, decay 0.9,
    epsilon 1e-10 inside the square root, no momentum."""
    import jax.numpy as jnp

    seed4 = load("seed4_tf_scan")
    optimizer = seed4.tf1_rmsprop(0.001)
    g = np.array([0.5, -2.0, 0.0])
    params, grads = jnp.zeros(3), jnp.asarray(g)
    state = optimizer.init(params)
    ms = 0.9 * 1.0 + 0.1 * g**2
    for _ in range(2):  # the second step reads the accumulator the first one left
        updates, state = optimizer.update(grads, state, params)
        np.testing.assert_allclose(updates, -0.001 * g / np.sqrt(ms + 1e-10), rtol=1e-6)
        ms = 0.9 * ms + 0.1 * g**2


def test_seed_flags_are_checked():
    with pytest.raises(SystemExit) as exit_info, contextlib.redirect_stderr(io.StringIO()):
        run("seed4_tf_scan", ["--steps", "0"])
    assert exit_info.value.code == 2
