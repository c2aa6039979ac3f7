"""Cells a researcher would write, through ``rj.make_cell``: each once with autodiff only
and once with a hand-written backward. The tests of the open cell protocol run them.

- peephole LSTM (Gers & Schmidhuber 2000): ``i, f`` read ``c_{t-1}``, ``o`` reads ``c_t``,
  through diagonal weights ``p_i, p_f, p_o``. Written here as a user would (the library has
  its own, ``rj.lstm.peephole``, tested against ``peephole_autodiff``); this one stays for the
  deliberately broken backwards ``check_cell`` must catch;
- layer-normalised LSTM (Ba, Kiros & Hinton 2016): ``x W_x`` and ``h W_h`` normalised
  separately, and ``c'`` before its tanh, each with a gain and a shift. The hand-written one
  is the library's ``rj.layernorm_lstm``; the autodiff one is written here from the equations;
- a cell with a three-part carry ``(h, c, n)``: an LSTM with a normaliser state (sLSTM-like,
  with sigmoid gates), ``h' = o * c' / sqrt(1 + n'^2)``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

import rnn_jax as rj


def autodiff_and_hand_written(name, init, forward, backward, zero_carry):
    """The same cell twice: backward by ``jax.vjp`` of its step, and by ``backward``."""

    def step(params, carry, x):
        new_carry, h, _ = forward(params, carry, x)
        return new_carry, h

    derived = rj.make_cell(f"{name}_autodiff", init, step, zero_carry=zero_carry)
    written = rj.make_cell(name, init, step, zero_carry=zero_carry, step_forward=forward,
                           step_backward=backward)  # fmt: skip
    return derived, written


# --------------------------------------------------------------------------------------
# Peephole LSTM
# --------------------------------------------------------------------------------------


def peephole_init(key, input_size, hidden_size, *, dtype=jnp.float32):
    params = rj.lstm.init(key, input_size, hidden_size, dtype=dtype)
    zeros = jnp.zeros((hidden_size,), dtype)
    return params | {"p_i": zeros, "p_f": zeros, "p_o": zeros}


def peephole_zero_carry(batch_size, hidden_size, dtype=jnp.float32):
    return rj.lstm.zero_carry(batch_size, hidden_size, dtype)


def peephole_forward(params, carry, x):
    h, c = carry
    z = x @ params["w_x"] + h @ params["w_h"] + params["b"]
    z_i, z_f, z_g, z_o = jnp.split(z, 4, axis=-1)
    i = jax.nn.sigmoid(z_i + params["p_i"] * c)
    f = jax.nn.sigmoid(z_f + params["p_f"] * c)
    g = jnp.tanh(z_g)
    c_new = f * c + i * g
    o = jax.nn.sigmoid(z_o + params["p_o"] * c_new)
    tanh_c = jnp.tanh(c_new)
    h_new = o * tanh_c
    return rj.LSTMCarry(h_new, c_new), h_new, (x, h, c, i, f, g, o, c_new, tanh_c)


def peephole_step(params, carry, x):
    carry, h, _ = peephole_forward(params, carry, x)
    return carry, h


def peephole_backward(params, residuals, d_h, d_carry, *, bug=None):
    x, h, c, i, f, g, o, c_new, tanh_c = residuals
    d_h = d_h + d_carry.h
    d_zo = d_h * tanh_c * o * (1 - o)
    d_c = d_carry.c + d_h * o * (1 - tanh_c**2) + d_zo * params["p_o"]
    d_zi = d_c * g * i * (1 - i)
    d_zf = d_c * c * f * (1 - f)
    if bug == "forget_gate":  # the sigmoid's derivative forgotten
        d_zf = d_c * c
    d_zg = d_c * i * (1 - g**2)
    d_z = jnp.concatenate([d_zi, d_zf, d_zg, d_zo], axis=-1)
    d_params = {
        "w_x": x.T @ d_z,
        "w_h": h.T @ d_z,
        "b": d_z.sum(0),
        "p_i": (d_zi * c).sum(0),
        "p_f": (d_zf * (c_new if bug == "p_f" else c)).sum(0),
        "p_o": (d_zo * c_new).sum(0),
    }
    d_c_prev = d_c * f + d_zi * params["p_i"] + d_zf * params["p_f"]
    carry_prev = rj.LSTMCarry(d_z @ params["w_h"].T, d_c_prev)
    return d_params, d_z @ params["w_x"].T, carry_prev


peephole_autodiff, peephole = autodiff_and_hand_written(
    "peephole", peephole_init, peephole_forward, peephole_backward, peephole_zero_carry
)


def broken_peephole(bug):
    """The peephole LSTM with one deliberate slip in its backward."""
    return rj.make_cell(
        f"peephole_{bug}_bug", peephole_init, peephole_step, zero_carry=peephole_zero_carry,
        step_forward=peephole_forward,
        step_backward=lambda p, r, dh, dc: peephole_backward(p, r, dh, dc, bug=bug),
    )  # fmt: skip


# --------------------------------------------------------------------------------------
# Layer-normalised LSTM: the library's rj.layernorm_lstm (hand-written backward), and this
# file's own autodiff-only formulation of the same equations, as its independent reference.
# --------------------------------------------------------------------------------------

EPS = 1e-5


def layer_norm(a, gain, shift):
    """Over the last axis, written directly from the definition."""
    mean = a.mean(-1, keepdims=True)
    var = ((a - mean) ** 2).mean(-1, keepdims=True)
    return (a - mean) / jnp.sqrt(var + EPS) * gain + shift


def ln_step(params, carry, x):
    h, c = carry
    zx = layer_norm(x @ params["w_x"], params["gain_x"], params["shift_x"])
    zh = layer_norm(h @ params["w_h"], params["gain_h"], params["shift_h"])
    z_i, z_f, z_g, z_o = jnp.split(zx + zh + params["b"], 4, axis=-1)
    i, f, g, o = jax.nn.sigmoid(z_i), jax.nn.sigmoid(z_f), jnp.tanh(z_g), jax.nn.sigmoid(z_o)
    c_new = f * c + i * g
    h_new = o * jnp.tanh(layer_norm(c_new, params["gain_c"], params["shift_c"]))
    return rj.LSTMCarry(h_new, c_new), h_new


layernorm_lstm = rj.layernorm_lstm.cell
layernorm_lstm_autodiff = rj.make_cell(
    "layernorm_lstm_autodiff", rj.layernorm_lstm.init, ln_step, zero_carry=peephole_zero_carry
)


# --------------------------------------------------------------------------------------
# A three-part carry
# --------------------------------------------------------------------------------------


class NormCarry(NamedTuple):
    h: jax.Array  # (B, H)
    c: jax.Array  # (B, H)
    n: jax.Array  # (B, H) normaliser


def norm_zero_carry(batch_size, hidden_size, dtype=jnp.float32):
    zeros = jnp.zeros((batch_size, hidden_size), dtype)
    return NormCarry(zeros, zeros, zeros)


def norm_forward(params, carry, x):
    z = x @ params["w_x"] + carry.h @ params["w_h"] + params["b"]
    z_i, z_f, z_g, z_o = jnp.split(z, 4, axis=-1)
    i, f, g, o = jax.nn.sigmoid(z_i), jax.nn.sigmoid(z_f), jnp.tanh(z_g), jax.nn.sigmoid(z_o)
    c_new = f * carry.c + i * g
    n_new = f * carry.n + i
    scale = jax.lax.rsqrt(1 + n_new**2)
    h_new = o * c_new * scale
    residuals = (x, carry, i, f, g, o, c_new, n_new, scale)
    return NormCarry(h_new, c_new, n_new), h_new, residuals


def norm_backward(params, residuals, d_h, d_carry):
    x, carry, i, f, g, o, c_new, n_new, scale = residuals
    d_h = d_h + d_carry.h
    d_o = d_h * c_new * scale
    d_c = d_carry.c + d_h * o * scale
    d_n = d_carry.n - d_h * o * c_new * n_new * scale**3
    d_i = d_c * g + d_n
    d_f = d_c * carry.c + d_n * carry.n
    d_z = jnp.concatenate(
        [d_i * i * (1 - i), d_f * f * (1 - f), d_c * i * (1 - g**2), d_o * o * (1 - o)], axis=-1
    )
    d_params = {"w_x": x.T @ d_z, "w_h": carry.h.T @ d_z, "b": d_z.sum(0)}
    carry_prev = NormCarry(d_z @ params["w_h"].T, d_c * f, d_n * f)
    return d_params, d_z @ params["w_x"].T, carry_prev


def norm_init(key, input_size, hidden_size, *, dtype=jnp.float32):
    return rj.lstm.init(key, input_size, hidden_size, dtype=dtype)


normalised_autodiff, normalised = autodiff_and_hand_written(
    "normalised", norm_init, norm_forward, norm_backward, norm_zero_carry
)

CUSTOM_CELLS = {
    "peephole_autodiff": peephole_autodiff,
    "peephole": peephole,
    "layernorm_autodiff": layernorm_lstm_autodiff,
    "layernorm": layernorm_lstm,
    "normalised_autodiff": normalised_autodiff,
    "normalised": normalised,
}
