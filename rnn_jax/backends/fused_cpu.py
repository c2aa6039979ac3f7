"""``backend="fused_cpu"``: rnn_jax's own fused CPU kernel, a whole sequence in one XLA FFI
call forward and one backward (``fused_rnn.cc``, built on first use by ``build.py``).

The forward computes the input projection of every step as one product, then runs the
recurrence with the gate maths fused into one loop per step, keeping what its backward needs
(the activated gates, ``c``, ``h_{t-1}``); the backward sweeps in reverse and ends with the
weight and input gradients as single products over all positions. rnn_jax's parameters go in
unchanged (``w_x (I, G*H)``, ``w_h (H, G*H)``, gate orders i, f, g, o and r, z, n; the GRU's
``b_x`` and ``b_h`` separately), so there is no conversion to differentiate through.

``lengths`` has the scan path's meaning (outputs zero and the carry frozen past each row's
length, ``reverse`` reading only the valid prefix). A sequence with no steps or no rows
returns the initial carry and an empty output without calling the kernel.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from rnn_jax.backends import build
from rnn_jax.cells.base import LSTMCarry

KIND_CODES = {"tanh": 0, "relu": 1, "lstm": 2, "gru": 3}  # the C++ enum Kind
GATES = {"tanh": 1, "relu": 1, "lstm": 4, "gru": 3}
RESIDUAL_WIDTH = {"tanh": 2, "relu": 2, "lstm": 7, "gru": 5}  # floats per position, in H


def set_threads(num_threads: int) -> None:
    """Threads each fused_cpu call uses from now on, at most XLA's CPU thread-pool size
    (default: ``$RNN_JAX_FUSED_THREADS``, else the pool size, one per core); 0 restores the
    default."""
    if not isinstance(num_threads, int) or num_threads < 0:
        raise ValueError(f"num_threads must be an int >= 0, got {num_threads!r}")
    build.load(build.FUSED).rnn_jax_fused_set_num_threads(num_threads)


def _attrs(kind: str, reverse: bool, batch_major: bool):
    return {"kind": np.int32(KIND_CODES[kind]), "reverse": reverse, "batch_major": batch_major}


def _call_forward(kind, reverse, batch_major, xs, lengths, h0, c0, w_x, w_h, b, b_h, training):
    build.load(build.FUSED)
    hidden = h0.shape[1]
    positions = xs.shape[0] * xs.shape[1]
    residuals = positions * RESIDUAL_WIDTH[kind] * hidden if training else 0
    results = (
        jax.ShapeDtypeStruct((*xs.shape[:2], hidden), xs.dtype),
        jax.ShapeDtypeStruct(h0.shape, h0.dtype),
        jax.ShapeDtypeStruct(c0.shape, c0.dtype),
        jax.ShapeDtypeStruct((residuals,), jnp.float32),
    )
    call = jax.ffi.ffi_call(build.FUSED_FORWARD_TARGET, results, vmap_method="sequential")
    return call(xs, lengths, h0, c0, w_x, w_h, b, b_h, **_attrs(kind, reverse, batch_major))


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def fused_sequence(kind, reverse, batch_major, xs, lengths, h0, c0, w_x, w_h, b, b_h):
    """``(hs, h_T, c_T)`` of one layer; ``c0``/``c_T`` are ``(0,)`` unless LSTM, ``b_h``
    ``(0,)`` unless GRU."""
    args = (xs, lengths, h0, c0, w_x, w_h, b, b_h)
    hs, h_last, c_last, _ = _call_forward(kind, reverse, batch_major, *args, training=False)
    return hs, h_last, c_last


def _forward(kind, reverse, batch_major, xs, lengths, h0, c0, w_x, w_h, b, b_h):
    args = (xs, lengths, h0, c0, w_x, w_h, b, b_h)
    hs, h_last, c_last, ws = _call_forward(kind, reverse, batch_major, *args, training=True)
    shapes = (h0.shape, c0.shape, b_h.shape)
    return (hs, h_last, c_last), (xs, lengths, w_x, w_h, b, ws, shapes)


def _backward(kind, reverse, batch_major, residuals, cotangents):
    xs, lengths, w_x, w_h, b, ws, (h0_shape, c0_shape, b_h_shape) = residuals
    d_hs, d_h_last, d_c_last = cotangents
    f32 = jnp.float32
    dz_shape = (xs.shape[0] * xs.shape[1], w_x.shape[1])
    shapes = (dz_shape, h0_shape, c0_shape, w_x.shape, w_h.shape, b.shape, b_h_shape)
    results = tuple(jax.ShapeDtypeStruct(shape, f32) for shape in shapes)
    call = jax.ffi.ffi_call(build.FUSED_BACKWARD_TARGET, results, vmap_method="sequential")
    dz_x, d_h0, d_c0, d_w_x, d_w_h, d_b, d_b_h = call(
        xs, lengths, w_x, w_h, ws, d_hs, d_h_last, d_c_last,
        **_attrs(kind, reverse, batch_major),
    )  # fmt: skip
    # d_xs as an XLA dot: dropped where nobody reads it (a first layer's data).
    d_xs = jnp.dot(dz_x, w_x.T).reshape(xs.shape)
    return d_xs, None, d_h0, d_c0, d_w_x, d_w_h, d_b, d_b_h


fused_sequence.defvjp(_forward, _backward)


def unroll(kind: str, params, xs, carry, lengths=None, *, reverse: bool, time_major: bool):
    """``(final_carry, hs)`` as ``rj.unroll`` returns them; ``carry`` and ``lengths`` already
    checked (``lengths`` None: every row runs all steps)."""
    hidden = params["w_h"].shape[0]
    batch_axis = 1 if time_major else 0
    batch, steps = xs.shape[batch_axis], xs.shape[1 - batch_axis]
    if batch == 0 or steps == 0:  # nothing to run: the carry is the initial one
        return carry, jnp.zeros((*xs.shape[:2], hidden), xs.dtype)
    if lengths is None:
        lengths = jnp.full((batch,), steps, jnp.int32)
    lengths = jnp.asarray(lengths).astype(jnp.int32)
    empty = jnp.zeros((0,), xs.dtype)
    h0, c0 = (carry.h, carry.c) if kind == "lstm" else (carry, empty)
    if kind == "gru":
        b, b_h = params["b_x"], params["b_h"]
    else:
        b, b_h = params["b"], empty
    hs, h_last, c_last = fused_sequence(
        kind, reverse, not time_major, xs, lengths, h0, c0, params["w_x"], params["w_h"], b, b_h
    )
    return (LSTMCarry(h_last, c_last) if kind == "lstm" else h_last), hs
