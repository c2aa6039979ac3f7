"""LSTM, gate order i, f, g, o (PyTorch's):

    i, f, g, o = sigmoid, sigmoid, tanh, sigmoid of (x @ w_x + h @ w_h + b)
    c' = f * c + i * g
    h' = o * tanh(c')

Parameters ``{"w_x": (I, 4H), "w_h": (H, 4H), "b": (4H,)}``; carry ``LSTMCarry(h, c)``.

``rnn_jax.lstm.peephole`` adds peephole connections (Gers & Schmidhuber 2000).

With an output projection (PyTorch ``nn.LSTM(proj_size=P)``, Sak et al. 2014), ``init(...,
proj_size=P)`` adds ``w_hr (H, P)``: ``h' = (o * tanh(c')) @ w_hr`` is ``(B, P)``, the
recurrent product reads it (``w_h (P, 4H)``) and ``c`` stays ``(B, H)``. The cell that runs
such params is ``rj.lstm.with_projection(P)`` (its zero carry has ``h (B, P)``, its ``init``
adds ``w_hr``); ``rj.unroll``, ``rj.bptt`` and the layers refuse them with plain ``rj.lstm``.

Examples:
  One step, and its hand-written backward:

  >>> import jax, jax.numpy as jnp, rnn_jax as rj
  >>> params = rj.lstm.init(jax.random.PRNGKey(0), input_size=3, hidden_size=4)
  >>> carry = rj.lstm.zero_carry(2, 4)                      # LSTMCarry(h (2, 4), c (2, 4))
  >>> carry, h, residuals = rj.lstm.step_forward(params, carry, jnp.ones((2, 3)))
  >>> d_params, d_x, d_carry = rj.lstm.step_backward(params, residuals, jnp.ones((2, 4)))
  >>> h.shape, d_x.shape, sorted(d_params), d_carry.c.shape
  ((2, 4), (2, 3), ['b', 'w_h', 'w_x'], (2, 4))

  A projected LSTM (PyTorch ``proj_size``): outputs and ``h`` of width P = 2, ``c`` of H = 4:

  >>> params = rj.lstm.init(jax.random.PRNGKey(0), 3, 4, proj_size=2)
  >>> {name: w.shape for name, w in sorted(params.items())}
  {'b': (16,), 'w_h': (2, 16), 'w_hr': (4, 2), 'w_x': (3, 16)}
  >>> projected = rj.lstm.with_projection(2)
  >>> carry, hs = rj.unroll(projected, params, jnp.ones((2, 5, 3)), gradient="manual")
  >>> hs.shape, carry.h.shape, carry.c.shape
  ((2, 5, 2), (2, 2), (2, 4))
  >>> projected.zero_carry(2, 4).h.shape
  (2, 2)
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from rnn_jax.cell import hidden_width, make_cell, protocol_of
from rnn_jax.cells.base import (
    LSTMCarry,
    StepResiduals,
    check_proj_size,
    fused_cell,
    hidden_projection,
    hidden_weight_backward,
    input_projection,
    input_weight_backward,
    split_gates,
)
from rnn_jax.init import fused_params, glorot_uniform, orthogonal_blocks, set_gate_bias, uniform

__all__ = [  # fmt: skip
    "cell", "hidden_of", "init", "init_peephole", "peephole", "step", "step_backward",
    "step_forward", "with_projection", "zero_carry",
]

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
    proj_size: int | None = None,
):
    """``{"w_x": (I, 4H), "w_h": (H, 4H), "b": (4H,)}``; forget-gate bias set to ``forget_bias``.

    ``forget_bias=None`` keeps the initializer's bias (use with ``"torch"`` for PyTorch parity).
    ``proj_size=P`` (``0 < P < H``, as PyTorch): the output projection ``w_hr (H, P)`` too,
    and ``w_h (P, 4H)`` (``projection_params``). None: no projection.
    """
    params = fused_params(
        key, input_size, hidden_size, 4, ("b",), initializer=initializer, dtype=dtype
    )
    if forget_bias is not None:
        params["b"] = set_gate_bias(params["b"], FORGET_GATE, hidden_size, forget_bias)
    if proj_size is not None:
        key = jax.random.fold_in(key, 1)  # the unprojected draws stay those of no projection
        params |= projection_params(key, hidden_size, proj_size, initializer, dtype)
    return params


def projection_params(key, hidden_size: int, proj_size: int, initializer, dtype):
    """``{"w_h": (P, 4H), "w_hr": (H, P)}``. ``"default"``: per-gate ``(P, H)`` blocks with
    orthonormal rows, Glorot-uniform ``w_hr``; ``"torch"``: every entry U(±1/sqrt(H)), as
    ``nn.LSTM(proj_size=P)``."""
    check_proj_size(proj_size)
    if proj_size >= hidden_size:
        raise ValueError(
            f"proj_size must be smaller than hidden_size (as PyTorch's), got proj_size="
            f"{proj_size} for hidden_size={hidden_size}"
        )
    k_h, k_hr = jax.random.split(key)
    draw = jnp.promote_types(dtype, jnp.float32)  # as fused_params: QR has no bfloat16 kernel
    if initializer == "default":
        w_h = orthogonal_blocks(k_h, hidden_size, 4, draw, rows=proj_size)
        w_hr = glorot_uniform(k_hr, (hidden_size, proj_size), draw)
    else:
        bound = 1.0 / math.sqrt(hidden_size)
        w_h = uniform(k_h, (proj_size, 4 * hidden_size), bound, draw)
        w_hr = uniform(k_hr, (hidden_size, proj_size), bound, draw)
    return {"w_h": w_h.astype(dtype), "w_hr": w_hr.astype(dtype)}


def activate(z):
    """``(B, 4H)`` pre-activations -> ``i, f, g, o`` (B, H): sigmoid, sigmoid, tanh, sigmoid."""
    i, f, g, o = split_gates(z, 4)
    return jax.nn.sigmoid(i), jax.nn.sigmoid(f), jnp.tanh(g), jax.nn.sigmoid(o)


def pointwise(z_x, z_h, carry: LSTMCarry):
    """``z_x, z_h (B, 4H)``, ``carry`` -> ``(LSTMCarry(h', c'), LSTMGates)``."""
    i, f, g, o = activate(z_x + z_h)
    c = f * carry.c + i * g
    tanh_c = jnp.tanh(c)
    return LSTMCarry(o * tanh_c, c), LSTMGates(i, f, g, o, carry.c, tanh_c)


def pointwise_backward(gates: LSTMGates, d_carry: LSTMCarry):
    """Given dL/dh', dL/dc' (B, H):

    d_o  = dh' * tanh(c')
    dc   = dc' + dh' * o * (1 - tanh(c')^2)        total gradient on c'
    d_i  = dc * g,   d_f = dc * c,   d_g = dc * i,   dc_prev = dc * f
    d_z  = [d_i i(1-i), d_f f(1-f), d_g (1-g^2), d_o o(1-o)]        (B, 4H)
    """
    d_h, d_c = d_carry
    d_o = d_h * gates.tanh_c
    d_c = d_c + d_h * gates.o * (1 - gates.tanh_c * gates.tanh_c)
    d_z = gate_backward(gates, d_c, d_o)
    return d_z, d_z, LSTMCarry(jnp.zeros_like(d_h), d_c * gates.f)


def gate_backward(gates: LSTMGates, d_c, d_o):
    """dL/dc' (total) and dL/do (after the sigmoid), each ``(B, H)``, -> dL/d(pre-activations)
    ``(B, 4H)`` in gate order i, f, g, o. Shared by every LSTM variant: they differ only in
    how ``c'`` reaches ``h'`` (peepholes, a layer norm), not in ``c' = f * c + i * g``."""
    i, f, g, o, c_prev, _ = gates
    return jnp.concatenate(
        [
            d_c * g * i * (1 - i),
            d_c * c_prev * f * (1 - f),
            d_c * i * (1 - g * g),
            d_o * o * (1 - o),
        ],
        axis=-1,
    )


cell = fused_cell(
    "lstm", 4, init, pointwise, pointwise_backward, has_cell_state=True, projectable=True,
    kernel="lstm",
)


# --------------------------------------------------------------------------------------
# Peephole LSTM (Gers & Schmidhuber 2000): i and f read c, o reads c', through diagonal
# weights. The peepholes enter the gates inside the step, so the gate math needs parameters:
# a protocol cell with a hand-written backward, on the LSTM's projections and gate backward.

PEEPHOLES = ("p_i", "p_f", "p_o")


def init_peephole(key, input_size: int, hidden_size: int, *, dtype=jnp.float32,
                  initializer="default", forget_bias: float | None = 1.0):  # fmt: skip
    """``rj.lstm.init``'s params (same options) plus peephole weights ``p_i, p_f, p_o`` (H,),
    zero (the cell starts as a plain LSTM)."""
    params = init(key, input_size, hidden_size, dtype=dtype, initializer=initializer,
                  forget_bias=forget_bias)  # fmt: skip
    return params | {name: jnp.zeros((hidden_size,), dtype) for name in PEEPHOLES}


def peephole_forward(params, carry: LSTMCarry, x):
    """``(params, LSTMCarry(h, c) (B, H) each, x (B, I)) -> (carry', h', StepResiduals)``:

    i, f = sigmoid(z_i + p_i * c), sigmoid(z_f + p_f * c);  g = tanh(z_g)
    c' = f * c + i * g;  o = sigmoid(z_o + p_o * c');  h' = o * tanh(c')
    """
    h, c = carry
    z_i, z_f, z_g, z_o = split_gates(input_projection(params, x) + hidden_projection(params, h), 4)
    i = jax.nn.sigmoid(z_i + params["p_i"] * c)
    f = jax.nn.sigmoid(z_f + params["p_f"] * c)
    g = jnp.tanh(z_g)
    c_new = f * c + i * g
    o = jax.nn.sigmoid(z_o + params["p_o"] * c_new)
    tanh_c = jnp.tanh(c_new)
    h_new = o * tanh_c
    gates = LSTMGates(i, f, g, o, c, tanh_c)
    return LSTMCarry(h_new, c_new), h_new, StepResiduals(x, carry, gates)


def peephole_backward(params, residuals: StepResiduals, d_h, d_carry: LSTMCarry):
    """Hand-written VJP of the peephole step: ``(d_params, d_x (B, I), d_carry_prev)``.

    The LSTM's, plus: o's pre-activation reaches c' through ``p_o``, so
    ``dc' += dz_o * p_o``; i and f reach c through ``p_i, p_f``:
    ``dc_prev = dc' * f + dz_i * p_i + dz_f * p_f``; ``dp_* = sum_B dz_* * (c or c')``.
    """
    x, (h, c), gates = residuals
    d_h = d_h + d_carry.h
    d_o = d_h * gates.tanh_c
    d_zo = d_o * gates.o * (1 - gates.o)
    d_c = d_carry.c + d_h * gates.o * (1 - gates.tanh_c * gates.tanh_c) + d_zo * params["p_o"]
    d_z = gate_backward(gates, d_c, d_o)
    d_zi, d_zf, _, _ = split_gates(d_z, 4)
    c_new = gates.f * c + gates.i * gates.g
    d_params, d_x = input_weight_backward(params, x, d_z)
    d_params |= hidden_weight_backward(params, h, d_z)
    d_params |= {"p_i": (d_zi * c).sum(0), "p_f": (d_zf * c).sum(0),
                 "p_o": (d_zo * c_new).sum(0)}  # fmt: skip
    d_c_prev = d_c * gates.f + d_zi * params["p_i"] + d_zf * params["p_f"]
    return d_params, d_x, LSTMCarry(d_z @ params["w_h"].T, d_c_prev)


peephole = make_cell(
    "lstm_peephole",
    init_peephole,
    zero_carry=cell.zero_carry,
    step_forward=peephole_forward,
    step_backward=peephole_backward,
    recurrent_dropout="carry",  # h is read by the recurrent product alone
    output_size=hidden_width,
)

with_projection = cell.with_projection
zero_carry, hidden_of, step, step_forward, step_backward = protocol_of(cell)[1:]
