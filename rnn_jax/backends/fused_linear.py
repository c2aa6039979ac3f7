"""``backend="fused_cpu"`` for the linear cells: the recurrence ``h_t = a_t * h_{t-1} + b_t``
over a whole time-major sequence in one XLA FFI call forward and one backward
(``fused_linear.cc``, built on first use by ``build.py``; no oneDNN needed).

Two kernels, one sweep each way:

- ``"mingru"``: the minGRU's gates fused in. It reads the pre-activations ``k (T, B, 2H)``
  (``[k_z | k_h]``, XLA's product ``xs @ w_x + b``), computes ``z = sigmoid(k_z)``, the scan
  and the outputs in one pass, and its backward returns ``d_k`` (recomputing ``z``), so no
  ``(T, B, H)`` gate array is stored or read by XLA.
- ``"affine"``: any real ``LinearForm``: ``a, b (T, B, H)`` from the cell's own coefficients
  (XLA), the scan in the kernel, ``d_a, d_b`` back; ``"complex"``: the same in complex64 (the
  LRU's diagonal recurrence).

Lengths/masks (``valid``), resets (``starts``) and ``h0`` are handled inside, with
``rnn_jax.ops.linear_recurrence.scan_states``' meaning; ``reverse`` and the layout are the
driver's (it flips and transposes before, as for every linear cell). float32 (complex64) only.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.custom_derivatives import SymbolicZero

from rnn_jax.backends import build
from rnn_jax.cell import linear_readout

KINDS = {"mingru": 0, "affine": 1, "complex": 2}  # the C++ enum Kind


def set_threads(num_threads: int) -> None:
    """Threads each linear fused_cpu call uses from now on (0: XLA's pool size)."""
    if not isinstance(num_threads, int) or num_threads < 0:
        raise ValueError(f"num_threads must be an int >= 0, got {num_threads!r}")
    build.load(build.LINEAR).rnn_jax_linear_set_num_threads(num_threads)


def _flags(flags):
    """``(T, B)`` bool -> uint8 for the kernel; None -> ``(0,)`` (the kernel's default)."""
    return jnp.zeros((0,), jnp.uint8) if flags is None else flags.astype(jnp.uint8)


def _forward_call(kind, x1, x2, h0, valid, starts):
    build.load(build.LINEAR)
    hidden = h0.shape[-1]
    results = (
        jax.ShapeDtypeStruct((*x1.shape[:2], hidden), h0.dtype),  # hs (T, B, H)
        jax.ShapeDtypeStruct(h0.shape, h0.dtype),  # final (B, H)
    )
    call = jax.ffi.ffi_call(build.LINEAR_FORWARD_TARGET, results, vmap_method="sequential")
    return call(x1, x2, h0, valid, starts, kind=np.int32(KINDS[kind]))


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _sequence(kind, x1, x2, h0, valid, starts):
    """``(final (B, H), hs (T, B, H))``; ``valid``/``starts`` uint8 ``(T, B)`` or ``(0,)``."""
    hs, final = _forward_call(kind, x1, x2, h0, valid, starts)
    return final, hs


def _sequence_forward(kind, x1, x2, h0, valid, starts):
    x1, x2, h0, valid, starts = (arg.value for arg in (x1, x2, h0, valid, starts))
    hs, final = _forward_call(kind, x1, x2, h0, valid, starts)
    return (final, hs), (x1, x2, h0, valid, starts, hs)


def _sequence_backward(kind, residuals, cotangents):
    x1, x2, h0, valid, starts, hs = residuals
    d_final, d_hs = cotangents
    d_final = jnp.zeros(h0.shape, h0.dtype) if isinstance(d_final, SymbolicZero) else d_final
    # No output gradient (only the final state is read): the kernel skips that read.
    d_hs = jnp.zeros((0,), hs.dtype) if isinstance(d_hs, SymbolicZero) else d_hs
    results = tuple(jax.ShapeDtypeStruct(x.shape, x.dtype) for x in (x1, x2, h0))
    call = jax.ffi.ffi_call(build.LINEAR_BACKWARD_TARGET, results, vmap_method="sequential")
    d_x1, d_x2, d_h0 = call(x1, x2, h0, valid, starts, hs, d_hs, d_final,
                            kind=np.int32(KINDS[kind]))  # fmt: skip
    return d_x1, d_x2, d_h0, None, None


_sequence.defvjp(_sequence_forward, _sequence_backward, symbolic_zeros=True)


def scan(kind: str, x1, x2, h0, *, valid=None, starts=None):
    """``(final (B, H), hs (T, B, H))`` of the recurrence; ``kind="mingru"``: ``x1 = k
    (T, B, 2H)``, ``x2`` None; ``"affine"`` (float32) or ``"complex"`` (complex64): ``x1 = a``,
    ``x2 = b`` (T, B, H). ``h0 (B, H)``; ``valid``/``starts`` ``(T, B)`` bool or None (as
    ``scan_states``)."""
    steps, batch = x1.shape[:2]
    hidden = h0.shape[-1]
    _check_dtype(jnp.complex64 if kind == "complex" else jnp.float32, x1, x2, h0)
    width = 2 * hidden if kind == "mingru" else hidden
    shapes = [x1.shape] + ([] if x2 is None else [x2.shape])
    if x1.ndim != 3 or any(shape != (steps, batch, width) for shape in shapes) or (
            h0.shape != (batch, hidden)):  # fmt: skip
        raise ValueError(f"fused_cpu linear kernel {kind!r}: expected (T, B, {width}) inputs "
                         f"and h0 (B, H); got {shapes} and h0 {h0.shape}")  # fmt: skip
    if steps == 0 or batch == 0 or hidden == 0:  # nothing to run: the initial state
        return h0, jnp.zeros((steps, batch, hidden), h0.dtype)
    x2 = jnp.zeros((0,), jnp.float32) if x2 is None else x2
    return _sequence(kind, x1, x2, h0, _flags(valid), _flags(starts))


def _check_dtype(dtype, *arrays):
    for array in arrays:
        if array is not None and array.dtype != dtype:
            raise TypeError(f"backend='fused_cpu' runs linear recurrences in float32 (complex64 "
                            f"states) only, got {array.dtype}")  # fmt: skip


def parallel(cell, params, xs, carry, valid, starts):
    """``rj.unroll``'s parallel path of a linear cell with ``backend="fused_cpu"``: time-major
    ``xs (T, B, I)`` -> ``(final carry, hs (T, B, H))`` as ``cell.parallel`` returns them,
    the scan in the kernel (the minGRU's gates too), the rest (products, readout) in XLA."""
    form = cell.linear
    if form.fused_gates == "mingru":
        k, state0 = form.preactivations(params, xs, carry)
        final_state, states = scan("mingru", k, None, state0, valid=valid, starts=starts)
    else:
        a, b, state0 = form.coefficients(params, xs, carry)
        final_state, states = _affine(a, b, state0, valid, starts)
    return linear_readout(form, cell.hidden_of, params, xs, carry, valid, final_state, states)


def _affine(a, b, state0, valid, starts):
    """The ``"affine"`` (``"complex"``) kernel over states of any trailing shape
    ``(T, B, ...)``, flattened to ``(T, B, N)`` for the kernel and back."""
    a = jnp.broadcast_to(a, b.shape)
    state0 = jnp.zeros(b.shape[1:], b.dtype) if state0 is None else state0
    steps, batch = b.shape[:2]
    flat = (steps, batch, math.prod(b.shape[2:]))
    h0 = jnp.broadcast_to(state0, b.shape[1:]).reshape(batch, flat[2])
    kind = "complex" if jnp.iscomplexobj(b) else "affine"
    final, hs = scan(kind, a.reshape(flat), b.reshape(flat), h0, valid=valid, starts=starts)
    return final.reshape(b.shape[1:]), hs.reshape(b.shape)
