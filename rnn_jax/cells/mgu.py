"""Minimal gated unit (Zhou et al. 2016; Flax ``linen.MGUCell``), gate order f, n:

    f = sigmoid(x_f + h_f)                  x_* = x @ w_x + b_x,  h_* = h @ w_h + b_h
    n = tanh(x_n + f * h_n)
    h' = (1 - f) * n + f * h

A GRU whose reset and update gates are one gate ``f``. ``rnn_jax.mgu.without_reset`` (Flax
``MGUCell(reset_gate=False)``) drops the reset: ``n = tanh(x_n + h_n)``, with one bias ``b``.

Parameters ``{"w_x": (I, 2H), "w_h": (H, 2H), "b_x": (2H,), "b_h": (2H,)}`` (without reset:
``"b": (2H,)``); carry ``h`` (B, H).

Examples:
  >>> import jax, jax.numpy as jnp, rnn_jax as rj
  >>> params = rj.mgu.init(jax.random.PRNGKey(0), input_size=3, hidden_size=4)
  >>> {name: value.shape for name, value in params.items()}
  {'w_x': (3, 8), 'w_h': (4, 8), 'b_x': (8,), 'b_h': (8,)}
  >>> carry, hs = rj.unroll(rj.mgu, params, jnp.ones((2, 5, 3)), gradient="manual")
  >>> hs.shape
  (2, 5, 4)
  >>> sorted(rj.mgu.without_reset.init(jax.random.PRNGKey(0), 3, 4))
  ['b', 'w_h', 'w_x']
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from rnn_jax.cell import protocol_of
from rnn_jax.cells.base import fused_cell, split_gates
from rnn_jax.cells.gru import update_backward
from rnn_jax.init import fused_params, set_gate_bias

__all__ = [  # fmt: skip
    "cell", "hidden_of", "init", "init_without_reset", "step", "step_backward",
    "step_forward", "without_reset", "zero_carry",
]

FORGET_GATE = 0


class MGUGates(NamedTuple):
    """What an MGU step keeps for its backward, each ``(B, H)``."""

    f: jax.Array  # (B, H), after the sigmoid; n after the tanh
    n: jax.Array
    h_n: jax.Array  # h @ w_hn + b_hn, the term the gate scales (zeros without reset)
    h_prev: jax.Array


def _init(biases, key, input_size, hidden_size, *, dtype=jnp.float32, initializer="default",
          forget_bias: float | None = 1.0):  # fmt: skip
    """``{"w_x": (I, 2H), "w_h": (H, 2H)}`` and ``biases`` (each ``(2H,)``); the gate's input
    bias set to ``forget_bias`` (Flax's default initialiser: ones); None keeps the
    initializer's."""
    params = fused_params(
        key, input_size, hidden_size, 2, biases, initializer=initializer, dtype=dtype
    )
    if forget_bias is not None:
        params[biases[0]] = set_gate_bias(params[biases[0]], FORGET_GATE, hidden_size, forget_bias)
    return params


# ``init(key, I, H, *, dtype, initializer, forget_bias)``: b_x and b_h (the reset scales
# h @ w_hn + b_hn, so the two cannot be fused); without the reset, one fused b.
init = functools.partial(_init, ("b_x", "b_h"))
init_without_reset = functools.partial(_init, ("b",))


def pointwise(z_x, z_h, h):
    """``z_x, z_h (B, 2H)``, ``h (B, H)`` -> ``(h' (B, H), MGUGates)``."""
    x_f, x_n = split_gates(z_x, 2)
    h_f, h_n = split_gates(z_h, 2)
    f = jax.nn.sigmoid(x_f + h_f)
    n = jnp.tanh(x_n + f * h_n)
    return (1 - f) * n + f * h, MGUGates(f, n, h_n, h)


def pointwise_backward(gates: MGUGates, d_h):
    """Given dL/dh' (B, H), with dn_pre, df, dh_direct from ``gru.update_backward``:

    df_pre = (df + dn_pre * h_n) f(1 - f)       f gates both the update and h_n
    d_zx = [df_pre, dn_pre],   d_zh = [df_pre, dn_pre * f]
    """
    f, n, h_n, h_prev = gates
    d_n, d_f, d_h_direct = update_backward(f, n, h_prev, d_h)
    d_f = (d_f + d_n * h_n) * f * (1 - f)
    d_zx = jnp.concatenate([d_f, d_n], axis=-1)
    d_zh = jnp.concatenate([d_f, d_n * f], axis=-1)
    return d_zx, d_zh, d_h_direct


def pointwise_without_reset(z_x, z_h, h):
    """``z_x, z_h (B, 2H)`` (one fused bias), ``h (B, H)`` -> ``(h', MGUGates)``."""
    f, n = split_gates(z_x + z_h, 2)
    f, n = jax.nn.sigmoid(f), jnp.tanh(n)
    return (1 - f) * n + f * h, MGUGates(f, n, jnp.zeros_like(n), h)


def pointwise_backward_without_reset(gates: MGUGates, d_h):
    """``d_z = [df (1 - f) f, dn_pre]`` on both paths (they are summed before the gates)."""
    f, n, _, h_prev = gates
    d_n, d_f, d_h_direct = update_backward(f, n, h_prev, d_h)
    d_z = jnp.concatenate([d_f * f * (1 - f), d_n], axis=-1)
    return d_z, d_z, d_h_direct


cell = fused_cell("mgu", 2, init, pointwise, pointwise_backward, biases=("b_x", "b_h"))
without_reset = fused_cell(
    "mgu_without_reset", 2, init_without_reset, pointwise_without_reset,
    pointwise_backward_without_reset,
)  # fmt: skip

zero_carry, hidden_of, step, step_forward, step_backward = protocol_of(cell)[1:]
