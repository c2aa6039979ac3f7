"""LSTM, gate order i, f, g, o (PyTorch's)::

    i, f, g, o = sigmoid, sigmoid, tanh, sigmoid of (x @ w_x + h @ w_h + b)
    c' = f * c + i * g
    h' = o * tanh(c')

Parameters ``{"w_x": (I, 4H), "w_h": (H, 4H), "b": (4H,)}``; carry ``LSTMCarry(h, c)``.

Examples:
  One step, and its hand-written backward:

  >>> import jax, jax.numpy as jnp, rnn_jax as rj
  >>> params = rj.lstm.init(jax.random.PRNGKey(0), input_size=3, hidden_size=4)
  >>> carry = rj.lstm.zero_carry(2, 4)                      # LSTMCarry(h (2, 4), c (2, 4))
  >>> carry, h, residuals = rj.lstm.step_forward(params, carry, jnp.ones((2, 3)))
  >>> d_params, d_x, d_carry = rj.lstm.step_backward(params, residuals, jnp.ones((2, 4)))
  >>> h.shape, d_x.shape, sorted(d_params), d_carry.c.shape
  ((2, 4), (2, 3), ['b', 'w_h', 'w_x'], (2, 4))
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from rnn_jax.cells.base import Cell, LSTMCarry, split_gates
from rnn_jax.init import fused_params, set_gate_bias

FORGET_GATE = 1


class LSTMGates(NamedTuple):
    """What an LSTM step keeps for its backward, each ``(B, H)``."""

    i: jax.Array  # (B, H), after the nonlinearity; so are f, g, o
    f: jax.Array
    g: jax.Array
    o: jax.Array
    c_prev: jax.Array
    tanh_c: jax.Array  # tanh(c')


def init(
    key,
    input_size: int,
    hidden_size: int,
    *,
    dtype=jnp.float32,
    initializer="default",
    forget_bias: float | None = 1.0,
):
    """``{"w_x": (I, 4H), "w_h": (H, 4H), "b": (4H,)}``; forget-gate bias set to ``forget_bias``.

    ``forget_bias=None`` keeps the initializer's bias (use with ``"torch"`` for PyTorch parity).
    """
    params = fused_params(
        key, input_size, hidden_size, 4, ("b",), initializer=initializer, dtype=dtype
    )
    if forget_bias is not None:
        params["b"] = set_gate_bias(params["b"], FORGET_GATE, hidden_size, forget_bias)
    return params


def pointwise(z_x, z_h, carry: LSTMCarry):
    """``z_x, z_h (B, 4H)``, ``carry`` -> ``(LSTMCarry(h', c'), LSTMGates)``."""
    i, f, g, o = split_gates(z_x + z_h, 4)
    i, f, g, o = jax.nn.sigmoid(i), jax.nn.sigmoid(f), jnp.tanh(g), jax.nn.sigmoid(o)
    c = f * carry.c + i * g
    tanh_c = jnp.tanh(c)
    return LSTMCarry(o * tanh_c, c), LSTMGates(i, f, g, o, carry.c, tanh_c)


def pointwise_backward(gates: LSTMGates, d_carry: LSTMCarry):
    """Given dL/dh', dL/dc' (B, H)::

    d_o  = dh' * tanh(c')
    dc   = dc' + dh' * o * (1 - tanh(c')^2)        total gradient on c'
    d_i  = dc * g,   d_f = dc * c,   d_g = dc * i,   dc_prev = dc * f
    d_z  = [d_i i(1-i), d_f f(1-f), d_g (1-g^2), d_o o(1-o)]        (B, 4H)
    """
    i, f, g, o, c_prev, tanh_c = gates
    d_h, d_c = d_carry
    d_o = d_h * tanh_c
    d_c = d_c + d_h * o * (1 - tanh_c * tanh_c)
    d_z = jnp.concatenate(
        [
            d_c * g * i * (1 - i),
            d_c * c_prev * f * (1 - f),
            d_c * i * (1 - g * g),
            d_o * o * (1 - o),
        ],
        axis=-1,
    )
    return d_z, d_z, LSTMCarry(jnp.zeros_like(d_h), d_c * f)


cell = Cell("lstm", 4, init, pointwise, pointwise_backward, has_cell_state=True)

zero_carry = cell.zero_carry
hidden_of = cell.hidden_of
step = cell.step
step_forward = cell.step_forward
step_backward = cell.step_backward
