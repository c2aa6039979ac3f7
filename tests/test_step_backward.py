"""Each cell's hand-written one-step backward equals ``jax.vjp`` of its ``step``.

float64 (under ``jax.enable_x64``, which does not leak into other test modules), so the
two can agree to 1e-10: any missing factor or wrong gate slice is off by O(1).
"""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import CELLS, examples, random_carry, random_params
from hypothesis import given, settings
from hypothesis import strategies as st

import rnn_jax as rj

TOL = 1e-10


@functools.partial(jax.jit, static_argnums=0)
def both_backwards(cell, params, carry, x, d_h, d_carry):
    """``(jax.vjp of step, hand-written step_backward)``, jitted: one compile per example
    instead of one per primitive per new shape."""
    (new_carry, h), vjp = jax.vjp(cell.step, params, carry, x)
    zeros = jax.tree.map(jnp.zeros_like, new_carry)
    want_params, want_carry, want_x = vjp((zeros if d_carry is None else d_carry, d_h))
    fwd_carry, fwd_h, residuals = cell.step_forward(params, carry, x)
    got_params, got_x, got_carry = cell.step_backward(params, residuals, d_h, d_carry)
    return ((new_carry, h), want_params, want_carry, want_x), (
        (fwd_carry, fwd_h),
        got_params,
        got_x,
        got_carry,
    )


@pytest.mark.parametrize("name", sorted(CELLS))
@settings(max_examples=examples(15), deadline=None)
@given(
    batch_size=st.integers(1, 4),
    input_size=st.integers(1, 5),
    hidden_size=st.integers(1, 5),
    with_d_carry=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_step_backward_matches_vjp(name, batch_size, input_size, hidden_size, with_d_carry, seed):
    cell = CELLS[name]
    rng = np.random.default_rng(seed)
    with jax.enable_x64(True):
        params = random_params(rng, cell, input_size, hidden_size)
        carry = random_carry(rng, cell, batch_size, hidden_size)
        x = jnp.asarray(rng.normal(size=(batch_size, input_size)))
        d_h = jnp.asarray(rng.normal(size=(batch_size, hidden_size)))
        d_carry = random_carry(rng, cell, batch_size, hidden_size) if with_d_carry else None

        want, got = both_backwards(cell, params, carry, x, d_h, d_carry)
        (new_carry, h), want_params, want_carry, want_x = want
        (fwd_carry, fwd_h), got_params, got_x, got_carry = got

        assert got_params["w_x"].dtype == jnp.float64
        chex.assert_trees_all_close((fwd_carry, fwd_h), (new_carry, h), atol=0, rtol=0)
        chex.assert_trees_all_close(got_params, want_params, atol=TOL, rtol=TOL)
        chex.assert_trees_all_close(got_x, want_x, atol=TOL, rtol=TOL)
        chex.assert_trees_all_close(got_carry, want_carry, atol=TOL, rtol=TOL)
        # The previous carry's cotangent keeps the carry's type (LSTMCarry stays LSTMCarry).
        chex.assert_trees_all_equal_structs(got_carry, carry)


@pytest.mark.parametrize("module", [rj.simple, rj.lstm, rj.gru], ids=["simple", "lstm", "gru"])
def test_module_functions_are_the_cells(module):
    """``rj.lstm.step_backward`` etc. are the tested ``Cell`` methods, not other copies."""
    assert module.step_backward == module.cell.step_backward
    assert module.step_forward == module.cell.step_forward
    assert module.step == module.cell.step


def test_relu_at_zero_manual_equals_autodiff():
    """z = 0 exactly (zero inputs, zero carry, zero biases: init, blank MNIST rows): the
    hand-written backward uses the subgradient 0 there, so the forward must too (as
    ``jax.nn.relu``; ``jnp.maximum(z, 0)`` differentiates to 0.5 at a tie)."""
    cell, batch_size, input_size, hidden_size = rj.simple.relu, 2, 3, 4
    with jax.enable_x64(True):
        params = random_params(np.random.default_rng(0), cell, input_size, hidden_size)
        params = {**params, "b": jnp.zeros_like(params["b"])}
        carry = cell.zero_carry(batch_size, hidden_size, dtype=jnp.float64)
        x = jnp.zeros((batch_size, input_size), jnp.float64)
        d_h = jnp.asarray(np.random.default_rng(1).normal(size=(batch_size, hidden_size)))
        (_, want_params, want_carry, want_x), (_, got_params, got_x, got_carry) = both_backwards(
            cell, params, carry, x, d_h, None
        )
        chex.assert_trees_all_close(
            (got_params, got_carry, got_x), (want_params, want_carry, want_x), atol=TOL, rtol=TOL
        )

        xs = jnp.zeros((batch_size, 5, input_size), jnp.float64)

        def loss(params, xs, gradient):
            return jnp.sum(rj.unroll(cell, params, xs, gradient=gradient)[1] * d_h[:, None])

        manual = jax.grad(loss, argnums=(0, 1))(params, xs, "manual")
        autodiff = jax.grad(loss, argnums=(0, 1))(params, xs, "autodiff")
        chex.assert_trees_all_close(manual, autodiff, atol=TOL, rtol=TOL)
