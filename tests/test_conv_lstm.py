"""ConvLSTM (``rj.conv_lstm``) over 1-D and 2-D inputs: the hand-written backward against
``jax.vjp``/``jax.grad`` (float64), the forward against Flax ``ConvLSTMCell`` (float64) and
Keras ``ConvLSTM1D/2D`` (float32: Keras' JAX RNN does not run in float64), on converted
weights, and the shape errors raised before any compute. Tiny shapes: convolutions compile
slowly on XLA:CPU, and one even kernel dimension in each test covers the asymmetric "same"
padding."""

from __future__ import annotations

import flax.linen as fnn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_close, random_params
from test_interop import _import_keras

import rnn_jax as rj
from rnn_jax import interop, regularize
from rnn_jax.cells.base import LSTMCarry
from rnn_jax.gradcheck import random_problem


def test_check_cell_2d_float64(x64):
    """Contract, one step vs jax.vjp, full and truncated (k=2) BPTT with uneven lengths vs
    jax.grad, for a 2x3 kernel (even rows: padded (0, 1)). No finite differences: they cost a
    third of the check's compile time, and the forward they would vouch for is checked
    against Flax and Keras below."""
    report = rj.check_cell(rj.conv_lstm((2, 3)), 2, 3, batch_size=2, num_steps=3, truncate=2,
                           num_directions=0, spatial_shape=(4, 5))  # fmt: skip
    assert report.ok and max(max(row.errors) for row in report.rows) < 1e-12


def test_check_cell_3d_float64(x64):
    """The 3-D cell (a 2x1x2 kernel: even sizes on two axes) through the same contract and
    BPTT checks, on a 2x3x2 volume."""
    report = rj.check_cell(rj.conv_lstm((2, 1, 2)), 2, 2, batch_size=2, num_steps=3, truncate=2,
                           num_directions=0, spatial_shape=(2, 3, 2))  # fmt: skip
    assert report.ok and max(max(row.errors) for row in report.rows) < 1e-12


def test_1d_manual_bptt_equals_autodiff(x64):
    """1-D, kernel 2 (padded (0, 1)): jax.grad through rj.unroll(gradient="manual") == through
    gradient="autodiff" (params, inputs, initial carry), reading backwards with lengths and a
    mask with a gap (the masks broadcast over the spatial axis). One compile for both."""
    cell = rj.conv_lstm((2,))
    rng = np.random.default_rng(0)
    params, xs, carry = random_problem(cell, (2, 4, 2, 3), "float64", rng, spatial=(5,))
    weights = jnp.asarray(rng.normal(size=(2, 4, 5, 3)))
    options = dict(lengths=jnp.array([4, 3]), mask=jnp.array([[1, 0, 1, 1], [1, 1, 1, 1]], bool),
                   reverse=True)  # fmt: skip

    def loss(params, xs, carry, gradient):
        final, hs = rj.unroll(cell, params, xs, carry, gradient=gradient, **options)
        return jnp.sum(jnp.sin(hs) * weights) + jnp.sum(final.c**2)

    both = jax.jit(
        lambda *args: [jax.grad(loss, (0, 1, 2))(*args, g) for g in ("manual", "autodiff")]
    )
    manual, autodiff = both(params, xs, carry)
    assert_close(manual, autodiff)


def test_float64_gradient_where_xla_miscompiles_the_autodiff_scan(x64):
    """At the shape where XLA:CPU computes the float64 autodiff backward scan wrongly (hidden 5,
    width 4: ``experiments/results/jax-eager-scan-grad.md``), the two remedies the docstring
    gives are right: the hand-written gradient equals central finite differences, and
    autodiff with ``unroll=2`` equals the hand-written gradient."""
    cell = rj.conv_lstm((3,))
    params = cell.init(jax.random.PRNGKey(5), 4, 5, dtype=jnp.float64)
    xs = jax.random.normal(jax.random.PRNGKey(1), (2, 3, 4, 4), dtype=jnp.float64)

    def loss(xs, gradient, unroll=1):
        return jnp.sum(rj.unroll(cell, params, xs, gradient=gradient, unroll=unroll)[1] ** 2)

    manual = jax.grad(loss)(xs, "manual")
    assert_close(jax.grad(loss)(xs, "autodiff", 2), manual)
    for index in [(0, 0, 1, 2), (1, 2, 3, 0), (0, 2, 0, 3)]:
        step = jnp.zeros_like(xs).at[index].set(1e-6)
        central = (loss(xs + step, "manual") - loss(xs - step, "manual")) / 2e-6
        assert abs(float(central) - float(manual[index])) < 1e-7, index


def _flax_params(variables, num_features: int) -> dict:
    """Flax ConvLSTMCell's ``ih``/``hh`` convolutions (gates i, g, f, o; a bias in each; +1 on
    f inside the step) -> rnn_jax's ``{"w_x", "w_h", "b"}`` (gates i, f, g, o, one bias)."""
    p = variables["params"]
    i, g, f, o = np.arange(4 * num_features).reshape(4, num_features)
    order = np.concatenate([i, f, g, o])
    forget = np.zeros(4 * num_features)
    forget[num_features : 2 * num_features] = 1.0
    return {
        "w_x": p["ih"]["kernel"][..., order],
        "w_h": p["hh"]["kernel"][..., order],
        "b": (p["ih"]["bias"] + p["hh"]["bias"])[order] + forget,
    }


def test_flax_conv_lstm_cell_parity_2d(x64):
    """flax.linen.ConvLSTMCell (kernel 2x3, random weights and biases) scanned from a random
    carry == rj.unroll on ``interop.from_flax`` of its variables (which equals the conversion
    written out above): outputs and final carry, float64; and Flax on ``interop.to_flax`` of
    those params gives the same outputs again."""
    module = fnn.ConvLSTMCell(features=3, kernel_size=(2, 3), param_dtype=jnp.float64)
    rng = np.random.default_rng(1)
    xs = jnp.asarray(rng.normal(size=(2, 4, 4, 5, 2)))
    h0, c0 = jnp.asarray(rng.normal(0, 0.5, size=(2, 2, 4, 5, 3)))
    # Flax's own variable tree, filled with N(0, 0.5^2) (biases too) without running its init
    shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0), (c0, h0), xs[:, 0])
    variables = jax.tree.map(lambda a: jnp.asarray(rng.normal(0, 0.5, a.shape)), shapes)
    run = jax.jit(lambda v: jax.lax.scan(lambda c, x: module.apply(v, c, x), (c0, h0),
                                         jnp.swapaxes(xs, 0, 1)))  # fmt: skip
    (c, h), theirs = run(variables)
    cell = rj.conv_lstm((2, 3))
    params = interop.from_flax(variables, cell)
    assert_close(params, _flax_params(variables, 3), 0.0)
    final, hs = rj.unroll(cell, params, xs, LSTMCarry(h0, c0))
    assert_close((hs, final), (jnp.swapaxes(theirs, 0, 1), LSTMCarry(h, c)), 1e-12)
    assert_close(run(interop.to_flax(params, cell))[1], theirs, 1e-12)


@pytest.mark.parametrize(
    ("layer", "kernel"), [("ConvLSTM1D", (2,)), ("ConvLSTM2D", (3, 2)), ("ConvLSTM3D", (2, 1, 3))]
)
def test_keras_conv_lstm_parity(layer, kernel):
    """keras.layers.ConvLSTM1D/2D/3D(padding="same", return_sequences=True, return_state=True)
    with its weights set from rnn_jax params by ``interop.to_keras`` (the same layout:
    kernel, recurrent_kernel, bias, gates i, f, c, o) == rj.unroll, float32; and
    ``interop.from_keras`` of its weights gives the params back."""
    keras = _import_keras()
    cell = rj.conv_lstm(kernel)
    rng = np.random.default_rng(2)
    spatial = (5,) * len(kernel)
    xs = rng.normal(size=(2, 3, *spatial, 2)).astype(np.float32)
    params = random_params(rng, cell, 2, 3, dtype=np.float32)
    # Zero initialisers: Keras' own (orthogonal) take seconds to compile and are overwritten.
    conv = getattr(keras.layers, layer)(3, kernel, padding="same", return_sequences=True,
                                        return_state=True, kernel_initializer="zeros",
                                        recurrent_initializer="zeros")  # fmt: skip
    conv.build(xs.shape)
    conv.set_weights(interop.to_keras(params, cell))
    assert_close(interop.from_keras(conv.get_weights(), cell), params, 0.0)
    theirs_hs, theirs_h, theirs_c = conv(xs)
    final, hs = rj.unroll(cell, params, jnp.asarray(xs))
    assert_close((hs, final), (theirs_hs, LSTMCarry(theirs_h, theirs_c)), 1e-5)


def test_shape_errors_name_expected_and_received_before_compute():
    """Wrong input rank, wrong channels, a carry of the wrong spatial shape, a stack whose
    layers do not fit and a bad kernel_size: each a ValueError/TypeError saying what was
    expected."""
    cell = rj.conv_lstm((3, 3))
    params = random_params(np.random.default_rng(3), cell, 2, 3, dtype=np.float32)
    xs = jnp.zeros((2, 4, 5, 5, 2), jnp.float32)
    with pytest.raises(ValueError, match=r"xs must be 5-D \(batch, time, H, W, channels=2\), "
                       r"got shape \(2, 4, 5, 2\)"):  # fmt: skip
        rj.unroll(cell, params, xs[:, :, 0])
    with pytest.raises(ValueError, match="3 features in its last axis .* input_size=2"):
        rj.unroll(cell, params, jnp.zeros((2, 4, 5, 5, 3)))
    wrong = cell.zero_carry((2, 5, 4), 3)
    with pytest.raises(ValueError, match=r"carry.*\.h must be \(2, 5, 5, 3\), got \(2, 5, 4, 3\)"):
        rj.unroll(cell, params, xs, wrong)
    with pytest.raises(ValueError, match=r"d_hs must be \(2, 4, 5, 5, 3\)"):
        rj.bptt(cell, params, xs, jnp.zeros((2, 4, 5, 5, 2)))
    with pytest.raises(ValueError, match=r"stack layer 1: layer 0's output has 3 features"):
        rj.unroll_stack(cell, [params, params], xs, lengths=jnp.array([4, 2]))
    with pytest.raises(TypeError, match=r"leading shape \(B, \*spatial\), 3 ints, got \(2,\)"):
        cell.zero_carry(2, 3)
    one_d = random_params(np.random.default_rng(3), rj.conv_lstm((3,)), 2, 3, dtype=np.float32)
    with pytest.raises(ValueError, match=r"w_h'\] must be \(3, 3, 3, 12\), got \(3, 3, 12\)"):
        rj.unroll(cell, one_d, xs)
    weights = interop.to_keras(params, cell)  # a Keras layer with use_bias=False: no bias
    assert not np.any(interop.from_keras(weights[:2], cell)["b"])
    with pytest.raises(ValueError, match="use_bias=False, but the params have non-zero biases"):
        interop.to_keras(params, cell, use_bias=False)
    with pytest.raises(ValueError, match=r"conv_lstm_3x3 params .* must be \(8,\), got \(12,\)"):
        interop.from_keras([weights[0], weights[0], weights[2]], cell)
    for bad in (3, (3, 3, 3, 3), (0,), (2.0,)):
        with pytest.raises(ValueError, match="kernel_size must be a tuple of 1 to 3"):
            rj.conv_lstm(bad)


def test_bidirectional_stack_equals_its_layers_by_hand(x64):
    """``rj.unroll_stack`` of two bidirectional 1-D ConvLSTM layers with lengths == the same
    four ``rj.unroll`` calls composed by hand (values), and its hand-written gradient ==
    autodiff's (params and inputs)."""
    cell = rj.conv_lstm((3,))
    stack = rj.init_stack(cell, jax.random.PRNGKey(0), 2, 3, num_layers=2, bidirectional=True,
                          dtype=jnp.float64)  # fmt: skip
    xs = jax.random.normal(jax.random.PRNGKey(1), (2, 4, 5, 2), jnp.float64)
    lengths = jnp.array([4, 2])
    finals, hs = rj.unroll_stack(cell, stack, xs, lengths=lengths)
    by_hand = xs
    for layer in stack:
        _, fwd = rj.unroll(cell, layer["fwd"], by_hand, lengths=lengths)
        _, bwd = rj.unroll(cell, layer["bwd"], by_hand, lengths=lengths, reverse=True)
        by_hand = jnp.concatenate([fwd, bwd], -1)
    assert hs.shape == (2, 4, 5, 6) and finals[1][0].c.shape == (2, 5, 3)
    assert_close(hs, by_hand)

    def loss(stack, xs, gradient):
        return jnp.sum(jnp.sin(rj.unroll_stack(cell, stack, xs, lengths=lengths,
                                               gradient=gradient)[1]))  # fmt: skip

    grads = jax.jit(lambda *a: [jax.grad(loss, (0, 1))(*a, g) for g in ("manual", "autodiff")])
    manual, autodiff = grads(stack, xs)
    assert_close(manual, autodiff)


def test_keras_conv_lstm_dropout_parity_given_the_same_masks():
    """keras.layers.ConvLSTM1D(dropout=, recurrent_dropout=) in training, its masks replaced
    by ours ((B, W, C) on x, (B, W, F) on h, one per sequence, shared by the four gates) ==
    ``rj.regularized(rj.conv_lstm, recurrent_dropout=True)`` reading those masks, float32;
    and ``rj.unroll(..., input_dropout=, recurrent_dropout=, key=)`` draws masks of those
    shapes (its outputs differ from the undropped run's and are finite)."""
    keras = _import_keras()
    cell = rj.conv_lstm((3,))
    rng = np.random.default_rng(4)
    xs = rng.normal(size=(2, 3, 5, 2)).astype(np.float32)
    params = random_params(rng, cell, 2, 3, dtype=np.float32)
    m_x = np.asarray(regularize.dropout_mask(jax.random.PRNGKey(1), (2, 5, 2), 0.3))
    m_h = np.asarray(regularize.dropout_mask(jax.random.PRNGKey(2), (2, 5, 3), 0.4))
    conv = keras.layers.ConvLSTM1D(3, 3, padding="same", return_sequences=True, dropout=0.3,
                                   recurrent_dropout=0.4, kernel_initializer="zeros",
                                   recurrent_initializer="zeros")  # fmt: skip
    conv.build(xs.shape)
    conv.set_weights([np.asarray(params[name]) for name in ("w_x", "w_h", "b")])
    conv.cell.get_dropout_mask = lambda x: [m_x] * 4
    conv.cell.get_recurrent_dropout_mask = lambda h: [m_h] * 4
    theirs = conv(xs, training=True)
    wrapped = rj.regularized(cell, recurrent_dropout=True)
    inputs = np.concatenate([xs * m_x[:, None], np.broadcast_to(m_h[:, None], (2, 3, 5, 3))], -1)
    ours = rj.unroll(wrapped, params, jnp.asarray(inputs), gradient="manual")[1]
    assert_close(ours, theirs, 1e-5)
    drawn = rj.unroll(cell, params, jnp.asarray(xs), input_dropout=0.3, recurrent_dropout=0.4,
                      zoneout=0.1, key=jax.random.PRNGKey(0))[1]  # fmt: skip
    plain = rj.unroll(cell, params, jnp.asarray(xs))[1]
    assert drawn.shape == plain.shape and bool(jnp.all(jnp.isfinite(drawn)))
    assert float(jnp.abs(drawn - plain).max()) > 1e-2
