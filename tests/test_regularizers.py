"""Variational dropout and zoneout (rnn_jax.regularize) against references written here
with jax.numpy, against Keras' LSTM/GRU given the same masks, and through check_cell."""

import importlib
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rnn_jax as rj
from rnn_jax import interop, regularize

B, T, I, H = 3, 5, 4, 6  # noqa: E741 (batch, time, input, hidden)


@pytest.fixture(autouse=True)
def _x64():
    with jax.enable_x64(True):
        yield


def _masks(seed, rate, shape):
    return regularize.dropout_mask(jax.random.PRNGKey(seed), shape, rate, jnp.float64)


def _lstm_ref(params, xs, m_x, m_h, k_h=None, k_c=None):
    """LSTM over xs (B, T, I): x * m_x, h * m_h in the recurrent product only; zoneout
    with per-step keep masks k_h, k_c (T, B, H) or rates (floats)."""
    h = c = jnp.zeros((xs.shape[0], H), xs.dtype)
    hs = []
    for t in range(xs.shape[1]):
        z = (xs[:, t] * m_x) @ params["w_x"] + (h * m_h) @ params["w_h"] + params["b"]
        i, f, g, o = jnp.split(z, 4, axis=-1)
        c_new = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        h_new = jax.nn.sigmoid(o) * jnp.tanh(c_new)
        if k_h is not None:
            kh = k_h if isinstance(k_h, float) else k_h[t]
            kc = k_c if isinstance(k_c, float) else k_c[t]
            h_new, c_new = kh * h + (1 - kh) * h_new, kc * c + (1 - kc) * c_new
        h, c = h_new, c_new
        hs.append(h)
    return rj.LSTMCarry(h, c), jnp.stack(hs, 1)


def _gru_ref(params, xs, m_x, m_h):
    """GRU (reset after) with x * m_x and h * m_h in the recurrent product; z * h undropped."""
    h = jnp.zeros((xs.shape[0], H), xs.dtype)
    hs = []
    for t in range(xs.shape[1]):
        x_r, x_z, x_n = jnp.split((xs[:, t] * m_x) @ params["w_x"] + params["b_x"], 3, -1)
        h_r, h_z, h_n = jnp.split((h * m_h) @ params["w_h"] + params["b_h"], 3, -1)
        r, z = jax.nn.sigmoid(x_r + h_r), jax.nn.sigmoid(x_z + h_z)
        h = (1 - z) * jnp.tanh(x_n + r * h_n) + z * h
        hs.append(h)
    return h, jnp.stack(hs, 1)


def _inputs(m_h=None, k_h=None, k_c=None, xs=None):
    """The wrapper's time-major-free input: xs (B, T, I) with the masks appended."""
    parts = [xs]
    if m_h is not None:
        parts.append(jnp.broadcast_to(m_h[:, None], (B, T, m_h.shape[-1])))
    parts += [jnp.swapaxes(k, 0, 1) for k in (k_h, k_c) if k is not None]
    return jnp.concatenate(parts, -1)


@pytest.mark.parametrize("name", ["lstm", "gru"])
@pytest.mark.parametrize("gradient", ["autodiff", "manual"])
def test_dropout_given_masks_matches_reference(name, gradient):
    cell, ref = {"lstm": (rj.lstm, _lstm_ref), "gru": (rj.gru, _gru_ref)}[name]
    params = cell.init(jax.random.PRNGKey(0), I, H, dtype=jnp.float64)
    xs = jax.random.normal(jax.random.PRNGKey(1), (B, T, I), jnp.float64)
    m_x, m_h = _masks(2, 0.3, (B, I)), _masks(3, 0.4, (B, H))
    wrapped = rj.regularized(cell, recurrent_dropout=True)

    def ours(p):
        final, hs = rj.unroll(wrapped, p, _inputs(m_h, xs=xs * m_x[:, None]), gradient=gradient)
        return jnp.sum(jnp.sin(hs)) + jnp.sum(rj.lstm.hidden_of(final) ** 2), (final, hs)

    def theirs(p):
        final, hs = ref(p, xs, m_x, m_h)
        return jnp.sum(jnp.sin(hs)) + jnp.sum(rj.lstm.hidden_of(final) ** 2), (final, hs)

    (_, got), d_got = jax.value_and_grad(ours, has_aux=True)(params)
    (_, want), d_want = jax.value_and_grad(theirs, has_aux=True)(params)
    for a, b in zip(jax.tree.leaves((got, d_got)), jax.tree.leaves((want, d_want)), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10)


def test_unroll_key_draws_the_documented_masks_and_truncates_like_bptt():
    params = rj.lstm.init(jax.random.PRNGKey(0), I, H, dtype=jnp.float64)
    xs = jax.random.normal(jax.random.PRNGKey(1), (B, T, I), jnp.float64)
    key = jax.random.PRNGKey(7)
    k_x, k_h, _ = jax.random.split(key, 3)
    m_x = regularize.dropout_mask(k_x, (B, I), 0.2, jnp.float64)
    m_h = regularize.dropout_mask(k_h, (B, H), 0.3, jnp.float64)
    opts = dict(input_dropout=0.2, recurrent_dropout=0.3, key=key)
    _, hs = rj.unroll(rj.lstm, params, xs, **opts)
    np.testing.assert_allclose(hs, _lstm_ref(params, xs, m_x, m_h)[1], rtol=1e-10, atol=1e-10)
    # truncate=2 through unroll = rj.bptt's truncated gradient of the wrapped cell
    wrapped = rj.regularized(rj.lstm, recurrent_dropout=True)
    inputs = _inputs(m_h, xs=xs * m_x[:, None])
    d_hs = jax.random.normal(jax.random.PRNGKey(3), (B, T, H), jnp.float64)
    loss = lambda p: jnp.sum(d_hs * rj.unroll(rj.lstm, p, xs, gradient="manual", truncate=2,
                                              **opts)[1])  # fmt: skip
    zero_final = jax.tree.map(jnp.zeros_like, rj.lstm.zero_carry(B, H, jnp.float64))
    want = rj.bptt(wrapped, params, inputs, d_hs=d_hs, d_carry=zero_final, truncate=2)
    for a, b in zip(jax.tree.leaves(jax.grad(loss)(params)), jax.tree.leaves(want[0]), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(
    "cell, options",
    [(rj.lstm, dict(recurrent_dropout=True, zoneout=(0.2, 0.1))),
     (rj.gru.reset_before, dict(recurrent_dropout=True, zoneout=0.3)),
     (rj.lstm, dict(zoneout=0.25, training=False))],
)  # fmt: skip
def test_check_cell_on_wrapped_cells(cell, options):
    wrapped = rj.regularized(cell, **options)
    report = rj.check_cell(wrapped, I + wrapped.extra(H), H, key=0, num_steps=4)
    assert report.ok


def test_zoneout_training_masks_and_evaluation_mix_match_reference():
    params = rj.lstm.init(jax.random.PRNGKey(0), I, H, dtype=jnp.float64)
    xs = jax.random.normal(jax.random.PRNGKey(1), (B, T, I), jnp.float64)
    k_h = regularize.zoneout_mask(jax.random.PRNGKey(4), (T, B, H), 0.3, jnp.float64)
    k_c = regularize.zoneout_mask(jax.random.PRNGKey(5), (T, B, H), 0.6, jnp.float64)
    ones_x, ones_h = jnp.ones((B, I)), jnp.ones((B, H))
    wrapped = rj.regularized(rj.lstm, zoneout=(0.3, 0.6))
    for gradient in ("autodiff", "manual"):
        final, hs = rj.unroll(wrapped, params, _inputs(None, k_h, k_c, xs=xs), gradient=gradient)
        ref_final, ref_hs = _lstm_ref(params, xs, ones_x, ones_h, k_h, k_c)
        np.testing.assert_allclose(hs, ref_hs, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(final.c, ref_final.c, rtol=1e-10, atol=1e-10)
    _, hs = rj.unroll(rj.lstm, params, xs, zoneout=(0.3, 0.6), training=False)
    ref = _lstm_ref(params, xs, ones_x, ones_h, 0.3, 0.6)[1]
    np.testing.assert_allclose(hs, ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(
    "options",
    [dict(input_dropout=0.5, recurrent_dropout=0.5, key=jax.random.PRNGKey(0), training=False),
     dict(input_dropout=0.0, recurrent_dropout=0.0, zoneout=0.0, key=jax.random.PRNGKey(0)),
     dict(input_dropout=0.5, recurrent_dropout=0.5)],  # no key: evaluation
)  # fmt: skip
def test_off_equals_the_plain_cell_exactly(options):
    params = rj.gru.init(jax.random.PRNGKey(0), I, H, dtype=jnp.float64)
    xs = jax.random.normal(jax.random.PRNGKey(1), (B, T, I), jnp.float64)
    plain = rj.unroll(rj.gru, params, xs)
    got = rj.unroll(rj.gru, params, xs, **options)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(plain), strict=True):
        np.testing.assert_array_equal(a, b)


def test_mask_means_within_binomial_error():
    n = 200_000
    for seed, rate in ((0, 0.1), (1, 0.5)):
        mask = regularize.dropout_mask(jax.random.PRNGKey(seed), (n,), rate, jnp.float64)
        assert set(np.unique(mask)) <= {0.0, 1.0 / (1.0 - rate)}
        std = np.sqrt(rate / (1 - rate) / n)  # values 0 or 1/(1-rate), keep prob 1-rate
        assert abs(float(mask.mean()) - 1.0) < 4 * std
        keep = regularize.zoneout_mask(jax.random.PRNGKey(seed), (n,), rate, jnp.float64)
        assert abs(float(keep.mean()) - rate) < 4 * np.sqrt(rate * (1 - rate) / n)


@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_keras_parity_given_the_same_masks(name, monkeypatch):
    os.environ["KERAS_BACKEND"] = "jax"  # only read when keras is first imported
    keras = importlib.import_module("keras")
    assert keras.backend.backend() == "jax"
    layer_cls, cell, ref_gates = {"lstm": (keras.layers.LSTM, rj.lstm, 4),
                                  "gru": (keras.layers.GRU, rj.gru, 3)}[name]  # fmt: skip
    with jax.enable_x64(False):
        layer = layer_cls(H, dropout=0.3, recurrent_dropout=0.4, return_sequences=True)
        xs = np.random.default_rng(0).normal(size=(B, T, I)).astype(np.float32)
        layer.build((B, T, I))
        m_x = np.asarray(_masks(1, 0.3, (B, I)), np.float32)
        m_h = np.asarray(_masks(2, 0.4, (B, H)), np.float32)
        # Keras (implementation 1, forced by recurrent_dropout) draws one mask per gate; we
        # match it when those are equal, which is what rnn_jax draws (one mask shared).
        monkeypatch.setattr(layer.cell, "get_dropout_mask", lambda x: [m_x] * ref_gates)
        monkeypatch.setattr(layer.cell, "get_recurrent_dropout_mask", lambda h: [m_h] * ref_gates)
        want = np.asarray(layer(xs, training=True))
        params = interop.from_keras(layer.get_weights(), cell)
        wrapped = rj.regularized(cell, recurrent_dropout=True)
        inputs = _inputs(jnp.asarray(m_h), xs=jnp.asarray(xs * m_x[:, None]))
        got = rj.unroll(wrapped, params, inputs, gradient="manual")[1]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_bad_options_raise_before_compute():
    params = rj.lstm.init(jax.random.PRNGKey(0), I, H)
    xs = jnp.ones((B, T, I), jnp.float32)
    key = jax.random.PRNGKey(0)
    for bad in (dict(recurrent_dropout=1.0), dict(input_dropout=-0.1), dict(zoneout=(0.1,)),
                dict(zoneout=1.5), dict(recurrent_dropout=True)):  # fmt: skip
        with pytest.raises(ValueError, match="rate|zoneout"):
            rj.unroll(rj.lstm, params, xs, key=key, **bad)
    with pytest.raises(ValueError, match="pass key="):
        rj.unroll(rj.lstm, params, xs, recurrent_dropout=0.1, training=True)
    with pytest.raises(ValueError, match="backend= with recurrent_dropout="):
        rj.unroll(rj.lstm, params, xs, recurrent_dropout=0.1, key=key, backend="fused_cpu")
    with pytest.raises(ValueError, match="c field"):
        rj.regularized(rj.gru, zoneout=(0.1, 0.1))
