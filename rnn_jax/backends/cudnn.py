"""``backend="cudnn"``: the LSTM through ``jax.experimental.rnn`` (cuDNN's fused kernel, GPU only).

``jax.experimental.rnn.lstm`` takes one flat weight vector in cuDNN's layout: ``W_ih (4H, I)``,
``W_hh (4H, H)``, then ``b_ih (4H,)``, ``b_hh (4H,)``, gates i, f, g, o as in rnn_jax.
rnn_jax's single bias goes to ``b_ih`` and ``b_hh`` is zero; ``pack_lstm`` is plain JAX,
so gradients reach ``w_x``, ``w_h`` and ``b`` through it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rnn_jax.cells.base import LSTMCarry

# Full float32 products (no TF32), the precision the scan path's parity is stated in.
FLOAT32 = (jax.lax.Precision.HIGHEST, jax.lax.Precision.HIGHEST)


def pack_lstm(params):
    """rnn_jax LSTM params -> cuDNN's flat weight vector ``(4H*I + 4H*H + 8H,)``."""
    w_x, w_h, b = params["w_x"], params["w_h"], params["b"]
    parts = (w_x.T, w_h.T, b, jnp.zeros_like(b))
    return jnp.concatenate([p.reshape(-1) for p in parts])


def unroll(params, xs, carry: LSTMCarry, *, reverse: bool, time_major: bool):
    """``(final_carry, hs)`` as ``rj.unroll`` returns them; ``carry`` already checked."""
    from jax.experimental import rnn

    xs_bm = jnp.swapaxes(xs, 0, 1) if time_major else xs
    if reverse:  # no lengths here, so reversing is a plain flip of the time axis
        xs_bm = xs_bm[:, ::-1]
    batch, steps, input_size = xs_bm.shape
    hidden = params["w_h"].shape[0]
    hs, h_n, c_n = rnn.lstm(
        xs_bm, carry.h[None], carry.c[None], pack_lstm(params),
        jnp.full((batch,), steps, jnp.int32), input_size=input_size, hidden_size=hidden,
        num_layers=1, dropout=0.0, bidirectional=False, precision=FLOAT32,
    )  # fmt: skip
    if reverse:
        hs = hs[:, ::-1]
    return LSTMCarry(h_n[0], c_n[0]), (jnp.swapaxes(hs, 0, 1) if time_major else hs)
