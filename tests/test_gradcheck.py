"""``rnn_jax.gradcheck``: the checker passes correct cells, fails wrong ones (naming the
leaf), runs its finite differences in float64 without leaking x64, and
``hidden_grad_norms`` is dL/dh_t; plus the ``experiments/gradcheck.py`` CLI end to end."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rnn_jax as rj
from rnn_jax import gradcheck
from rnn_jax.cells.base import LSTMCarry, fused_cell, hidden_of, split_gates, with_hidden
from rnn_jax.gradcheck import GradReport, check_gradients, hidden_grad_norms
from rnn_jax.init import fused_params

REPO = Path(__file__).resolve().parents[1]
CELLS = {
    "simple": rj.simple.cell,
    "relu": rj.simple.relu,
    "lstm": rj.lstm.cell,
    "gru": rj.gru.cell,
}


# ----------------------------------------------------------------------------------------
# A researcher's own cell: a minimal gated unit  h' = f*h + (1-f)*n
#   f = sigmoid(z_f),  n = tanh(z_n),  z = x @ w_x + h @ w_h + b  (gates f, n)
# ----------------------------------------------------------------------------------------


def mg_init(key, input_size, hidden_size, *, dtype=jnp.float32):
    return fused_params(key, input_size, hidden_size, 2, ("b",), dtype=dtype)


def mg_pointwise(z_x, z_h, h):
    f, n = split_gates(z_x + z_h, 2)
    f, n = jax.nn.sigmoid(f), jnp.tanh(n)
    return f * h + (1 - f) * n, (f, n, h)


def mg_backward(gates, d_h):
    """``d_f = dh' (h - n) f(1-f)``, ``d_n = dh' (1-f)(1-n^2)``, direct ``dh = dh' f``."""
    f, n, h = gates
    d_z = jnp.concatenate([d_h * (h - n) * f * (1 - f), d_h * (1 - f) * (1 - n * n)], axis=-1)
    return d_z, d_z, d_h * f


def mg_backward_missing_factor(gates, d_h):
    """The classic slip: tanh's derivative (1 - n^2) forgotten."""
    f, n, h = gates
    d_z = jnp.concatenate([d_h * (h - n) * f * (1 - f), d_h * (1 - f)], axis=-1)
    return d_z, d_z, d_h * f


MINIMAL_GATED = fused_cell("minimal_gated", 2, mg_init, mg_pointwise, mg_backward)
BROKEN = fused_cell("minimal_gated_broken", 2, mg_init, mg_pointwise, mg_backward_missing_factor)


@jax.custom_jvp
def bad_tanh(x):
    return jnp.tanh(x)


# A forward whose *autodiff* is wrong too (derivative missing a factor 2): manual and
# jax.grad agree, only finite differences can see it.
bad_tanh.defjvp(lambda primals, tangents: (bad_tanh(primals[0]), 0.5 * tangents[0]))


def bad_pointwise(z_x, z_h, h):
    h_new = bad_tanh(z_x + z_h)
    return h_new, h_new


def bad_pointwise_backward(h_new, d_h):
    return 0.5 * d_h, 0.5 * d_h, jnp.zeros_like(d_h)


AUTODIFF_AGREES_BUT_WRONG = fused_cell(
    "bad_tanh", 1, rj.simple.init, bad_pointwise, bad_pointwise_backward
)


def random_problem(cell, shape, dtype, seed=0, *, time_major=False):
    """``rnn_jax.gradcheck.random_problem`` with a seed."""
    rng = np.random.default_rng(seed)
    return gradcheck.random_problem(cell, shape, dtype, rng, time_major=time_major)


# ----------------------------------------------------------------------------------------
# check_gradients
# ----------------------------------------------------------------------------------------

CHECKS = [
    ("lstm", "float64", {}),
    ("gru", "float32", {"truncate": 2, "lengths": [3, 0, 5], "reverse": True}),
    ("relu", "float64", {"time_major": True, "truncate": 1}),
]


@pytest.mark.parametrize(("name", "dtype", "options"), CHECKS, ids=["lstm", "gru", "relu"])
def test_builtin_cells_pass(name, dtype, options):
    cell = CELLS[name]
    time_major = options.get("time_major", False)
    with jax.enable_x64(dtype == "float64"):
        params, xs, carry = random_problem(cell, (3, 5, 3, 4), dtype, time_major=time_major)
        report = check_gradients(cell, params, xs, carry, **options)
    assert isinstance(report, GradReport) and report.ok
    carry_rows = ["carry.h", "carry.c"] if name == "lstm" else ["carry"]
    want_rows = [f"params.{k}" for k in sorted(params)] + ["xs"] + carry_rows
    assert [row.path for row in report.rows] == want_rows
    assert report.dtype == dtype and report.truncate == options.get("truncate")
    assert report.max_abs_err <= report.atol + report.rtol * 10  # gradients are O(1)
    # The finite differences ran (a nonzero error) and agree to float64 accuracy.
    assert 0 < report.fd_err < 1e-6
    table = str(report)
    for path in want_rows:
        assert path in table


def test_float32_finite_differences_run_in_float64_without_leaking_x64():
    """A float32 problem still gets a meaningful FD check (errors ~1e-9, impossible in
    float32 with eps = 1e-6) and leaves the global x64 flag as it found it."""
    assert not jax.config.jax_enable_x64
    params, xs, carry = random_problem(rj.simple.cell, (2, 4, 3, 3), "float32")
    report = check_gradients(rj.simple, params, xs, carry)
    assert not jax.config.jax_enable_x64
    assert jnp.zeros(1).dtype == jnp.float32
    assert report.rtol == report.atol == 1e-5
    assert report.fd_err < 1e-6
    # carry=None checks the gradient at a random carry; it still gets its row.
    report = check_gradients(rj.simple, params, xs)
    assert report.ok and report.rows[-1].path == "carry" and report.rows[-1].fd_err > 0


@pytest.mark.parametrize(
    "options", [{}, {"truncate": 2, "lengths": [4, 1], "reverse": True}], ids=["full", "trunc"]
)
def test_custom_cell_with_correct_backward_passes(options):
    with jax.enable_x64(True):
        params, xs, carry = random_problem(MINIMAL_GATED, (2, 4, 3, 3), "float64", seed=1)
        report = check_gradients(MINIMAL_GATED, params, xs, carry, **options)
    assert report.ok and report.cell == "minimal_gated"
    assert report.max_rel_err < 1e-12 and report.fd_err < 1e-6


def test_custom_cell_with_wrong_backward_fails():
    with jax.enable_x64(True):
        params, xs, carry = random_problem(BROKEN, (2, 4, 3, 3), "float64", seed=1)
        expected = r"^check_gradients minimal_gated_broken (?s:.*)failing: .*params\.w_x"
        with pytest.raises(AssertionError, match=expected):
            check_gradients(BROKEN, params, xs, carry)
        report = check_gradients(BROKEN, params, xs, carry, raise_on_failure=False)
    assert not report.ok
    failed = {row.path for row in report.failures()}
    assert {"params.w_x", "params.w_h", "params.b", "xs", "carry"} <= failed
    for row in report.failures():
        assert "manual vs jax.grad" in row.message and "finite differences" in row.message
    assert report.max_rel_err > 1e-2 and report.fd_err > 1e-2
    assert "NO" in str(report)


def test_finite_differences_catch_what_autodiff_shares():
    """If the forward's own derivative is wrong, manual == jax.grad; FD still fails it."""
    with jax.enable_x64(True):
        params, xs, carry = random_problem(AUTODIFF_AGREES_BUT_WRONG, (2, 3, 2, 3), "float64")
        report = check_gradients(
            AUTODIFF_AGREES_BUT_WRONG, params, xs, carry, raise_on_failure=False
        )
        assert report.max_rel_err < 1e-12  # (a) and (b) agree...
        assert not report.ok  # ...but (c) does not
        for row in report.failures():
            assert "finite differences" in row.message
            assert "manual vs jax.grad" not in row.message
        with pytest.raises(AssertionError, match="finite differences"):
            report.raise_if_failed()


# ----------------------------------------------------------------------------------------
# hidden_grad_norms
# ----------------------------------------------------------------------------------------


def perturbation_grads(cell, params, xs, carry, d_h_last):
    """dL/dh_t as ``jax.grad`` w.r.t. a zero ``delta_t`` added to h right after step t,
    stepping the cell by hand: ``(T, B, H)``."""
    num_steps = xs.shape[1]

    def loss(deltas):
        c = carry
        for t in range(num_steps):
            c, _ = cell.step(params, c, xs[:, t])
            c = with_hidden(c, hidden_of(c) + deltas[t])
        return jnp.vdot(d_h_last, hidden_of(c))

    zeros = jnp.zeros((num_steps, *hidden_of(carry).shape), xs.dtype)
    return jax.grad(loss)(zeros)


@pytest.mark.parametrize("name", sorted(CELLS))
def test_hidden_grad_norms_match_perturbation_grads(name):
    cell = CELLS[name]
    with jax.enable_x64(True):
        params, xs, carry = random_problem(cell, (2, 6, 3, 4), "float64", seed=2)
        d_h_last = jnp.asarray(np.random.default_rng(3).normal(size=(2, 4)))
        got = hidden_grad_norms(cell, params, xs, carry, d_h_last=d_h_last)
        grads = perturbation_grads(cell, params, xs, carry, d_h_last)
        want = jnp.linalg.norm(grads.reshape(grads.shape[0], -1), axis=1)
        assert got.shape == (6,)
        chex.assert_trees_all_close(got, want, atol=1e-12, rtol=1e-10)
        # The default cotangent has unit norm, so the last entry is exactly 1.
        default = hidden_grad_norms(cell, params, xs, carry)
        chex.assert_trees_all_close(default[-1], 1.0, atol=1e-12)


@pytest.mark.parametrize("scale", [0.5, 1.5], ids=["vanishing", "exploding"])
def test_hidden_grad_norms_closed_form(scale):
    """ReLU cell with w_h = s I and a positive bias keeps every unit active, so
    h_t = s h_{t-1} + const and ||dL/dh_t|| = s^(T-1-t) exactly."""
    hidden_size, num_steps = 3, 12
    params = {
        "w_x": jnp.zeros((2, hidden_size)),
        "w_h": scale * jnp.eye(hidden_size),
        "b": jnp.ones((hidden_size,)),
    }
    xs = jnp.ones((2, num_steps, 2))
    norms = hidden_grad_norms(rj.simple.relu, params, xs)
    want = scale ** jnp.arange(num_steps - 1, -1, -1, dtype=jnp.float32)
    chex.assert_trees_all_close(norms, want, rtol=1e-5)


def test_hidden_grad_norms_lstm_uses_h_not_c():
    """For the LSTM, dL/dh_t holds c_t fixed: h_t feeds the future only through w_h, so with
    w_h = 0 the gradient cannot reach any earlier h."""
    params, xs, carry = random_problem(rj.lstm.cell, (2, 5, 3, 4), "float32")
    params["w_h"] = jnp.zeros_like(params["w_h"])
    norms = hidden_grad_norms(rj.lstm, params, xs, LSTMCarry(*carry))
    chex.assert_trees_all_close(norms, jnp.array([0, 0, 0, 0, 1.0]), atol=1e-6)


# ----------------------------------------------------------------------------------------
# experiments/gradcheck.py
# ----------------------------------------------------------------------------------------


def test_cli_end_to_end(tmp_path):
    out = tmp_path / "gc"
    command = [
        sys.executable,
        str(REPO / "experiments" / "gradcheck.py"),
        "--quick",
        "--cells",
        "gru",
        "--dtypes",
        "float64",
        "--norms",
        "--out",
        str(out),
    ]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "all gradient checks passed" in done.stdout
    cases = ["full", "truncated", "lengths", "reverse", "time-major"]
    rows = [line.split() for line in done.stdout.splitlines() if line.startswith("gru ")]
    table = [row for row in rows if row[1] in cases]  # not the norms table's rows
    assert len(rows) - len(table) == 3  # one norms row per w_h scale
    # The table once (the progress lines go to stderr).
    assert [row[1] for row in table] == cases
    for row in table:
        assert row[2] == "float64" and row[-1] == "yes"
        assert float(row[3]) < 1e-10 and float(row[5]) < 1e-6

    payload = json.loads((out / "gradcheck.json").read_text())
    assert payload["ok"] is True
    assert [(r["cell"], r["case"], r["dtype"]) for r in payload["rows"]] == [
        ("gru", case, "float64") for case in cases
    ]
    markdown = (out / "gradcheck.md").read_text()
    assert markdown.startswith("| cell | case | dtype |") and markdown.count("| gru |") == 5
    norms = json.loads((out / "grad_norms.json").read_text())
    assert set(norms) == {"gru"} and set(norms["gru"]) == {"0.5", "1.0", "2.0"}
    assert all(len(v) == 20 and v[-1] == pytest.approx(1.0) for v in norms["gru"].values())
    assert (out / "grad_norms.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.glob(".*tmp*"))  # atomic writes left no temp files behind


def test_cli_exit_code_on_failure(monkeypatch, capsys):
    """A failing check makes the script exit 1 (here: the broken custom cell)."""
    path = REPO / "experiments" / "gradcheck.py"
    spec = importlib.util.spec_from_file_location("gradcheck_cli", path)
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    monkeypatch.setitem(cli.CELLS, "simple", BROKEN)
    argv = ["--quick", "--cells", "simple", "--cases", "full", "--dtypes", "float64"]
    assert cli.main(argv) == 1
    printed = capsys.readouterr().out
    assert "GRADIENT CHECK FAILED" in printed and "params.w_x" in printed
