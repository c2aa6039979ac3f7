"""The cells other libraries have: reset-before GRU, MGU, peephole and layer-norm LSTM, Elman
with any activation. Each against its reference: the peer library's layer on converted
weights (Flax in float64, Keras in float32: its JAX RNN does not run in float64), or an
independent autodiff formulation (``custom_cells.py``) where no library has the same
equations; and every hand-written backward against ``jax.grad`` (``rj.check_cell``)."""

from __future__ import annotations

import flax.linen as fnn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_close, random_params
from custom_cells import layernorm_lstm_autodiff, peephole_autodiff
from test_interop import _import_keras

import rnn_jax as rj
from rnn_jax import interop
from rnn_jax.gradcheck import random_problem

NEW_CELLS = {
    "gru_reset_before": rj.gru.reset_before,
    "mgu": rj.mgu.cell,
    "mgu_without_reset": rj.mgu.without_reset,
    "lstm_peephole": rj.lstm.peephole,
    "layernorm_lstm": rj.layernorm_lstm.cell,
    "simple_gelu": rj.simple.with_activation(jax.nn.gelu),
}


@pytest.mark.parametrize("name", sorted(NEW_CELLS))
def test_check_cell_float64(name, x64):
    """Contract, one step vs jax.vjp, full and truncated (k=2) BPTT with uneven lengths vs
    jax.grad and finite differences: every error is float64 round-off."""
    report = rj.check_cell(NEW_CELLS[name], 2, 3, batch_size=2, num_steps=3, truncate=2,
                           num_directions=1)  # fmt: skip
    assert report.ok and max(max(row.errors) for row in report.rows) < 1e-12


@pytest.mark.parametrize(
    ("cell", "reference"),
    [(rj.lstm.peephole, peephole_autodiff), (rj.layernorm_lstm.cell, layernorm_lstm_autodiff)],
    ids=["peephole", "layernorm"],
)
def test_against_independent_autodiff_formulation(cell, reference, x64):
    """No library has these equations: the reference is custom_cells.py's own formulation,
    differentiated by jax.vjp. Same outputs, and the same truncated BPTT gradients."""
    params, xs, carry = random_problem(cell, (2, 6, 3, 4), "float64", np.random.default_rng(3))
    ours, theirs = rj.unroll(cell, params, xs, carry), rj.unroll(reference, params, xs, carry)
    assert_close(ours, theirs, 1e-12)
    d_hs = jnp.asarray(np.random.default_rng(4).normal(size=(2, 6, 4)))
    options = dict(truncate=2, lengths=[6, 3])
    assert_close(rj.bptt(cell, params, xs, d_hs, carry, **options),
                 rj.bptt(reference, params, xs, d_hs, carry, **options), 1e-12)  # fmt: skip


def test_peepholes_at_zero_are_the_lstm(x64):
    """With p_i = p_f = p_o = 0 (as init makes them) the peephole LSTM is rj.lstm."""
    params = rj.lstm.peephole.init(jax.random.PRNGKey(0), 3, 4, dtype=jnp.float64)
    xs = jax.random.normal(jax.random.PRNGKey(1), (2, 5, 3), jnp.float64)
    lstm_params = {k: params[k] for k in ("w_x", "w_h", "b")}
    assert_close(rj.unroll(rj.lstm.peephole, params, xs), rj.unroll(rj.lstm, lstm_params, xs), 0)


@pytest.mark.parametrize("name", sorted(NEW_CELLS))
def test_bidirectional_stack_manual_equals_autodiff(name, x64):
    """rj.unroll_stack(gradient="manual") of a bidirectional layer (the backward direction
    reads each row's valid prefix reversed) = jax.grad through lax.scan, with lengths 0 and T
    among the rows, for params and the input, to float64 round-off."""
    cell = NEW_CELLS[name]
    key = jax.random.PRNGKey(0)
    stack = rj.init_stack(cell, key, 2, 3, num_layers=1, bidirectional=True, dtype=jnp.float64)
    stack = jax.tree.map(lambda a: a + 0.3 * jax.random.normal(key, a.shape, a.dtype), stack)
    xs = jax.random.normal(key, (3, 4, 2), jnp.float64)

    def loss(stack, xs, gradient):
        _, hs = rj.unroll_stack(cell, stack, xs, lengths=jnp.array([4, 0, 2]), gradient=gradient)
        return jnp.sum(jnp.sin(hs))

    grad = jax.grad(loss, (0, 1))
    assert_close(grad(stack, xs, "manual"), grad(stack, xs, "autodiff"), 1e-12)


def test_models_classifier_takes_the_new_cells(x64):
    from rnn_jax import models

    xs = jax.random.normal(jax.random.PRNGKey(1), (2, 5, 3), jnp.float64)
    for cell in (rj.mgu, rj.gru.reset_before, rj.layernorm_lstm):
        model = models.classifier(cell, hidden_size=4, num_classes=3, gradient="manual")
        params = model.init(jax.random.PRNGKey(0), 3, dtype=jnp.float64)
        assert model.apply(params, xs).shape == (2, 3)


# --- Flax: MGUCell, SimpleCell(activation_fn=) ----------------------------------------------


def _flax_unroll(module, variables, xs, h0):
    """The Flax cell stepped over time by hand: ``hs (B, T, H)``."""
    carry, outs = h0, []
    for t in range(xs.shape[1]):
        carry, out = module.apply(variables, carry, xs[:, t])
        outs.append(out)
    return jnp.stack(outs, 1)


FLAX_PEERS = {
    "mgu": (rj.mgu.cell, lambda h: fnn.MGUCell(h, param_dtype=jnp.float64)),
    "mgu_without_reset": (
        rj.mgu.without_reset,
        lambda h: fnn.MGUCell(h, param_dtype=jnp.float64, reset_gate=False),
    ),
    "simple_gelu": (
        rj.simple.with_activation(jax.nn.gelu),
        lambda h: fnn.SimpleCell(h, activation_fn=jax.nn.gelu, param_dtype=jnp.float64),
    ),
}


def _flax_layout(grads, cell):
    """Our gradients in Flax's tree: Flax has no recurrent bias for the reset-after gates but
    n, so the gradient of its input bias is our b_x's (the b_h slots it lacks are dropped)."""
    if "b_h" in grads:
        hidden = grads["w_h"].shape[0]
        grads = grads | {"b_h": grads["b_h"].at[:-hidden].set(0)}
    return interop.to_flax(grads, cell)["params"]


@pytest.mark.parametrize("name", sorted(FLAX_PEERS))
def test_flax_parity_forward_and_gradients(name, x64):
    """Flax's own initialisation -> from_flax -> our unroll: the same outputs, and gradients
    (params, inputs, initial carry) equal to jax.grad through the Flax cell, float64."""
    cell, make = FLAX_PEERS[name]
    module = make(4)
    xs = jax.random.normal(jax.random.PRNGKey(1), (2, 5, 3), jnp.float64)
    h0 = jax.random.normal(jax.random.PRNGKey(2), (2, 4), jnp.float64)
    variables = module.init(jax.random.PRNGKey(0), h0, xs[:, 0])
    # Flax initialises the biases to constants; random ones put every bias in play.
    rng = np.random.default_rng(0)
    variables = jax.tree.map(lambda a: jnp.asarray(rng.normal(0, 0.5, a.shape)), variables)
    params = interop.from_flax(variables, cell)
    assert_close(rj.unroll(cell, params, xs, h0)[1], _flax_unroll(module, variables, xs, h0), 1e-12)

    d_hs = jax.random.normal(jax.random.PRNGKey(3), (2, 5, 4), jnp.float64)
    theirs = jax.grad(lambda v, x, h: jnp.sum(_flax_unroll(module, v, x, h) * d_hs),
                      (0, 1, 2))(variables, xs, h0)  # fmt: skip
    ours = jax.grad(lambda p, x, h: jnp.sum(rj.unroll(cell, p, x, h, gradient="manual")[1] * d_hs),
                    (0, 1, 2))(params, xs, h0)  # fmt: skip
    assert_close(
        (_flax_layout(ours[0], cell), *ours[1:]), (theirs[0]["params"], *theirs[1:]), 1e-12
    )
    # and back: ours -> to_flax -> Flax runs the same model
    assert_close(_flax_unroll(module, interop.to_flax(params, cell), xs, h0),
                 rj.unroll(cell, params, xs, h0)[1], 1e-12)  # fmt: skip


def test_flax_mgu_round_trips_and_errors(x64):
    rng = np.random.default_rng(5)
    for cell in (rj.mgu.cell, rj.mgu.without_reset):
        params = random_params(rng, cell, 3, 4)
        params = params | ({"b_h": params["b_h"].at[:4].set(-0.0)} if "b_h" in params else {})
        back = interop.from_flax(interop.to_flax(params, cell, rnn=True), cell)
        for key in params:
            assert np.asarray(back[key]).tobytes() == np.asarray(params[key]).tobytes()
    with_reset = interop.to_flax(random_params(rng, rj.mgu.cell, 3, 4), rj.mgu)
    with pytest.raises(ValueError, match=r"have an hn bias: .*reset_gate=True.*rj.mgu"):
        interop.from_flax(with_reset, rj.mgu.without_reset)
    without = interop.to_flax(random_params(rng, rj.mgu.without_reset, 3, 4), rj.mgu.without_reset)
    with pytest.raises(ValueError, match=r"no hn bias: .*reset_gate=False.*rj.mgu.without_reset"):
        interop.from_flax(without, rj.mgu)
    with pytest.raises(ValueError, match=r"Flax linen has no cell .* 'lstm_peephole'"):
        interop.to_flax(rj.lstm.peephole.init(jax.random.PRNGKey(0), 3, 4), rj.lstm.peephole)
    with pytest.raises(ValueError, match=r"Keras has no layer .* 'mgu'"):
        interop.to_keras(random_params(rng, rj.mgu.cell, 3, 4), rj.mgu)
    with pytest.raises(ValueError, match=r"PyTorch has no module .* 'mgu'"):
        interop.to_torch([random_params(rng, rj.mgu.cell, 3, 4)], rj.mgu)


# --- Keras: GRU(reset_after=False) ------------------------------------------------------------


def test_keras_reset_before_gru_round_trip_and_errors(x64):
    rng = np.random.default_rng(6)
    weights = [rng.normal(size=s) for s in ((3, 12), (4, 12), (12,))]
    cell = rj.gru.reset_before
    params = interop.from_keras(weights, cell)
    for ours, theirs in zip(interop.to_keras(params, cell), weights, strict=True):
        assert ours.tobytes() == theirs.tobytes()
    with pytest.raises(
        ValueError, match=r"\(3H,\) bias come from reset_after=False.*rj.gru.reset_before"
    ):
        interop.from_keras(weights, rj.gru)
    reset_after = [*weights[:2], rng.normal(size=(2, 12))]
    with pytest.raises(
        ValueError, match=r"\(2, 3H\) bias come from reset_after=True.*load them into rj.gru"
    ):
        interop.from_keras(reset_after, cell)


def _max_abs_diff(a, b) -> float:
    return float(np.abs(np.asarray(a) - np.asarray(b)).max())


def test_keras_reset_before_gru_parity():
    """keras.layers.GRU(reset_after=False), float32, on our weights and on its own: outputs,
    and the gradients of its stateless call (jax.grad) vs our manual BPTT."""
    keras = _import_keras()
    cell = rj.gru.reset_before
    rng = np.random.default_rng(7)
    xs = rng.normal(size=(3, 5, 3)).astype(np.float32)
    layer = keras.layers.GRU(4, reset_after=False, return_sequences=True)
    layer(xs)  # build
    ours = random_params(rng, cell, 3, 4, dtype=np.float32)
    layer.set_weights(interop.to_keras(ours, cell))
    assert _max_abs_diff(layer(xs), rj.unroll(cell, ours, xs)[1]) < 1e-5

    layer.set_weights([rng.normal(0, 0.5, w.shape).astype(np.float32) for w in layer.get_weights()])
    theirs = interop.from_keras(layer.get_weights(), cell)
    assert _max_abs_diff(layer(xs), rj.unroll(cell, theirs, xs)[1]) < 1e-5
    d_hs = rng.normal(size=(3, 5, 4)).astype(np.float32)

    fixed = [v.value for v in layer.non_trainable_variables]

    def keras_loss(weights, x):
        out, _ = layer.stateless_call(weights, fixed, x)
        return jnp.sum(out * d_hs)

    weights = [v.value for v in layer.trainable_variables]  # kernel, recurrent_kernel, bias
    k_grads, k_dx = jax.grad(keras_loss, (0, 1))(weights, xs)
    loss = lambda p, x: jnp.sum(rj.unroll(cell, p, x, gradient="manual")[1] * d_hs)  # noqa: E731
    grads, d_x = jax.grad(loss, (0, 1))(theirs, jnp.asarray(xs))
    expected = interop.from_keras([np.asarray(g) for g in k_grads], cell)  # a permutation
    for a, b in zip(jax.tree.leaves((grads, d_x)), jax.tree.leaves((expected, k_dx)), strict=True):
        assert float(jnp.abs(a - b).max()) <= 1e-5 * float(jnp.abs(b).max())


# --- Elman with any activation -------------------------------------------------------------------


def test_with_activation_is_cached_static_and_keeps_the_fused_cells():
    gelu = rj.simple.with_activation(jax.nn.gelu)
    assert gelu is rj.simple.with_activation(jax.nn.gelu) and hash(gelu) == hash(gelu)
    assert rj.simple.with_activation("tanh") is rj.simple.cell
    assert rj.simple.with_activation(jnp.tanh) is rj.simple.cell
    assert rj.simple.with_activation(jax.nn.relu) is rj.simple.relu
    params = rj.simple.init(jax.random.PRNGKey(0), 3, 4)
    xs = jnp.ones((2, 5, 3))
    run = jax.jit(rj.unroll, static_argnums=0)
    assert_close(run(gelu, params, xs)[1], rj.unroll(gelu, params, xs)[1], 1e-6)
    with pytest.raises(ValueError, match=r"not element-wise"):
        rj.simple.with_activation(jax.nn.softmax)
    with pytest.raises(ValueError, match=r"keep the shape of its input"):
        rj.simple.with_activation(lambda z: z.sum(-1))
    with pytest.raises(TypeError, match=r"activation must be 'tanh', 'relu' or an element-wise"):
        rj.simple.with_activation("gelu")


def test_wrong_params_are_named_before_compute():
    key, xs = jax.random.PRNGKey(0), jnp.ones((2, 5, 3))
    gru_params = rj.gru.init(key, 3, 4)
    with pytest.raises(TypeError, match=r"gru_reset_before params .* must have keys \['b', 'w_h', "
                       r"'w_x'\], got \['b_h', 'b_x', 'w_h', 'w_x'\]"):  # fmt: skip
        rj.unroll(rj.gru.reset_before, gru_params, xs)
    with pytest.raises(ValueError, match=r"mgu with 2 gate\(s\) expects w_x \(I, 8\)"):
        rj.unroll(rj.mgu, gru_params, xs)
    with pytest.raises(ValueError, match=r"mgu_without_reset params must have keys \['b', 'w_h'"):
        rj.unroll(rj.mgu.without_reset, rj.mgu.init(key, 3, 4), xs)
    with pytest.raises(TypeError, match=r"layernorm_lstm params .* must have keys \['b', 'gain_c'"):
        rj.unroll(rj.layernorm_lstm, rj.lstm.init(key, 3, 4), xs)
    bad = rj.lstm.peephole.init(key, 3, 4) | {"p_o": jnp.zeros(5)}
    with pytest.raises(
        ValueError, match=r"lstm_peephole params .*\['p_o'\] must be \(4,\), got \(5,\)"
    ):
        rj.unroll(rj.lstm.peephole, bad, xs)


@pytest.mark.parametrize("initializer", ["default", "torch"])
def test_layernorm_lstm_gradient_through_zero_inputs(initializer, x64):
    """The docstring's warning: with the default (per-gate constant) biases, zero inputs keep
    h = c = 0 and each step back through them multiplies the gradient by > 1e4 (the layer
    norms' 1/sqrt(eps) at a constant vector); random biases (initializer="torch") do not."""
    cell = rj.layernorm_lstm
    params = cell.init(jax.random.PRNGKey(0), 3, 8, initializer=initializer, dtype=jnp.float64)
    blank = jnp.zeros((2, 3, 3), jnp.float64)
    carry, _ = rj.unroll(cell, params, blank)
    assert bool(jnp.all(carry.c == 0)) == (initializer == "default")

    def grad_b(num_blank):
        xs = jnp.zeros((2, num_blank + 1, 3), jnp.float64).at[:, -1].set(1.0)
        last = lambda p: jnp.sum(rj.unroll(cell, p, xs, gradient="manual")[1][:, -1])  # noqa: E731
        return float(jnp.abs(jax.grad(last)(params)["b"]).max())

    growth = grad_b(3) / grad_b(2)
    assert growth > 1e4 if initializer == "default" else growth < 10
