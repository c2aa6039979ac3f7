"""minGRU (Feng et al. 2024, "Were RNNs All We Needed?"): a GRU whose gates read only ``x``.

``z = sigmoid(x W_z + b_z)``, ``h~ = x W_h + b_h``, ``h' = (1 - z) * h + z * h~``: linear in
``h``, so a whole sequence runs in parallel (``rj.unroll`` with ``mode="parallel"``, the
default for this cell) or step by step (``mode="sequential"``), with equal values.

Parameters ``{"w_x": (I, 2H), "b": (2H,)}`` (gates z, h~); carry ``h (B, H)``.
``rj.mingru.log_space`` is the model of the paper's log-space version, ``h~ = g(x W_h + b_h)``
with ``g(v) = v + 1/2`` (v >= 0), ``sigmoid(v)`` (v < 0), so states stay positive. The paper
scans in log space because its cumulative-sum formulation divides by products of ``1 - z``
that underflow on long sequences; ``rj.linear_scan`` composes ``(a, b)`` pairs and never
divides, so both variants use it at any length.

Examples:
  >>> import jax, jax.numpy as jnp, rnn_jax as rj
  >>> params = rj.mingru.init(jax.random.PRNGKey(0), input_size=3, hidden_size=4)
  >>> xs = jax.random.normal(jax.random.PRNGKey(1), (2, 50, 3))
  >>> _, hs = rj.unroll(rj.mingru, params, xs)                       # parallel over time
  >>> _, hs_steps = rj.unroll(rj.mingru, params, xs, mode="sequential")
  >>> hs.shape, bool(jnp.allclose(hs, hs_steps, atol=1e-5))
  ((2, 50, 4), True)
"""

from __future__ import annotations

import jax

from rnn_jax.cell import protocol_of
from rnn_jax.cells.base import split_gates
from rnn_jax.cells.gated_linear import gated_linear_cells

__all__ = [  # fmt: skip
    "cell", "hidden_of", "init", "log_space", "parallel", "step", "step_backward",
    "step_forward", "zero_carry",
]


def coefficients(candidate, k):
    """``k (..., 2H)`` -> ``a = 1 - z``, ``b = z * g(k_h)``, residuals; ``candidate`` is
    ``(g, g')``, the identity (``h~ = k_h``) or the log-space version's ``g``."""
    k_z, k_h = split_gates(k, 2)
    z = jax.nn.sigmoid(k_z)
    return 1 - z, z * candidate[0](k_h), (z, k_h)


def coefficients_backward(candidate, residuals, d_a, d_b):
    z, k_h = residuals
    g, g_derivative = candidate
    d_z = d_b * g(k_h) - d_a
    return jax.numpy.concatenate([d_z * z * (1 - z), d_b * z * g_derivative(k_h)], axis=-1)


cell, log_space = gated_linear_cells("mingru", 2, coefficients, coefficients_backward,
                                   fused_gates="mingru")  # fmt: skip

init, zero_carry, hidden_of, step, step_forward, step_backward = protocol_of(cell)
parallel = cell.parallel
