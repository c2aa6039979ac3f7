"""``backend="onednn"``: a whole sequence in one oneDNN RNN primitive, through the XLA FFI.

The forward is oneDNN's ``forward_training`` (its workspace is kept as the residual); the
gradient is oneDNN's fused backward primitive, attached with ``jax.custom_vjp``. Gate order
and biases are converted here, in JAX, so autodiff carries the gradients back through the
conversion:

- Elman (tanh, relu) and LSTM (i, f, g, o) use rnn_jax's ``w_x (I, G*H)``, ``w_h (H, G*H)``
  as oneDNN's ``ldigo`` weights unchanged, and ``b`` as the ``(G, H)`` bias.
- GRU: oneDNN's ``lbr_gru`` is rnn_jax's reset-after GRU with gates (u, r, o) = (z, r, n)
  and four biases ``[b_xz + b_hz, b_xr + b_hr, b_xn, b_hn]``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from rnn_jax.backends import build
from rnn_jax.cells.base import LSTMCarry

KIND_CODES = {"tanh": 0, "relu": 1, "lstm": 2, "gru": 3}  # the C++ enum Kind


def to_onednn(kind: str, params):
    """rnn_jax params -> ``(w_layer (I, G*H), w_iter (H, G*H), bias (Gb, H))`` in oneDNN's
    gate order (Gb = G, or 4 for the GRU)."""
    w_x, w_h = params["w_x"], params["w_h"]
    hidden = w_h.shape[0]
    if kind != "gru":
        return w_x, w_h, params["b"].reshape(-1, hidden)
    r, z, n = (slice(g * hidden, (g + 1) * hidden) for g in range(3))

    def reorder(w):  # (.., [r, z, n]) -> (.., [z, r, n])
        return jnp.concatenate([w[..., z], w[..., r], w[..., n]], axis=-1)

    b_x, b_h = params["b_x"], params["b_h"]
    bias = jnp.stack([b_x[z] + b_h[z], b_x[r] + b_h[r], b_x[n], b_h[n]])
    return reorder(w_x), reorder(w_h), bias


def _attrs(kind: str, reverse: bool, batch_major: bool):
    return {"kind": np.int32(KIND_CODES[kind]), "reverse": reverse, "batch_major": batch_major}


def _forward(kind, reverse, batch_major, xs, h0, c0, w_layer, w_iter, bias, training=True):
    """oneDNN's forward_training (keeps the workspace for the backward) or, with
    ``training=False``, forward_inference (no workspace)."""
    library = build.load(build.ONEDNN)
    batch, hidden = h0.shape
    steps, input_size = xs.shape[1 if batch_major else 0], xs.shape[2]
    workspace = library.rnn_jax_onednn_workspace_bytes(
        KIND_CODES[kind], reverse, batch_major, steps, batch, input_size, hidden
    )
    if workspace < 0:
        raise ValueError(
            f"oneDNN rejected the {kind} shape T={steps}, B={batch}, I={input_size}, H={hidden}"
        )
    hs_shape = (*xs.shape[:2], hidden)
    results = (
        jax.ShapeDtypeStruct(hs_shape, xs.dtype),
        jax.ShapeDtypeStruct(h0.shape, h0.dtype),
        jax.ShapeDtypeStruct(c0.shape, c0.dtype),
        jax.ShapeDtypeStruct((workspace if training else 0,), jnp.uint8),
    )
    call = jax.ffi.ffi_call(build.FORWARD_TARGET, results, vmap_method="sequential")
    attrs = _attrs(kind, reverse, batch_major)
    hs, h_last, c_last, ws = call(xs, h0, c0, w_layer, w_iter, bias, **attrs, training=training)
    residuals = (xs, h0, c0, w_layer, w_iter, bias, hs, h_last, c_last, ws)
    return (hs, h_last, c_last), residuals


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def fused_sequence(kind, reverse, batch_major, xs, h0, c0, w_layer, w_iter, bias):
    """``(hs, h_T, c_T)`` of one oneDNN RNN layer; ``c0``/``c_T`` are ``(0,)`` unless LSTM."""
    args = (xs, h0, c0, w_layer, w_iter, bias)
    return _forward(kind, reverse, batch_major, *args, training=False)[0]


def _backward(kind, reverse, batch_major, residuals, cotangents):
    results = tuple(jax.ShapeDtypeStruct(r.shape, r.dtype) for r in residuals[:6])
    call = jax.ffi.ffi_call(build.BACKWARD_TARGET, results, vmap_method="sequential")
    return tuple(call(*residuals, *cotangents, **_attrs(kind, reverse, batch_major)))


fused_sequence.defvjp(_forward, _backward)


def unroll(kind: str, params, xs, carry, *, reverse: bool, time_major: bool):
    """``(final_carry, hs)`` as ``rj.unroll`` returns them; ``carry`` already checked."""
    h0, c0 = (carry.h, carry.c) if kind == "lstm" else (carry, jnp.zeros((0,), xs.dtype))
    hs, h_last, c_last = fused_sequence(
        kind, reverse, not time_major, xs, h0, c0, *to_onednn(kind, params)
    )
    return (LSTMCarry(h_last, c_last) if kind == "lstm" else h_last), hs
