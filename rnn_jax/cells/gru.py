"""GRU, gate order r, z, n, reset applied after the matmul (PyTorch / cuDNN / Keras
``reset_after=True``)::

    r = sigmoid(x_r + h_r),  z = sigmoid(x_z + h_z)     x_* = x @ w_x + b_x,  h_* = h @ w_h + b_h
    n = tanh(x_n + r * h_n)
    h' = (1 - z) * n + z * h

Parameters ``{"w_x": (I, 3H), "w_h": (H, 3H), "b_x": (3H,), "b_h": (3H,)}``; carry ``h``.

Examples:
  >>> import jax, jax.numpy as jnp, rnn_jax as rj
  >>> params = rj.gru.init(jax.random.PRNGKey(0), input_size=3, hidden_size=4)
  >>> h, out = rj.gru.step(params, rj.gru.zero_carry(2, 4), jnp.ones((2, 3)))
  >>> h.shape, bool(jnp.all(h == out))
  ((2, 4), True)
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from rnn_jax.cells.base import Cell, split_gates
from rnn_jax.init import fused_params


class GRUGates(NamedTuple):
    """What a GRU step keeps for its backward, each ``(B, H)``."""

    r: jax.Array  # (B, H), after the nonlinearity; so are z, n
    z: jax.Array
    n: jax.Array
    h_n: jax.Array  # h @ w_hn + b_hn, the term the reset gate scales
    h_prev: jax.Array


def init(key, input_size: int, hidden_size: int, *, dtype=jnp.float32, initializer="default"):
    """``{"w_x": (I, 3H), "w_h": (H, 3H), "b_x": (3H,), "b_h": (3H,)}``."""
    return fused_params(
        key, input_size, hidden_size, 3, ("b_x", "b_h"), initializer=initializer, dtype=dtype
    )


def pointwise(z_x, z_h, h):
    """``z_x, z_h (B, 3H)``, ``h (B, H)`` -> ``(h' (B, H), GRUGates)``."""
    x_r, x_z, x_n = split_gates(z_x, 3)
    h_r, h_z, h_n = split_gates(z_h, 3)
    r = jax.nn.sigmoid(x_r + h_r)
    z = jax.nn.sigmoid(x_z + h_z)
    n = jnp.tanh(x_n + r * h_n)
    return (1 - z) * n + z * h, GRUGates(r, z, n, h_n, h)


def pointwise_backward(gates: GRUGates, d_h):
    """Given dL/dh' (B, H)::

    dn_pre = dh' (1 - z)(1 - n^2)
    dr_pre = dn_pre * h_n * r(1 - r),     dz_pre = dh' (h - n) z(1 - z)
    d_zx = [dr_pre, dz_pre, dn_pre],      d_zh = [dr_pre, dz_pre, dn_pre * r]
    dh (direct) = dh' * z
    """
    r, z, n, h_n, h_prev = gates
    d_n = d_h * (1 - z) * (1 - n * n)
    d_r = d_n * h_n * r * (1 - r)
    d_z = d_h * (h_prev - n) * z * (1 - z)
    d_zx = jnp.concatenate([d_r, d_z, d_n], axis=-1)
    d_zh = jnp.concatenate([d_r, d_z, d_n * r], axis=-1)
    return d_zx, d_zh, d_h * z


cell = Cell("gru", 3, init, pointwise, pointwise_backward, biases=("b_x", "b_h"))

zero_carry = cell.zero_carry
hidden_of = cell.hidden_of
step = cell.step
step_forward = cell.step_forward
step_backward = cell.step_backward
