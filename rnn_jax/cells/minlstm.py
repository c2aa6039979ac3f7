"""minLSTM (Feng et al. 2024, "Were RNNs All We Needed?"): an LSTM whose gates read only ``x``.

``f = sigmoid(x W_f + b_f)``, ``i = sigmoid(x W_i + b_i)``, ``h~ = x W_h + b_h``; the gates are
normalised to sum to one, ``f' = f / (f + i)``, ``i' = i / (f + i)``, and
``h' = f' * h + i' * h~``. Linear in ``h``: parallel over time (``mode="parallel"``, the default)
or step by step, with equal values. Parameters ``{"w_x": (I, 3H), "b": (3H,)}`` (gates f, i, h~);
carry ``h (B, H)``. ``rj.minlstm.log_space`` uses ``h~ = g(x W_h + b_h)`` as the paper's
log-space version (see ``rj.mingru``).

Examples:
  >>> import jax, jax.numpy as jnp, rnn_jax as rj
  >>> params = rj.minlstm.init(jax.random.PRNGKey(0), input_size=3, hidden_size=4)
  >>> carry, hs = rj.unroll(rj.minlstm, params, jnp.ones((2, 6, 3)), lengths=jnp.array([6, 2]))
  >>> hs.shape, bool(jnp.all(hs[1, 2:] == 0)), bool(jnp.allclose(carry[1], hs[1, 1]))
  ((2, 6, 4), True, True)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rnn_jax.cell import protocol_of
from rnn_jax.cells.base import split_gates
from rnn_jax.cells.gated_linear import gated_linear_cells

__all__ = [  # fmt: skip
    "cell", "hidden_of", "init", "log_space", "parallel", "step", "step_backward",
    "step_forward", "zero_carry",
]


def _gates_backward(f, i, f_norm, i_norm, total, d_f_norm, d_i_norm):
    """Through ``f' = f / (f + i)``, ``i' = i / (f + i)`` and the two sigmoids."""
    spread = (d_f_norm - d_i_norm) / total
    d_f, d_i = spread * i_norm, -spread * f_norm
    return d_f * f * (1 - f), d_i * i * (1 - i)


def coefficients(candidate, k):
    """``k (..., 3H)`` -> ``a = f'``, ``b = i' * g(k_h)``, residuals; ``candidate`` is
    ``(g, g')``, the identity (``h~ = k_h``) or the log-space version's ``g``."""
    k_f, k_i, k_h = split_gates(k, 3)
    f, i = jax.nn.sigmoid(k_f), jax.nn.sigmoid(k_i)
    total = f + i
    f_norm, i_norm, value = f / total, i / total, candidate[0](k_h)
    return f_norm, i_norm * value, (f, i, f_norm, i_norm, total, value, k_h)


def coefficients_backward(candidate, residuals, d_a, d_b):
    *gates, value, k_h = residuals
    d_k_f, d_k_i = _gates_backward(*gates, d_a, d_b * value)
    d_k_h = d_b * gates[3] * candidate[1](k_h)
    return jnp.concatenate([d_k_f, d_k_i, d_k_h], axis=-1)


cell, log_space = gated_linear_cells("minlstm", 3, coefficients, coefficients_backward,
                                   fused_gates="minlstm")  # fmt: skip

init, zero_carry, hidden_of, step, step_forward, step_backward = protocol_of(cell)
parallel = cell.parallel
