"""The LSTM written as a user would, through ``rj.make_cell`` with a hand-written backward.

Same maths and parameters as ``rj.lstm`` (gate order i, f, g, o), but it goes through the
generic protocol path: BPTT runs this ``step_backward`` in the reverse loop and accumulates
``d_params`` there, instead of the fused cells' single weight products after the loop.
``experiments/bench.py --cell custom_lstm:lstm`` measures what the fused path is worth.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

import rnn_jax as rj


def step_forward(params, carry, x):
    h, c = carry
    z = x @ params["w_x"] + h @ params["w_h"] + params["b"]
    z_i, z_f, z_g, z_o = jnp.split(z, 4, axis=-1)
    i, f, g, o = jax.nn.sigmoid(z_i), jax.nn.sigmoid(z_f), jnp.tanh(z_g), jax.nn.sigmoid(z_o)
    c_new = f * c + i * g
    tanh_c = jnp.tanh(c_new)
    h_new = o * tanh_c
    return rj.LSTMCarry(h_new, c_new), h_new, (x, h, c, i, f, g, o, tanh_c)


def step(params, carry, x):
    new_carry, h, _ = step_forward(params, carry, x)
    return new_carry, h


def step_backward(params, residuals, d_h, d_carry):
    """``(d_params, d_x (B, I), d_carry_prev)`` for ``d_h (B, H)`` and ``d_carry`` LSTMCarry."""
    x, h, c, i, f, g, o, tanh_c = residuals
    d_h = d_h + d_carry.h
    d_c = d_carry.c + d_h * o * (1 - tanh_c * tanh_c)
    d_z = jnp.concatenate(
        [d_c * g * i * (1 - i), d_c * c * f * (1 - f), d_c * i * (1 - g * g),
         d_h * tanh_c * o * (1 - o)],
        axis=-1,
    )  # fmt: skip
    d_params = {"w_x": x.T @ d_z, "w_h": h.T @ d_z, "b": d_z.sum(0)}
    return d_params, d_z @ params["w_x"].T, rj.LSTMCarry(d_z @ params["w_h"].T, d_c * f)


lstm = rj.make_cell(
    "custom_lstm", rj.lstm.init, step, zero_carry=rj.lstm.zero_carry,
    step_forward=step_forward, step_backward=step_backward,
)  # fmt: skip
