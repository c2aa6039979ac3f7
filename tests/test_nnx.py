"""Flax NNX adapters: they hold the params as nnx.Param, compute exactly what the pure
functions compute, train with nnx.Optimizer, and handle dropout the NNX way."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import assert_close, random_stack
from flax import nnx

import rnn_jax as rj
from rnn_jax import nnx as rnx


def test_adapters_hold_params_and_shapes():
    model = rnx.LSTM(3, 4, num_layers=2, bidirectional=True, rngs=nnx.Rngs(0))
    params = nnx.state(model, nnx.Param)
    assert len(jax.tree.leaves(params)) == 2 * 2 * 3
    assert rj.count_params(model.params) == rj.count_params(
        rj.init_stack(rj.lstm, jax.random.PRNGKey(0), 3, 4, 2, bidirectional=True)
    )
    finals, hs = model(jnp.ones((2, 5, 3)))
    assert hs.shape == (2, 5, 8) and len(finals) == 2 and isinstance(finals[0][0], rj.LSTMCarry)
    assert model.params[0]["fwd"]["b"].shape == (16,)
    _, hs = rnx.GRU(3, 4, bidirectional=True, merge="sum", rngs=nnx.Rngs(0))(jnp.ones((2, 5, 3)))
    assert hs.shape == (2, 5, 4)
    _, hs = rnx.SimpleRNN(3, 4, activation="relu", rngs=nnx.Rngs(0))(jnp.ones((2, 5, 3)))
    assert hs.shape == (2, 5, 4) and float(hs.min()) >= 0
    _, hs = rnx.GRU(3, 4, time_major=True, rngs=nnx.Rngs(0))(jnp.ones((5, 2, 3)))
    assert hs.shape == (5, 2, 4)
    assert (
        rnx.LSTM(3, 4, rngs=nnx.Rngs(0), dtype=jnp.bfloat16, initializer="torch")
        .params[0]["w_x"]
        .dtype
        == jnp.bfloat16
    )


@pytest.mark.parametrize("cell", [rj.simple, rj.lstm, rj.gru])
@pytest.mark.parametrize("gradient", ["autodiff", "manual"])
def test_equals_pure_functions_on_identical_params(x64, cell, gradient):
    rng = np.random.default_rng(0)
    stack = random_stack(rng, cell.cell, 3, 4, 2, bidirectional=True)
    model = rnx.RNN.from_params(cell, stack, gradient=gradient)
    assert_close(model.params, stack, 0.0)
    xs = jnp.asarray(rng.normal(size=(3, 5, 3)))
    lengths = jnp.array([5, 2, 4])
    assert_close(model(xs, lengths=lengths), rj.unroll_stack(cell, stack, xs, lengths=lengths), 0.0)
    carry = [(c, c) for c in rj.unroll_stack(cell, stack, xs)[0][0]][:1] * 2
    assert_close(model(xs, carry=carry), rj.unroll_stack(cell, stack, xs, carry))


def _loss(run, xs, ys):
    _, hs = run(xs)
    return jnp.mean((hs[:, -1] - ys) ** 2)


@pytest.mark.parametrize("gradient", ["autodiff", "manual"])
def test_one_optimizer_step_equals_pure_update(x64, gradient):
    rng = np.random.default_rng(1)
    stack = random_stack(rng, rj.gru.cell, 3, 4, 2, bidirectional=False)
    xs = jnp.asarray(rng.normal(size=(4, 6, 3)))
    ys = jnp.asarray(rng.normal(size=(4, 4)))
    tx = optax.adam(1e-2)

    model = rnx.RNN.from_params(rj.gru, stack, gradient=gradient)
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

    @nnx.jit
    def train_step(model, optimizer, xs, ys):
        loss, grads = nnx.value_and_grad(lambda m: _loss(m, xs, ys))(model)
        optimizer.update(model, grads)
        return loss

    loss = train_step(model, optimizer, xs, ys)

    pure = lambda p: _loss(lambda x: rj.unroll_stack(rj.gru, p, x), xs, ys)  # noqa: E731
    want_loss, grads = jax.value_and_grad(pure)(stack)
    updates, _ = tx.update(grads, tx.init(stack), stack)
    want = optax.apply_updates(stack, updates)
    assert_close(loss, want_loss)
    assert_close(model.params, want)
    assert np.abs(np.asarray(model.params[0]["w_x"]) - np.asarray(stack[0]["w_x"])).max() > 1e-3
    # and the loss goes down over a few more steps
    losses = [float(train_step(model, optimizer, xs, ys)) for _ in range(5)]
    assert losses[-1] < float(loss)


def test_drops_into_an_nnx_model():
    class Classifier(nnx.Module):
        def __init__(self, rngs):
            self.rnn = rnx.LSTM(2, 8, num_layers=2, dropout=0.2, rngs=rngs)
            self.head = nnx.Linear(8, 3, rngs=rngs)

        def __call__(self, xs, lengths):
            finals, _ = self.rnn(xs, lengths=lengths)
            return self.head(finals[-1].h)

    model = Classifier(nnx.Rngs(params=0, dropout=1))
    optimizer = nnx.Optimizer(model, optax.adam(3e-2), wrt=nnx.Param)
    rng = np.random.default_rng(2)
    xs = jnp.asarray(rng.normal(size=(8, 5, 2)), jnp.float32)
    lengths = jnp.asarray(rng.integers(1, 6, 8))
    labels = jnp.asarray(rng.integers(0, 3, 8))

    @nnx.jit
    def step(model, optimizer):
        def loss_fn(model):
            logits = model(xs, lengths)
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    losses = [float(step(model, optimizer)) for _ in range(15)]
    assert losses[-1] < 0.75 * losses[0]  # learns despite dropout noise
    model.eval()
    assert model(xs, lengths).shape == (8, 3)


def test_dropout_modes(x64):
    rng = np.random.default_rng(3)
    stack = random_stack(rng, rj.lstm.cell, 3, 5, 2, bidirectional=False)
    xs = jnp.asarray(rng.normal(size=(2, 4, 3)))
    plain = rj.unroll_stack(rj.lstm, stack, xs)
    model = rnx.RNN.from_params(rj.lstm, stack, dropout=0.5, rngs=nnx.Rngs(dropout=0))
    first, second = model(xs), model(xs)  # training: a fresh mask per call
    assert not np.allclose(first[1], second[1]) and not np.allclose(first[1], plain[1])
    # an explicit key gives exactly the pure function's dropout with that key
    key = jax.random.PRNGKey(7)
    assert_close(
        model(xs, rngs=key), rj.unroll_stack(rj.lstm, stack, xs, dropout=0.5, key=key), 0.0
    )
    # evaluation: no dropout, in every way of asking for it
    assert_close(model(xs, deterministic=True), plain, 0.0)
    assert_close(nnx.view(model, deterministic=True)(xs), plain, 0.0)
    model.eval()
    assert_close(model(xs), plain, 0.0)
    model.train()
    assert not np.allclose(model(xs)[1], plain[1])
    no_rngs = rnx.RNN.from_params(rj.lstm, stack, dropout=0.5)
    with pytest.raises(ValueError, match=r"dropout > 0 and deterministic is False, but no rngs"):
        no_rngs(xs)
    assert_close(no_rngs(xs, rngs=nnx.Rngs(dropout=1))[1].shape, plain[1].shape)


def test_nnx_errors():
    with pytest.raises(TypeError, match=r"RNN needs input_size, hidden_size and rngs"):
        rnx.RNN(rj.gru, 3, 4)
    with pytest.raises(ValueError, match=r"dropout must be in \[0, 1\), got 1.0"):
        rnx.GRU(3, 4, dropout=1.0, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"merge must be one of"):
        rnx.GRU(3, 4, bidirectional=True, merge="max", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"activation must be 'tanh' or 'relu', got 'sigmoid'"):
        rnx.SimpleRNN(3, 4, activation="sigmoid", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"gru params must have keys"):
        rnx.RNN.from_params(rj.gru, [rj.lstm.init(jax.random.PRNGKey(0), 3, 4)])
    with pytest.raises(ValueError, match=r"xs has 2 features"):
        rnx.GRU(3, 4, rngs=nnx.Rngs(0))(jnp.ones((1, 2, 2)))
