"""GRU, gate order r, z, n, reset applied after the matmul (PyTorch / cuDNN / Keras
``reset_after=True``):

    r = sigmoid(x_r + h_r),  z = sigmoid(x_z + h_z)     x_* = x @ w_x + b_x,  h_* = h @ w_h + b_h
    n = tanh(x_n + r * h_n)
    h' = (1 - z) * n + z * h

Parameters ``{"w_x": (I, 3H), "w_h": (H, 3H), "b_x": (3H,), "b_h": (3H,)}``; carry ``h``.

``rnn_jax.gru.reset_before`` is the original GRU (Cho et al. 2014; Keras
``GRU(reset_after=False)``, Haiku ``hk.GRU``): ``n = tanh(x_n + (r * h) @ w_hn)``, one bias.

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

from rnn_jax.cell import hidden_width, make_cell, protocol_of
from rnn_jax.cells.base import (
    StepResiduals,
    fused_cell,
    input_projection,
    input_weight_backward,
    split_gates,
)
from rnn_jax.init import fused_params

__all__ = [  # fmt: skip
    "cell", "hidden_of", "init", "init_reset_before", "reset_before", "step", "step_backward",
    "step_forward", "zero_carry",
]


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
    """Given dL/dh' (B, H):

    dn_pre = dh' (1 - z)(1 - n^2)
    dr_pre = dn_pre * h_n * r(1 - r),     dz_pre = dh' (h - n) z(1 - z)
    d_zx = [dr_pre, dz_pre, dn_pre],      d_zh = [dr_pre, dz_pre, dn_pre * r]
    dh (direct) = dh' * z
    """
    r, z, n, h_n, h_prev = gates
    d_n, d_z, d_h_direct = update_backward(z, n, h_prev, d_h)
    d_r = d_n * h_n * r * (1 - r)
    d_z = d_z * z * (1 - z)
    d_zx = jnp.concatenate([d_r, d_z, d_n], axis=-1)
    d_zh = jnp.concatenate([d_r, d_z, d_n * r], axis=-1)
    return d_zx, d_zh, d_h_direct


def update_backward(z, n, h_prev, d_h):
    """Backward of ``h' = (1 - z) * n + z * h`` with ``n = tanh(a)``, each ``(B, H)``.

    Returns ``(dL/da, dL/dz, dL/dh direct)``; ``dL/dz`` is before the gate's sigmoid
    derivative, which each cell applies (the MGU adds its reset path to it first). Shared by
    the GRU, its reset-before variant and the MGU.
    """
    return d_h * (1 - z) * (1 - n * n), d_h * (h_prev - n), d_h * z


cell = fused_cell(
    "gru", 3, init, pointwise, pointwise_backward, biases=("b_x", "b_h"), kernel="gru"
)


# --------------------------------------------------------------------------------------
# Reset before the product (Cho et al. 2014; Keras reset_after=False, Haiku hk.GRU)
#
# The reset gate scales h *before* w_hn, so the recurrent product depends on r: two products
# per step, (B, H) @ (H, 2H) for r, z and then (r * h) @ (H, H). That does not fit the fused
# Cell (one product of h), so it is a protocol cell with its own hand-written backward.


class ResetBeforeGates(NamedTuple):
    """What a reset-before GRU step keeps for its backward, each ``(B, H)``."""

    r: jax.Array  # (B, H), after the sigmoid; so is z; n after the tanh
    z: jax.Array
    n: jax.Array
    r_h: jax.Array  # r * h, the input of w_hn


def init_reset_before(
    key, input_size: int, hidden_size: int, *, dtype=jnp.float32, initializer="default"
):
    """``{"w_x": (I, 3H), "w_h": (H, 3H), "b": (3H,)}``, gates r, z, n; one bias (Keras'
    ``reset_after=False`` has one, and an ``h``-side bias of n would sit inside ``r * h``)."""
    return fused_params(
        key, input_size, hidden_size, 3, ("b",), initializer=initializer, dtype=dtype
    )


def reset_before_forward(params, h, x, h_read=None):
    """``(params, h (B, H), x (B, I)) -> (h', h', StepResiduals)``:

    r, z = sigmoid(x_r + h @ w_hr), sigmoid(x_z + h @ w_hz)    x_* = x @ w_x + b
    n = tanh(x_n + (r * h) @ w_hn),   h' = (1 - z) * n + z * h

    ``h_read`` (B, H): what the products read in place of ``h`` (recurrent dropout; ``z * h``
    still reads ``h``, as Keras' ``GRU(reset_after=False, recurrent_dropout=)``). None: ``h``.
    """
    read = h if h_read is None else h_read
    hidden = h.shape[-1]
    x_r, x_z, x_n = split_gates(input_projection(params, x), 3)
    h_r, h_z = split_gates(read @ params["w_h"][:, : 2 * hidden], 2)
    r, z = jax.nn.sigmoid(x_r + h_r), jax.nn.sigmoid(x_z + h_z)
    r_h = r * read
    n = jnp.tanh(x_n + r_h @ params["w_h"][:, 2 * hidden :])
    h_new = (1 - z) * n + z * h
    kept = h if h_read is None else (h, read)  # without dropout, one copy of h in the residuals
    return h_new, h_new, StepResiduals(x, kept, ResetBeforeGates(r, z, n, r_h))


def reset_before_backward_parts(params, residuals: StepResiduals, d_h, d_carry):
    """Hand-written VJP of the reset-before step, with dL/dh_prev (B, H) in two parts:
    ``(d_params, d_x (B, I), d_direct, d_read)``, ``d_direct`` through ``z * h`` and
    ``d_read`` through what the products read (the cell's ``step_backward`` sums them).

    dn_pre, dz, dh_direct from ``update_backward``;  d(r h) = dn_pre @ w_hn^T;
    dr_pre = d(r h) * h * r(1 - r);  dh_prev = dh_direct + d(r h) * r + [dr_pre, dz_pre] @ w_hrz^T
    """
    x, kept, (r, z, n, r_h) = residuals
    h, read = kept if isinstance(kept, tuple) else (kept, kept)
    hidden = h.shape[-1]
    w_rz, w_n = params["w_h"][:, : 2 * hidden], params["w_h"][:, 2 * hidden :]
    d_n, d_z, d_h_direct = update_backward(z, n, h, d_h + d_carry)
    d_r_h = d_n @ w_n.T
    d_rz = jnp.concatenate([d_r_h * read * r * (1 - r), d_z * z * (1 - z)], axis=-1)
    d_params, d_x = input_weight_backward(params, x, jnp.concatenate([d_rz, d_n], axis=-1))
    d_params["w_h"] = jnp.concatenate([read.T @ d_rz, r_h.T @ d_n], axis=1)
    return d_params, d_x, d_h_direct, d_r_h * r + d_rz @ w_rz.T


reset_before = make_cell(
    "gru_reset_before",
    init_reset_before,
    step_forward=reset_before_forward,
    recurrent_dropout="read",
    step_backward_parts=reset_before_backward_parts,
    output_size=hidden_width,
)

zero_carry, hidden_of, step, step_forward, step_backward = protocol_of(cell)[1:]
