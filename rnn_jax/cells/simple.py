"""Elman RNN: ``h' = tanh(x @ w_x + h @ w_h + b)`` (or ReLU via ``rnn_jax.simple.relu``).

Parameters ``{"w_x": (I, H), "w_h": (H, H), "b": (H,)}``; carry ``h`` (B, H).

Examples:
  >>> import jax, jax.numpy as jnp, rnn_jax as rj
  >>> params = rj.simple.init(jax.random.PRNGKey(0), input_size=3, hidden_size=4)
  >>> h, out = rj.simple.relu.step(params, rj.simple.zero_carry(2, 4), jnp.ones((2, 3)))
  >>> bool(jnp.all(h >= 0)), rj.count_params(params)         # I*H + H*H + H
  (True, 32)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rnn_jax.cells.base import Cell
from rnn_jax.init import fused_params


def init(key, input_size: int, hidden_size: int, *, dtype=jnp.float32, initializer="default"):
    """``{"w_x": (I, H), "w_h": (H, H), "b": (H,)}``; I*H + H*H + H parameters (Keras' count)."""
    return fused_params(
        key, input_size, hidden_size, 1, ("b",), initializer=initializer, dtype=dtype
    )


def tanh_pointwise(z_x, z_h, h):
    """``z_x, z_h (B, H)`` -> ``(h', h')``: the new carry, and h' kept for the backward."""
    h_new = jnp.tanh(z_x + z_h)
    return h_new, h_new


def tanh_pointwise_backward(h_new, d_h):
    """``d_z = d_h * (1 - h'^2)``; h reaches h' only through ``w_h``, so no direct term."""
    d_z = d_h * (1 - h_new * h_new)
    return d_z, d_z, jnp.zeros_like(d_h)


def relu_pointwise(z_x, z_h, h):
    """``z_x, z_h (B, H)`` -> ``(h', h')`` with ``h' = relu(z_x + z_h)``."""
    h_new = jax.nn.relu(z_x + z_h)  # derivative 0 at z = 0, as the backward
    return h_new, h_new


def relu_pointwise_backward(h_new, d_h):
    """``d_z = d_h * [h' > 0]`` (the subgradient 0 at z = 0, as ``jax.nn.relu``)."""
    d_z = jnp.where(h_new > 0, d_h, 0)
    return d_z, d_z, jnp.zeros_like(d_h)


cell = Cell("simple", 1, init, tanh_pointwise, tanh_pointwise_backward)
relu = Cell("simple_relu", 1, init, relu_pointwise, relu_pointwise_backward)

zero_carry = cell.zero_carry
hidden_of = cell.hidden_of
step = cell.step
step_forward = cell.step_forward
step_backward = cell.step_backward
