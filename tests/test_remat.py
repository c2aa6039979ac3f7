"""``rj.unroll(..., remat=k)``: same values and float64 gradients as without, less memory."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import CELLS, assert_close, random_carry, random_params

import rnn_jax as rj
from rnn_jax.remat import segment_length


def outputs_and_grads(cell, params, xs, carry, lengths, **options):
    """Outputs, and the gradients (w.r.t. params, xs, carry) of a loss reading them all."""

    def loss(params, xs, carry):
        final, hs = rj.unroll(cell, params, xs, carry, lengths=lengths, **options)
        value = jnp.sum(jnp.sin(hs)) + sum(jnp.sum(c**2) for c in jax.tree.leaves(final))
        return value, (final, hs)

    grad = jax.grad(loss, argnums=(0, 1, 2), has_aux=True)
    return jax.jit(grad)(params, xs, carry)


@pytest.mark.parametrize("name", ["simple", "lstm", "gru"])
@pytest.mark.parametrize("remat", [2, 7])  # T=5: a padded last segment; one padded segment
@pytest.mark.parametrize("masked", [False, True])  # masked also reads backwards
@pytest.mark.parametrize("gradient", ["autodiff", "manual"])
def test_remat_same_values_and_gradients_float64(x64, name, remat, masked, gradient):
    """Against plain autodiff, for remat with either gradient (manual: hand-written BPTT
    inside each segment, autodiff chaining the segments)."""
    cell, rng = CELLS[name], np.random.default_rng(0)
    batch, steps, inputs, hidden = 3, 5, 2, 4
    params = random_params(rng, cell, inputs, hidden)
    xs = jnp.asarray(rng.normal(size=(batch, steps, inputs)))
    carry = random_carry(rng, cell, batch, hidden)
    lengths = jnp.array([5, 2, 0]) if masked else None
    expected = outputs_and_grads(cell, params, xs, carry, lengths, reverse=masked)
    options = dict(reverse=masked, remat=remat, gradient=gradient)
    actual = outputs_and_grads(cell, params, xs, carry, lengths, **options)
    assert_close(actual, expected)


@pytest.mark.parametrize("gradient", ["autodiff", "manual"])
def test_remat_lowers_peak_memory(gradient):
    """XLA's temporary buffers for the gradient shrink (T=256: well under half)."""
    cell, rng = CELLS["lstm"], np.random.default_rng(0)
    params = random_params(rng, cell, 4, 16, dtype=np.float32)
    xs = jnp.asarray(rng.normal(size=(8, 256, 4)), jnp.float32)

    def temp_bytes(**options):
        def loss(params, xs):
            return rj.unroll(cell, params, xs, gradient=gradient, **options)[0].h.sum()

        compiled = jax.jit(jax.grad(loss)).lower(params, xs).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    assert temp_bytes(remat="sqrt") < 0.5 * temp_bytes()


def test_segment_length_and_errors():
    assert segment_length(None, 100) is None
    assert segment_length("sqrt", 100) == 10
    assert segment_length(4, 100) == 4
    for bad in (0, -1, 2.5, "half", True):
        with pytest.raises(ValueError, match="remat"):
            segment_length(bad, 10)
    params = rj.lstm.init(jax.random.PRNGKey(0), 2, 3)
    with pytest.raises(ValueError, match="remat with truncate"):
        rj.unroll(rj.lstm, params, jnp.ones((1, 4, 2)), remat=2, gradient="manual", truncate=2)
