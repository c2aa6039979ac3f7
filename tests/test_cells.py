"""Cells: the seed notebooks' worked example, parameter counts, initialisers, dtypes, and
each cell's ``step`` against a direct numpy transcription of its formula."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import CELLS, assert_close, random_carry, random_params

import rnn_jax as rj
from rnn_jax.cells.base import LSTMCarry

# The scratch-RNN notebook's worked example: 3 steps of a 2-feature input, 4 tanh units.
SEED_X = np.array([[[1, 2], [2, 3], [3, 4]]]) / 100
SEED_W_X = np.array([[1, 3, 5, 7], [3, 5, 7, 8]]) / 100
SEED_W_H = np.array([[1, 3, 5, 7], [2, 4, 6, 8], [3, 5, 7, 8], [4, 6, 8, 10]]) / 100
SEED_FINAL_H = np.array([0.79494228, 0.81839002, 0.83939649, 0.85584174])


def seed_params(dtype):
    return {
        "w_x": jnp.asarray(SEED_W_X, dtype),
        "w_h": jnp.asarray(SEED_W_H, dtype),
        "b": jnp.ones(4, dtype),
    }


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_seed_worked_example_unroll(x64, dtype):
    final, hs = rj.unroll(rj.simple, seed_params(dtype), jnp.asarray(SEED_X, dtype))
    assert hs.shape == (1, 3, 4) and final.dtype == dtype
    np.testing.assert_allclose(np.asarray(final)[0], SEED_FINAL_H, atol=1e-7)
    np.testing.assert_array_equal(np.asarray(hs[:, -1]), np.asarray(final))


def test_seed_worked_example_by_hand_with_step(x64):
    """The same three steps, one ``step`` at a time from the zero state."""
    params = seed_params(jnp.float64)
    h = rj.simple.zero_carry(1, 4, jnp.float64)
    for t in range(3):
        h, out = rj.simple.step(params, h, jnp.asarray(SEED_X[:, t]))
        np.testing.assert_array_equal(np.asarray(out), np.asarray(h))
    np.testing.assert_allclose(np.asarray(h)[0], SEED_FINAL_H, atol=1e-8)
    # and the formula itself, in numpy
    h_np = np.zeros((1, 4))
    for t in range(3):
        h_np = np.tanh(SEED_X[:, t] @ SEED_W_X + h_np @ SEED_W_H + 1)
    np.testing.assert_allclose(np.asarray(h), h_np, atol=1e-15)


@pytest.mark.parametrize(("cell", "count"), [(rj.simple, 42), (rj.lstm, 168), (rj.gru, 135)])
def test_param_counts_equal_keras(cell, count):
    params = cell.init(jax.random.PRNGKey(0), 10, 3)
    assert rj.count_params(params) == count
    assert f"Total params: {count}" in rj.summary(params)


@pytest.mark.parametrize("name", sorted(CELLS))
@pytest.mark.parametrize("initializer", ["default", "torch"])
def test_init_breaks_symmetry(name, initializer):
    """The seeds initialised to zeros: every hidden unit then computes the same thing forever.
    Ours must give distinct units after one step from the zero state, and distinct columns."""
    cell = CELLS[name]
    params = cell.init(jax.random.PRNGKey(1), 5, 6, initializer=initializer)
    for key in ("w_x", "w_h"):
        assert np.count_nonzero(np.asarray(params[key])) == params[key].size
    x = jnp.ones((1, 5))
    # every unit (and gate) sees a different pre-activation ...
    pre = np.asarray(x @ params["w_x"])[0]
    assert len(np.unique(np.round(pre, 6))) == pre.size
    # ... so after one step from the zero state the hidden units differ (ReLU may zero some)
    _, h = cell.step(params, cell.zero_carry(1, 6), x)
    h = np.asarray(h)[0]
    if name == "relu":
        h = h[h > 0]
    assert len(np.unique(np.round(h, 6))) == h.size > 0


def _blocks(w_h, num_gates):
    return np.split(np.asarray(w_h), num_gates, axis=1)


@pytest.mark.parametrize("name", ["simple", "lstm", "gru"])
def test_default_init_orthogonal_blocks_and_biases(x64, name):
    cell = CELLS[name]
    hidden, inputs = 7, 5
    params = cell.init(jax.random.PRNGKey(2), inputs, hidden, dtype=jnp.float64)
    for block in _blocks(params["w_h"], cell.fused.num_gates):
        np.testing.assert_allclose(block.T @ block, np.eye(hidden), atol=1e-10)
    # the blocks are distinct draws, not one matrix repeated
    if cell.fused.num_gates > 1:
        first, second = _blocks(params["w_h"], cell.fused.num_gates)[:2]
        assert not np.allclose(first, second)
    # Glorot uniform over the fused kernel: |w| <= sqrt(6 / (fan_in + fan_out))
    bound = np.sqrt(6 / (inputs + cell.fused.num_gates * hidden))
    assert np.abs(np.asarray(params["w_x"])).max() <= bound
    if name == "lstm":
        b = np.asarray(params["b"]).reshape(4, hidden)
        np.testing.assert_array_equal(b[1], 1.0)  # forget gate
        np.testing.assert_array_equal(b[[0, 2, 3]], 0.0)
    else:
        for bias in cell.fused.biases:
            np.testing.assert_array_equal(np.asarray(params[bias]), 0.0)


def test_lstm_forget_bias_options():
    key = jax.random.PRNGKey(3)
    b = np.asarray(rj.lstm.init(key, 2, 4, forget_bias=2.5)["b"]).reshape(4, 4)
    np.testing.assert_array_equal(b[1], 2.5)
    b_none = np.asarray(rj.lstm.init(key, 2, 4, forget_bias=None)["b"])
    np.testing.assert_array_equal(b_none, 0.0)


@pytest.mark.parametrize("name", ["simple", "lstm", "gru"])
def test_torch_init_bounds_and_spread(name):
    """``"torch"``: weights U(±1/sqrt(H)) like nn.RNN/LSTM/GRU. A fused bias stands for
    b_ih + b_hh, so it is the sum of two such draws (within ±2/sqrt(H), variance 2/(3H))."""
    cell = CELLS[name]
    hidden = 64
    kwargs = {"forget_bias": None} if name == "lstm" else {}
    params = cell.init(jax.random.PRNGKey(4), 32, hidden, initializer="torch", **kwargs)
    bound = 1 / np.sqrt(hidden)
    for key in ("w_x", "w_h"):
        w = np.asarray(params[key])
        assert np.abs(w).max() <= bound
        assert abs(w.var() - bound**2 / 3) < 0.1 * bound**2 / 3  # uniform, not all at 0
    if cell.fused.biases == ("b",):
        b = np.asarray(params["b"])
        assert np.abs(b).max() <= 2 * bound and np.abs(b).max() > bound
        assert abs(b.var() - 2 * bound**2 / 3) < 0.25 * 2 * bound**2 / 3
    else:
        for bias in cell.fused.biases:
            assert np.abs(np.asarray(params[bias])).max() <= bound


@pytest.mark.parametrize("name", sorted(CELLS))
@pytest.mark.parametrize("dtype", ["float32", "float64", "bfloat16"])
def test_dtypes_respected(x64, name, dtype):
    cell = CELLS[name]
    params = cell.init(jax.random.PRNGKey(5), 3, 4, dtype=dtype)
    assert {str(v.dtype) for v in params.values()} == {dtype}
    carry = cell.zero_carry(2, 4, dtype)
    assert {str(v.dtype) for v in jax.tree.leaves(carry)} == {dtype}
    new_carry, h = cell.step(params, carry, jnp.ones((2, 3), dtype))
    assert h.dtype == dtype and h.shape == (2, 4)
    assert {str(v.dtype) for v in jax.tree.leaves(new_carry)} == {dtype}
    final, hs = rj.unroll(cell, params, jnp.ones((2, 5, 3), dtype))
    assert hs.dtype == dtype and {str(v.dtype) for v in jax.tree.leaves(final)} == {dtype}


def test_default_init_in_bfloat16_is_the_float32_draw_cast():
    # The orthogonal QR has no bfloat16 kernel: init draws in float32, then casts.
    params = rj.lstm.init(jax.random.PRNGKey(5), 3, 4, dtype=jnp.bfloat16)
    reference = rj.lstm.init(jax.random.PRNGKey(5), 3, 4, dtype=jnp.float32)
    assert params["w_h"].dtype == jnp.bfloat16
    for name in params:
        np.testing.assert_array_equal(params[name], reference[name].astype(jnp.bfloat16))


# --- each cell's formula, written out in numpy ------------------------------------------


def _sigmoid(z):
    return 1 / (1 + np.exp(-z))


def numpy_step(name, p, carry, x):
    p = {k: np.asarray(v) for k, v in p.items()}
    if name in ("simple", "relu"):
        z = x @ p["w_x"] + carry @ p["w_h"] + p["b"]
        h = np.tanh(z) if name == "simple" else np.maximum(z, 0)
        return h, h
    if name == "lstm":
        h, c = carry
        i, f, g, o = np.split(x @ p["w_x"] + h @ p["w_h"] + p["b"], 4, axis=-1)
        c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(g)
        h = _sigmoid(o) * np.tanh(c)
        return (h, c), h
    x_r, x_z, x_n = np.split(x @ p["w_x"] + p["b_x"], 3, axis=-1)
    h_r, h_z, h_n = np.split(carry @ p["w_h"] + p["b_h"], 3, axis=-1)
    r, z = _sigmoid(x_r + h_r), _sigmoid(x_z + h_z)
    n = np.tanh(x_n + r * h_n)  # reset applied after the matmul, to h_n including b_hn
    h = (1 - z) * n + z * carry
    return h, h


@pytest.mark.parametrize("name", sorted(CELLS))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_step_equals_numpy_formula(x64, name, seed):
    rng = np.random.default_rng(seed)
    cell = CELLS[name]
    params = random_params(rng, cell, 3, 5, scale=0.8)
    carry = random_carry(rng, cell, 4, 5)
    x = rng.normal(size=(4, 3))
    new_carry, h = cell.step(params, carry, jnp.asarray(x))
    lstm_like = cell.fused.has_cell_state
    np_carry = tuple(np.asarray(c) for c in carry) if lstm_like else np.asarray(carry)
    want_carry, want_h = numpy_step(name, params, np_carry, x)
    assert_close(h, want_h, 1e-12)
    if cell.fused.has_cell_state:
        assert isinstance(new_carry, LSTMCarry)
        assert_close(tuple(new_carry), want_carry, 1e-12)
    else:
        assert_close(new_carry, want_carry, 1e-12)


def test_relu_cell_is_relu():
    params = {"w_x": jnp.eye(2), "w_h": jnp.zeros((2, 2)), "b": jnp.zeros(2)}
    _, h = rj.simple.relu.step(params, jnp.zeros((1, 2)), jnp.array([[-1.0, 2.0]]))
    np.testing.assert_array_equal(np.asarray(h), [[0.0, 2.0]])
    _, h = rj.simple.step(params, jnp.zeros((1, 2)), jnp.array([[-1.0, 2.0]]))
    np.testing.assert_allclose(np.asarray(h), np.tanh([[-1.0, 2.0]]), rtol=1e-6)


def test_unknown_initializer_is_rejected():
    with pytest.raises(ValueError, match=r"initializer must be one of .*'glorot'"):
        rj.lstm.init(jax.random.PRNGKey(0), 2, 3, initializer="glorot")
