"""Layer-normalised LSTM (Ba, Kiros & Hinton 2016, section 3.1), gate order i, f, g, o:

    z = LN(x @ w_x; gain_x, shift_x) + LN(h @ w_h; gain_h, shift_h) + b        (B, 4H)
    i, f, g, o = sigmoid, sigmoid, tanh, sigmoid of z
    c' = f * c + i * g
    h' = o * tanh(LN(c'; gain_c, shift_c))

``LN(a; gain, shift) = (a - mean(a)) / sqrt(var(a) + 1e-5) * gain + shift`` over the last axis
(all 4H pre-activations together, as in the paper). The carry keeps the un-normalised ``c'``.
``b`` and the two shifts are redundant with each other, as in the paper's equations.

A layer norm's derivative at a constant vector is ``gain / sqrt(1e-5)``, about 316 x gain. With
``init``'s default biases (constant per gate) all-zero inputs keep ``h = c = 0`` exactly, so
each step back through such a run multiplies the gradient by about 1e4 (row-MNIST's blank top
rows overflow float32 at the first step). ``initializer="torch"`` draws random biases, which
break that symmetry.

Parameters ``{"w_x": (I, 4H), "w_h": (H, 4H), "b": (4H,), "gain_x", "shift_x", "gain_h",
"shift_h": (4H,), "gain_c", "shift_c": (H,)}``; carry ``LSTMCarry(h, c)``.

Examples:
  >>> import jax, jax.numpy as jnp, rnn_jax as rj
  >>> params = rj.layernorm_lstm.init(jax.random.PRNGKey(0), input_size=3, hidden_size=4)
  >>> rj.count_params(params)        # LSTM's 4(I*H + H*H + H) + 2 * 2 * 4H + 2 * H
  200
  >>> carry, hs = rj.unroll(rj.layernorm_lstm, params, jnp.ones((2, 5, 3)), gradient="manual")
  >>> hs.shape, carry.c.shape
  ((2, 5, 4), (2, 4))
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from rnn_jax.cell import hidden_width, make_cell
from rnn_jax.cells import lstm
from rnn_jax.cells.base import LSTMCarry, StepResiduals

__all__ = [  # fmt: skip
    "cell", "hidden_of", "init", "layer_norm", "step", "step_backward", "step_forward",
    "zero_carry",
]

EPS = 1e-5  # PyTorch's and Keras' LayerNorm default


class Normalised(NamedTuple):
    """What a layer norm's backward needs: ``a_hat (B, D)`` and ``1/std (B, 1)``."""

    a_hat: jax.Array
    inv_std: jax.Array


class LayerNormGates(NamedTuple):
    """What a step keeps for its backward: the LSTM's gates (``tanh_c`` is ``tanh(LN(c'))``)
    and the three layer norms'."""

    gates: lstm.LSTMGates
    norm_x: Normalised  # of x @ w_x, (B, 4H)
    norm_h: Normalised  # of h @ w_h, (B, 4H)
    norm_c: Normalised  # of c', (B, H)


def layer_norm(a, gain, shift):
    """``a (B, D)``, ``gain, shift (D,)`` -> ``(LN(a) (B, D), Normalised)``."""
    mean = a.mean(-1, keepdims=True)
    inv_std = jax.lax.rsqrt(((a - mean) ** 2).mean(-1, keepdims=True) + EPS)
    a_hat = (a - mean) * inv_std
    return a_hat * gain + shift, Normalised(a_hat, inv_std)


def layer_norm_backward(d_y, gain, norm: Normalised):
    """``dL/dLN(a) (B, D)`` -> ``(dL/da (B, D), d_gain (D,), d_shift (D,))``:

    da = inv_std * (dy_hat - mean(dy_hat) - a_hat * mean(dy_hat * a_hat)),  dy_hat = dy * gain
    """
    a_hat, inv_std = norm
    d_hat = d_y * gain
    mean_d = d_hat.mean(-1, keepdims=True)
    d_a = inv_std * (d_hat - mean_d - a_hat * (d_hat * a_hat).mean(-1, keepdims=True))
    return d_a, (d_y * a_hat).sum(0), d_y.sum(0)


def init(key, input_size: int, hidden_size: int, *, dtype=jnp.float32, initializer="default",
         forget_bias: float | None = 1.0):  # fmt: skip
    """``rj.lstm.init``'s params (same options) plus gains (ones) and shifts (zeros):
    ``gain_x, shift_x, gain_h, shift_h (4H,)``, ``gain_c, shift_c (H,)``. See the module
    docstring for why ``initializer="torch"`` trains where the default's constant biases may not."""
    params = lstm.init(key, input_size, hidden_size, dtype=dtype, initializer=initializer,
                       forget_bias=forget_bias)  # fmt: skip
    for part, width in (("x", 4 * hidden_size), ("h", 4 * hidden_size), ("c", hidden_size)):
        params[f"gain_{part}"] = jnp.ones((width,), dtype)
        params[f"shift_{part}"] = jnp.zeros((width,), dtype)
    return params


def step_forward(params, carry: LSTMCarry, x):
    """``(params, LSTMCarry(h, c) (B, H) each, x (B, I)) -> (carry', h', StepResiduals)``."""
    h, c = carry
    z_x, norm_x = layer_norm(x @ params["w_x"], params["gain_x"], params["shift_x"])
    z_h, norm_h = layer_norm(h @ params["w_h"], params["gain_h"], params["shift_h"])
    i, f, g, o = lstm.activate(z_x + z_h + params["b"])
    c_new = f * c + i * g
    c_norm, norm_c = layer_norm(c_new, params["gain_c"], params["shift_c"])
    tanh_c = jnp.tanh(c_norm)
    h_new = o * tanh_c
    gates = LayerNormGates(lstm.LSTMGates(i, f, g, o, c, tanh_c), norm_x, norm_h, norm_c)
    return LSTMCarry(h_new, c_new), h_new, StepResiduals(x, carry, gates)


def step_backward(params, residuals: StepResiduals, d_h, d_carry: LSTMCarry):
    """Hand-written VJP of ``step``: ``(d_params, d_x (B, I), d_carry_prev)``.

    The LSTM's gate backward, with c' reaching h' through ``LN_c`` and the products reaching
    ``z`` through ``LN_x``, ``LN_h`` (``layer_norm_backward`` each); ``b`` gets ``sum_B dz``.
    """
    x, (h, _), (gates, norm_x, norm_h, norm_c) = residuals
    d_h = d_h + d_carry.h
    d_c_norm = d_h * gates.o * (1 - gates.tanh_c * gates.tanh_c)
    d_c, d_gain_c, d_shift_c = layer_norm_backward(d_c_norm, params["gain_c"], norm_c)
    d_c = d_carry.c + d_c
    d_z = lstm.gate_backward(gates, d_c, d_h * gates.tanh_c)
    d_ax, d_gain_x, d_shift_x = layer_norm_backward(d_z, params["gain_x"], norm_x)
    d_ah, d_gain_h, d_shift_h = layer_norm_backward(d_z, params["gain_h"], norm_h)
    d_params = {
        "w_x": x.T @ d_ax, "w_h": h.T @ d_ah, "b": d_z.sum(0),
        "gain_x": d_gain_x, "shift_x": d_shift_x, "gain_h": d_gain_h, "shift_h": d_shift_h,
        "gain_c": d_gain_c, "shift_c": d_shift_c,
    }  # fmt: skip
    d_carry_prev = LSTMCarry(d_ah @ params["w_h"].T, d_c * gates.f)
    return d_params, d_ax @ params["w_x"].T, d_carry_prev


cell = make_cell(
    "layernorm_lstm",
    init,
    zero_carry=lstm.cell.zero_carry,
    step_forward=step_forward,
    step_backward=step_backward,
    recurrent_dropout="carry",  # h is read by the recurrent product alone
    output_size=hidden_width,
)

step = cell.step
zero_carry = cell.zero_carry
hidden_of = cell.hidden_of
